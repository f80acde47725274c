//! One pglock run from start to finish: connect, wait for the lock, run the command under it,
//! and release it. Reading order: [`run`] → [`wait::wait_for_lock`] → [`run_held`] →
//! [`crate::supervise::wait`].

mod attempts;
mod retry;
mod wait;

use crate::appname::{AppName, Label};
use crate::exit::{LostReason, Outcome};
use crate::ledger::record::{self, Begun, End, Recorder};
use crate::lock::{Held, Holder, Request, Semaphore, Unconfirmed};
use crate::options::{Fencing, RunOptions};
use crate::pg::Opener;
use crate::pg::deadline::GRACE;
use crate::supervise::child::Running;
use crate::supervise::deadman::DeadMan;
use crate::supervise::signals::{Deferred, Router};
use crate::supervise::{self, Guard, child, leftovers};
use crate::{capture, conninfo, duration, ping, step, warn};
use anyhow::Result;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use wait::Waited;

/// Runs the command under the lock.
pub fn run(opts: &RunOptions) -> Result<Outcome> {
    // First of all, so that a signal sent right after start-up is handled like any other.
    let deferred = Deferred::block()?;
    let target = conninfo::resolve(opts.database_url.as_deref(), &conninfo::process_env)?;
    if target.password_on_command_line {
        step!(
            "warning: a password on the command line is visible to every local user in ps; \
             use PGPASSWORD, PGPASSFILE (~/.pgpass) or a service file instead"
        );
    }
    let opener = Opener::new(
        &target,
        &AppName::holder(
            Label::new(opts.target.key.as_deref(), opts.target.id),
            opts.limit,
        )
        .encoded(),
        opts.connect_timeout,
        opts.check_interval,
    )?;
    // Only now: building the opener's TLS connector skips the system trust store only while
    // pglock has a single thread (tls::trust_store), and the router starts one.
    let router = Router::start()?;
    drop(deferred);
    if let Some(sig) = splay(opts, &router) {
        return Ok(Outcome::Interrupted(sig));
    }
    let request = Request {
        id: opts.target.id,
        shared: opts.shared,
        scope: opts.scope,
        wait: opts.wait,
        semaphore: (opts.limit > 1)
            .then(|| Semaphore::new(&opts.target.base, opts.limit.into(), opts.check_interval)),
        settings: lease_settings(opts),
        token: opts.fencing_token,
        deploy: opts.deploy,
    };
    // A lock that is taken: arm the dead man's switch during the wait, so that the fork is not
    // between the grant and the command (the hand-off). Without a lock it is simply dropped: it
    // heard of no command, so it stops nothing.
    let mut deadman = None;
    let mut prepare = || {
        if deadman.is_none() {
            deadman = arm_deadman(opts);
        }
    };
    let asked = Instant::now();
    match wait::wait_for_lock(opts, &opener, &router, &request, &mut prepare)? {
        Waited::Held(holder) => {
            let mut report = Report::default();
            let result = run_held(opts, &router, &opener, *holder, deadman, asked, &mut report);
            report.end(opts, &router, &result);
            result
        }
        Waited::Gave(outcome) => Ok(outcome),
    }
}

/// What the run tells beyond its exit status: the monitor (--ping) and the captured output
/// (--capture, --quiet-on-success). Filled in by [`run_held`]; all empty in a plain run.
#[derive(Default)]
pub(super) struct Report {
    /// The start ping went out: the end must follow.
    ping: Option<ping::Run>,
    pub(super) captured: Option<capture::Captured>,
    /// A signal ended the command (see [`ended_by_signal`]).
    pub(super) signalled: bool,
}

impl Report {
    /// After the release, once pglock's exit status is known: --quiet-on-success's output if
    /// the run failed, then the monitor's end.
    fn end(self, opts: &RunOptions, router: &Router, result: &Result<Outcome>) {
        let code = match result {
            Ok(outcome) => outcome.code(opts.conflict_exit_code),
            Err(e) => crate::exit::code_for(e),
        };
        if let Some(captured) = &self.captured
            && code != 0
        {
            captured.replay();
        }
        let Some(run) = self.ping else {
            return;
        };
        let budget = if self.signalled || router.interrupted().is_some() {
            opts.ping_timeout.min(ping::AFTER_SIGNAL)
        } else {
            opts.ping_timeout
        };
        let body = self.captured.map(|c| c.tail.bytes()).unwrap_or_default();
        run.end(code, &body, budget);
    }
}

/// Runs the command while `holder` holds the lock, then releases it. Steps: the ledger's
/// say, the spawn, the supervising loop, and [`finish`].
fn run_held(
    opts: &RunOptions,
    router: &Router,
    opener: &Opener,
    mut holder: Holder,
    deadman: Option<DeadMan>,
    asked: Instant,
    report: &mut Report,
) -> Result<Outcome> {
    let acquired_at = Instant::now();
    let waited = acquired_at.saturating_duration_since(asked);
    if opts.fencing_token && holder.held().token.is_none() {
        let e = anyhow::anyhow!("the server's answer to the lock call held no fencing token");
        return release_then(holder, opts, Err(e), false);
    }
    // Made before the ledger's say, so that a failure here leaves nothing to record.
    let pipes = match opts.capture {
        capture::Mode::Off => None,
        mode => match capture::Pipes::new(mode) {
            Ok(pipes) => Some(pipes),
            Err(e) => return release_then(holder, opts, Err(e), false),
        },
    };
    let mut env = child_env(opts, &holder.held());
    // --record, --once-per: the ledger decides whether the command runs, and records it.
    let ledger = match begin_ledger(opts, opener, &mut holder, waited) {
        Ok(None) => None,
        Ok(Some(Begun::Run(recorder, vars))) => {
            env.extend(vars);
            Some(recorder)
        }
        Ok(Some(Begun::Skip(outcome))) => return release_then(holder, opts, Ok(outcome), false),
        Err(e) => return release_then(holder, opts, Err(e), false),
    };
    if let Some(recorder) = &ledger
        && let Err(reason) = lock_delay(opts, router, &mut holder, recorder.vanished())
    {
        step!(
            "lock \"{}\" lost before the command started: {reason}",
            opts.target.label
        );
        record_end(ledger, &mut holder, End::lost_before_start(0));
        holder.abandon();
        return Ok(Outcome::LostBeforeStart {
            label: opts.target.label.clone(),
            reason,
        });
    }
    let output = pipes.as_ref().map(|p| &p.child);
    let (running, deadman) = match start(opts, router, &mut holder, &env, deadman, output) {
        Ok(started) => started,
        Err(not_started) => return not_started_end(opts, holder, ledger, not_started, 0),
    };
    // The monitor hears of it only now, on a thread of its own: it never delays the command.
    if let Some(target) = &opts.ping {
        report.ping = Some(ping::start(target, opts.ping_timeout));
    }
    // The output is carried for every attempt: pglock keeps the command's ends of the pipes
    // until the last one has exited.
    let capture = pipes.and_then(|pipes| {
        pipes
            .pump()
            .map_err(|e| warn!("{e:#}: the command's output is lost"))
            .ok()
    });
    let first = attempts::First {
        running,
        deadman,
        holder,
        ledger,
        env,
        capture,
        acquired_at,
    };
    attempts::run(opts, router, first, report)
}

/// --splay: a random pause before connecting, so that a fleet's cron does not reach the server
/// in one millisecond. A terminating signal ends it (and pglock) at once; nothing was opened.
fn splay(opts: &RunOptions, router: &Router) -> Option<nix::sys::signal::Signal> {
    let most = opts.splay.filter(|d| !d.is_zero())?;
    let nanos = most.as_nanos().min(u64::MAX.into()) as u64;
    let pause = Duration::from_nanos(retry::Rng::seeded().below(nanos));
    step!(
        "waiting {} before connecting (--splay {})",
        duration::format(pause),
        duration::format(most)
    );
    let sig = router.pause(pause)?;
    step!("signal {sig} during --splay; not connecting");
    Some(sig)
}

/// A command that did not start (after `attempts` that did): the ledger's end, then the release.
/// A lock found lost has nothing to release: the session is gone, and the ledger's end goes over
/// its own connection.
pub(super) fn not_started_end(
    opts: &RunOptions,
    mut holder: Holder,
    ledger: Option<Box<Recorder>>,
    not_started: Result<Outcome>,
    attempts: u32,
) -> Result<Outcome> {
    if let Ok(lost @ Outcome::LostBeforeStart { .. }) = not_started {
        record_end(ledger, &mut holder, End::lost_before_start(attempts));
        holder.abandon();
        return Ok(lost);
    }
    let code = match &not_started {
        // Only an interruption gets here, whose code does not depend on -E.
        Ok(outcome) => outcome.code(crate::exit::CONFLICT_DEFAULT),
        Err(e) => crate::exit::code_for(e),
    };
    let commit = record_end(ledger, &mut holder, End::not_started(code, attempts));
    release_then(holder, opts, not_started, commit)
}

/// When the signal that asked the job to stop came, if it ended the command: the command died
/// of it, or exited within [`GRACE`] of it (by the time pglock reaped it). A command that ran on
/// for longer survived it (a daemon that reloads on SIGHUP, a job that ignores SIGINT): its end,
/// however much later, is an ordinary one, and what follows gets its usual time, so that the
/// ledger records it and the release is confirmed.
fn ended_by_signal(
    router: &Router,
    ended: &supervise::Ended,
    exited_at: Instant,
) -> Option<Instant> {
    use std::os::unix::process::ExitStatusExt;
    let (sig, at) = router.last_stop()?;
    let died_of_it = ended.status.signal() == Some(sig as i32);
    let soon_after = exited_at.saturating_duration_since(at) <= GRACE;
    if !(died_of_it || soon_after) {
        step!(
            "the command outlived {sig} by {}: not cutting what follows short",
            duration::format(exited_at.saturating_duration_since(at))
        );
        return None;
    }
    Some(at)
}

/// How the command's run went, for [`finish`].
struct Ran {
    ended: supervise::Ended,
    acquired_at: Instant,
    /// A signal ended it (see [`ended_by_signal`]): --min-hold ends at once.
    signalled: bool,
    /// How many times the command started (`--retries`).
    attempts: u32,
    /// The captured output's last 10 KiB (`--capture`), for the ledger.
    tail: Option<String>,
}

/// Spawns the command unless a terminating signal came first, or the lock is already known to
/// be lost (the server ended the session since the grant); its dead man's switch, if any,
/// learns its process group before it execs. Err holds what pglock then ends with: the
/// interruption, the lost lock, or the spawn's error (126, 127, 71).
fn start(
    opts: &RunOptions,
    router: &Router,
    holder: &mut Holder,
    env: &[(String, String)],
    deadman: Option<DeadMan>,
    output: Option<&[std::os::fd::OwnedFd; 2]>,
) -> Result<(Running, Option<DeadMan>), Result<Outcome>> {
    let fenced = matches!(opts.fencing, Fencing::Terminate { .. });
    let mut deadman = deadman;
    let mut late_once = false;
    let spawned = loop {
        // Armed during a wait, or for the child before (a late one may have let its countdown
        // run out), and still alive: something may have killed it meanwhile. Or armed now.
        if deadman.as_mut().is_some_and(|d| !d.alive()) {
            step!("the dead man's switch is gone; arming another");
            deadman = None;
        }
        if deadman.is_none() {
            deadman = arm_deadman(opts);
        }
        let line = deadman.as_ref().map(|d| (d.announcer(), d.pid()));
        // As late as can be: a loss found after the spawn is one while the command ran.
        if let Some(reason) = lost_before_start(holder, opts.check_interval) {
            if let Some(deadman) = &mut deadman {
                deadman.disarm();
            }
            step!(
                "lock \"{}\" lost before the command started: {reason}",
                opts.target.label
            );
            return Err(Ok(Outcome::LostBeforeStart {
                label: opts.target.label.clone(),
                reason,
            }));
        }
        // The switch holds the lock too from now on: killed, pglock leaves it to the switch,
        // which lets the connection close only once the command's group is gone.
        if let (Some(deadman), Some(socket)) = (&deadman, holder.socket()) {
            if let Err(e) = deadman.hold_socket(socket) {
                // A switch that is gone makes the command's announcement fail: it does not
                // start.
                step!("cannot hand the lock's socket to the dead man's switch: {e}");
            }
        }
        if opts.leftovers != leftovers::Policy::Keep {
            leftovers::adopt_orphans();
        }
        // The command execs within the interval of the last confirmation, or not at all: a
        // stall in the fork or before the exec is the child's to see (child::spawn).
        let start_by = holder.confirmed().deadline(opts.check_interval);
        match router.spawn(|| child::spawn(&opts.job, env, fenced, line, Some(start_by), output)) {
            // Once: this fork was slow; check the lock and fork again. Twice: it is the host,
            // and a system error (71).
            Err(e) if child::is_late(&e) && !late_once => {
                late_once = true;
                step!("the command would have started too long after the lock was last confirmed");
            }
            spawned => break spawned,
        }
    };
    let not_started = match spawned {
        Ok(Some(running)) => return Ok((running, deadman)),
        Ok(None) => {
            let sig = router
                .interrupted()
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            step!("signal {sig} arrived before the command started; not running it");
            Ok(Outcome::Interrupted(sig))
        }
        Err(e) => Err(e),
    };
    if let Some(deadman) = &mut deadman {
        deadman.disarm();
    }
    Err(not_started)
}

/// Whether the lock is known to be lost before the command starts: the server's goodbye on the
/// socket (no round trip), or, when a check is due (nothing confirmed the lock for
/// `check_interval`: a stall between the grant and the spawn), the check's answer, within
/// `check_interval`. A plain run gets here a few milliseconds after its grant and asks nothing.
///
/// Why the interval, not the lease's `unconfirmed_after` (after which the freeze check gives a
/// running command up without asking): the lease's order counts on a check sent within an
/// interval of the last confirmation, answered within another, then `--kill-after`. A command
/// started later than one interval after the confirmation has already used up the first.
fn lost_before_start(holder: &mut Holder, check_interval: Duration) -> Option<LostReason> {
    if let Some(reason) = supervise::lost_already(holder) {
        return Some(reason);
    }
    let unconfirmed = holder.confirmed().elapsed();
    if unconfirmed < check_interval {
        return None;
    }
    step!(
        "nothing confirmed the lock for {}; checking it before the command starts",
        duration::format(unconfirmed)
    );
    holder.check(check_interval).err()
}

/// The lease's server settings: the idle timeouts, and keepalive probes every --check-interval
/// on the server's socket, so that a silent client's session ends about a lease after it was
/// last heard from. The server's keepalive times are clamped as pglock's own are: the kernel
/// refuses longer ones, and the server would then quietly keep its default of two hours.
fn lease_settings(opts: &RunOptions) -> crate::pg::sql::Settings {
    let probe = opts.check_interval.min(conninfo::keepalive::MAX_KEEPALIVE);
    crate::pg::sql::Settings {
        lease_ms: opts.lease.map_or(0, |l| l.length.as_millis()),
        keepalive_s: probe.as_secs().max(1),
        stranded: None,
    }
}

/// The dead man's switch for a fenced command (with --on-lost ignore the user accepted a
/// command that outlives the lock, so there is none). With a lease it also stops the command
/// when pglock stops confirming the lock. A switch that cannot start only warns.
fn arm_deadman(opts: &RunOptions) -> Option<DeadMan> {
    let Fencing::Terminate { kill_after } = opts.fencing else {
        return None;
    };
    match DeadMan::arm(kill_after, opts.lease.map(|l| l.unconfirmed_after)) {
        Ok(deadman) => Some(deadman),
        Err(e) => {
            warn!("{e:#}: if pglock is killed, the command's children may outlive the lock");
            None
        }
    }
}

/// After the command: the ledger's record, then a lost lock's outcome, or --min-hold and the
/// release.
fn finish(
    opts: &RunOptions,
    router: &Router,
    mut holder: Holder,
    ledger: Option<Box<Recorder>>,
    mut deadman: Option<DeadMan>,
    run: Ran,
) -> Result<Outcome> {
    let Ran {
        ended,
        acquired_at,
        signalled,
        attempts,
        tail,
    } = run;
    let label = &opts.target.label;
    if let Some(deadman) = &mut deadman {
        deadman.disarm();
    }
    step!("command exited: {}", ended.status);
    // Before the release (and any --min-hold), so that the next holder sees it.
    let stopped = matches!(opts.fencing, Fencing::Terminate { .. });
    let timed_out = ended.timed_out && ended.lost.is_none();
    let replaced = ended.replaced.is_some() && ended.lost.is_none();
    let mut end = if replaced {
        End::replaced(opts.conflict_exit_code, attempts)
    } else if timed_out {
        End::timed_out(attempts)
    } else {
        End::ran(ended.status, ended.lost.is_some(), stopped, attempts)
    };
    end.output_tail = tail;
    let commit_record = record_end(ledger, &mut holder, end);
    let ran = if replaced {
        // The line was said when the command was stopped.
        Outcome::NotObtained(None)
    } else if timed_out {
        Outcome::TimedOut
    } else {
        Outcome::Ran(ended.status)
    };
    if let Some(reason) = ended.lost {
        // The session is gone or no longer holds the lock: there is nothing to release.
        holder.abandon();
        return Ok(match opts.fencing {
            Fencing::Terminate { .. } => Outcome::Lost {
                label: label.clone(),
                reason,
            },
            Fencing::Ignore => ran,
        });
    }
    if let (Some(_), true) = (opts.min_hold, signalled) {
        // Whoever stopped the job wants the lock back.
        step!("a signal ended the command; no --min-hold");
    }
    // A replaced run hands the lock on as soon as its command is gone.
    let replaced = matches!(ran, Outcome::NotObtained(_));
    if let Some(min_hold) = opts.min_hold.filter(|_| !signalled && !replaced) {
        // Nothing to hurry for: reap the switch now, not leave it a zombie for the hold.
        if let Some(deadman) = deadman.take() {
            deadman.reap();
        }
        if let Err(reason) = min_hold_for(
            router,
            &mut holder,
            opts,
            duration::after(acquired_at, min_hold),
        ) {
            // The command ran under the lock; only the grace period after it was cut short.
            warn!("lock \"{label}\" lost during --min-hold: {reason}; the hold ends now");
            holder.abandon();
            return Ok(ran);
        }
    }
    let success = ended.status.success() || commit_record;
    match (
        release(holder, success, opts.check_interval, label),
        opts.fencing,
    ) {
        (Ok(()), _) => Ok(ran),
        (Err(reason), Fencing::Terminate { .. }) => Ok(Outcome::Lost {
            label: label.clone(),
            reason,
        }),
        // Found missing only now: --on-lost ignore keeps the command's status, as it does for
        // a loss noticed while the command ran.
        (Err(reason), Fencing::Ignore) => {
            warn!("lock \"{label}\" was lost before the release ({reason}); --on-lost ignore");
            Ok(ran)
        }
    }
}

/// Releases the lock of a command that did not run, and ends with `outcome`: a release problem
/// only warns, so the reason the command did not run is what the user sees. `commit`: the
/// lock's transaction carries the run's record (xact scope).
fn release_then(
    holder: Holder,
    opts: &RunOptions,
    outcome: Result<Outcome>,
    commit: bool,
) -> Result<Outcome> {
    let success = commit || matches!(outcome, Ok(Outcome::Done { .. }));
    step!("releasing lock \"{}\"", opts.target.label);
    let _ = release(holder, success, opts.check_interval, &opts.target.label);
    outcome
}

/// The lock-delay (see [`crate::ledger::delay`]): an earlier run of the lock whose holder's
/// session the server ended may still be stopping its command, so this one waits, holding and
/// checking the lock, until that command must have stopped. A terminating signal ends the wait,
/// and the command is then not started ([`start`] finds the signal). Err: the lock was lost
/// meanwhile.
fn lock_delay(
    opts: &RunOptions,
    router: &Router,
    holder: &mut Holder,
    vanished: crate::ledger::delay::Vanished,
) -> Result<(), LostReason> {
    if let Some(line) = vanished.describe(&opts.target.label) {
        step!("{line}");
    }
    let Some(wait) = vanished.wait() else {
        return Ok(());
    };
    let until = duration::after(Instant::now(), wait);
    supervise::hold(router, holder, until, opts.check_interval, "the lock-delay")?;
    if router.interrupted().is_none() {
        step!("lock-delay over; starting the command");
    }
    Ok(())
}

/// --min-hold: keep the lock, watched like a running command, until `until`.
fn min_hold_for(
    router: &Router,
    holder: &mut Holder,
    opts: &RunOptions,
    until: Instant,
) -> Result<(), LostReason> {
    let left = until.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Ok(());
    }
    step!(
        "holding the lock {} more (--min-hold)",
        duration::format(left)
    );
    supervise::hold(router, holder, until, opts.check_interval, "the --min-hold")
}

/// Ends the lock, within `limit`. A release that cannot be confirmed (a server that stopped
/// answering, a signal) only warns: the server frees the lock when the session ends.
fn release(holder: Holder, success: bool, limit: Duration, label: &str) -> Result<(), LostReason> {
    match holder.release(success, limit)? {
        Ok(()) => step!("released lock \"{label}\""),
        Err(Unconfirmed(why)) => warn!(
            "warning: the release of lock \"{label}\" was not confirmed ({why}); \
             the server frees it when the session ends"
        ),
    }
    Ok(())
}

/// How long a connection of the ledger's own (after a lost lock) may take without
/// --connect-timeout; the statement limit bounds it too.
const LEDGER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The ledger's statement after the grant, with --record or --once-per.
fn begin_ledger(
    opts: &RunOptions,
    opener: &Opener,
    holder: &mut Holder,
    waited: Duration,
) -> Result<Option<Begun>> {
    let Some(record) = &opts.record else {
        return Ok(None);
    };
    let held = holder.held();
    let cx = record::Context {
        record,
        target: &opts.target,
        holding: record::Holding {
            id: held.id,
            // Runs are keyed by the lock: a semaphore's is its gate (the slot goes alongside).
            lock: held.slot.map_or(held.id, |(_, gate)| gate),
            slot: held.slot.map(|(slot, _)| slot),
            shared: held.shared,
            scope: held.scope,
        },
        quiet: opts.quiet,
        check_interval: opts.check_interval,
        kill_after: match opts.fencing {
            Fencing::Terminate { kill_after } => Some(kill_after),
            Fencing::Ignore => None,
        },
        connect_timeout: opts.connect_timeout.unwrap_or(LEDGER_CONNECT_TIMEOUT),
        waited,
    };
    record::begin(&cx, opener, holder.session()).map(Some)
}

/// Records the run's end in the ledger, when there is one. True when the record went into the
/// lock's transaction (xact scope), which the release must then COMMIT even after a failure.
fn record_end(ledger: Option<Box<Recorder>>, holder: &mut Holder, end: End) -> bool {
    ledger.is_some_and(|recorder| {
        recorder.finish(holder.session(), end) == record::Written::InLockTransaction
    })
}

/// What the command learns about its lock.
fn child_env(opts: &RunOptions, held: &Held) -> Vec<(String, String)> {
    let mut env = vec![
        ("PGLOCK_KEY".into(), opts.target.label.clone()),
        ("PGLOCK_LOCK_ID".into(), held.id.sql_args()),
        ("PGLOCK_SCOPE".into(), held.scope.name().into()),
        (attempts::VARIABLE.into(), "1".into()),
    ];
    if let Some((slot, _)) = held.slot {
        env.push(("PGLOCK_SLOT".into(), slot.to_string()));
    }
    if let Some(token) = held.token {
        env.push((crate::lock::token::VARIABLE.into(), token.to_string()));
    }
    env
}

impl Guard for Holder {
    fn socket(&self) -> Option<RawFd> {
        Holder::socket(self)
    }

    fn readable(&mut self) -> Result<(), LostReason> {
        Holder::readable(self)
    }

    fn check(&mut self, limit: Duration) -> Result<(), LostReason> {
        Holder::check(self, limit)
    }

    fn suspend_lease(&mut self, limit: Duration) -> Result<(), LostReason> {
        Holder::set_lease(self, false, limit)
    }

    fn resume_lease(&mut self, limit: Duration) -> Result<(), LostReason> {
        Holder::set_lease(self, true, limit)
    }

    fn replace_request(&self) -> Option<String> {
        Holder::replace_request(self).map(str::to_string)
    }
}
