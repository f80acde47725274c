//! Standard output of the report commands (`status`, `list`, `key`, `init`, `history`, `check`,
//! `metrics`, `prune`): written whole, and a failure to write it is an error, never silence.
//!
//! Rust's standard output quietly drops writes to a closed descriptor 1 (`pglock list >&-`),
//! and `print!` leaves a failed final flush (`pglock metrics > /dev/full`) unreported at exit,
//! so both are checked here. A reader that went away (`pglock list | head`) is the exception:
//! main restores SIGPIPE's default for the report commands, so they end quietly, as ls does.

use anyhow::{Context, Result, bail};
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether descriptor 1 was closed when pglock was started.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);

/// Looks at descriptor 1 before Rust's runtime starts: the runtime opens /dev/null on a closed
/// 0, 1 or 2 (so that no later file lands there), after which a closed standard output looks
/// like `> /dev/null`. The C runtime calls what `.init_array` lists before `main`, as Rust's
/// standard library itself does to learn the arguments.
#[used]
// SAFETY: `.init_array` holds pointers to `extern "C" fn()` that the C runtime calls once
// before main; this is one, and it only inspects a descriptor and stores an atomic flag.
#[unsafe(link_section = ".init_array")]
static LOOK_AT_STDOUT: extern "C" fn() = look_at_stdout;

extern "C" fn look_at_stdout() {
    // SAFETY: the number is only inspected with F_GETFD while this borrow lives; if nothing is
    // open there, that call fails with EBADF, which is the answer sought.
    let fd = unsafe { BorrowedFd::borrow_raw(1) };
    if nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_err() {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
    }
}

/// Writes `text` to standard output and flushes it.
pub fn emit(text: &str) -> Result<()> {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        bail!("cannot write the report to standard output: it is closed");
    }
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .context("cannot write the report to standard output")
}
