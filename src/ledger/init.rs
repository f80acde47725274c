//! `pglock init`: creates the ledger table, its indexes and a runner's grants, or prints the
//! SQL for a DBA (`--print`). The run path never runs DDL; this is the one place that does.
//!
//! Idempotent and safe to run from many hosts at once: the script takes a fixed advisory
//! transaction lock first, so concurrent inits run one after the other and the later ones find
//! everything in place. "Already exists" from a creator outside pglock racing with us counts as
//! success: the script is run once more, and then finds it.

use super::InitArgs;
use super::{connect, sql};
use crate::key::LockId;
use crate::output;
use crate::pg::session::final_column;
use crate::pg::{Session, describe_error};
use anyhow::Result;

/// The advisory lock that serializes `pglock init`s, whatever the table.
fn init_lock() -> LockId {
    LockId::from_key("pglock init")
}

/// SQLSTATEs of a concurrent creation that got there first: duplicate table or object, and the
/// unique violation in pg_type/pg_class that a CREATE TABLE IF NOT EXISTS race can end with.
const RACED: [&str; 3] = ["42P07", "42710", "23505"];

pub fn command(args: &InitArgs) -> Result<u8> {
    let table = &args.table;
    let script = sql::init(table, init_lock(), &args.grant);
    if args.print {
        output::emit(&script)?;
        return Ok(0);
    }
    let mut session = connect(&args.database_url)?;
    let existed = match apply(&mut session, &script) {
        Err(e) if raced(&e) => apply(&mut session, &script),
        other => other,
    }
    .map_err(|e| failure(table, &e))?;
    let roles = args.grant.join(", ");
    let done = match (existed, roles.is_empty()) {
        (true, true) => format!("ledger table {table} already exists; indexes checked"),
        (false, true) => format!("created ledger table {table}"),
        (true, false) => format!("ledger table {table} already exists; granted {roles}"),
        (false, false) => format!("created ledger table {table}; granted {roles}"),
    };
    output::emit(&format!("{done}\n"))?;
    Ok(0)
}

/// Runs the script; whether the table existed before.
fn apply(session: &mut Session, script: &str) -> Result<bool, tokio_postgres::Error> {
    let result = session.query(script);
    if result.is_err() {
        // The failed statement left the transaction aborted; end it before anything else.
        let _ = session.query("ROLLBACK");
    }
    Ok(final_column(&result?, "existed").as_deref() == Some("t"))
}

fn raced(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| RACED.contains(&c.code()))
}

/// init's own errors: no right to create is a configuration problem (78), with what to do.
fn failure(table: &super::Table, e: &tokio_postgres::Error) -> anyhow::Error {
    match e.code().map(|c| c.code()) {
        Some("42501") => crate::exit::fail(
            crate::exit::Failure::Config,
            format!(
                "cannot create ledger table {table} ({}): run pglock init as a role that may \
                 create tables in schema {}, or have a DBA apply 'pglock init --print'",
                describe_error(e),
                table.schema
            ),
        ),
        Some("3F000") => crate::exit::fail(
            crate::exit::Failure::Config,
            format!(
                "cannot create ledger table {table}: schema {} does not exist (CREATE SCHEMA {} \
                 first)",
                table.schema, table.schema
            ),
        ),
        _ => super::failure(table, e),
    }
}
