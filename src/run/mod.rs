//! One pglock run from start to finish: connect, wait for the lock, run the command under it,
//! and release it. Reading order: [`run`] → [`wait::wait_for_lock`] → [`run_held`] →
//! [`crate::supervise::wait`].

mod wait;

use crate::appname::{AppName, Label};
use crate::exit::{LostReason, Outcome};
use crate::lock::{Held, Holder, Request, Semaphore, Unconfirmed};
use crate::options::{Fencing, RunOptions};
use crate::pg::Opener;
use crate::supervise::deadman::DeadMan;
use crate::supervise::signals::{Deferred, Router};
use crate::supervise::{self, Guard, Policy, child};
use crate::{conninfo, duration, step, warn};
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
    let request = Request {
        id: opts.target.id,
        shared: opts.shared,
        scope: opts.scope,
        wait: opts.wait,
        semaphore: (opts.limit > 1)
            .then(|| Semaphore::new(&opts.target.base, opts.limit.into(), opts.check_interval)),
    };
    match wait::wait_for_lock(opts, &opener, &router, &request)? {
        Waited::Held(holder) => run_held(opts, &router, *holder),
        Waited::Gave(outcome) => Ok(outcome),
    }
}

/// Runs the command while `holder` holds the lock, then releases it.
fn run_held(opts: &RunOptions, router: &Router, mut holder: Holder) -> Result<Outcome> {
    let label = &opts.target.label;
    let acquired_at = Instant::now();
    let env = child_env(opts, &holder.held());
    let fenced = matches!(opts.fencing, Fencing::Terminate { .. });
    let mut running = match router.spawn(|| child::spawn(&opts.job, &env, fenced)) {
        Ok(Some(running)) => running,
        Ok(None) => {
            let sig = router
                .interrupted()
                .unwrap_or(nix::sys::signal::Signal::SIGTERM);
            step!("signal {sig} arrived before the command started; not running it");
            let _ = release(router, holder, false, opts.check_interval, label);
            return Ok(Outcome::Interrupted(sig));
        }
        Err(e) => {
            // The spawn error is what the user must see: a release problem only warns.
            step!("releasing lock \"{label}\"");
            let _ = release(router, holder, false, opts.check_interval, label);
            return Err(e);
        }
    };
    // From here on the command exists: nothing returns before supervise::wait has reaped it.
    // With --on-lost ignore the user accepted a command that outlives the lock.
    let mut deadman = fenced
        .then(|| match DeadMan::arm(running.pid(), opts.kill_after) {
            Ok(deadman) => Some(deadman),
            Err(e) => {
                warn!("{e:#}: if pglock is killed, the command's children may outlive the lock");
                None
            }
        })
        .flatten();
    let policy = Policy {
        check_every: opts.check_interval,
        fencing: opts.fencing,
        kill_after: opts.kill_after,
    };
    let ended = supervise::wait(&mut running, router, &mut holder, policy, label);
    // Reaped when `deadman` goes out of scope, after the release (or before a --min-hold).
    if let Some(deadman) = &mut deadman {
        deadman.disarm();
    }
    step!("command exited: {}", ended.status);
    let ran = Outcome::Ran(ended.status);
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
    if let Some(min_hold) = opts.min_hold {
        // Nothing to hurry for: reap the switch now, not leave it a zombie for the hold.
        drop(deadman.take());
        if let Err(reason) = min_hold_for(router, &mut holder, opts, acquired_at + min_hold) {
            // The command ran under the lock; only the grace period after it was cut short.
            warn!("lock \"{label}\" lost during --min-hold: {reason}; the hold ends now");
            holder.abandon();
            return Ok(ran);
        }
    }
    match release(
        router,
        holder,
        ended.status.success(),
        opts.check_interval,
        label,
    ) {
        Ok(()) => Ok(ran),
        Err(reason) => Ok(Outcome::Lost {
            label: label.clone(),
            reason,
        }),
    }
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
    supervise::hold(router, holder, until, opts.check_interval)
}

/// Ends the lock, within `limit`. A release that cannot be confirmed (a server that stopped
/// answering, a signal) only warns: the server frees the lock when the session ends.
fn release(
    router: &Router,
    holder: Holder,
    success: bool,
    limit: Duration,
    label: &str,
) -> Result<(), LostReason> {
    router.closing(holder.canceller());
    match holder.release(success, limit, || router.idle())? {
        Ok(()) => step!("released lock \"{label}\""),
        Err(Unconfirmed(why)) => warn!(
            "warning: the release of lock \"{label}\" was not confirmed ({why}); \
             the server frees it when the session ends"
        ),
    }
    Ok(())
}

/// What the command learns about its lock.
fn child_env(opts: &RunOptions, held: &Held) -> Vec<(String, String)> {
    let mut env = vec![
        ("PGLOCK_KEY".into(), opts.target.label.clone()),
        ("PGLOCK_LOCK_ID".into(), held.id.sql_args()),
        ("PGLOCK_SCOPE".into(), held.scope.name().into()),
    ];
    if let Some((slot, _)) = held.slot {
        env.push(("PGLOCK_SLOT".into(), slot.to_string()));
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
}
