//! `pglock history`: recorded runs, newest first, as a table or as JSON.

use super::HistoryArgs;
use super::{connect, display_secs, display_time, sql};
use crate::output;
use anyhow::Result;
use serde_json::{Value, json};
use tokio_postgres::Row;
use tokio_postgres::types::ToSql;

/// Without --last or --since, the newest 20.
const DEFAULT_LAST: i64 = 20;

/// One run, as the ledger has it.
#[derive(Debug, Clone, PartialEq)]
pub struct Run {
    pub id: i64,
    pub key: String,
    pub slot: Option<i32>,
    pub host: String,
    pub pid: i32,
    pub backend_pid: i32,
    pub db_user: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// Seconds, up to now for a run in progress.
    pub duration: f64,
    pub status: String,
    pub exit_code: Option<i32>,
    pub command: Option<String>,
    /// How long the run waited for the lock, in ms (NULL for runs of an earlier pglock).
    pub waited_ms: Option<i64>,
    /// How many times the command started (`--retries`); NULL while running.
    pub attempts: Option<i32>,
    /// The tail of the command's output, when it was captured.
    pub output_tail: Option<String>,
}

pub fn command(args: &HistoryArgs) -> Result<u8> {
    let table = &args.table;
    let key = args.key.clone();
    let since = args.since.map(|d| d.as_secs_f64());
    let last = match (args.last, args.since) {
        (Some(n), _) => Some(i64::from(n)),
        (None, Some(_)) => None,
        (None, None) => Some(DEFAULT_LAST),
    };
    let mut session = connect(&args.database_url)?;
    let statement = sql::history(table);
    let params: [&(dyn ToSql + Sync); 3] = [&key, &since, &last];
    let rows = session
        .query_typed(&statement.text, &params, statement.types)
        .map_err(|e| super::failure(table, &e))?;
    let runs = rows.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    if args.json {
        let all: Vec<Value> = runs.iter().map(to_json).collect();
        output::emit(&format!(
            "{}\n",
            serde_json::to_string_pretty(&Value::Array(all))?
        ))?;
    } else {
        output::emit(&text(&runs, key.is_none()))?;
    }
    Ok(0)
}

fn parse(row: &Row) -> Result<Run, tokio_postgres::Error> {
    Ok(Run {
        id: row.try_get("id")?,
        key: row.try_get("key")?,
        slot: row.try_get("slot")?,
        host: row.try_get("host")?,
        pid: row.try_get("pid")?,
        backend_pid: row.try_get("backend_pid")?,
        db_user: row.try_get("db_user")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        duration: row.try_get("duration")?,
        status: row.try_get("status")?,
        exit_code: row.try_get("exit_code")?,
        command: row.try_get("command")?,
        waited_ms: row.try_get("waited_ms")?,
        attempts: row.try_get("attempts")?,
        output_tail: row.try_get("output_tail")?,
    })
}

/// The documented JSON object of one run.
pub fn to_json(run: &Run) -> Value {
    json!({
        "id": run.id,
        "key": run.key,
        "slot": run.slot,
        "host": run.host,
        "pid": run.pid,
        "backend_pid": run.backend_pid,
        "db_user": run.db_user,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "duration_seconds": (run.duration * 1000.0).round() / 1000.0,
        "status": run.status,
        "exit_code": run.exit_code,
        "command": run.command,
        "wait_seconds": run.waited_ms.map(|ms| ms as f64 / 1000.0),
        "attempts": run.attempts,
        "output_tail": run.output_tail,
    })
}

/// The table: a header and one line per run, with the key first when there are several.
fn text(runs: &[Run], with_key: bool) -> String {
    let mut lines = vec![
        [
            "KEY",
            "STARTED (UTC)",
            "WAIT",
            "DURATION",
            "STATUS",
            "EXIT",
            "TRIES",
            "HOST",
            "PID",
            "USER",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for run in runs {
        lines.push(vec![
            run.key.clone(),
            display_time(&run.started_at)
                .trim_end_matches(" UTC")
                .to_string(),
            run.waited_ms
                .map_or("-".into(), |ms| display_secs(ms as f64 / 1000.0)),
            display_secs(run.duration),
            run.status.clone(),
            run.exit_code.map_or("-".into(), |c| c.to_string()),
            run.attempts.map_or("-".into(), |n| n.to_string()),
            run.host.clone(),
            run.pid.to_string(),
            run.db_user.clone(),
        ]);
    }
    if !with_key {
        for line in &mut lines {
            line.remove(0);
        }
    }
    align(&lines)
}

/// Columns padded to their widest cell, two spaces apart; the last one is not padded.
fn align(rows: &[Vec<String>]) -> String {
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..rows.first().map_or(0, Vec::len)).map(width).collect();
    let mut out = String::new();
    for row in rows {
        let last = row.len() - 1;
        for (i, cell) in row.iter().enumerate() {
            // Keys and host names are text from users: a newline would break the table.
            let cell = cell.replace(['\n', '\r', '\t'], " ");
            if i == last {
                out.push_str(&cell);
            } else {
                out.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> Run {
        Run {
            id: 7,
            key: "nightly-report".into(),
            slot: None,
            host: "web-3".into(),
            pid: 48121,
            backend_pid: 5150,
            db_user: "app".into(),
            started_at: "2026-11-26T03:00:01.250000Z".into(),
            finished_at: Some("2026-11-26T03:02:13.500000Z".into()),
            duration: 132.25,
            status: "succeeded".into(),
            exit_code: Some(0),
            command: None,
            waited_ms: Some(1500),
            attempts: Some(1),
            output_tail: None,
        }
    }

    #[test]
    fn text_has_a_header_and_a_line_per_run() {
        let mut running = run();
        running.status = "running".into();
        running.exit_code = None;
        running.attempts = None;
        running.host = "web-5".into();
        assert_eq!(
            text(&[running, run()], false),
            "STARTED (UTC)        WAIT  DURATION  STATUS     EXIT  TRIES  HOST   PID    USER\n\
             2026-11-26 03:00:01  1.5s  2m12s     running    -     -      web-5  48121  app\n\
             2026-11-26 03:00:01  1.5s  2m12s     succeeded  0     1      web-3  48121  app\n"
        );
        assert!(text(&[run()], true).starts_with("KEY             STARTED (UTC)"));
    }

    #[test]
    fn json_has_the_documented_fields() {
        let v = to_json(&run());
        for field in [
            "id",
            "key",
            "slot",
            "host",
            "pid",
            "backend_pid",
            "db_user",
            "started_at",
            "finished_at",
            "duration_seconds",
            "status",
            "exit_code",
            "command",
            "wait_seconds",
            "attempts",
            "output_tail",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
        assert_eq!(v["duration_seconds"], 132.25);
        assert_eq!(v["exit_code"], 0);
        assert_eq!(v["wait_seconds"], 1.5);
    }
}
