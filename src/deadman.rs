//! The dead man's switch: a small forked process that stops the command's whole process group
//! if pglock dies without saying goodbye (SIGKILL, the OOM killer).
//!
//! The parent-death signal set on the command reaches only the command itself, not the children
//! of a wrapping shell, and when pglock dies the server frees the lock at once. The switch holds
//! the read end of a pipe whose write end only pglock has: end of file means pglock is gone, and
//! the switch sends SIGTERM to the group, then SIGKILL after --kill-after. pglock stands it down
//! with one byte once the command has exited.
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
        // SAFETY: the child runs only async-signal-safe system calls and ends in _exit.
        match unsafe { fork() }.context("cannot fork the dead man's switch")? {
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
unsafe fn watch(line: libc::c_int, pgid: libc::pid_t, kill_after: Duration) -> ! {
    unsafe {
        // Keep nothing but the pipe: above all not the lock connection, which would keep the
        // lock alive, and not stdout/stderr, which readers wait on.
        libc::syscall(libc::SYS_close_range, 0, line as libc::c_uint - 1, 0);
        libc::syscall(
            libc::SYS_close_range,
            line as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        );
        // A terminal's keys and hangups are for the command, not for the switch.
        for sig in [libc::SIGINT, libc::SIGQUIT, libc::SIGHUP, libc::SIGTSTP] {
            libc::signal(sig, libc::SIG_IGN);
        }
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
