//! One pglock run from start to finish: connect, wait for the lock (reconnecting if the server
//! goes away meanwhile), run the command under it, and release it.

use crate::cli::{self, Cli};
use crate::deadman::DeadMan;
use crate::exit::{self, Failure, fail};
use crate::lock::{self, Acquired, Held, Opener, Request, Semaphore, Session};
use crate::retry::{Retry, Stage, Verdict, Window};
use crate::signals::Router;
use crate::supervise::{self, Guard, Job, OnLost};
use crate::watch::{Wait, Watch};
use crate::{conninfo, duration, status, step};
use anyhow::Result;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// Runs the command under the lock and returns pglock's exit status.
pub fn run(cli: &Cli) -> Result<u8> {
    // First of all, so that a signal sent right after start-up is handled like any other.
    let router = Router::start()?;
    let (label, id, base) = match (&cli.key, cli.lock_id) {
        (Some(key), _) => (key.clone(), cli.key_hash.id(key), key.clone()),
        (None, Some(id)) => (id.to_string(), id, format!("lock-id:{id}")),
        (None, None) => unreachable!("clap requires --key or --lock-id"),
    };
    let target = conninfo::resolve(cli.server.database_url.as_deref(), &conninfo::process_env)?;
    if target.password_on_command_line {
        step!(
            "warning: a password on the command line is visible to every local user in ps; \
             use PGPASSWORD, PGPASSFILE (~/.pgpass) or a service file instead"
        );
    }
    let opener = Opener::new(
        &target,
        &lock::application_name(&label),
        cli.connect_timeout,
        cli.check_interval,
    )?;
    let request = Request {
        id,
        shared: cli.shared,
        scope: cli.scope,
        nowait: cli.no_wait(),
        timeout: cli.timeout,
        semaphore: (cli.limit > 1)
            .then(|| Semaphore::new(&base, cli.limit.into(), cli.check_interval)),
    };
    let mut session = match wait_for_lock(cli, &opener, &router, request, &label)? {
        Waited::Held(session) => *session,
        Waited::Interrupted(sig) => return Ok(exit::signal_code(sig)),
    };
    let acquired_at = Instant::now();
    let held = session.held().expect("a held session records its lock");

    let (program, args) = cli.program();
    let job = Job {
        program,
        args,
        env: child_env(&label, &held, cli),
    };
    let fenced = cli.on_lost == cli::OnLost::Terminate;
    let mut running = match router.spawn(|| supervise::spawn(&job, fenced)) {
        Ok(Some(running)) => running,
        Ok(None) => {
            let sig = router.interrupted().unwrap_or(0);
            step!("signal {sig} arrived before the command started; not running it");
            session.release(false)?;
            return Ok(exit::signal_code(sig));
        }
        Err(e) => {
            step!("releasing lock \"{label}\"");
            session.release(false)?;
            return Err(e);
        }
    };

    // With --on-lost ignore the user accepted a command that outlives the lock.
    let mut deadman = if fenced {
        Some(DeadMan::arm(running.pid(), cli.kill_after)?)
    } else {
        None
    };
    let on_lost = match cli.on_lost {
        cli::OnLost::Terminate => OnLost::Terminate {
            kill_after: cli.kill_after,
        },
        cli::OnLost::Ignore => OnLost::Ignore,
    };
    let ended = supervise::wait(
        &mut running,
        &router,
        &mut session,
        cli.check_interval,
        on_lost,
        &label,
    )?;
    // Reaped when `deadman` goes out of scope, after the release (or before a --min-hold).
    if let Some(deadman) = &mut deadman {
        deadman.disarm();
    }
    step!("command exited: {}", ended.status);
    if let Some(why) = ended.lost {
        // The session is gone or no longer holds the lock: there is nothing to release.
        return match cli.on_lost {
            cli::OnLost::Terminate => Err(fail(
                Failure::LockLost,
                format!("lock \"{label}\" was lost while the command ran ({why})"),
            )),
            cli::OnLost::Ignore => Ok(exit::child_code(ended.status)),
        };
    }
    if let Some(min_hold) = cli.min_hold {
        let left = min_hold.saturating_sub(acquired_at.elapsed());
        if !left.is_zero() {
            // Nothing to hurry for: reap the switch now, not leave it a zombie for the hold.
            drop(deadman.take());
            step!(
                "holding the lock {} more (--min-hold)",
                duration::format(left)
            );
            if let Some(sig) = router.pause(left) {
                step!("signal {sig} ends the --min-hold early");
            }
        }
    }
    session.release(ended.status.success())?;
    step!("released lock \"{label}\"");
    Ok(exit::child_code(ended.status))
}

/// What the command learns about its lock.
fn child_env(label: &str, held: &Held, cli: &Cli) -> Vec<(String, String)> {
    let mut env = vec![
        ("PGLOCK_KEY".into(), label.to_string()),
        ("PGLOCK_LOCK_ID".into(), held.id.sql_args()),
        ("PGLOCK_SCOPE".into(), cli.scope.name().into()),
    ];
    if let Some((slot, _)) = held.slot {
        env.push(("PGLOCK_SLOT".into(), slot.to_string()));
    }
    env
}

enum Waited {
    Held(Box<Session>),
    Interrupted(i32),
}

/// Connects and waits for the lock. Failures that may pass (see [`crate::retry`]) are retried
/// with jittered backoff: the first connection for --retry-connect, a broken connection or a
/// full house within --timeout when one is given.
fn wait_for_lock(
    cli: &Cli,
    opener: &Opener,
    router: &Router,
    request: Request,
    label: &str,
) -> Result<Waited> {
    let started = Instant::now();
    let deadline = request
        .timeout
        .filter(|_| !request.nowait)
        .map(|t| started + t);
    let window = Window {
        nowait: request.nowait,
        connect_until: started + cli.retry_connect,
        deadline,
    };
    let mut retry = Retry::new(opener, request.scope, label, cli.quiet, window);
    let pause = |d| router.pause(d);
    loop {
        let began = Instant::now();
        let mut session = match opener.open() {
            Ok(session) => session,
            Err(e) => match retry.failed(&e, Stage::Connect { began }, &pause) {
                Verdict::Again => continue,
                Verdict::Interrupted(sig) => return Ok(Waited::Interrupted(sig)),
                Verdict::TimedOut(why) => return Err(timed_out(cli, label, &why)),
                Verdict::Unavailable | Verdict::Fatal(_) => return Err(opener.failure(&e)),
            },
        };
        retry.connected();
        let mut attempt = request.clone();
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            // --timeout bounds the wait, and connecting ate it all: one last try without
            // waiting still takes a free lock, or finds out who holds it.
            attempt.nowait = left.is_zero();
            attempt.timeout = Some(left);
        }
        if attempt.nowait {
            step!("trying lock \"{label}\" (id {})", request.id);
        } else {
            step!("waiting for lock \"{label}\" (id {})", request.id);
        }
        if let Some(sig) = router.waiting(session.canceller()) {
            return Ok(Waited::Interrupted(sig));
        }
        let watch = (!attempt.nowait)
            .then(|| {
                Watch::start(&Wait {
                    database_url: cli.server.database_url.as_deref(),
                    id: request.id,
                    label,
                    shared: cli.shared,
                    app_name: opener.application_name(),
                    verbose: cli.verbose,
                    quiet: cli.quiet,
                })
            })
            .flatten();
        let asked = Instant::now();
        let acquired = session.acquire(&attempt, &|| router.interrupted().is_some());
        drop(watch);
        router.idle();
        if let Some(sig) = router.interrupted() {
            step!("interrupted by signal {sig} while waiting; giving up");
            // Closing the connection also drops the lock if the grant raced with the cancel.
            return Ok(Waited::Interrupted(sig));
        }
        match acquired {
            Ok(Acquired::Held) => {
                step!(
                    "acquired lock \"{label}\" after {}",
                    duration::format(started.elapsed())
                );
                return Ok(Waited::Held(Box::new(session)));
            }
            Ok(outcome @ (Acquired::Busy | Acquired::TimedOut)) => {
                let outcome = if request.nowait {
                    outcome
                } else {
                    Acquired::TimedOut
                };
                return Err(conflict(
                    cli,
                    label,
                    outcome,
                    Some((&mut session, &attempt)),
                ));
            }
            Ok(Acquired::Cancelled) => anyhow::bail!("the server cancelled the lock wait"),
            Err(e) => match retry.failed(&e, Stage::Lock { asked }, &pause) {
                Verdict::Again => continue,
                Verdict::Interrupted(sig) => return Ok(Waited::Interrupted(sig)),
                Verdict::TimedOut(why) => return Err(timed_out(cli, label, &why)),
                Verdict::Unavailable => return Err(opener.failure(&e)),
                Verdict::Fatal(why) => {
                    return Err(anyhow::anyhow!("cannot take lock \"{label}\": {why}"));
                }
            },
        }
    }
}

/// The lock was not obtained: a message unless --quiet, and the conflict status. When the lock
/// connection is still there, the message names the holder; that costs a query, so it is only
/// asked for when the message will be printed.
fn conflict(
    cli: &Cli,
    label: &str,
    outcome: Acquired,
    session: Option<(&mut Session, &Request)>,
) -> anyhow::Error {
    if cli.quiet {
        // main prints nothing for an empty message.
        return fail(Failure::Conflict, "");
    }
    let timed_out = (outcome == Acquired::TimedOut).then(|| cli.timeout.unwrap_or_default());
    let message = match (session, timed_out) {
        (Some((session, req)), _) => status::conflict_message(session, req, label, timed_out),
        (None, Some(waited)) => format!(
            "timed out after {} waiting for lock \"{label}\"",
            duration::format(waited)
        ),
        (None, None) => format!("lock \"{label}\" is busy"),
    };
    fail(Failure::Conflict, message)
}

/// --timeout ran out while pglock could not even wait in the lock's queue: the conflict status,
/// saying what kept it out.
fn timed_out(cli: &Cli, label: &str, why: &str) -> anyhow::Error {
    let plain = conflict(cli, label, Acquired::TimedOut, None);
    if cli.quiet {
        return plain;
    }
    fail(
        Failure::Conflict,
        format!("{}; {why}", exit::message(&plain)),
    )
}

impl Guard for Session {
    fn socket(&self) -> Option<RawFd> {
        Session::socket(self)
    }

    fn readable(&mut self) -> Result<(), String> {
        Session::readable(self)
    }

    fn check(&mut self, limit: Duration) -> Result<(), String> {
        Session::check(self, limit)
    }
}
