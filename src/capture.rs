//! --capture and --quiet-on-success: the command's stdout and stderr through pglock.
//!
//! The command writes into two pipes; a `capture` thread passes what arrives on to pglock's own
//! stdout and stderr as it comes (or, with --quiet-on-success, into two unlinked temporary
//! files, printed only if the run fails), and keeps the last [`TAIL`] bytes of both, in the
//! order they arrived, for the monitor's report and the ledger. Memory stays bounded whatever
//! the command prints: a read buffer and the tail.
//!
//! When pglock's own stdout or stderr goes away (`pglock ... | head`), the thread closes its
//! end of that pipe, so that the command sees what it would see without pglock: EPIPE or
//! SIGPIPE on its next write. pglock itself ignores SIGPIPE (Rust's runtime does) and goes on
//! with the other stream.
//!
//! Nothing of this exists without the flags: a plain run's command inherits pglock's
//! descriptors, and no thread or pipe is made.

use crate::{step, warn};
use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use std::collections::VecDeque;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

/// How much of the output is kept for the report: the last 10 KiB, runitor's default and well
/// under what healthchecks.io stores of a ping's body (100 kB).
pub const TAIL: usize = 10 * 1024;

/// The capacity asked for each pipe, and the bytes read from one at once: a pipe four times the
/// default size makes a quarter of the context switches for a command that prints a lot (Linux
/// lets an unprivileged process have up to 1 MiB; a refusal keeps the default).
const CHUNK: usize = 256 * 1024;

/// Reads from one pipe in a row at most, before the other gets its turn.
const BURST: usize = 16;

/// How long the end of the output may take to arrive once the command has exited, counted from
/// the last byte that did: a process the command left behind (--leftovers keep) may hold the
/// pipes open for ever.
const STALL: Duration = Duration::from_secs(1);

/// What happens to the command's output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The command inherits pglock's stdout and stderr.
    Off,
    /// --capture: passed through as it arrives, its tail kept.
    Pass,
    /// --quiet-on-success: held in temporary files, printed only if the run fails.
    Quiet,
}

/// The last [`TAIL`] bytes of the output, both streams in arrival order.
#[derive(Debug, Default, Clone)]
pub struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    fn push(&mut self, chunk: &[u8]) {
        let chunk = &chunk[chunk.len().saturating_sub(TAIL)..];
        let over = (self.bytes.len() + chunk.len()).saturating_sub(TAIL);
        self.bytes.drain(..over);
        self.bytes.extend(chunk);
    }

    /// The tail as raw bytes, for the monitor's body.
    pub fn bytes(&self) -> Vec<u8> {
        self.bytes.iter().copied().collect()
    }

    /// The tail as text, bytes that are not UTF-8 replaced (also a character the 10 KiB cut
    /// through at its start): for the ledger.
    #[allow(dead_code)] // The ledger's output_tail column will use it.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes()).into_owned()
    }
}

/// The command's ends of the two pipes, given to every spawn attempt, and pglock's.
pub struct Pipes {
    /// The command's stdout and stderr.
    pub child: [OwnedFd; 2],
    ours: [OwnedFd; 2],
    sinks: Sinks,
}

impl Pipes {
    /// The pipes, and for [`Mode::Quiet`] the spool files, made before the command starts so
    /// that nothing can fail after it has.
    pub fn new(mode: Mode) -> Result<Pipes> {
        let sinks = match mode {
            Mode::Quiet => Sinks::Spool([spool()?, spool()?]),
            _ => Sinks::Pass,
        };
        let pipe = || nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC);
        let (out_r, out_w) = pipe().context("cannot create the pipe for the command's stdout")?;
        let (err_r, err_w) = pipe().context("cannot create the pipe for the command's stderr")?;
        for fd in [&out_r, &err_r] {
            let _ = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_SETPIPE_SZ(CHUNK as i32));
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            )
            .context("cannot make the output pipe non-blocking")?;
        }
        Ok(Pipes {
            child: [out_w, err_w],
            ours: [out_r, err_r],
            sinks,
        })
    }

    /// The command has been spawned: starts the thread that carries the output. The command's
    /// ends come back: a retry's command gets them too, and end of file comes only once the
    /// caller drops them after the last attempt.
    pub fn pump(self) -> Result<(Pump, [OwnedFd; 2])> {
        let Pipes { child, ours, sinks } = self;
        let spooled = match &sinks {
            Sinks::Spool([a, b]) => Some([a.try_clone()?, b.try_clone()?]),
            Sinks::Pass => None,
        };
        let tail = Arc::new(Mutex::new(Tail::default()));
        let moved = Arc::new(AtomicU64::new(0));
        let (done, finished) = mpsc::channel();
        let (t, m) = (Arc::clone(&tail), Arc::clone(&moved));
        std::thread::Builder::new()
            .name("capture".into())
            .spawn(move || {
                block_signals();
                carry(ours, sinks, &t, &m);
                drop(done);
            })
            .context("cannot start the thread that carries the command's output")?;
        Ok((
            Pump {
                tail,
                moved,
                finished,
                spooled,
            },
            child,
        ))
    }
}

/// Where the output goes.
enum Sinks {
    Pass,
    Spool([File; 2]),
}

/// The output being carried.
pub struct Pump {
    tail: Arc<Mutex<Tail>>,
    moved: Arc<AtomicU64>,
    finished: mpsc::Receiver<()>,
    spooled: Option<[File; 2]>,
}

/// The output once the command is done.
pub struct Captured {
    pub tail: Tail,
    /// --quiet-on-success: stdout's and stderr's spool.
    spooled: Option<[File; 2]>,
}

impl Pump {
    /// After the command has exited: waits for the end of its output, for as long as it keeps
    /// coming (see [`STALL`]), and returns what was kept.
    pub fn finish(self) -> Captured {
        let mut last = (self.moved.load(Ordering::Relaxed), Instant::now());
        let tick = Duration::from_millis(100);
        while let Err(mpsc::RecvTimeoutError::Timeout) = self.finished.recv_timeout(tick) {
            let moved = self.moved.load(Ordering::Relaxed);
            if moved != last.0 {
                last = (moved, Instant::now());
            } else if last.1.elapsed() >= STALL {
                step!(
                    "the command's output is still open {STALL:?} after it exited (a process it \
                     left running?); not waiting for the rest"
                );
                break;
            }
        }
        let tail = lock(&self.tail).clone();
        Captured {
            tail,
            spooled: self.spooled,
        }
    }
}

impl Captured {
    /// --quiet-on-success after a failed run: everything the command printed, stdout to
    /// stdout and stderr to stderr.
    pub fn replay(&self) {
        let Some(files) = &self.spooled else {
            return;
        };
        for (i, file) in files.iter().enumerate() {
            let out = std_fd(i);
            let mut buf = vec![0u8; CHUNK];
            let mut at = 0;
            // pread: the capture thread may still hold the file (see STALL), and shares its
            // offset.
            while let Ok(n) = file.read_at(&mut buf, at) {
                if n == 0 || write_all(out, &buf[..n]).is_err() {
                    break;
                }
                at += n as u64;
            }
        }
    }
}

/// An unlinked temporary file in $TMPDIR (or /tmp): it disappears with pglock, whatever ends it.
fn spool() -> Result<File> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::Mode as Perm;
    let dir = std::env::temp_dir();
    let flags = OFlag::O_TMPFILE | OFlag::O_RDWR | OFlag::O_CLOEXEC;
    if let Ok(fd) = open(&dir, flags, Perm::S_IRUSR | Perm::S_IWUSR) {
        return Ok(File::from(fd));
    }
    // A file system without O_TMPFILE: create, then unlink at once.
    let (fd, path) = nix::unistd::mkstemp(&dir.join("pglock-output.XXXXXX"))
        .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
    let _ = nix::unistd::unlink(&path);
    nix::fcntl::fcntl(
        &fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )?;
    Ok(File::from(fd))
}

/// The capture thread: reads both pipes until both are closed.
fn carry(ours: [OwnedFd; 2], sinks: Sinks, tail: &Mutex<Tail>, moved: &AtomicU64) {
    let mut open: [Option<OwnedFd>; 2] = ours.map(Some);
    let mut buf = vec![0u8; CHUNK];
    while open.iter().any(Option::is_some) {
        let ready: Vec<usize> = {
            let (which, mut fds): (Vec<usize>, Vec<PollFd>) = open
                .iter()
                .enumerate()
                .filter_map(|(i, fd)| {
                    Some((i, PollFd::new(fd.as_ref()?.as_fd(), PollFlags::POLLIN)))
                })
                .unzip();
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(Errno::EINTR) => {}
                Err(e) => {
                    warn!("cannot read the command's output: {e}");
                    return;
                }
            }
            which
                .into_iter()
                .zip(&fds)
                .filter(|(_, p)| p.revents().is_some_and(|r| !r.is_empty()))
                .map(|(i, _)| i)
                .collect()
        };
        for i in ready {
            // Read on while data is there (the ends are non-blocking): a command that prints a
            // lot then costs a read and a write per chunk, not a poll too. A bound keeps the
            // other stream's turn coming.
            for _ in 0..BURST {
                let Some(fd) = &open[i] else { break };
                let n = match nix::unistd::read(fd, &mut buf) {
                    Ok(n) => n,
                    Err(Errno::EINTR) => continue,
                    Err(Errno::EAGAIN) => break,
                    Err(_) => 0,
                };
                if n == 0 {
                    open[i] = None;
                    break;
                }
                let chunk = &buf[..n];
                lock(tail).push(chunk);
                moved.fetch_add(n as u64, Ordering::Relaxed);
                let written = match &sinks {
                    Sinks::Pass => write_all(std_fd(i), chunk),
                    Sinks::Spool(files) => write_all(files[i].as_fd(), chunk),
                };
                if let Err(e) = written {
                    // Our reader went away (or the disk is full): the command learns it as it
                    // would without pglock, on its next write to this pipe.
                    let name = ["stdout", "stderr"][i];
                    step!("cannot pass the command's {name} on ({e}); closing its pipe");
                    open[i] = None;
                }
            }
        }
    }
}

/// pglock's stdout (0) or stderr (1).
fn std_fd(i: usize) -> BorrowedFd<'static> {
    // SAFETY: descriptors 1 and 2 stay open for the life of the process (the runtime opens
    // /dev/null on a closed one, and pglock never closes them); they are only written to.
    unsafe { BorrowedFd::borrow_raw(i as i32 + 1) }
}

/// Writes all of `bytes` to `fd`, waiting when it is non-blocking (a terminal some other
/// program left O_NONBLOCK).
fn write_all(fd: BorrowedFd<'_>, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(0) => return Err(Errno::EIO),
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR) => {}
            Err(Errno::EAGAIN) => {
                let _ = poll(
                    &mut [PollFd::new(fd, PollFlags::POLLOUT)],
                    PollTimeout::NONE,
                );
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Signals are the router's and the main thread's business: the capture thread keeps them
/// blocked, so that none interrupts its system calls, and so that its writes to a terminal whose
/// foreground the command has taken are not stopped by SIGTTOU (a blocked SIGTTOU lets them
/// through).
fn block_signals() {
    use nix::sys::signal::{SigSet, SigmaskHow, pthread_sigmask};
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&SigSet::all()), None);
}

fn lock(tail: &Mutex<Tail>) -> std::sync::MutexGuard<'_, Tail> {
    tail.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tail_keeps_the_last_bytes_in_order() {
        let mut t = Tail::default();
        t.push(b"abc");
        t.push(&vec![b'x'; TAIL - 2]);
        let b = t.bytes();
        assert_eq!(b.len(), TAIL);
        assert_eq!(&b[..2], b"bc");
        t.push(&vec![b'y'; 3 * TAIL]);
        assert_eq!(t.bytes(), vec![b'y'; TAIL]);
        t.push(b"z");
        assert_eq!(t.text().chars().last(), Some('z'));
        assert_eq!(t.bytes().len(), TAIL);
    }
}
