//! The command as a process: spawned in its own process group, handed the terminal when pglock
//! has it, reaped with waitpid(2), and suspended together with pglock at a terminal's Ctrl-Z.

use crate::exit::{Failure, fail};
use crate::step;
use crate::supervise::deadman::announce;
use anyhow::Result;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, killpg, pthread_sigmask};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp, getpid, getppid, isatty, setpgid, tcgetpgrp, tcsetpgrp};
use std::ffi::OsString;
use std::io::ErrorKind;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, ExitStatus};

/// The command to run: any bytes, as the OS passes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// The command, running.
pub struct Running {
    pid: Pid,
    /// The command owns our terminal's foreground: take it back when it stops or exits.
    took_terminal: bool,
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
pub fn spawn(
    job: &Job,
    env: &[(String, String)],
    fenced: bool,
    deadman: Option<RawFd>,
) -> Result<(Running, Pid)> {
    let take_terminal = owns_terminal();
    let parent = getpid();
    let mut cmd = Command::new(&job.program);
    cmd.args(&job.args).envs(env.iter().map(|(k, v)| (k, v)));
    // SAFETY: the closure runs between fork and exec and makes only async-signal-safe system
    // calls; errors are built from raw errno values (io::Error::from(Errno)), which do not
    // allocate.
    unsafe {
        cmd.pre_exec(move || {
            setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
            if let Some(line) = deadman {
                announce(line);
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
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| {
        let name = job.program.to_string_lossy();
        let (failure, why) = match e.kind() {
            ErrorKind::NotFound => (Failure::NotFound, "command not found".to_string()),
            ErrorKind::PermissionDenied => {
                (Failure::NotExecutable, "permission denied".to_string())
            }
            _ => (Failure::NotExecutable, e.to_string()),
        };
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
        },
        pid,
    ))
}

impl Running {
    /// Sends `sig` to the command's process group.
    pub fn signal_group(&self, sig: Signal) {
        let _ = killpg(self.pid, sig);
    }

    /// The command's status if it has exited, reaping it. A command stopped at the terminal
    /// (Ctrl-Z) suspends pglock too, and both go on together.
    pub fn poll(&mut self) -> Result<Option<ExitStatus>> {
        let flags = WaitPidFlag::WNOHANG | WaitPidFlag::WUNTRACED;
        let status = match waitpid(self.pid, Some(flags))? {
            WaitStatus::Exited(_, code) => ExitStatus::from_raw((code & 0xff) << 8),
            WaitStatus::Signaled(_, sig, core) => {
                ExitStatus::from_raw(sig as i32 | if core { 0x80 } else { 0 })
            }
            WaitStatus::Stopped(_, sig) => {
                self.stopped(sig);
                return Ok(None);
            }
            _ => return Ok(None),
        };
        self.give_back_terminal();
        Ok(Some(status))
    }

    /// The command stopped. At a terminal, do what a shell expects of a job: take the terminal
    /// back and stop pglock the same way, so the shell gets its prompt; when continued (fg),
    /// hand the terminal to the command again and continue it.
    fn stopped(&mut self, sig: Signal) {
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
