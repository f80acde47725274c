//! The dead man's switch: a small forked process that stops the command's whole process group
//! if pglock dies without saying goodbye (SIGKILL, the OOM killer, a killed process group).
//!
//! The parent-death signal set on the command reaches only the command itself, not the children
//! of a wrapping shell, and when pglock dies the server frees the lock at once. The switch reads
//! a pipe whose write end only pglock has: end of file means pglock is gone, and the switch
//! sends SIGTERM to the command's group, then SIGKILL after --kill-after. pglock stands it down
//! with one byte once the command has exited.
//!
//! The switch is armed *before* the command starts (while pglock waits for a lock that is
//! taken, so that the fork is no part of the hand-off; otherwise right before the spawn), and
//! the command itself, between fork and exec, tells the switch its process group on the same
//! pipe. So there is no moment at which the command runs without a switch: pglock killed right
//! after the spawn is still covered, and a switch that heard of no group when pglock goes away
//! has nothing to stop.
//!
//! The switch runs in a process group of its own: a signal for pglock's group (`kill -9 -PGID`,
//! `timeout -s KILL`, a shell's `kill %1`, a terminal's Ctrl-C or hangup, which go to the
//! foreground group) must not take it down together with pglock, since that is exactly when it
//! is needed. pglock moves it there itself, right after the fork, as shells do with their jobs:
//! so the switch is out of the group before the command starts, without waiting for the switch
//! to be scheduled (which can take a millisecond on a virtual machine's idle CPU).
//!
//! It is forked without exec from a multi-threaded process, so the child makes raw system calls
//! only: no allocation, no locks.

use anyhow::{Context, Result};
use nix::fcntl::OFlag;
use nix::libc;
use nix::unistd::{ForkResult, Pid, fork, pipe2, setpgid};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Messages on the pipe; each is one write(2) under PIPE_BUF, so it arrives whole.
const GROUP: u8 = b'g';
const STAND_DOWN: u8 = b'x';

pub struct DeadMan {
    /// pglock's end; closed without a stand-down means "pglock is gone".
    line: Option<OwnedFd>,
    pid: Pid,
}

impl DeadMan {
    /// Forks the switch. When this returns, the switch is in a process group of its own.
    pub fn arm(kill_after: Duration) -> Result<DeadMan> {
        // Close-on-exec: pglock's end must not outlive the exec of any child (the command's
        // copy closes when it execs), or the switch would never see end of file.
        let (read_end, write_end) =
            pipe2(OFlag::O_CLOEXEC).context("cannot create the dead man's pipe")?;
        let read_fd = read_end.as_raw_fd();
        // SAFETY: the child runs only async-signal-safe system calls (see `watch`) and ends in
        // _exit, so the locks and allocator state it inherits from other threads are never
        // touched.
        match unsafe { fork() }.context("cannot fork the dead man's switch")? {
            // SAFETY: `read_fd` is the pipe's read end, open in the child.
            ForkResult::Child => unsafe { watch(read_fd, kill_after) },
            ForkResult::Parent { child } => {
                drop(read_end);
                // The child does the same; whichever comes first, the other is a no-op (or
                // fails harmlessly because it is done).
                let _ = setpgid(child, child);
                Ok(DeadMan {
                    line: Some(write_end),
                    pid: child,
                })
            }
        }
    }

    /// The descriptor on which the command, between fork and exec, announces its process group
    /// (see [`announce`]).
    pub fn announcer(&self) -> RawFd {
        self.line.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// The command has exited, or never started: tell the switch to go away. Nothing waits for
    /// it to exit (a process's wake-up can take milliseconds on a virtual machine's idle CPUs):
    /// pglock usually exits first, and [`DeadMan::reap`] is for when it will not.
    pub fn disarm(&mut self) {
        if let Some(line) = self.line.take() {
            let _ = nix::unistd::write(&line, &[STAND_DOWN]);
        }
    }

    /// Disarms the switch and waits for it to exit, so that it is no zombie while pglock stays
    /// on (--min-hold).
    pub fn reap(mut self) {
        self.disarm();
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

// Dropped still armed, the switch's end of file says that pglock is going away without its
// command having exited, and the switch stops the group (or, with no command announced,
// simply exits).

/// Tells the switch on `line` that the calling process leads the command's process group. For
/// the command between fork and exec: one async-signal-safe system call, errors ignored (a
/// switch that is gone cannot be helped from here).
pub fn announce(line: RawFd) {
    let pid = nix::unistd::getpid().as_raw().to_ne_bytes();
    let msg = [GROUP, pid[0], pid[1], pid[2], pid[3]];
    // SAFETY: `msg` is a live local buffer of the length given; write(2) only reads it, and
    // `line` is only written to here, never closed.
    unsafe {
        libc::write(line, msg.as_ptr().cast(), msg.len());
    }
}

/// Reads exactly `buf.len()` bytes from `fd`, retrying on EINTR; false at end of file or error.
///
/// # Safety
/// `buf` must be valid for writes of its length.
unsafe fn read_all(fd: libc::c_int, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: the caller's buffer, from `got` on, is valid for the rest of its length.
        let n = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        match n {
            1.. => got += n as usize,
            // SAFETY: reading errno right after the call that set it.
            -1 if unsafe { *libc::__errno_location() } == libc::EINTR => {}
            _ => return false,
        }
    }
    true
}

/// The switch itself.
///
/// # Safety
/// Only for the child of a fork: it never returns, and `line` must be an open descriptor.
unsafe fn watch(line: libc::c_int, kill_after: Duration) -> ! {
    // SAFETY: raw system calls on descriptors and signal dispositions of this (single-threaded)
    // child; nothing allocates or takes a lock.
    unsafe {
        libc::setpgid(0, 0);
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
        let mut pgid: libc::pid_t = 0;
        let mut kind = [0u8; 1];
        // End of file: pglock is gone, and so is every copy of its end (the command's closes
        // when it execs).
        while read_all(line, &mut kind) {
            match kind[0] {
                STAND_DOWN => libc::_exit(0),
                GROUP => {
                    let mut pid = [0u8; 4];
                    if !read_all(line, &mut pid) {
                        break;
                    }
                    pgid = libc::pid_t::from_ne_bytes(pid);
                }
                _ => {}
            }
        }
        if pgid <= 1 {
            libc::_exit(0); // The command never started: nothing to stop.
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
