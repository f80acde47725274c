//! The dead man's switch: a small forked process that stops the command's whole process group
//! if pglock dies without saying goodbye (SIGKILL, the OOM killer, a killed process group).
//!
//! The parent-death signal set on the command reaches only the command itself, not the children
//! of a wrapping shell, and when pglock dies the server frees the lock at once. The switch holds
//! the read end of a pipe whose write end only pglock has: end of file means pglock is gone, and
//! the switch sends SIGTERM to the group, then SIGKILL after --kill-after. pglock stands it down
//! with one byte once the command has exited.
//!
//! The switch starts a session of its own: a signal for pglock's process group (`kill -9 -PGID`,
//! `timeout -s KILL`, a shell's `kill %1`) or a terminal's hangup must not take it down together
//! with pglock, since that is exactly when it is needed.
//!
//! It is forked without exec from a multi-threaded process, so the child makes raw system calls
//! only: no allocation, no locks.

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::libc;
use nix::unistd::{ForkResult, Pid, fork, pipe2};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

pub struct DeadMan {
    /// pglock's end; dropping it without writing means "pglock is gone".
    line: Option<OwnedFd>,
    pid: Pid,
}

impl DeadMan {
    /// Forks the switch for the process group `pgid`.
    pub fn arm(pgid: Pid, kill_after: Duration) -> Result<DeadMan> {
        // Close-on-exec: the write end must not leak into any later child, or the switch would
        // never see end of file.
        let (read_end, write_end) =
            pipe2(OFlag::O_CLOEXEC).context("cannot create the dead man's pipe")?;
        let read_fd = read_end.as_raw_fd();
        // SAFETY: the child runs only async-signal-safe system calls (see `watch`) and ends in
        // _exit, so the locks and allocator state it inherits from other threads are never
        // touched.
        match unsafe { fork() }.context("cannot fork the dead man's switch")? {
            // SAFETY: `read_fd` is the pipe's read end, open in the child.
            ForkResult::Child => unsafe { watch(read_fd, pgid.as_raw(), kill_after) },
            ForkResult::Parent { child } => {
                drop(read_end);
                Ok(DeadMan {
                    line: Some(write_end),
                    pid: child,
                })
            }
        }
    }

    /// The command has exited: tell the switch to go away. It is reaped when this is dropped,
    /// so that waiting for it to exit need not delay the release of the lock.
    pub fn disarm(&mut self) {
        if let Some(line) = self.line.take() {
            let _ = nix::unistd::write(&line, b"x");
        }
    }
}

impl Drop for DeadMan {
    fn drop(&mut self) {
        // Still armed: closing our end tells the switch that pglock is going away without its
        // command having exited, and the switch stops the group; don't wait for that.
        if self.line.is_none() {
            let _ = nix::sys::wait::waitpid(self.pid, None);
        }
    }
}

/// The switch itself.
///
/// # Safety
/// Only for the child of a fork: it never returns, and `line` must be an open descriptor.
unsafe fn watch(line: libc::c_int, pgid: libc::pid_t, kill_after: Duration) -> ! {
    // SAFETY: raw system calls on descriptors and signal dispositions of this (single-threaded)
    // child; nothing allocates or takes a lock.
    unsafe {
        libc::setsid();
        // Keep nothing but the pipe: above all not the lock connection, which would keep the
        // lock alive, and not stdout/stderr, which readers wait on.
        libc::syscall(libc::SYS_close_range, 0, line as libc::c_uint - 1, 0);
        libc::syscall(
            libc::SYS_close_range,
            line as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        );
        // The inherited handlers belong to pglock's signal thread, which does not exist here:
        // back to the defaults, nothing blocked.
        for sig in 1..32 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        let mut byte = 0u8;
        loop {
            let n = libc::read(line, (&raw mut byte).cast(), 1);
            if n == 1 {
                libc::_exit(0); // pglock stood us down.
            }
            if n == 0 || *libc::__errno_location() != libc::EINTR {
                break; // End of file: pglock is gone.
            }
        }
        libc::killpg(pgid, libc::SIGTERM);
        // Wait for the group to empty, checking every 50ms, up to kill_after.
        let step = libc::timespec {
            tv_sec: 0,
            tv_nsec: 50_000_000,
        };
        let mut waited = Duration::ZERO;
        while waited < kill_after {
            if libc::killpg(pgid, 0) != 0 {
                libc::_exit(0);
            }
            libc::nanosleep(&step, std::ptr::null_mut());
            waited += Duration::from_millis(50);
        }
        libc::killpg(pgid, libc::SIGKILL);
        libc::_exit(0)
    }
}
