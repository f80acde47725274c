//! The dead man's switch: a small forked process that stops the command's whole process group
//! if pglock dies without saying goodbye (SIGKILL, the OOM killer, a killed process group).
//!
//! The parent-death signal set on the command reaches only the command itself, not the children
//! of a wrapping shell, and when pglock dies the server frees the lock at once. The switch holds
//! one end of a socket pair whose other end only pglock has: end of file means pglock is gone,
//! and the switch sends SIGTERM to the command's group, then SIGKILL after --kill-after. pglock
//! stands it down with one message once the command has exited.
//!
//! The switch is armed *before* the command starts, and the command itself, between fork and
//! exec, tells the switch its process group. So there is no moment at which the command runs
//! without a switch: pglock killed right after the spawn is still covered, and a switch that
//! heard of no group when pglock goes away has nothing to stop.
//!
//! pglock forks the switch early, while it is still single-threaded and before it connects, so
//! the fork is cheap and the switch gets going while the connection is made; before it starts
//! the command it confirms that the switch runs in a session of its own: a signal for pglock's process group (`kill -9 -PGID`, `timeout -s KILL`, a shell's
//! `kill %1`) or a terminal's hangup must not take it down together with pglock, since that is
//! exactly when it is needed.
//!
//! It is forked without exec from a multi-threaded process, so the child makes raw system calls
//! only: no allocation, no locks.

use anyhow::{Context, Result, bail};
use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::unistd::{ForkResult, Pid, fork};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Messages on the socket pair (SOCK_SEQPACKET keeps each one whole).
const READY: u8 = b'r';
const GROUP: u8 = b'g';
const STAND_DOWN: u8 = b'x';

pub struct DeadMan {
    /// pglock's end; closed without a stand-down means "pglock is gone".
    line: Option<OwnedFd>,
    pid: Pid,
}

impl DeadMan {
    /// Forks the switch. [`DeadMan::confirm`] then waits until it runs in a session of its own.
    pub fn arm(kill_after: Duration) -> Result<DeadMan> {
        // Close-on-exec: pglock's end must not outlive the exec of any child, or the switch
        // would never see end of file.
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("cannot create the dead man's socket pair")?;
        let their_fd = theirs.as_raw_fd();
        // SAFETY: the child runs only async-signal-safe system calls (see `watch`) and ends in
        // _exit, so the locks and allocator state it inherits from other threads are never
        // touched.
        match unsafe { fork() }.context("cannot fork the dead man's switch")? {
            // SAFETY: `their_fd` is the switch's end of the pair, open in the child.
            ForkResult::Child => unsafe { watch(their_fd, kill_after) },
            ForkResult::Parent { child } => {
                drop(theirs);
                Ok(DeadMan {
                    line: Some(ours),
                    pid: child,
                })
            }
        }
    }

    /// Waits until the switch has left pglock's session and process group (at once, normally:
    /// it did so while pglock connected). Only then may the command start.
    pub fn confirm(mut self) -> Result<DeadMan> {
        let mut byte = 0u8;
        if recv(self.fd(), &mut byte) == 1 && byte == READY {
            return Ok(self);
        }
        self.disarm();
        bail!("the dead man's switch did not start")
    }

    /// The descriptor on which the command, between fork and exec, announces its process group
    /// (see [`announce`]).
    pub fn announcer(&self) -> RawFd {
        self.fd()
    }

    fn fd(&self) -> RawFd {
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
    // SAFETY: `msg` is a live local buffer of the length given; send(2) only reads it.
    unsafe {
        libc::send(line, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL);
    }
}

/// One message from `fd` into `byte` (the first byte of it); the length, 0 at end of file, -1 on
/// error. Retries on EINTR.
fn recv(fd: RawFd, byte: &mut u8) -> isize {
    loop {
        // SAFETY: `byte` is a valid one-byte buffer; a longer message is truncated, as wanted.
        let n = unsafe { libc::recv(fd, (byte as *mut u8).cast(), 1, 0) };
        // SAFETY: reading errno right after the call that set it.
        if n >= 0 || unsafe { *libc::__errno_location() } != libc::EINTR {
            return n;
        }
    }
}

/// The switch itself.
///
/// # Safety
/// Only for the child of a fork: it never returns, and `line` must be an open descriptor.
unsafe fn watch(line: libc::c_int, kill_after: Duration) -> ! {
    // SAFETY: raw system calls on descriptors and signal dispositions of this (single-threaded)
    // child; nothing allocates or takes a lock.
    unsafe {
        libc::setsid();
        // pglock starts the command only after this: from now on a group kill misses us.
        libc::send(line, [READY].as_ptr().cast(), 1, libc::MSG_NOSIGNAL);
        // Keep nothing but our end: above all not the lock connection, which would keep the
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
        let mut msg = [0u8; 8];
        loop {
            let n = libc::recv(line, msg.as_mut_ptr().cast(), msg.len(), 0);
            match n {
                1 if msg[0] == STAND_DOWN => libc::_exit(0),
                5 if msg[0] == GROUP => {
                    pgid = libc::pid_t::from_ne_bytes([msg[1], msg[2], msg[3], msg[4]]);
                }
                // End of file: pglock is gone (and so is every copy of its end, the command's
                // too, which closes at exec).
                0 => break,
                n if n < 0 && *libc::__errno_location() != libc::EINTR => break,
                _ => {}
            }
        }
        if pgid <= 0 {
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
