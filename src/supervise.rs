//! The command: spawning it in its own process group, handing it the terminal, and the one loop
//! that waits for it while signals and the lock connection are watched.

use crate::exit::{Failure, fail};
use crate::signals::Router;
use crate::{step, warn};
use anyhow::Result;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, pthread_sigmask};
use nix::unistd::{Pid, getpgrp, getpid, getppid, isatty, setpgid, tcgetpgrp, tcsetpgrp};
use std::io::ErrorKind;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

/// What to run and with what extra environment.
pub struct Job {
    pub program: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// The command, running.
pub struct Running {
    child: Child,
    /// We gave our terminal's foreground to the command and must take it back.
    took_terminal: bool,
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process; we never close it.
    unsafe { BorrowedFd::borrow_raw(0) }
}

/// pglock is the foreground job of a terminal on stdin.
fn owns_terminal() -> bool {
    isatty(stdin()).unwrap_or(false) && tcgetpgrp(stdin()).is_ok_and(|pg| pg == getpgrp())
}

/// Runs `f` with SIGTTOU blocked: tcsetpgrp from a background group would otherwise stop us.
fn without_sigttou<T>(f: impl FnOnce() -> T) -> T {
    let mut ttou = SigSet::empty();
    ttou.add(Signal::SIGTTOU);
    let mut old = SigSet::empty();
    let _ = pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&ttou), Some(&mut old));
    let out = f();
    let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&old), None);
    out
}

/// Starts the command in a new process group (so signals reach its whole tree and a terminal's
/// Ctrl-C reaches it once), as the terminal's foreground job when pglock is one.
///
/// With `parent_death` the command gets SIGTERM if pglock dies (SIGKILL, OOM killer): the server
/// frees the lock with pglock's connection, so the command must not go on unlocked.
pub fn spawn(job: &Job, parent_death: bool) -> Result<(Running, Pid)> {
    let take_terminal = owns_terminal();
    let parent = getpid();
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.args)
        .envs(job.env.iter().map(|(k, v)| (k, v)));
    // SAFETY: only async-signal-safe system calls run between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            if take_terminal {
                without_sigttou(|| tcsetpgrp(stdin(), getpid()))?;
            }
            if parent_death {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // pglock may have died before the line above took effect.
                if getppid() != parent {
                    return Err(std::io::Error::other(
                        "pglock exited before the command started",
                    ));
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let (failure, why) = match e.kind() {
            ErrorKind::NotFound => (Failure::NotFound, "command not found".to_string()),
            ErrorKind::PermissionDenied => {
                (Failure::NotExecutable, "permission denied".to_string())
            }
            _ => (Failure::NotExecutable, e.to_string()),
        };
        fail(failure, format!("cannot run '{}': {why}", job.program))
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    step!("started '{}' as pid {pid}", job.program);
    Ok((
        Running {
            child,
            took_terminal: take_terminal,
        },
        pid,
    ))
}

impl Running {
    /// The command's status if it has exited, reaping it.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        let status = self.child.try_wait()?;
        if status.is_some() && self.took_terminal {
            self.took_terminal = false;
            let _ = without_sigttou(|| tcsetpgrp(stdin(), getpgrp()));
        }
        Ok(status)
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.id() as i32)
    }
}

/// The lock, as the supervising loop sees it.
pub trait Guard {
    /// The lock connection's socket, watched so that a closed session is noticed at once.
    fn socket(&self) -> Option<RawFd>;
    /// The socket is readable; Err(reason) if the lock is gone.
    fn readable(&mut self) -> Result<(), String>;
    /// The periodic check, answered within `limit`; Err(reason) if the lock is gone.
    fn check(&mut self, limit: Duration) -> Result<(), String>;
}

/// What to do when the lock is lost while the command runs.
#[derive(Debug, Clone, Copy)]
pub enum OnLost {
    /// SIGTERM the command's process group, then SIGKILL after this long.
    Terminate {
        kill_after: Duration,
    },
    Ignore,
}

/// How the command's run ended.
pub struct Ended {
    pub status: ExitStatus,
    /// Why the lock was lost while it ran, if it was.
    pub lost: Option<String>,
}

/// The supervising loop: waits for the command while forwarding is done by the signal thread,
/// and watches the lock: the socket at once, the server's pg_locks every `check_every`.
pub fn wait(
    running: &mut Running,
    router: &Router,
    guard: &mut dyn Guard,
    check_every: Duration,
    on_lost: OnLost,
    label: &str,
) -> Result<Ended> {
    let mut lost: Option<String> = None;
    let mut next_check = Instant::now() + check_every;
    let mut kill_at: Option<Instant> = None;
    loop {
        if let Some(status) = running.try_wait()? {
            router.child_gone();
            return Ok(Ended { status, lost });
        }
        let watching = lost.is_none();
        let deadline = [watching.then_some(next_check), kill_at]
            .into_iter()
            .flatten()
            .min();
        let socket = guard.socket().filter(|_| watching);
        let socket_ready = wait_for_events(router, socket, deadline)?;
        router.drain();

        let mut reason = None;
        if socket_ready {
            reason = guard.readable().err();
        }
        if reason.is_none() && watching && Instant::now() >= next_check {
            reason = guard.check(check_every).err();
            next_check = Instant::now() + check_every;
        }
        if let (Some(why), true) = (reason, watching) {
            match on_lost {
                OnLost::Terminate { kill_after } => {
                    warn!("lock \"{label}\" lost: {why}; terminating the command");
                    let _ = killpg(running.pid(), Signal::SIGTERM);
                    kill_at = Some(Instant::now() + kill_after);
                }
                OnLost::Ignore => {
                    warn!(
                        "lock \"{label}\" lost: {why}; --on-lost ignore: the command keeps running"
                    );
                }
            }
            lost = Some(why);
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            step!("the command outlived --kill-after; sending SIGKILL");
            let _ = killpg(running.pid(), Signal::SIGKILL);
            kill_at = None;
        }
    }
}

/// Blocks until a signal arrives, the socket is readable, or `deadline`. True if the socket is.
fn wait_for_events(
    router: &Router,
    socket: Option<RawFd>,
    deadline: Option<Instant>,
) -> Result<bool> {
    // SAFETY: both descriptors stay open for the duration of this call.
    let wake = unsafe { BorrowedFd::borrow_raw(router.wake_fd()) };
    let mut fds = vec![PollFd::new(wake, PollFlags::POLLIN)];
    if let Some(fd) = socket {
        fds.push(PollFd::new(
            unsafe { BorrowedFd::borrow_raw(fd) },
            PollFlags::POLLIN,
        ));
    }
    let timeout = match deadline {
        None => PollTimeout::NONE,
        Some(at) => {
            // Round up so the loop does not spin just before the deadline.
            let ms = at
                .saturating_duration_since(Instant::now())
                .as_micros()
                .div_ceil(1000);
            PollTimeout::try_from(ms.min(i32::MAX as u128) as i32).unwrap_or(PollTimeout::MAX)
        }
    };
    match poll(&mut fds, timeout) {
        Ok(_) | Err(nix::errno::Errno::EINTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(fds
        .get(1)
        .and_then(|f| f.revents())
        .is_some_and(|r| !r.is_empty()))
}
