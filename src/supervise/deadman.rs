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
//! only: no allocation, no locks. Its first job is to close every descriptor but its end of the
//! line, and it checks that it did: a switch that kept pglock's end open would never fire, and
//! one that kept the lock's socket would keep the lock. close_range(2) is missing before Linux
//! 5.9 and refused by some seccomp profiles, so the switch falls back to closing what
//! /proc/self/fd lists, and gives up (exits) if pglock's end is still open after that.
//!
//! The switch also holds the lock. Right before the spawn pglock hands it a copy of the lock
//! connection's socket (SCM_RIGHTS on the line), so that when pglock dies the server does not
//! see the connection close, and the lock stays held, until the switch has stopped the command
//! and its whole process group is gone: only then does the switch exit and the socket close.
//! pglock's own goodbye (Terminate, or a cut with shutdown(2)) still ends the session whatever
//! copies exist. If the switch dies too, the lease is the bound of last resort.
//!
//! The switch names itself `pglock-switch`, so that `killall pglock` or `pkill -x pglock` does not
//! take it down with pglock, and pglock watches its end of the line while the command runs: a
//! switch that dies is replaced at once ([`DeadMan::rearm`]).
//!
//! With a lease (see [`crate::lease`]) the switch also covers pglock stopped alone (SIGSTOP, a
//! debugger) while its command runs on: pglock sends a heartbeat after every confirmed lock
//! check, and a switch that hears none for the lease's `unconfirmed_after` stops the command's
//! group as if pglock had died, so the command is gone before the server can give the lock to
//! the next holder. At Ctrl-Z, when pglock stops itself on purpose, it pauses the switch first.
//!
//! The line is a socket pair rather than a pipe so that the command's announcement can be sent
//! with MSG_NOSIGNAL: a switch that died during a long wait must not kill the command with
//! SIGPIPE before it execs. pglock checks that its switch is alive before the spawn, arms a new
//! one if not, and reaps it before it exits (a parent that is a subreaper would otherwise
//! collect a zombie for every run).

use anyhow::{Context, Result};
use nix::libc;
use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, fork, setpgid};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Messages on the line; each is one write(2) of a few bytes, so it arrives whole.
const GROUP: u8 = b'g';
const STAND_DOWN: u8 = b'x';
/// pglock has just confirmed the lock: the lease runs on.
const HEARTBEAT: u8 = b'h';
/// The job is stopped at a terminal (Ctrl-Z), and so is pglock: no heartbeats until it goes on.
const PAUSE: u8 = b'p';
/// The lock connection's socket comes with this byte (SCM_RIGHTS): hold it until the command's
/// group is gone.
const SOCKET: u8 = b's';

pub struct DeadMan {
    /// pglock's end; closed without a stand-down means "pglock is gone".
    line: Option<OwnedFd>,
    pid: Pid,
    /// Collected already: its pid may belong to someone else now.
    reaped: bool,
    /// What it was armed with, for [`DeadMan::rearm`].
    kill_after: Duration,
    silence: Option<Duration>,
}

impl DeadMan {
    /// Forks the switch. When this returns, the switch is in a process group of its own.
    pub fn arm(kill_after: Duration, silence: Option<Duration>) -> Result<DeadMan> {
        // Close-on-exec: pglock's end must not outlive the exec of any child (the command's
        // copy closes when it execs), or the switch would never see end of file.
        let (read_end, write_end) = socketpair(
            AddressFamily::Unix,
            SockType::Stream,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .context("cannot create the dead man's line")?;
        let (read_fd, write_fd) = (read_end.as_raw_fd(), write_end.as_raw_fd());
        // SAFETY: the child runs only async-signal-safe system calls (see `watch`) and ends in
        // _exit, so the locks and allocator state it inherits from other threads are never
        // touched.
        match unsafe { fork() }.context("cannot fork the dead man's switch")? {
            // SAFETY: both descriptors are the line's ends, open in the child.
            ForkResult::Child => unsafe { watch(read_fd, write_fd, kill_after, silence) },
            ForkResult::Parent { child } => {
                drop(read_end);
                // The child does the same; whichever comes first, the other is a no-op (or
                // fails harmlessly because it is done).
                let _ = setpgid(child, child);
                Ok(DeadMan {
                    line: Some(write_end),
                    pid: child,
                    reaped: false,
                    kill_after,
                    silence,
                })
            }
        }
    }

    /// The descriptor on which the command, between fork and exec, announces its process group
    /// (see [`announce`]).
    pub fn announcer(&self) -> RawFd {
        self.line.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// The switch's process.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Whether the switch still runs (one killed during a long wait does not); a dead one is
    /// collected.
    pub fn alive(&mut self) -> bool {
        let alive = matches!(
            waitpid(self.pid, Some(WaitPidFlag::WNOHANG)),
            Ok(WaitStatus::StillAlive)
        );
        self.reaped |= !alive;
        alive
    }

    /// Hands the switch a copy of the lock connection's socket, which it keeps open until the
    /// command's group is gone if pglock dies. Err if the switch is gone.
    pub fn hold_socket(&self, socket: RawFd) -> nix::Result<()> {
        use nix::sys::socket::{ControlMessage, MsgFlags, sendmsg};
        let line = self.line.as_ref().ok_or(nix::errno::Errno::EPIPE)?;
        let fds = [socket];
        let iov = [std::io::IoSlice::new(&[SOCKET])];
        let flags = MsgFlags::MSG_NOSIGNAL | MsgFlags::MSG_DONTWAIT;
        let cmsg = [ControlMessage::ScmRights(&fds)];
        match sendmsg::<()>(line.as_raw_fd(), &iov, &cmsg, flags, None)? {
            1 => Ok(()),
            _ => Err(nix::errno::Errno::EPIPE),
        }
    }

    /// The switch died while the command runs: fork another with the same settings and tell it
    /// what the first knew, the command's group and the lock's socket. The dead one is
    /// collected. Err if no switch could be armed.
    pub fn rearm(&mut self, group: Pid, socket: Option<RawFd>) -> Result<()> {
        self.line = None;
        if !self.reaped {
            let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            let _ = waitpid(self.pid, None);
            self.reaped = true;
        }
        // The old one is disarmed and collected already: dropping it does nothing more.
        *self = DeadMan::arm(self.kill_after, self.silence)?;
        let pid = group.as_raw().to_ne_bytes();
        self.say_all(&[GROUP, pid[0], pid[1], pid[2], pid[3]])
            .context("cannot tell the new dead man's switch the command's group")?;
        if let Some(socket) = socket {
            self.hold_socket(socket)
                .context("cannot hand the lock's socket to the new dead man's switch")?;
        }
        Ok(())
    }

    /// The descriptor that turns readable (end of file) when the switch dies.
    pub fn line(&self) -> Option<RawFd> {
        self.line.as_ref().map(AsRawFd::as_raw_fd)
    }

    fn say_all(&self, msg: &[u8]) -> nix::Result<()> {
        let line = self.line.as_ref().ok_or(nix::errno::Errno::EPIPE)?;
        let flags = nix::sys::socket::MsgFlags::MSG_NOSIGNAL;
        match nix::sys::socket::send(line.as_raw_fd(), msg, flags)? {
            n if n == msg.len() => Ok(()),
            _ => Err(nix::errno::Errno::EPIPE),
        }
    }

    /// The lock was just confirmed: the switch's countdown starts again.
    pub fn heartbeat(&self) {
        self.say(HEARTBEAT);
    }

    /// pglock is about to stop itself with its job (Ctrl-Z): no countdown until the next
    /// heartbeat.
    pub fn pause(&self) {
        self.say(PAUSE);
    }

    fn say(&self, what: u8) {
        if let Some(line) = &self.line {
            let _ = nix::sys::socket::send(
                line.as_raw_fd(),
                &[what],
                nix::sys::socket::MsgFlags::MSG_NOSIGNAL | nix::sys::socket::MsgFlags::MSG_DONTWAIT,
            );
        }
    }

    /// The command has exited, or never started: tell the switch to go away, without waiting
    /// for it (the release comes first; [`DeadMan::reap`] collects it).
    pub fn disarm(&mut self) {
        if let Some(line) = self.line.take() {
            let _ = nix::unistd::write(&line, &[STAND_DOWN]);
        }
    }

    /// Disarms the switch and collects it now rather than when it is dropped.
    pub fn reap(self) {}
}

impl Drop for DeadMan {
    /// pglock drops its switch only once the command has exited or never started (the
    /// supervising loop returns only after reaping the command), so dropping disarms it and
    /// collects it: SIGKILL first, so that a switch that was stopped, or has not read its
    /// stand-down yet, cannot hold pglock up (it is pglock's unreaped child, so its pid cannot
    /// have been reused). If pglock itself dies, nothing is dropped: the line's end of file
    /// tells the switch.
    fn drop(&mut self) {
        self.disarm();
        if self.reaped {
            return;
        }
        let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
        let _ = waitpid(self.pid, None);
    }
}

/// Tells the switch on `line` that the calling process leads the command's process group. For
/// the command between fork and exec: one async-signal-safe system call. Err(EPIPE) if the
/// switch is gone: then the command must not start unguarded.
pub fn announce(line: RawFd) -> nix::Result<()> {
    let pid = nix::unistd::getpid().as_raw().to_ne_bytes();
    let msg = [GROUP, pid[0], pid[1], pid[2], pid[3]];
    // SAFETY: `msg` is a live local buffer of the length given; send(2) only reads it, and
    // `line` is only written to here, never closed. MSG_NOSIGNAL: EPIPE instead of SIGPIPE.
    let sent = unsafe { libc::send(line, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
    match sent {
        n if n == msg.len() as isize => Ok(()),
        -1 => Err(nix::errno::Errno::last()),
        _ => Err(nix::errno::Errno::EPIPE),
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

/// Reads one message kind from `line` with recvmsg(2), retrying on EINTR, so that a socket
/// sent with it (SCM_RIGHTS) is received rather than dropped: it replaces `held` (closing the
/// one held before). False at end of file or error.
///
/// # Safety
/// `line` must be an open descriptor; `held` is -1 or a descriptor this process owns.
unsafe fn read_kind(line: libc::c_int, kind: &mut u8, held: &mut libc::c_int) -> bool {
    // SAFETY: recvmsg(2) into live local buffers (one byte, and a control buffer aligned for
    // cmsghdr and large enough for one descriptor); the CMSG_* walk stays inside the length the
    // kernel reported.
    unsafe {
        loop {
            let mut iov = libc::iovec {
                iov_base: (kind as *mut u8).cast(),
                iov_len: 1,
            };
            let mut control = [0u64; 8];
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&control);
            match libc::recvmsg(line, &mut msg, 0) {
                1 => {}
                -1 if *libc::__errno_location() == libc::EINTR => continue,
                _ => return false,
            }
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                    let fd = std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>());
                    if *held >= 0 {
                        libc::close(*held);
                    }
                    *held = fd;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
            return true;
        }
    }
}

/// Waits until no process of group `pgid` is left, checking every 50 ms, for at most `limit`.
/// True if the group is gone.
///
/// # Safety
/// None beyond the calls: killpg(2) with signal 0 and nanosleep(2).
unsafe fn group_gone_within(pgid: libc::pid_t, limit: Duration) -> bool {
    let step = libc::timespec {
        tv_sec: 0,
        tv_nsec: 50_000_000,
    };
    let mut waited = Duration::ZERO;
    loop {
        // SAFETY: signal 0 only asks whether the group has a process.
        if unsafe { libc::killpg(pgid, 0) } != 0 {
            return true;
        }
        if waited >= limit {
            return false;
        }
        // SAFETY: a live local timespec; an early wake-up only checks sooner.
        unsafe { libc::nanosleep(&step, std::ptr::null_mut()) };
        waited += Duration::from_millis(50);
    }
}

/// Whether `fd` is an open descriptor.
///
/// # Safety
/// Any number may be asked about; fcntl(F_GETFD) changes nothing.
unsafe fn is_open(fd: libc::c_int) -> bool {
    // SAFETY: F_GETFD only reads the descriptor's flags.
    unsafe { libc::fcntl(fd, libc::F_GETFD) != -1 }
}

/// Closes every descriptor but `keep`, with close_range(2) or, where that fails, by listing
/// /proc/self/fd with raw getdents64(2) into a stack buffer (nothing allocates).
///
/// # Safety
/// Only for the forked switch: it closes descriptors other threads of a normal process would
/// still use.
unsafe fn close_all_but(keep: libc::c_int) {
    // SAFETY: raw system calls on this process's own descriptor table.
    unsafe {
        let below = if keep > 0 {
            libc::syscall(libc::SYS_close_range, 0, keep as libc::c_uint - 1, 0)
        } else {
            0
        };
        let above = libc::syscall(
            libc::SYS_close_range,
            keep as libc::c_uint + 1,
            libc::c_uint::MAX,
            0,
        );
        if below == 0 && above == 0 {
            return;
        }
        let dir = libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        );
        if dir < 0 {
            // No /proc: every number up to the limit, as closefrom(3) falls back to.
            let mut limit: libc::rlimit = std::mem::zeroed();
            let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
                limit.rlim_cur.min(1 << 20) as libc::c_int
            } else {
                1 << 16
            };
            for fd in 0..max {
                if fd != keep {
                    libc::close(fd);
                }
            }
            return;
        }
        let mut buf = [0u8; 4096];
        loop {
            let n = libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len());
            if n <= 0 {
                break;
            }
            let mut at = 0usize;
            while at + 19 < n as usize {
                // struct linux_dirent64: u64 ino, i64 off, u16 reclen, u8 type, name.
                let reclen = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
                let mut fd: libc::c_int = 0;
                let mut digits = 0;
                for &b in &buf[at + 19..at + reclen] {
                    if !b.is_ascii_digit() {
                        break;
                    }
                    fd = fd
                        .saturating_mul(10)
                        .saturating_add(libc::c_int::from(b - b'0'));
                    digits += 1;
                }
                if digits > 0 && fd != keep && fd != dir {
                    libc::close(fd);
                }
                at += reclen.max(1);
            }
        }
        libc::close(dir);
    }
}

/// CLOCK_BOOTTIME in milliseconds, which keeps counting while the host is suspended (see
/// [`crate::clock`]; that module's type allocates nothing either, but this child keeps to raw
/// calls). clock_gettime(2) is async-signal-safe. A kernel that refuses CLOCK_BOOTTIME refuses
/// it every time, so the fallback to CLOCK_MONOTONIC (blind to a suspend only) is used
/// throughout, never mixed with it.
///
/// # Safety
/// None beyond the call itself; it writes only the local timespec.
unsafe fn now_ms() -> i64 {
    // SAFETY: clock_gettime writes the local timespec and nothing else.
    unsafe {
        let mut ts: libc::timespec = std::mem::zeroed();
        if libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) != 0 {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
        }
        ts.tv_sec * 1000 + ts.tv_nsec / 1_000_000
    }
}

/// Waits for `line` to be readable until `deadline_ms` ([`now_ms`]'s clock; None: for ever). False
/// when the deadline came first.
///
/// # Safety
/// `line` must be an open descriptor.
unsafe fn readable_before(line: libc::c_int, deadline_ms: Option<i64>) -> bool {
    // SAFETY: poll(2) on one descriptor of this process, with a live local pollfd.
    unsafe {
        loop {
            let timeout = match deadline_ms {
                None => -1,
                Some(at) => {
                    let left = at - now_ms();
                    if left <= 0 {
                        return false;
                    }
                    left.min(i64::from(i32::MAX)) as libc::c_int
                }
            };
            let mut fds = libc::pollfd {
                fd: line,
                events: libc::POLLIN,
                revents: 0,
            };
            match libc::poll(&mut fds, 1, timeout) {
                0 => continue, // The loop looks at the clock again.
                n if n > 0 => return true,
                _ if *libc::__errno_location() == libc::EINTR => continue,
                // poll failing is no reason to stop the job: wait for the line as before.
                _ => return true,
            }
        }
    }
}

/// The switch itself.
///
/// # Safety
/// Only for the child of a fork: it never returns, and `line` and `pglocks_end` must be open
/// descriptors.
unsafe fn watch(
    line: libc::c_int,
    pglocks_end: libc::c_int,
    kill_after: Duration,
    silence: Option<Duration>,
) -> ! {
    // SAFETY: raw system calls on descriptors and signal dispositions of this (single-threaded)
    // child; nothing allocates or takes a lock.
    unsafe {
        libc::setpgid(0, 0);
        // A name of its own: `killall pglock` and `pkill -x pglock` must not take it down too.
        libc::prctl(libc::PR_SET_NAME, c"pglock-switch".as_ptr(), 0, 0, 0);
        // Keep nothing but the line: above all not pglock's end of it, without which end of
        // file never comes, nor the lock connection, which would keep the lock alive, nor
        // stdout/stderr, which readers wait on.
        libc::close(pglocks_end);
        close_all_but(line);
        if is_open(pglocks_end) || !is_open(line) {
            // Unable to do its one job: better no switch than one that never fires (pglock
            // sees the line close and arms another before the command starts).
            libc::_exit(1);
        }
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
        let silence_ms = silence.map(|s| s.as_millis().min(i64::MAX as u128) as i64);
        // With a lease, the countdown runs while the command does and pglock is not paused.
        let mut deadline_ms: Option<i64> = None;
        let restart = |pgid: libc::pid_t| match silence_ms {
            Some(ms) if pgid > 1 => Some(now_ms().saturating_add(ms)),
            _ => None,
        };
        // End of file: pglock is gone, and so is every copy of its end (the command's closes
        // when it execs). A countdown that runs out: pglock is stopped or stuck.
        // The lock's socket, once pglock hands it over: closed only when the switch exits.
        let mut socket: libc::c_int = -1;
        while readable_before(line, deadline_ms) && read_kind(line, &mut kind[0], &mut socket) {
            match kind[0] {
                STAND_DOWN => libc::_exit(0),
                GROUP => {
                    let mut pid = [0u8; 4];
                    if !read_all(line, &mut pid) {
                        break;
                    }
                    pgid = libc::pid_t::from_ne_bytes(pid);
                    deadline_ms = restart(pgid);
                }
                HEARTBEAT => deadline_ms = restart(pgid),
                PAUSE => deadline_ms = None,
                _ => {}
            }
        }
        if pgid <= 1 {
            libc::_exit(0); // The command never started: nothing to stop.
        }
        libc::killpg(pgid, libc::SIGTERM);
        if !group_gone_within(pgid, kill_after) {
            libc::killpg(pgid, libc::SIGKILL);
            // SIGKILL takes effect at once, unless a process is stuck in the kernel (D state):
            // then the lease frees the lock. A group leader that nobody reaps (pglock's own
            // reaper is gone) stays a zombie: the bound keeps the switch from waiting for it.
            group_gone_within(pgid, kill_after.max(Duration::from_secs(5)));
        }
        // Only now does the lock's socket close (with this process), and the server free it.
        libc::_exit(0)
    }
}
