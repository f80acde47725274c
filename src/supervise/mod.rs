//! Supervision: the one loop that owns the command once it exists (after tini).
//!
//! The rule: once the command has been spawned, the only way out of [`wait`] is reaping it.
//! Nothing in the loop returns early: a lost lock, a failed poll or a failed waitpid all turn
//! into "stop the command (SIGTERM to its group, SIGKILL after --kill-after), keep reaping".
//! Signals are forwarded by the router's thread meanwhile; the loop only wakes on them.
//!
//! [`hold`] is the same watch without a command, for --min-hold.
//!
//! A plain run (`pglock --key k -- cmd`, stderr not a terminal) has these threads and
//! processes: pglock's main thread, the `signals` router, and the `deadline` thread that cuts
//! the connection of any step that outlives its deadline (started with the first connect; see
//! [`crate::pg::deadline`]); the connection's current-thread runtime runs on the main thread.
//! Processes: pglock, the command, and the dead man's switch (`pglock-switch`), forked before
//! the command (during the wait when the lock was taken) into a process group of its own, and
//! collected before pglock exits. A lock that is free is taken at once and nothing else starts.
//! A lock that is taken adds, for the wait only, a `wait-guard` thread (and after 200 ms its
//! guard process), and with the terminal status line or -v an `observer` thread with a second
//! connection. A connect to a host name looks it up on a short-lived `resolve` thread, abandoned
//! if the resolver hangs. pglock joins none of its threads on the way out: waking a thread to
//! wait for it costs milliseconds on a virtual machine's idle CPUs.
//!
//! With a lease, the loop also sends the switch a heartbeat after every confirmed check, and
//! takes the lock for lost at once when nothing confirmed it for longer than the lease allows
//! (pglock or its host was frozen); at Ctrl-Z it suspends the lease before stopping pglock and
//! checks the lock (restoring the lease) before the command goes on.

pub mod child;
pub mod deadman;
pub mod leftovers;
pub mod signals;
pub mod wait_guard;

use crate::clock::Stamp;
use crate::duration::after;
use crate::exit::LostReason;
use crate::lease::Lease;
use crate::{step, warn};
use child::{Polled, Running};
use deadman::DeadMan;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use signals::Router;
use std::os::fd::{BorrowedFd, RawFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

/// What happens to the command when the lock is lost while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// SIGTERM its process group, SIGKILL after `kill_after`, exit 74.
    Terminate { kill_after: Duration },
    /// Warn and let it finish.
    Ignore,
}

/// The lock, as the supervising loop sees it.
pub trait Guard {
    /// The lock connection's socket, watched so that a closed session is noticed at once.
    fn socket(&self) -> Option<RawFd>;
    /// The socket is readable; Err(reason) if the lock is gone.
    fn readable(&mut self) -> Result<(), LostReason>;
    /// The periodic check, answered within `limit`; Err(reason) if the lock is gone.
    fn check(&mut self, limit: Duration) -> Result<(), LostReason>;
    /// The job is about to be stopped at a terminal: suspend the lease, if any, so that the lock
    /// stays held however long it stays stopped.
    fn suspend_lease(&mut self, limit: Duration) -> Result<(), LostReason>;
    /// The job goes on: restore the lease, if any, and check the lock, in one round trip.
    fn resume_lease(&mut self, limit: Duration) -> Result<(), LostReason>;
    /// `--replace`: the newer run (its application_name) that asked this holder to stop, once
    /// the socket or a check brought that request.
    fn replace_request(&self) -> Option<String> {
        None
    }
}

/// How the loop watches and what it does about a loss.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub check_every: Duration,
    pub fencing: Fencing,
    /// How long a command that is being stopped gets between SIGTERM and SIGKILL.
    pub kill_after: Duration,
    /// The lease on the lock's session, if any.
    pub lease: Option<Lease>,
    /// --max-runtime: when the command is stopped, whatever the lock does.
    pub runtime: Option<Runtime>,
}

/// --max-runtime, as the loop applies it: the limit (for the message) and the instant it ends,
/// counted from the command's first start (a retry does not start it again).
#[derive(Debug, Clone, Copy)]
pub struct Runtime {
    pub limit: Duration,
    pub until: Instant,
}

/// How the command's run ended.
#[derive(Debug)]
pub struct Ended {
    pub status: ExitStatus,
    /// Why the lock was lost while it ran, if it was.
    pub lost: Option<LostReason>,
    /// --max-runtime ran out and the command was stopped for it.
    pub timed_out: bool,
    /// `--replace`: the newer run that asked for the command to stop, if one did.
    pub replaced: Option<String>,
}

/// Waits for the command while watching the lock: the socket at once, the server's pg_locks
/// every `check_every` from `confirmed`, when the server last said the lock was held (before the
/// spawn: the time from there to the command's start counts). Returns only once the command
/// has been reaped.
pub fn wait(
    running: &mut Running,
    router: &Router,
    guard: &mut dyn Guard,
    mut switch: Option<&mut DeadMan>,
    policy: Policy,
    label: &str,
    mut confirmed: Stamp,
) -> Ended {
    let mut lost: Option<LostReason> = None;
    let mut timed_out = false;
    let mut replaced: Option<String> = None;
    let mut next_check = after(
        Instant::now(),
        policy.check_every.saturating_sub(confirmed.elapsed()),
    );
    let confirm = |confirmed: &mut Stamp, switch: &Option<&mut DeadMan>| {
        *confirmed = Stamp::now();
        if let Some(switch) = switch {
            switch.heartbeat();
        }
    };
    let mut kill_at: Option<Instant> = None;
    let stop = |running: &Running, kill_at: &mut Option<Instant>, kill_after: Duration| {
        if kill_at.is_none() {
            running.signal_group(Signal::SIGTERM);
            *kill_at = Some(after(Instant::now(), kill_after));
        }
    };
    // A lost lock: what it means for the command, by the fencing policy; the loop stops
    // watching.
    let lose = |why: LostReason,
                running: &Running,
                kill_at: &mut Option<Instant>,
                lost: &mut Option<LostReason>| {
        match policy.fencing {
            Fencing::Terminate { kill_after } => {
                warn!("lock \"{label}\" lost: {why}; terminating the command");
                stop(running, kill_at, kill_after);
            }
            Fencing::Ignore => {
                warn!("lock \"{label}\" lost: {why}; --on-lost ignore: the command keeps running");
            }
        }
        *lost = Some(why);
    };
    loop {
        match running.poll() {
            Ok(Polled::Exited(status)) => {
                router.child_gone();
                return Ended {
                    status,
                    lost,
                    timed_out,
                    replaced,
                };
            }
            Ok(Polled::Stopped(sig)) if running.at_terminal() => {
                // The lease must not end while the job is stopped, however long: suspend it,
                // and the switch's countdown, before pglock stops itself.
                let suspended = match lost {
                    None => guard.suspend_lease(policy.check_every),
                    Some(_) => Ok(()),
                };
                if let Some(switch) = &switch {
                    switch.pause();
                }
                match suspended {
                    Ok(()) => running.suspend(sig),
                    Err(why) => lose(why, running, &mut kill_at, &mut lost),
                }
                // Continued (fg), or never stopped: the lock may have gone meanwhile, and the
                // command must not do another thing without it.
                if lost.is_none() {
                    match guard.resume_lease(policy.check_every) {
                        Ok(()) => confirm(&mut confirmed, &switch),
                        Err(why) => lose(why, running, &mut kill_at, &mut lost),
                    }
                    next_check = after(Instant::now(), policy.check_every);
                }
                running.resume();
            }
            Ok(Polled::Stopped(_)) => {}
            Ok(Polled::Running) => {}
            Err(e) => {
                warn!("cannot wait for the command ({e}); stopping it");
                stop(running, &mut kill_at, policy.kill_after);
                // waitpid failing is no reason to spin.
                router.pause(Duration::from_millis(50));
            }
        }
        let watching = lost.is_none();
        // Once the command is being stopped, for whatever reason, the limit has nothing to add.
        let runtime = policy.runtime.filter(|_| kill_at.is_none());
        let deadline = [
            watching.then_some(next_check),
            kill_at,
            runtime.map(|r| r.until),
        ]
        .into_iter()
        .flatten()
        .min();
        let socket = guard.socket().filter(|_| watching);
        let line = switch.as_ref().and_then(|s| s.line()).filter(|_| watching);
        let ready = match wait_for_events(router, socket, line, deadline) {
            Ok(ready) => ready,
            Err(e) => {
                warn!("cannot watch the lock ({e}); stopping the command");
                stop(running, &mut kill_at, policy.kill_after);
                router.pause(Duration::from_millis(50));
                Ready::default()
            }
        };
        let socket_ready = ready.socket;
        router.drain();
        if ready.switch
            && let Some(switch) = switch.as_deref_mut()
        {
            // Its line closed: the switch died (killed by pattern, the OOM killer). A command
            // without one would outlive a killed pglock beside the next holder.
            let dead = switch.pid();
            match switch.rearm(running.pid(), guard.socket()) {
                Ok(()) => warn!(
                    "the dead man's switch (pid {dead}) died; armed another (pid {})",
                    switch.pid()
                ),
                Err(e) => lose(
                    LostReason::Unguarded(format!("{e:#}")),
                    running,
                    &mut kill_at,
                    &mut lost,
                ),
            }
        }
        if watching {
            // Back from a freeze (a paused VM, SIGSTOP, a suspended host) longer than the lease
            // allows: the server may have given the lock away already, so stop at once rather
            // than ask.
            let looked = match unconfirmed_too_long(&confirmed, policy.lease) {
                Some(unconfirmed) => Err(LostReason::Unconfirmed(unconfirmed)),
                None => look(guard, socket_ready, &mut next_check, policy.check_every),
            };
            match looked {
                Ok(true) => confirm(&mut confirmed, &switch),
                Ok(false) => {}
                Err(why) => lose(why, running, &mut kill_at, &mut lost),
            }
            // A newer --replace run asked: stop the command and keep the lock (and watching
            // it) until the command has exited, so that the next one never runs beside it.
            if replaced.is_none()
                && lost.is_none()
                && let Some(by) = guard.replace_request()
            {
                warn!(
                    "\"{label}\" replaced by a newer run on {}; stopped the command",
                    crate::lock::deploy::who(&by)
                );
                stop(running, &mut kill_at, policy.kill_after);
                replaced = Some(by);
            }
        }
        if let Some(runtime) = runtime
            && Instant::now() >= runtime.until
        {
            warn!(
                "\"{label}\" ran longer than --max-runtime {}; terminating the command",
                crate::duration::format(runtime.limit)
            );
            timed_out = true;
            stop(running, &mut kill_at, policy.kill_after);
        }
        if kill_at.is_some_and(|at| Instant::now() >= at) {
            step!("the command outlived --kill-after; sending SIGKILL");
            running.signal_group(Signal::SIGKILL);
            kill_at = Some(Instant::now() + Duration::from_secs(3600));
        }
    }
}

/// Keeps watching the lock until `until` or a terminating signal during the hold: `what` it is,
/// --min-hold after the command (one that ended the command ends the hold before it begins: see
/// `run`) or the lock-delay before it. Err(reason) if the lock is lost meanwhile.
pub fn hold(
    router: &Router,
    guard: &mut dyn Guard,
    until: Instant,
    check_every: Duration,
    what: &str,
) -> Result<(), LostReason> {
    let mut next_check = after(Instant::now(), check_every);
    loop {
        if let Some(sig) = router.interrupted() {
            step!("signal {sig} ends {what} early");
            return Ok(());
        }
        if Instant::now() >= until {
            return Ok(());
        }
        let socket_ready =
            match wait_for_events(router, guard.socket(), None, Some(until.min(next_check))) {
                Ok(ready) => ready.socket,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(50));
                    false
                }
            };
        router.drain();
        look(guard, socket_ready, &mut next_check, check_every)?;
    }
}

/// The freeze check: how long nothing has confirmed the lock, when that is longer than the
/// lease allows. Read on [`Stamp`], which counts the time the host was suspended: a host that
/// slept through its lease must not wait for its next check to find out.
fn unconfirmed_too_long(confirmed: &Stamp, lease: Option<Lease>) -> Option<Duration> {
    let unconfirmed = confirmed.elapsed();
    (unconfirmed >= lease?.unconfirmed_after).then_some(unconfirmed)
}

/// Whether the lock's session is already known to be gone, before the command starts: the
/// server's goodbye (pg_terminate_backend, a shutdown) waits on the socket. A poll(2) that does
/// not wait, and no round trip. None: nothing says so.
pub fn lost_already(guard: &mut dyn Guard) -> Option<LostReason> {
    let socket = guard.socket()?;
    // SAFETY: the socket belongs to the lock session, which the guard keeps open throughout;
    // poll only reads its state.
    let fd = unsafe { BorrowedFd::borrow_raw(socket) };
    let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::ZERO) {
        Ok(n) if n > 0 => guard.readable().err(),
        _ => None,
    }
}

/// One look at the lock: what the socket says, and the periodic check when it is due. True if
/// the server just confirmed the lock.
fn look(
    guard: &mut dyn Guard,
    socket_ready: bool,
    next_check: &mut Instant,
    every: Duration,
) -> Result<bool, LostReason> {
    if socket_ready {
        guard.readable()?;
    }
    if Instant::now() >= *next_check {
        let result = guard.check(every);
        *next_check = after(Instant::now(), every);
        result?;
        return Ok(true);
    }
    Ok(false)
}

/// Which of the watched descriptors turned readable.
#[derive(Debug, Default)]
struct Ready {
    /// The lock's socket.
    socket: bool,
    /// The dead man's line: the switch is gone.
    switch: bool,
}

/// Blocks until a signal arrives, the socket or the switch's line is readable, or `deadline`.
fn wait_for_events(
    router: &Router,
    socket: Option<RawFd>,
    line: Option<RawFd>,
    deadline: Option<Instant>,
) -> nix::Result<Ready> {
    let mut fds = vec![PollFd::new(router.wake_fd(), PollFlags::POLLIN)];
    for fd in [socket, line].into_iter().flatten() {
        // SAFETY: the socket belongs to the lock session, which the guard keeps open for the
        // whole loop, and the line to the switch, which the loop holds; poll only reads their
        // state.
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
        Err(e) => return Err(e),
    }
    let fired = |i: usize| {
        fds.get(i)
            .and_then(|f| f.revents())
            .is_some_and(|r| !r.is_empty())
    };
    let line_at = if socket.is_some() { 2 } else { 1 };
    Ok(Ready {
        socket: socket.is_some() && fired(1),
        switch: line.is_some() && fired(line_at),
    })
}

#[cfg(test)]
mod tests {
    //! The loop with a fake lock and a real command: the fencing sequence, step by step.
    use super::child::Job;
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    /// A lock that is lost at the first check.
    struct LosesAtOnce {
        checks: u32,
    }

    impl Guard for LosesAtOnce {
        fn socket(&self) -> Option<RawFd> {
            None
        }
        fn readable(&mut self) -> Result<(), LostReason> {
            Ok(())
        }
        fn check(&mut self, _: Duration) -> Result<(), LostReason> {
            self.checks += 1;
            Err(LostReason::NotHeld)
        }
        fn suspend_lease(&mut self, _: Duration) -> Result<(), LostReason> {
            Ok(())
        }
        fn resume_lease(&mut self, limit: Duration) -> Result<(), LostReason> {
            self.check(limit)
        }
    }

    fn sh(script: &str) -> Job {
        Job {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into()],
        }
    }

    fn policy(kill_after: Duration) -> Policy {
        Policy {
            check_every: Duration::from_millis(20),
            fencing: Fencing::Terminate { kill_after },
            kill_after,
            lease: None,
            runtime: None,
        }
    }

    #[test]
    fn lost_lock_terminates_then_kills_after_kill_after() {
        let router = Router::start().unwrap();
        // Ignores SIGTERM, so only the SIGKILL after --kill-after ends it.
        let (mut running, _) = child::spawn(
            &sh("trap '' TERM; sleep 30 & wait; sleep 30"),
            &[],
            false,
            None,
            None,
            None,
        )
        .unwrap();
        let mut guard = LosesAtOnce { checks: 0 };
        let started = Instant::now();
        let ended = wait(
            &mut running,
            &router,
            &mut guard,
            None,
            policy(Duration::from_millis(300)),
            "t",
            Stamp::now(),
        );
        assert_eq!(ended.lost, Some(LostReason::NotHeld));
        assert_eq!(ended.status.signal(), Some(Signal::SIGKILL as i32));
        assert!(started.elapsed() >= Duration::from_millis(300));
        // One check found the loss; the lock is not asked about again.
        assert_eq!(guard.checks, 1);
    }

    #[test]
    fn lost_lock_terminates_a_command_that_obeys() {
        let router = Router::start().unwrap();
        let (mut running, _) = child::spawn(&sh("sleep 30"), &[], false, None, None, None).unwrap();
        let mut guard = LosesAtOnce { checks: 0 };
        let ended = wait(
            &mut running,
            &router,
            &mut guard,
            None,
            policy(Duration::from_secs(30)),
            "t",
            Stamp::now(),
        );
        assert_eq!(ended.status.signal(), Some(Signal::SIGTERM as i32));
    }

    /// Issue 23, item 16: the freeze check counts the time the host was suspended, which
    /// CLOCK_MONOTONIC (std's Instant) does not.
    #[test]
    fn the_freeze_check_counts_the_time_the_host_slept() {
        let lease = crate::lease::new(Duration::from_secs(5), Duration::from_secs(10), None);
        assert_eq!(unconfirmed_too_long(&Stamp::now(), Some(lease)), None);
        let slept = Stamp::before_a_suspend_of(Duration::from_secs(30));
        let unconfirmed = unconfirmed_too_long(&slept, Some(lease));
        assert!(
            unconfirmed.is_some_and(|d| d >= Duration::from_secs(30)),
            "{unconfirmed:?}"
        );
        // Without a lease the server never gives the lock away on its own.
        assert_eq!(unconfirmed_too_long(&slept, None), None);
    }

    #[test]
    fn ignore_lets_the_command_finish() {
        let router = Router::start().unwrap();
        let (mut running, _) =
            child::spawn(&sh("sleep 0.2; exit 3"), &[], false, None, None, None).unwrap();
        let mut guard = LosesAtOnce { checks: 0 };
        let mut ignore = policy(Duration::from_millis(10));
        ignore.fencing = Fencing::Ignore;
        let ended = wait(
            &mut running,
            &router,
            &mut guard,
            None,
            ignore,
            "t",
            Stamp::now(),
        );
        assert_eq!(ended.status.code(), Some(3));
        assert_eq!(ended.lost, Some(LostReason::NotHeld));
    }
}
