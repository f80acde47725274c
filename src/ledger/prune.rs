//! `pglock prune`: deletes old runs in batches, each its own short transaction, so that a large
//! backlog never holds locks or a snapshot for long. It always keeps each key's and each lock's
//! newest finished run and newest success, and every run in progress: `check` and `metrics`
//! read them by key, `--once-per` by lock (pruning the success that a `--once-per` window rests
//! on would run the job again).

use super::PruneArgs;
use super::{connect, sql};
use crate::{duration, output};
use anyhow::Result;
use tokio_postgres::types::ToSql;

/// Rows per DELETE.
const BATCH: i64 = 1000;

pub fn command(args: &PruneArgs) -> Result<u8> {
    let table = &args.table;
    let age = args.older_than.as_secs_f64();
    let older = duration::format(args.older_than);
    let mut session = connect(&args.database_url)?;
    if args.dry_run {
        let statement = sql::prune_count(table);
        let rows = session
            .query_typed(&statement.text, &[&age], statement.types)
            .map_err(|e| super::failure(table, &e))?;
        let n: i64 = rows.first().map_or(Ok(0), |r| r.try_get(0))?;
        output::emit(&format!(
            "would delete {n} runs older than {older} from {table}\n"
        ))?;
        return Ok(0);
    }
    let statement = sql::prune_batch(table);
    let params: [&(dyn ToSql + Sync); 2] = [&age, &BATCH];
    let mut total = 0i64;
    loop {
        let rows = session
            .query_typed(&statement.text, &params, statement.types)
            .map_err(|e| super::failure(table, &e))?;
        let deleted: i64 = rows.first().map_or(Ok(0), |r| r.try_get(0))?;
        total += deleted;
        if deleted < BATCH {
            break;
        }
    }
    output::emit(&format!(
        "deleted {total} runs older than {older} from {table}\n"
    ))?;
    Ok(0)
}
