//! The run hooks: what a recorded run (`--record`, `--once-per`) writes before its command starts
//! and after it ends. One statement each ([`sql::begin`], [`sql::finish`]), so recording costs
//! two round trips.
//!
//! Where they run: in session scope on the lock's own connection, idle while the command runs.
//! In xact scope on a connection of their own in autocommit: inside the lock's transaction a
//! row would be invisible to the other hosts until COMMIT, gone at ROLLBACK, and its xid would
//! hold back vacuum for the whole run.

use super::sql;
use crate::appname::{AppName, Observer};
use crate::exit::{Outcome, child_code};
use crate::key::LockId;
use crate::options::{Fencing, Record, Target};
use crate::pg::session::Failed;
use crate::pg::sql::Scope;
use crate::pg::{Opener, Session, describe_error, error::is_transient};
use crate::{duration, exit, step, warn};
use anyhow::Result;
use postgres::Row;
use postgres::types::ToSql;
use std::process::ExitStatus;
use std::time::Duration;

/// The least time a ledger statement gets before its connection is cut: it writes one row
/// (and may wait for a commit's fsync), so a short --check-interval must not bound it.
const MIN_LIMIT: Duration = Duration::from_secs(5);

/// The lock a run holds, as the ledger needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct Holding {
    pub id: LockId,
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
    /// For the ledger's own connection in xact scope.
    pub connect_timeout: Duration,
}

/// How the run begins: the command runs (with these variables), or it does not.
pub enum Begun {
    Run(Box<Recorder>, Vec<(String, String)>),
    Skip(Outcome),
}

/// A run's row, to be finished.
pub struct Recorder {
    finish: sql::Statement,
    table: String,
    run_id: i64,
    /// xact scope: the ledger's own connection, and how to open another if it breaks.
    own: Option<(Session, Opener)>,
    limit: Duration,
}

/// How the run ended, as the ledger records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct End {
    pub status: &'static str,
    /// pglock's own exit status.
    pub exit_code: u8,
}

impl End {
    /// The command never started (a signal, or it could not be executed); pglock exits `code`.
    pub fn not_started(code: u8) -> End {
        End {
            status: "failed",
            exit_code: code,
        }
    }

    /// The command ran and ended with `status`; `lost` if the lock was lost meanwhile.
    pub fn ran(status: ExitStatus, lost: bool, fencing: Fencing) -> End {
        let code = child_code(status);
        match (lost, fencing) {
            (true, Fencing::Terminate { .. }) => End {
                status: "lost",
                exit_code: exit::LOCK_LOST,
            },
            (true, Fencing::Ignore) => End {
                status: "lost",
                exit_code: code,
            },
            (false, _) if status.success() => End {
                status: "succeeded",
                exit_code: code,
            },
            (false, _) => End {
                status: "failed",
                exit_code: code,
            },
        }
    }
}

/// After the grant, before the command: one statement that cleans up after dead holders,
/// decides (--once-per, --max-attempts) and inserts the `running` row if the command runs.
pub fn begin(cx: &Context, opener: &Opener, lock: &mut Session) -> Result<Begun> {
    let limit = cx.check_interval.max(MIN_LIMIT);
    let mut own = match cx.holding.scope {
        Scope::Session => None,
        Scope::Xact => Some(open_own(opener, cx.connect_timeout)?),
    };
    let session = match &mut own {
        Some((session, _)) => session,
        None => lock,
    };
    let row = run_begin(cx, session, limit)?;
    let verdict: String = row.try_get("verdict")?;
    let abandoned: i64 = row.try_get("abandoned")?;
    if abandoned > 0 {
        step!(
            "marked {abandoned} earlier run(s) of \"{}\" abandoned: their pglock died holding the \
             lock",
            cx.target.label
        );
    }
    match verdict.as_str() {
        "skip" => Ok(Begun::Skip(skipped(cx, &row)?)),
        "exhausted" => Ok(Begun::Skip(exhausted(cx, &row)?)),
        _ => {
            let run_id: i64 = row.try_get("run_id")?;
            let last: Option<String> = row.try_get("last_success")?;
            step!("recorded run {run_id} in {}", cx.record.table);
            let env = vec![
                ("PGLOCK_RUN_ID".to_string(), run_id.to_string()),
                ("PGLOCK_LAST_SUCCESS".to_string(), last.unwrap_or_default()),
            ];
            let recorder = Recorder {
                finish: sql::finish(&cx.record.table, guard(cx.holding)),
                table: cx.record.table.to_string(),
                run_id,
                own,
                limit,
            };
            Ok(Begun::Run(Box::new(recorder), env))
        }
    }
}

/// In session scope the end statement also checks that this session still holds the lock,
/// since it runs there; an xact lock lives on the other connection.
fn guard(holding: Holding) -> Option<LockId> {
    (holding.scope == Scope::Session).then_some(holding.id)
}

/// The ledger's own connection, `pglock-ledger@host:pid`: it holds no lock, so its name does
/// not read as a holder's. Same target, settings and TLS connector as the lock's.
fn open_own(opener: &Opener, connect_timeout: Duration) -> Result<(Session, Opener)> {
    let ledger = Observer::Ledger;
    let name = AppName::parse(opener.application_name()).map_or_else(
        || AppName::observer(ledger),
        |ours| ours.as_observer(ledger),
    );
    let own = opener.renamed(&name.encoded(), connect_timeout);
    let session = own.open().map_err(|e| own.failure(&e))?;
    Ok((session, own))
}

fn run_begin(cx: &Context, session: &mut Session, limit: Duration) -> Result<Row> {
    let r = cx.record;
    let host = nix::unistd::gethostname()
        .map(|h| h.to_string_lossy().into_owned())
        .unwrap_or_else(|_| "unknown".into());
    let slot = cx.holding.slot.map(|s| s as i32);
    let pid = std::process::id() as i32;
    let window = r.once_per.map(|d| d.as_secs_f64());
    let max_attempts = r.max_attempts.min(i32::MAX as u32) as i32;
    // Holding an exclusive lock (or slot) proves that no other pglock runs under it.
    let abandon = !cx.holding.shared;
    let params: [&(dyn ToSql + Sync); 8] = [
        &cx.target.base,
        &slot,
        &host,
        &pid,
        &r.command,
        &window,
        &max_attempts,
        &abandon,
    ];
    let statement = sql::begin(&r.table);
    let rows = session
        .query_typed_within(&statement.text, &params, statement.types, limit)
        .map_err(|e| match e {
            Failed::Error(e) => super::failure(&r.table, &e),
            Failed::NoAnswer(_) | Failed::Unwatched => crate::exit::fail(
                crate::exit::Failure::Unavailable,
                format!("ledger table {}: {e}", r.table),
            ),
        })?;
    rows.into_iter()
        .next()
        .ok_or_else(|| anyhow::anyhow!("ledger table {}: no answer row", r.table))
}

/// --once-per found a success within the window.
fn skipped(cx: &Context, row: &Row) -> Result<Outcome> {
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
fn exhausted(cx: &Context, row: &Row) -> Result<Outcome> {
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
    /// After the command, before the release: the run's end. `lock` is the lock's connection
    /// (used in session scope). A failure only warns: the row stays `running`, and the next
    /// holder marks it abandoned.
    pub fn finish(mut self, lock: &mut Session, end: End) {
        let outcome = match self.own.take() {
            None => self.send(lock, end),
            Some((mut own, opener)) => match self.send(&mut own, end) {
                // The ledger's connection sat idle through the command; a server-side idle
                // timeout or a pooler may have closed it. One new connection, one more try.
                Err(Failed::Error(e)) if is_transient(&e) => {
                    step!(
                        "ledger connection lost ({}); reconnecting",
                        describe_error(&e)
                    );
                    match opener.open() {
                        Ok(mut again) => self.send(&mut again, end),
                        Err(e) => Err(e),
                    }
                }
                other => other,
            },
        };
        match outcome {
            Ok(Some(status)) => step!("recorded run {} as {status}", self.run_id),
            Ok(None) => warn!(
                "run {} in {} was no longer running when the command ended (marked abandoned by \
                 another holder?); its end is not recorded",
                self.run_id, self.table
            ),
            Err(why) => warn!(
                "could not record the end of run {} in {} ({why}); the next holder of the lock \
                 will mark it abandoned",
                self.run_id, self.table
            ),
        }
    }

    /// The end statement; the status it wrote, or None if the row was no longer running.
    fn send(&self, session: &mut Session, end: End) -> Result<Option<String>, Failed> {
        let code = i32::from(end.exit_code);
        let params: [&(dyn ToSql + Sync); 3] = [&self.run_id, &end.status, &code];
        let rows = session.query_typed_within(
            &self.finish.text,
            &params,
            self.finish.types,
            self.limit,
        )?;
        Ok(rows.first().and_then(|r| r.try_get(0).ok()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn ends_say_what_pglock_exits_with() {
        let term = Fencing::Terminate {
            kill_after: Duration::from_secs(1),
        };
        let ok = ExitStatus::from_raw(0);
        let three = ExitStatus::from_raw(3 << 8);
        let killed = ExitStatus::from_raw(9);
        assert_eq!(End::ran(ok, false, term).status, "succeeded");
        assert_eq!(
            End::ran(three, false, term),
            End {
                status: "failed",
                exit_code: 3
            }
        );
        assert_eq!(End::ran(killed, false, term).exit_code, 137);
        assert_eq!(
            End::ran(ok, true, term),
            End {
                status: "lost",
                exit_code: 74
            }
        );
        assert_eq!(
            End::ran(three, true, Fencing::Ignore),
            End {
                status: "lost",
                exit_code: 3
            }
        );
        assert_eq!(End::not_started(127).status, "failed");
    }
}
