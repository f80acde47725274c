//! The run ledger: a table of runs in the same database as the locks, so that a fleet can run a
//! job once per period (`--once-per`), hand a failed run to the next waiting host, and answer
//! "did it succeed, where, how long did it take?" (`history`, `check`, `metrics`).
//!
//! Layers: [`record`] is what a lock-and-run calls (`run/` calls it; nothing here knows the
//! run path or the command's loop), and [`delay`] how long it waits after a holder whose
//! session the server ended; the subcommands ([`init`], [`history`], [`check`],
//! [`metrics`], [`prune`]) stand alone; [`sql`] holds every statement and [`table`] the one name
//! spliced into them. All times are the server's.
//!
//! Only `pglock init` runs DDL. A run that needs a table that is missing or not writable exits
//! 78 (EX_CONFIG) before its command starts.

pub mod check;
pub mod delay;
pub mod history;
pub mod init;
pub mod metrics;
pub mod prune;
pub mod record;
pub mod sql;
pub mod table;

use crate::appname::{AppName, Observer};
use crate::conninfo;
use crate::exit::{Failure, fail};
use crate::key::Target;
use crate::pg::{Opener, Session, describe_error, error::is_transient};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Duration;
use table::Table;

/// A ledger subcommand as the command line asked for it (`options` builds it from clap's).
/// Each carries the table and `--database-url` (None: the PG* variables, as psql).
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Init(InitArgs),
    History(HistoryArgs),
    Check(CheckArgs),
    Metrics(MetricsArgs),
    Prune(PruneArgs),
}

#[derive(Debug, Clone, PartialEq)]
pub struct InitArgs {
    pub print: bool,
    /// Roles, already quoted as identifiers.
    pub grant: Vec<String>,
    pub table: Table,
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HistoryArgs {
    /// The runs of this `key` column value (a key, or `lock-id:ID`); None: every key.
    pub key: Option<String>,
    pub since: Option<Duration>,
    pub last: Option<u32>,
    pub json: bool,
    pub table: Table,
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CheckArgs {
    pub target: Target,
    pub critical: Duration,
    pub warning: Option<Duration>,
    pub table: Table,
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricsArgs {
    pub output: Option<PathBuf>,
    pub table: Table,
    pub database_url: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PruneArgs {
    pub older_than: Duration,
    pub dry_run: bool,
    pub table: Table,
    pub database_url: Option<String>,
}

/// Runs one of the ledger's subcommands; the exit status.
pub fn command(request: &Request) -> Result<u8> {
    match request {
        Request::Init(args) => init::command(args),
        Request::History(args) => history::command(args),
        Request::Check(args) => Ok(check::command(args)),
        Request::Metrics(args) => metrics::command(args),
        Request::Prune(args) => prune::command(args),
    }
}

/// A subcommand's one connection, named `pglock-ledger@host:pid` so that it never reads as a
/// lock holder.
fn connect(database_url: &Option<String>) -> Result<Session> {
    let target = conninfo::resolve(database_url.as_deref(), &conninfo::process_env)?;
    let name = AppName::observer(Observer::Ledger).encoded();
    // Keepalives matter to connections that stay open; this one lives for a few statements.
    let opener = Opener::new(&target, &name, None, Duration::from_secs(5))?;
    opener.open().map_err(|e| opener.failure(&e))
}

/// SQLSTATEs that mean the ledger table cannot be used as it is: undefined table, schema or
/// column, no privilege, a read-only server.
const NOT_USABLE: [&str; 5] = ["42P01", "3F000", "42703", "42501", "25006"];

/// The error for a failed ledger statement: 78 with what to do when the table is missing or not
/// writable, 69 when the connection broke, 1 otherwise.
pub fn failure(table: &Table, e: &tokio_postgres::Error) -> anyhow::Error {
    let why = describe_error(e);
    let state = e.code().map(|c| c.code());
    let hint = match state {
        Some("42501") => format!(
            "a DBA can grant what a runner needs with 'pglock init{} --grant ROLE'",
            ledger_flag(table)
        ),
        Some("25006") => "the server is read-only; pglock needs the primary".into(),
        // An earlier pglock's table: runs keyed by the key's text, without lock_id.
        Some("42703") => format!(
            "it was made by an earlier pglock; upgrade it with 'pglock init{}' (as its owner), \
             or apply 'pglock init --print'",
            ledger_flag(table)
        ),
        _ => format!(
            "create it with 'pglock init{}' (or apply 'pglock init --print')",
            ledger_flag(table)
        ),
    };
    match state {
        Some(s) if NOT_USABLE.contains(&s) => fail(
            Failure::Config,
            format!("ledger table {table} is missing or not writable ({why}): {hint}"),
        ),
        _ if is_transient(e) => fail(
            Failure::Unavailable,
            format!("ledger table {table}: connection failed: {why}"),
        ),
        _ => anyhow::anyhow!("ledger table {table}: {why}"),
    }
}

/// ` --ledger TABLE` when the table is not the default, for hints.
fn ledger_flag(table: &Table) -> String {
    if table.to_string() == table::DEFAULT {
        String::new()
    } else {
        format!(" --ledger {table}")
    }
}

/// An RFC 3339 time from the server as people read it: `2026-11-26 03:00:01 UTC`.
pub fn display_time(rfc3339: &str) -> String {
    match rfc3339.get(..19) {
        Some(head) => format!("{} UTC", head.replacen('T', " ", 1)),
        None => rfc3339.to_string(),
    }
}

/// Seconds as a short duration: `2h13m`.
pub fn display_secs(secs: f64) -> String {
    crate::duration::format(Duration::try_from_secs_f64(secs.max(0.0)).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_like_the_rest_of_pglock() {
        assert_eq!(
            display_time("2026-11-26T03:00:01.250000Z"),
            "2026-11-26 03:00:01 UTC"
        );
        assert_eq!(display_secs(7980.4), "2h13m");
        assert_eq!(display_secs(-1.0), "0ms");
    }

    #[test]
    fn hints_name_a_table_that_is_not_the_default() {
        assert_eq!(ledger_flag(&Table::parse(table::DEFAULT).unwrap()), "");
        assert_eq!(
            ledger_flag(&Table::parse("ops.runs").unwrap()),
            " --ledger ops.runs"
        );
    }
}
