//! The command's attempts under one lock, from its first start to [`super::finish`]:
//! `--retries` runs a command that failed by itself again after a growing, jittered delay during
//! which the lock stays held and checked (`flock` in a shell loop gives the lock away between
//! tries), and `--max-runtime` bounds them all, delays included, from the first start. Without
//! either flag there is one attempt and nothing more: no timer, no extra system call.
//!
//! Each attempt gets a dead man's switch of its own: a switch learns the command's process group
//! once, when the command announces itself before its exec, so the one that watched a finished
//! attempt is collected and [`super::start`] arms a fresh one for the next.

use super::retry::Rng;
use super::{Ran, Report, ended_by_signal, finish, record_end, release_then, start};
use crate::capture::Pump;
use crate::exit::{LostReason, Outcome};
use crate::ledger::record::{End, Recorder};
use crate::lock::Holder;
use crate::options::RunOptions;
use crate::supervise::child::Running;
use crate::supervise::deadman::DeadMan;
use crate::supervise::signals::Router;
use crate::supervise::{self, Ended, Policy, Runtime, leftovers};
use crate::{duration, step, warn};
use anyhow::Result;
use nix::sys::signal::Signal;
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

/// The variable that tells the command which attempt it is.
pub const VARIABLE: &str = "PGLOCK_ATTEMPT";

/// The most a retry's delay strays from its nominal value, either way.
const JITTER: f64 = 0.2;

/// The first attempt, just started, and what the run holds.
pub(super) struct First {
    pub running: Running,
    pub deadman: Option<DeadMan>,
    pub holder: Holder,
    pub ledger: Option<Box<Recorder>>,
    pub env: Vec<(String, String)>,
    /// `--capture`: the output's carrier, and the command's ends of its pipes, which every
    /// attempt gets.
    pub capture: Option<(Pump, [OwnedFd; 2])>,
    pub acquired_at: Instant,
}

/// Why the run ended between two attempts.
enum Between {
    Lost(LostReason),
    Interrupted(Signal),
    TimedOut,
}

/// Supervises the first attempt and any retries; then the ledger's end and the release.
pub(super) fn run(
    opts: &RunOptions,
    router: &Router,
    first: First,
    report: &mut Report,
) -> Result<Outcome> {
    let First {
        mut running,
        mut deadman,
        mut holder,
        ledger,
        mut env,
        capture,
        acquired_at,
    } = first;
    let (pump, output) = match capture {
        Some((pump, ends)) => (Some(pump), Some(ends)),
        None => (None, None),
    };
    let runtime = opts.max_runtime.map(|limit| Runtime {
        limit,
        until: duration::after(Instant::now(), limit),
    });
    let policy = Policy {
        check_every: opts.check_interval,
        fencing: opts.fencing,
        kill_after: opts.kill_after,
        lease: opts.lease,
        runtime,
    };
    let label = &opts.target.label;
    let mut rng = None;
    let mut attempt: u32 = 1;
    loop {
        // From here on the command exists: nothing returns before supervise::wait has reaped
        // it.
        let confirmed = holder.confirmed();
        let ended = supervise::wait(
            &mut running,
            router,
            &mut holder,
            deadman.as_mut(),
            policy,
            label,
            confirmed,
        );
        // What the command left running acts under the lock too: before the release, and
        // before a retry, which must not run beside it.
        leftovers::settle(leftovers::Job {
            policy: opts.leftovers,
            group: running.pid(),
            kill_after: opts.kill_after,
            check_every: opts.check_interval,
            router,
            guard: &mut holder,
            switch: deadman.as_ref(),
            lost: ended.lost.is_some(),
        });
        // A signal ended the job: what follows the command is over a second after it.
        let signalled = ended_by_signal(router, &ended, Instant::now());
        if let Some(at) = signalled {
            crate::pg::deadline::stopped_by_signal_at(at);
        }
        if attempt > opts.retries || !worth_another(&ended, router) {
            // The last attempt is over: without pglock's copies of the command's ends, the
            // output ends when its last writer is gone. Before the ledger's record, which
            // keeps the tail.
            drop(output);
            report.captured = pump.map(Pump::finish);
            report.signalled = signalled.is_some();
            let run = Ran {
                ended,
                acquired_at,
                signalled: signalled.is_some(),
                attempts: attempt,
                tail: report.captured.as_ref().map(|c| c.tail.text()),
            };
            return finish(opts, router, holder, ledger, deadman, run);
        }
        // Its switch knew only this attempt's process group.
        drop(deadman.take());
        let unit = rng.get_or_insert_with(Rng::seeded).unit();
        let delay = jittered(nominal(opts.retry_delay, attempt), unit);
        step!(
            "attempt {attempt} of \"{label}\" failed ({}); retrying in {} (--retries {})",
            ended.status,
            duration::format(delay),
            opts.retries
        );
        if let Err(between) = pause(opts, router, &mut holder, delay, runtime) {
            return end_between(opts, holder, ledger, between, attempt);
        }
        attempt += 1;
        set(&mut env, attempt);
        match start(opts, router, &mut holder, &env, None, output.as_ref()) {
            Ok((next, switch)) => {
                running = next;
                deadman = switch;
            }
            Err(not_started) => {
                return super::not_started_end(opts, holder, ledger, not_started, attempt - 1);
            }
        }
    }
}

/// Whether a finished attempt is one to retry: it failed by itself. Not when pglock stopped it
/// (a lost lock, --max-runtime) or a signal asked the job to stop, forwarded to the command or
/// arrived since.
fn worth_another(ended: &Ended, router: &Router) -> bool {
    !ended.status.success()
        && ended.lost.is_none()
        && !ended.timed_out
        && router.last_stop().is_none()
        && router.interrupted().is_none()
}

/// The n-th retry's delay before jitter: `delay` x 2^(n-1), saturating.
fn nominal(delay: Duration, n: u32) -> Duration {
    delay.saturating_mul(1u32 << n.saturating_sub(1).min(31))
}

/// `nominal` moved by up to [`JITTER`] either way, `unit` being uniform in [0, 1): hosts whose
/// jobs failed together (a database restart) do not all retry in the same millisecond.
fn jittered(nominal: Duration, unit: f64) -> Duration {
    // Two parts, so that no product exceeds the nominal delay and none can overflow.
    nominal
        .mul_f64(1.0 - JITTER)
        .saturating_add(nominal.mul_f64(2.0 * JITTER * unit))
}

/// The command's environment for attempt `n`.
fn set(env: &mut [(String, String)], n: u32) {
    if let Some((_, value)) = env.iter_mut().find(|(name, _)| name == VARIABLE) {
        *value = n.to_string();
    }
}

/// The delay before a retry: the lock stays held and checked, as during --min-hold. A
/// terminating signal ends it at once, and --max-runtime when it runs out first.
fn pause(
    opts: &RunOptions,
    router: &Router,
    holder: &mut Holder,
    delay: Duration,
    runtime: Option<Runtime>,
) -> Result<(), Between> {
    let mut until = duration::after(Instant::now(), delay);
    let runs_out = runtime.filter(|r| r.until <= until);
    if let Some(r) = runs_out {
        until = r.until;
    }
    supervise::hold(
        router,
        holder,
        until,
        opts.check_interval,
        "the retry delay",
    )
    .map_err(Between::Lost)?;
    if let Some(sig) = router.interrupted() {
        return Err(Between::Interrupted(sig));
    }
    if let Some(r) = runs_out {
        warn!(
            "\"{}\" ran longer than --max-runtime {}; not retrying",
            opts.target.label,
            duration::format(r.limit)
        );
        return Err(Between::TimedOut);
    }
    Ok(())
}

/// Ends a run between two attempts: the ledger's end, then the release (none when the lock is
/// lost).
fn end_between(
    opts: &RunOptions,
    mut holder: Holder,
    ledger: Option<Box<Recorder>>,
    between: Between,
    attempts: u32,
) -> Result<Outcome> {
    let label = &opts.target.label;
    match between {
        Between::Lost(reason) => {
            step!("lock \"{label}\" lost during the retry delay: {reason}");
            record_end(ledger, &mut holder, End::lost_before_start(attempts));
            holder.abandon();
            Ok(Outcome::LostBeforeStart {
                label: label.clone(),
                reason,
            })
        }
        Between::Interrupted(sig) => {
            step!("signal {sig} during the retry delay; not retrying");
            let code = crate::exit::signal_code(sig as i32);
            let commit = record_end(ledger, &mut holder, End::interrupted(code, attempts));
            release_then(holder, opts, Ok(Outcome::Interrupted(sig)), commit)
        }
        Between::TimedOut => {
            let commit = record_end(ledger, &mut holder, End::timed_out(attempts));
            release_then(holder, opts, Ok(Outcome::TimedOut), commit)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_from_the_first() {
        let d = Duration::from_millis(100);
        assert_eq!(nominal(d, 1), d);
        assert_eq!(nominal(d, 2), d * 2);
        assert_eq!(nominal(d, 4), d * 8);
        assert_eq!(
            nominal(Duration::from_secs(1), 100),
            Duration::from_secs(1 << 31)
        );
        let second = Duration::from_secs(1);
        assert_eq!(jittered(second, 0.0), Duration::from_millis(800));
        assert_eq!(jittered(second, 0.5), second);
        assert!(jittered(second, 0.999_999) < Duration::from_millis(1200));
    }

    #[test]
    fn the_attempt_is_told_to_the_command() {
        let mut env = vec![("PGLOCK_KEY".to_string(), "k".to_string())];
        env.push((VARIABLE.into(), "1".into()));
        set(&mut env, 3);
        assert_eq!(env[1], (VARIABLE.to_string(), "3".to_string()));
    }
}
