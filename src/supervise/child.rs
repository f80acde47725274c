//! The command as a process: spawned in its own process group, handed the terminal when pglock
//! has it, reaped with waitpid(2), and suspended together with pglock at a terminal's Ctrl-Z.
//!
//! As PID 1 (a container's entry point) or a child subreaper, pglock also inherits the
//! command's orphaned descendants, and reaps them as tini does: otherwise they pile up as
//! zombies for the container's life.

use crate::clock::Deadline;
use crate::exit::{Failure, fail};
use crate::step;
use crate::supervise::deadman::announce;
use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, pthread_sigmask};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid, waitpid};
use nix::unistd::{Pid, getpgrp, getpid, getppid, isatty, setpgid, tcgetpgrp, tcsetpgrp};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus, Stdio};

/// The command to run: any bytes, as the OS passes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// Every variable pglock may set for its command (README: The command's environment).
const FOR_THE_COMMAND: &[&str] = &[
    "PGLOCK_KEY",
    "PGLOCK_LOCK_ID",
    "PGLOCK_SCOPE",
    "PGLOCK_SLOT",
    "PGLOCK_RUN_ID",
    "PGLOCK_LAST_SUCCESS",
    "PGLOCK_FENCING_TOKEN",
    "PGLOCK_ATTEMPT",
];

/// The command, running.
pub struct Running {
    pid: Pid,
    /// The command owns our terminal's foreground: take it back when it stops or exits.
    took_terminal: bool,
    /// Orphans are reparented to pglock: reap them too.
    reaper: bool,
    /// pglock's own child that someone else collects (the dead man's switch).
    keep: Option<Pid>,
}

/// What [`Running::poll`] found.
#[derive(Debug)]
pub enum Polled {
    Running,
    Exited(ExitStatus),
    /// Stopped at a terminal (Ctrl-Z): see [`Running::suspend`].
    Stopped(Signal),
}

/// Whether orphaned processes end up as pglock's children.
fn reaper() -> bool {
    getpid().as_raw() == 1 || nix::sys::prctl::get_child_subreaper().unwrap_or(false)
}

fn stdin() -> BorrowedFd<'static> {
    // SAFETY: fd 0 stays open for the life of the process; pglock never closes it.
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
/// With `fenced` the command gets SIGTERM if pglock dies (SIGKILL, OOM killer): the server
/// frees the lock with pglock's connection, so the command must not go on unlocked. Its group
/// is announced to the dead man's switch on `deadman`, when there is one, before exec.
///
/// `output`: with --capture, the pipes the command writes its stdout and stderr into, instead of
/// pglock's own.
///
/// `start_by`: the command execs only before this, its last step before exec; after it, the
/// spawn fails with [`Late`]. pglock cannot look at the lock while it waits for a fork, or
/// while the child is between fork and exec, so only the child can see that a stall there
/// outlasted the lock's last confirmation.
pub fn spawn(
    job: &Job,
    env: &[(String, String)],
    fenced: bool,
    deadman: Option<(RawFd, Pid)>,
    start_by: Option<Deadline>,
    output: Option<&[OwnedFd; 2]>,
) -> Result<(Running, Pid)> {
    let take_terminal = owns_terminal();
    let parent = getpid();
    let mut cmd = Command::new(&job.program);
    // What an outer pglock told its command is not about this lock: a nested pglock's command
    // must not find the outer token, slot or run as if they were its own.
    for name in FOR_THE_COMMAND {
        cmd.env_remove(name);
    }
    cmd.args(&job.args).envs(env.iter().map(|(k, v)| (k, v)));
    if let Some([out, err]) = output {
        // Copies: a spawn that came too late is tried again with the same pipes.
        let copy = |fd: &OwnedFd| fd.try_clone().context("cannot pass the output pipes on");
        cmd.stdout(Stdio::from(copy(out)?))
            .stderr(Stdio::from(copy(err)?));
    }
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls (clock_gettime(2) for the deadline among them); errors are built from raw errno
    // values (io::Error::from(Errno)), which do not allocate.
    unsafe {
        cmd.pre_exec(move || {
            setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            if let Some((line, _)) = deadman {
                announce(line)?;
            }
            if take_terminal {
                without_sigttou(|| tcsetpgrp(stdin(), getpid()))?;
            }
            if fenced {
                nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
                // pglock may have died before the line above took effect.
                if getppid() != parent {
                    return Err(nix::errno::Errno::ESRCH.into());
                }
            }
            // No step above returns ETIME, so the parent can tell this one apart.
            if start_by.is_some_and(|d| d.passed()) {
                return Err(nix::errno::Errno::ETIME.into());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let name = job.program.to_string_lossy();
        if start_by.is_some() && e.raw_os_error() == Some(nix::libc::ETIME) {
            return anyhow::Error::new(Failure::System).context(Late(format!(
                "cannot run '{name}': it would have started too long after the lock was last \
                 confirmed (a stalled fork or exec?)"
            )));
        }
        let (failure, why) = spawn_failure(&e);
        fail(failure, format!("cannot run '{name}': {why}"))
    })?;
    let pid = Pid::from_raw(child.id() as i32);
    // Reaped with waitpid from here on; dropping a Child neither waits nor kills.
    drop(child);
    step!("started '{}' as pid {pid}", job.program.to_string_lossy());
    Ok((
        Running {
            pid,
            took_terminal: take_terminal,
            reaper: reaper(),
            keep: deadman.map(|(_, switch)| switch),
        },
        pid,
    ))
}

/// The command was not started: the deadline given to [`spawn`] passed before its exec. A
/// system error (71) if nothing better is made of it.
#[derive(Debug)]
pub struct Late(String);

impl std::fmt::Display for Late {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Whether a failed [`spawn`] is one that came too late.
pub fn is_late(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Late>().is_some()
}

/// What a failed spawn means, as a shell would say it: 127 for a command that is not there, 126
/// for one that is there but cannot be executed, and a system error (71) for everything that is
/// no fault of the command: fork(2) refused (EAGAIN, ENOMEM), or a step pglock takes between fork
/// and exec (its own process group, the terminal, the parent-death signal, the dead man's
/// switch) failing.
fn spawn_failure(e: &std::io::Error) -> (Failure, String) {
    use nix::libc;
    match (e.kind(), e.raw_os_error()) {
        (ErrorKind::NotFound, _) => (Failure::NotFound, "command not found".into()),
        (ErrorKind::PermissionDenied, Some(libc::EACCES)) => {
            (Failure::NotExecutable, "permission denied".into())
        }
        (_, Some(libc::ENOEXEC | libc::EISDIR | libc::ETXTBSY | libc::ELOOP | libc::ELIBBAD)) => {
            (Failure::NotExecutable, e.to_string())
        }
        (_, Some(libc::EPIPE)) => (
            Failure::System,
            "the dead man's switch went away before the command started".into(),
        ),
        _ => (Failure::System, e.to_string()),
    }
}

impl Running {
    /// Sends `sig` to the command's process group.
    /// The command's pid, which leads its process group.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn signal_group(&self, sig: Signal) {
        let _ = killpg(self.pid, sig);
    }

    /// Whether the command has exited (reaping it) or stopped. Reaps orphans as well when
    /// pglock is their reaper.
    pub fn poll(&mut self) -> Result<Polled> {
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED;
        let polled = match waitpid(self.pid, Some(flags))? {
            WaitStatus::Stopped(_, sig) => return Ok(Polled::Stopped(sig)),
            status => self.exited(status),
        };
        if let (Polled::Running, true) = (&polled, self.reaper) {
            return Ok(self.reap_orphans());
        }
        Ok(polled)
    }

    fn exited(&mut self, status: WaitStatus) -> Polled {
        let status = match status {
            WaitStatus::Exited(_, code) => ExitStatus::from_raw((code & 0xff) << 8),
            WaitStatus::Signaled(_, sig, core) => {
                ExitStatus::from_raw(sig as i32 | if core { 0x80 } else { 0 })
            }
            _ => return Polled::Running,
        };
        self.give_back_terminal();
        Polled::Exited(status)
    }

    /// Collects every exited child but the switch (whose owner collects it), looking first
    /// (WNOWAIT) so that the command's status is never lost to a blind waitpid(-1).
    fn reap_orphans(&mut self) -> Polled {
        let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
        loop {
            let pid = match waitid(Id::All, peek) {
                Ok(status) => match status.pid() {
                    Some(pid) => pid,
                    None => return Polled::Running,
                },
                Err(_) => return Polled::Running,
            };
            if Some(pid) == self.keep {
                return Polled::Running;
            }
            match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(status) if pid == self.pid => return self.exited(status),
                Ok(_) => step!("reaped orphan {pid}"),
                Err(_) => return Polled::Running,
            }
        }
    }

    /// The command stopped (Ctrl-Z). At a terminal, do what a shell expects of a job: take the
    /// terminal back and stop pglock the same way, so the shell gets its prompt. Returns once a
    /// shell continues pglock (fg, bg); the caller then checks the lock and [`Running::resume`]s
    /// the command. Without a terminal there is nothing to do: the command stays stopped until
    /// whoever stopped it continues it (see [`Running::at_terminal`]).
    pub fn suspend(&mut self, sig: Signal) {
        if !self.took_terminal {
            return;
        }
        step!("the command stopped ({sig}); stopping pglock too");
        let _ = without_sigttou(|| tcsetpgrp(stdin(), getpgrp()));
        let own = match sig {
            Signal::SIGTSTP | Signal::SIGTTIN | Signal::SIGTTOU => sig,
            _ => Signal::SIGSTOP,
        };
        // Returns once a shell continues our process group.
        let _ = kill(getpid(), own);
    }

    /// The command runs as the terminal's job: a stop is Ctrl-Z, and pglock goes along.
    pub fn at_terminal(&self) -> bool {
        self.took_terminal
    }

    /// After [`Running::suspend`]: hand the terminal back to the command (after fg) and
    /// continue it.
    pub fn resume(&mut self) {
        if owns_terminal() {
            let _ = without_sigttou(|| tcsetpgrp(stdin(), self.pid));
        }
        self.signal_group(Signal::SIGCONT);
        step!("continued; the command continues too");
    }

    /// Only while the command's group has the terminal: after a `bg` the shell has it, and
    /// taking it would steal the shell's foreground.
    fn give_back_terminal(&mut self) {
        if self.took_terminal && tcgetpgrp(stdin()).is_ok_and(|pg| pg == self.pid) {
            let _ = without_sigttou(|| tcsetpgrp(stdin(), getpgrp()));
        }
        self.took_terminal = false;
    }
}
