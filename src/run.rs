//! One pglock run from start to finish: connect, wait for the lock, run the command, release.

use crate::cli::Cli;
use crate::exit::{self, Failure, fail};
use crate::key::LockId;
use crate::lock::{self, Acquired, Request, Session};
use crate::signals::Router;
use crate::supervise::{self, Job};
use crate::{conninfo, duration, step};
use anyhow::Result;
use std::time::Instant;

/// Runs the command under the lock and returns pglock's exit status.
pub fn run(cli: &Cli) -> Result<u8> {
    let (label, id) = match (&cli.key, cli.lock_id) {
        (Some(key), _) => (key.clone(), LockId::from_key(key)),
        (None, Some(id)) => (id.to_string(), id),
        (None, None) => unreachable!("clap requires --key or --lock-id"),
    };
    let target = conninfo::resolve(cli.database_url.as_deref(), &conninfo::process_env)?;
    target.warn_if_password_exposed();
    let router = Router::start()?;
    let mut session = Session::connect(&target, &lock::application_name(&label))?;

    let request = Request {
        id,
        shared: cli.shared,
        scope: cli.scope,
        nowait: cli.no_wait(),
        timeout: cli.timeout,
    };
    if request.nowait {
        step!("trying lock \"{label}\" (id {id})");
    } else {
        step!("waiting for lock \"{label}\" (id {id})");
    }
    let started = Instant::now();
    router.waiting(session.canceller());
    let acquired = session.acquire(&request);
    router.idle();
    if let Some(sig) = router.interrupted() {
        step!("interrupted by signal {sig} while waiting; giving up");
        // Closing the connection drops the lock too if the grant raced with the cancel.
        drop(session);
        return Ok(exit::signal_code(sig));
    }
    match acquired? {
        Acquired::Held => {
            step!(
                "acquired lock \"{label}\" after {}",
                duration::format(started.elapsed())
            )
        }
        Acquired::Busy => {
            return Err(busy(cli, format!("lock \"{label}\" is busy")));
        }
        Acquired::TimedOut => {
            let waited = duration::format(cli.timeout.unwrap_or_default());
            return Err(busy(
                cli,
                format!("timed out after {waited} waiting for lock \"{label}\""),
            ));
        }
        Acquired::Cancelled => anyhow::bail!("the lock wait was cancelled by the server"),
    }

    let (program, args) = cli.program();
    let job = Job {
        program,
        args,
        env: vec![
            ("PGLOCK_KEY".into(), label.clone()),
            ("PGLOCK_LOCK_ID".into(), id.sql_args()),
            ("PGLOCK_SCOPE".into(), cli.scope.name().into()),
        ],
    };
    let mut running = match router.spawn(|| supervise::spawn(&job)) {
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

    let socket = session.socket();
    let status = supervise::wait(&mut running, &router, socket, || true)?;
    step!("command exited: {status}");
    session.release(status.success())?;
    step!("released lock \"{label}\"");
    Ok(exit::child_code(status))
}

/// A conflict: printed unless --quiet, and exits with the conflict status.
fn busy(cli: &Cli, message: String) -> anyhow::Error {
    if cli.quiet {
        // main prints nothing for an empty message.
        return fail(Failure::Conflict, "");
    }
    fail(Failure::Conflict, message)
}
