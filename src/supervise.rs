//! The command: spawning it in its own process group, handing it the terminal, and the one loop
//! that waits for it while signals and the lock connection are watched.

use crate::exit::{Failure, fail};
use crate::signals::Router;
use crate::step;
use anyhow::Result;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, pthread_sigmask};
use nix::unistd::{Pid, getpgrp, getpid, isatty, setpgid, tcgetpgrp, tcsetpgrp};
use std::io::ErrorKind;
use std::os::fd::BorrowedFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus};

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
pub fn spawn(job: &Job) -> Result<(Running, Pid)> {
    let take_terminal = owns_terminal();
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

/// Waits for the command, handling whatever wakes the loop. `on_socket` runs when the lock
/// connection's socket becomes readable; it returns false to stop watching the socket.
pub fn wait(
    running: &mut Running,
    router: &Router,
    socket: Option<std::os::fd::RawFd>,
    mut on_socket: impl FnMut() -> bool,
) -> Result<ExitStatus> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let mut socket = socket;
    loop {
        if let Some(status) = running.try_wait()? {
            router.child_gone();
            return Ok(status);
        }
        // SAFETY: both descriptors stay open for the duration of this call.
        let wake = unsafe { BorrowedFd::borrow_raw(router.wake_fd()) };
        let mut fds = vec![PollFd::new(wake, PollFlags::POLLIN)];
        if let Some(fd) = socket {
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e.into()),
        }
        let socket_ready = fds
            .get(1)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty());
        router.drain();
        if socket_ready && !on_socket() {
            socket = None;
        }
    }
}
