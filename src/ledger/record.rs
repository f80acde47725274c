//! The run hooks: what a recorded run (`--record`, `--once-per`) writes before its command starts
//! and after it ends. One statement each, so recording costs two round trips.
//!
//! Both go over the lock's own connection, never one that other hosts' waiters could take:
//! through a transaction-pooling PgBouncer whose pool the waiters fill, a second connection of
//! the holder's would get no server connection until a waiter leaves, and the waiters leave only
//! after the holder releases (issue 18, item 11).
//!
//! - Session scope ([`sql::begin`], [`sql::finish`]): the connection is idle while the command
//!   runs, and its statements commit at once, so the `running` row is visible to everyone.
//! - Xact scope ([`sql::decide`], [`sql::record`]): inside the lock's transaction a row would be
//!   invisible until COMMIT, and its xid would hold back vacuum for the whole run. So the
//!   statement before the command only reads, and the whole run is written as one row at its
//!   end, in the lock's transaction, whose COMMIT ends the lock: the next holder sees the row.
//!
//! A lock lost while the command ran took its connection (or its claim) with it: its end goes
//! over a fresh connection, `pglock-ledger@host:pid`, bounded like every ledger statement.

use super::delay::Vanished;
use super::sql;
use super::table::Table;
use crate::appname::{AppName, Observer};
use crate::exit::{Outcome, child_code};
use crate::key::LockId;
use crate::key::Target;
use crate::pg::session::Failed;
use crate::pg::sql::Scope;
use crate::pg::{Opener, Session, describe_error, error::is_transient};
use crate::{duration, exit, step, warn};
use anyhow::Result;
use std::process::ExitStatus;
use std::time::Duration;
use tokio_postgres::types::ToSql;

/// The least time a ledger statement gets before its connection is cut: it writes one row
/// (and may wait for a commit's fsync), so a short --check-interval must not bound it.
const MIN_LIMIT: Duration = Duration::from_secs(5);

/// The run ledger: --record, or --once-per, which implies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub table: Table,
    /// --once-per: skip the command when a run succeeded within this window.
    pub once_per: Option<Duration>,
    /// --max-attempts: with --once-per, failures within the window that stop further runs.
    pub max_attempts: u32,
    /// --done-exit-code: the status of a skip.
    pub done_exit_code: u8,
    /// --record-command: the command line as the ledger stores it.
    pub command: Option<String>,
}

/// The lock a run holds, as the ledger needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Holding {
    /// The lock taken: the lock's id, or the semaphore slot's.
    pub id: LockId,
    /// What the ledger keys runs by: the lock's id, or the semaphore's gate (with `slot`).
    pub lock: LockId,
    pub slot: Option<usize>,
    pub shared: bool,
    pub scope: Scope,
}

/// What the run settings say about the run about to start.
pub struct Context<'a> {
    pub record: &'a Record,
    pub target: &'a Target,
    pub holding: Holding,
    pub quiet: bool,
    pub check_interval: Duration,
    /// --kill-after, recorded for the next holder's lock-delay; None with --on-lost ignore, whose
    /// command is not stopped at a loss.
    pub kill_after: Option<Duration>,
    /// For a connection of the ledger's own, once the lock's is gone.
    pub connect_timeout: Duration,
    /// How long the run waited for the lock, from the first connect to the grant.
    pub waited: Duration,
}

/// How the run begins: the command runs (with these variables), or it does not.
pub enum Begun {
    Run(Box<Recorder>, Vec<(String, String)>),
    Skip(Outcome),
}

/// A run to be recorded when it ends.
pub struct Recorder {
    table: Table,
    row: Row,
    kind: Kind,
    /// A connection of the ledger's own, for when the lock's is gone.
    spare: Opener,
    limit: Duration,
    /// Earlier runs of the lock found still running: the lock-delay before the command.
    vanished: Vanished,
}

/// The run's row, as the lock and the host know it.
struct Row {
    lock_id: String,
    key: String,
    slot: Option<i32>,
    host: String,
    pid: i32,
    command: Option<String>,
    /// Whether holding the lock proves that no other pglock runs under it (not when shared).
    exclusive: bool,
    /// How soon the command is stopped after a loss, for the next holder's lock-delay.
    kill_after_ms: Option<i64>,
    check_interval_ms: i64,
    /// How long the run waited for the lock, connecting included.
    waited_ms: i64,
}

enum Kind {
    /// Session scope: the `running` row, and the statement that ends it on the lock's
    /// connection.
    Session { run_id: i64, finish: sql::Statement },
    /// Xact scope: nothing written yet; the run started then (RFC 3339, the server's clock).
    Xact { started: String },
}

/// Where the end of a run was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Committed already, or not written at all (a warning said so).
    Done,
    /// In the lock's transaction (xact scope): the release must COMMIT it, whatever the
    /// command's status.
    InLockTransaction,
}

/// How the run ended, as the ledger records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct End {
    pub status: &'static str,
    /// pglock's own exit status.
    pub exit_code: u8,
    /// How many times the command was started (`--retries`); 0 if it never was.
    pub attempts: u32,
    /// The tail of the command's output, when it was captured; None otherwise.
    pub output_tail: Option<String>,
}

impl End {
    fn new(status: &'static str, exit_code: u8, attempts: u32) -> End {
        End {
            status,
            exit_code,
            attempts,
            output_tail: None,
        }
    }

    /// The command never started (a signal, or it could not be executed); pglock exits `code`.
    /// `attempts`: the ones before, when a retry could not start.
    pub fn not_started(code: u8, attempts: u32) -> End {
        End::new("failed", code, attempts)
    }

    /// The lock was found lost after the grant, before the command started, or during a delay
    /// between retries (pglock exits 74): recorded as a lost run, over the ledger's own
    /// connection.
    pub fn lost_before_start(attempts: u32) -> End {
        End::new("lost", exit::LOCK_LOST, attempts)
    }

    /// --max-runtime ran out (pglock exits 124), while an attempt ran or between two.
    pub fn timed_out(attempts: u32) -> End {
        End::new("timeout", exit::TIMED_OUT, attempts)
    }

    /// The run ended by a signal between two attempts (pglock exits `code`, 128+N).
    pub fn interrupted(code: u8, attempts: u32) -> End {
        End::new("failed", code, attempts)
    }

    /// `--replace`: a newer run asked for the command to stop, and it was stopped; pglock exits
    /// `code`, its conflict status.
    pub fn replaced(code: u8, attempts: u32) -> End {
        End::new("replaced", code, attempts)
    }

    /// The command ran and ended with `status`; `lost` if the lock was lost meanwhile, and
    /// `stopped` if the command was stopped for that (pglock then exits 74; with `--on-lost
    /// ignore` it passes the command's status on).
    pub fn ran(status: ExitStatus, lost: bool, stopped: bool, attempts: u32) -> End {
        let code = child_code(status);
        match (lost, stopped) {
            (true, true) => End::new("lost", exit::LOCK_LOST, attempts),
            (true, false) => End::new("lost", code, attempts),
            (false, _) if status.success() => End::new("succeeded", code, attempts),
            (false, _) => End::new("failed", code, attempts),
        }
    }
}

/// After the grant, before the command: one statement on the lock's connection that decides
/// (--once-per, --max-attempts) and, in session scope, cleans up after dead holders and inserts
/// the `running` row if the command runs.
pub fn begin(cx: &Context, opener: &Opener, lock: &mut Session) -> Result<Begun> {
    let limit = cx.check_interval.max(MIN_LIMIT);
    let r = cx.record;
    let row = Row {
        lock_id: cx.holding.lock.sql_args(),
        key: cx.target.base.clone(),
        slot: cx.holding.slot.map(|s| s as i32),
        host: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_else(|_| "unknown".into()),
        pid: std::process::id() as i32,
        command: r.command.clone(),
        exclusive: !cx.holding.shared,
        kill_after_ms: cx.kill_after.map(millis),
        check_interval_ms: millis(cx.check_interval),
        waited_ms: millis(cx.waited),
    };
    let window = r.once_per.map(|d| d.as_secs_f64());
    let max_attempts = r.max_attempts.min(i32::MAX as u32) as i32;
    let answer = match cx.holding.scope {
        Scope::Session => {
            let params: [&(dyn ToSql + Sync); 12] = [
                &row.lock_id,
                &window,
                &max_attempts,
                &row.key,
                &row.slot,
                &row.host,
                &row.pid,
                &row.command,
                &row.exclusive,
                &row.kill_after_ms,
                &row.check_interval_ms,
                &row.waited_ms,
            ];
            ask(&r.table, lock, &sql::begin(&r.table), &params, limit)?
        }
        Scope::Xact => {
            let params: [&(dyn ToSql + Sync); 5] = [
                &row.lock_id,
                &window,
                &max_attempts,
                &row.slot,
                &row.exclusive,
            ];
            ask(&r.table, lock, &sql::decide(&r.table), &params, limit)?
        }
    };
    let verdict: String = answer.try_get("verdict")?;
    match verdict.as_str() {
        "skip" => return Ok(Begun::Skip(skipped(cx, &answer)?)),
        "exhausted" => return Ok(Begun::Skip(exhausted(cx, &answer)?)),
        _ => {}
    }
    let last: Option<String> = answer.try_get("last_success")?;
    let vanished = Vanished::from_row(&answer)?;
    let (kind, run_id) = match cx.holding.scope {
        Scope::Session => {
            if vanished.runs > 0 {
                step!(
                    "marked {} earlier run(s) of \"{}\" abandoned: their holder's session \
                     ended while they ran",
                    vanished.runs,
                    cx.target.label
                );
            }
            let run_id: i64 = answer.try_get("run_id")?;
            step!("recorded run {run_id} in {}", r.table);
            let finish = sql::finish(&r.table, Some(cx.holding.id));
            (Kind::Session { run_id, finish }, run_id.to_string())
        }
        Scope::Xact => {
            let started: String = answer.try_get("now")?;
            step!("the run goes into {} when it ends (xact scope)", r.table);
            (Kind::Xact { started }, String::new())
        }
    };
    let env = vec![
        ("PGLOCK_RUN_ID".to_string(), run_id),
        ("PGLOCK_LAST_SUCCESS".to_string(), last.unwrap_or_default()),
    ];
    let recorder = Recorder {
        table: r.table.clone(),
        row,
        kind,
        spare: spare(opener, cx.connect_timeout.min(limit)),
        limit,
        vanished,
    };
    Ok(Begun::Run(Box::new(recorder), env))
}

/// A duration as the ledger stores it: whole milliseconds.
fn millis(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// The ledger's own connection, `pglock-ledger@host:pid`: it holds no lock, so its name does
/// not read as a holder's. Same target, settings and TLS connector as the lock's; opened only
/// when needed.
fn spare(opener: &Opener, connect_timeout: Duration) -> Opener {
    let ledger = Observer::Ledger;
    let name = AppName::parse(opener.application_name()).map_or_else(
        || AppName::observer(ledger),
        |ours| ours.as_observer(ledger),
    );
    opener.renamed(&name.encoded(), connect_timeout)
}

/// One ledger statement before the command; its one row.
fn ask(
    table: &Table,
    session: &mut Session,
    statement: &sql::Statement,
    params: &[&(dyn ToSql + Sync)],
    limit: Duration,
) -> Result<tokio_postgres::Row> {
    let rows = session
        .query_typed_within(&statement.text, params, statement.types, limit)
        .map_err(|e| match e {
            Failed::Error(e) => super::failure(table, &e),
            Failed::NoAnswer(_) | Failed::Connect(_) => crate::exit::fail(
                crate::exit::Failure::Unavailable,
                format!("ledger table {table}: {e}"),
            ),
        })?;
    rows.into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("ledger table {table}: no answer row"))
}

/// --once-per found a success within the window.
fn skipped(cx: &Context, row: &tokio_postgres::Row) -> Result<Outcome> {
    let at: Option<String> = row.try_get("last_success")?;
    let host: Option<String> = row.try_get("last_host")?;
    let age: Option<f64> = row.try_get("last_age")?;
    let message = (!cx.quiet).then(|| {
        format!(
            "\"{}\" already succeeded {} ago ({} on {}); not running it again (--once-per {})",
            cx.target.label,
            super::display_secs(age.unwrap_or_default()),
            super::display_time(at.as_deref().unwrap_or("?")),
            host.as_deref().unwrap_or("?"),
            duration::format(cx.record.once_per.unwrap_or_default()),
        )
    });
    Ok(Outcome::Done {
        code: cx.record.done_exit_code,
        message,
    })
}

/// --max-attempts runs failed within the window.
fn exhausted(cx: &Context, row: &tokio_postgres::Row) -> Result<Outcome> {
    let failures: i64 = row.try_get("failures")?;
    Ok(Outcome::Exhausted(format!(
        "\"{}\" failed {failures} times within --once-per {} (--max-attempts {}); not running it \
         again before a run succeeds or the failures age out (see pglock history)",
        cx.target.label,
        duration::format(cx.record.once_per.unwrap_or_default()),
        cx.record.max_attempts,
    )))
}

impl Recorder {
    /// Earlier runs of the lock found still running, for the lock-delay before the command.
    pub fn vanished(&self) -> Vanished {
        self.vanished
    }

    /// After the command, before the release: the run's end. `lock` is the lock's connection.
    /// A failure only warns: in session scope the row stays `running` and the next holder marks
    /// it abandoned; in xact scope there is no row.
    pub fn finish(self, lock: &mut Session, end: End) -> Written {
        let lost = end.status == "lost";
        let outcome = if lost {
            // The lock's connection is gone, or no longer holds the lock (and, in xact scope,
            // its transaction is not committed): a connection of the ledger's own.
            self.on_spare(&end)
        } else {
            match self.send(lock, &end, true) {
                // The connection broke at the end: the lock went with it, but the command ran
                // under it; say how it ended from a connection of the ledger's own.
                Err(Failed::Error(e)) if is_transient(&e) => {
                    step!(
                        "ledger: {}; writing the end over a new connection",
                        describe_error(&e)
                    );
                    self.on_spare(&end)
                }
                Ok(status) if matches!(self.kind, Kind::Xact { .. }) => {
                    self.report(&Ok(status));
                    return Written::InLockTransaction;
                }
                other => other,
            }
        };
        self.report(&outcome);
        Written::Done
    }

    /// The end over a fresh connection, bounded by the connect timeout and the statement limit.
    fn on_spare(&self, end: &End) -> Result<Option<String>, Failed> {
        let mut session = self.spare.open()?;
        let outcome = self.send(&mut session, end, false);
        session.close();
        outcome
    }

    fn report(&self, outcome: &Result<Option<String>, Failed>) {
        let run = match &self.kind {
            Kind::Session { run_id, .. } => format!("run {run_id}"),
            Kind::Xact { .. } => "the run".to_string(),
        };
        let table = &self.table;
        match outcome {
            Ok(Some(status)) => step!("recorded {run} in {table} as {status}"),
            Ok(None) => warn!(
                "{run} in {table} was no longer running when the command ended (marked \
                 abandoned by another holder?); its end is not recorded"
            ),
            Err(why) => match self.kind {
                Kind::Session { .. } => warn!(
                    "could not record the end of {run} in {table} ({why}); the next holder of \
                     the lock will mark it abandoned"
                ),
                Kind::Xact { .. } => {
                    warn!("could not record {run} in {table} ({why}); it is not in the ledger")
                }
            },
        }
    }

    /// The end statement; the status it wrote, or None if the row was no longer running.
    /// `holding`: `session` is the lock's own connection.
    fn send(
        &self,
        session: &mut Session,
        end: &End,
        holding: bool,
    ) -> Result<Option<String>, Failed> {
        let code = i32::from(end.exit_code);
        let attempts = end.attempts.min(i32::MAX as u32) as i32;
        let rows = match &self.kind {
            Kind::Session { run_id, finish } => {
                // Off the lock's connection the lock cannot be checked, and is known lost.
                let unguarded;
                let statement = if holding {
                    finish
                } else {
                    unguarded = sql::finish(&self.table, None);
                    &unguarded
                };
                let params: [&(dyn ToSql + Sync); 5] =
                    [run_id, &end.status, &code, &attempts, &end.output_tail];
                session.query_typed_within(&statement.text, &params, statement.types, self.limit)?
            }
            Kind::Xact { started } => {
                let r = &self.row;
                // Only the holder may call other runs of the lock dead.
                let abandon = holding && r.exclusive;
                let params: [&(dyn ToSql + Sync); 15] = [
                    &r.lock_id,
                    &r.key,
                    &r.slot,
                    &r.host,
                    &r.pid,
                    &r.command,
                    &abandon,
                    started,
                    &end.status,
                    &code,
                    &r.kill_after_ms,
                    &r.check_interval_ms,
                    &r.waited_ms,
                    &attempts,
                    &end.output_tail,
                ];
                let statement = sql::record(&self.table);
                session.query_typed_within(&statement.text, &params, statement.types, self.limit)?
            }
        };
        Ok(rows.first().and_then(|r| r.try_get("status").ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn ends_say_what_pglock_exits_with() {
        let term = true;
        let ok = ExitStatus::from_raw(0);
        let three = ExitStatus::from_raw(3 << 8);
        let killed = ExitStatus::from_raw(9);
        let ends = |e: End| (e.status, e.exit_code);
        assert_eq!(End::ran(ok, false, term, 1).status, "succeeded");
        assert_eq!(ends(End::ran(three, false, term, 1)), ("failed", 3));
        assert_eq!(End::ran(killed, false, term, 1).exit_code, 137);
        assert_eq!(ends(End::ran(ok, true, term, 1)), ("lost", 74));
        assert_eq!(ends(End::ran(three, true, false, 1)), ("lost", 3));
        assert_eq!(End::not_started(127, 0).status, "failed");
        assert_eq!(ends(End::timed_out(2)), ("timeout", 124));
        assert_eq!(End::ran(three, false, term, 3).attempts, 3);
        assert_eq!(End::ran(ok, false, term, 1).output_tail, None);
    }
}
