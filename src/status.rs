//! Who holds what: the holder report printed on a conflict, and the `status`, `list` and `key`
//! subcommands.
//!
//! Everything comes from one query over pg_locks joined to pg_stat_activity, sent with the simple
//! protocol so that it also works through PgBouncer. pglock's own sessions are recognised by
//! their application_name, `pglock:<key>@<host>:<pid>`; a key read from it is trusted only when
//! it hashes to the lock's id, so a shortened name or a `--lock-id` label never passes for a key.
//!
//! What "since" means. pg_locks records when a waiter started waiting (`waitstart`, PG 14+) but
//! nothing about when a holder got the lock. A pglock holder tags the lock checks it runs with
//! its grant time (pg::sql::GRANTED_TAG), and its last query is visible in pg_stat_activity, so for
//! it we report that. Otherwise, for an idle holder we report `state_change`, the moment its last
//! statement ended: the lock was taken by that statement or an earlier one, so it has been held
//! at least that long (for a pglock that has not run a check yet, the lock call is that
//! statement). For a holder busy running a statement the server cannot tell; we report its
//! `backend_start`, the earliest moment it could have taken the lock.

use crate::cli::{KeyArgs, ListArgs, Server, StatusArgs, Sub};
use crate::key::LockId;
use crate::lock::Request;
use crate::pg::sql::Scope;
use crate::pg::{self, Opener, Session};
use crate::{conninfo, duration, exit, step};
use anyhow::{Context, Result};
use postgres::SimpleQueryMessage;
use serde_json::{Value, json};
use std::time::Duration;

/// One pg_locks row of an advisory lock, with what pg_stat_activity says about its session.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: LockId,
    /// The key, when a pglock session on this lock carries it in its application_name.
    pub key: Option<String>,
    pub shared: bool,
    pub granted: bool,
    /// None for a prepared transaction, which holds locks without a backend.
    pub pid: Option<i32>,
    pub application_name: Option<String>,
    pub user: Option<String>,
    /// None for a Unix-socket connection, or when hidden.
    pub client_addr: Option<String>,
    pub state: Option<String>,
    /// ISO 8601 UTC timestamps.
    pub backend_start: Option<String>,
    pub held_since: Option<String>,
    pub waiting_since: Option<String>,
    /// Seconds since held_since (holders) or waiting_since (waiters), by the server's clock.
    pub age_secs: Option<i64>,
    /// 1 for the first waiter in line; None for holders.
    pub position: Option<i64>,
    /// False when our role may not see this session's details in pg_stat_activity.
    pub visible: bool,
    /// The role we are connected as.
    pub current_user: String,
}

/// The query behind every report. `filter` is a condition on pg_locks aliased `l`.
///
/// waitstart is read through to_jsonb so that servers before 14, which lack the column, fall back
/// to the start of the waiting statement instead of failing. Queue positions follow wait start,
/// the order in which PostgreSQL grants waiters.
pub fn rows_sql(filter: &str) -> String {
    let ts = |col: &str| {
        format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
    };
    format!(
        "WITH r AS (\
           SELECT l.classid, l.objid, l.objsubid, l.mode, l.granted, l.pid, \
                  a.application_name, a.usename, host(a.client_addr) AS client_addr, a.state, \
                  a.backend_start, \
                  CASE WHEN NOT l.granted THEN NULL \
                       WHEN a.query ~ '^{tag}[0-9]{{1,15}} ' \
                       THEN to_timestamp(substring(a.query from '^{tag}([0-9]{{1,15}}) ')::bigint / 1000.0) \
                       WHEN a.state LIKE 'idle%' THEN a.state_change \
                       ELSE a.backend_start END AS held_since, \
                  CASE WHEN l.granted THEN NULL \
                       ELSE coalesce((to_jsonb(l) ->> 'waitstart')::timestamptz, a.query_start) \
                  END AS waiting_since, \
                  a.backend_start IS NOT NULL AS visible \
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
           WHERE {filter} AND l.pid IS DISTINCT FROM pg_backend_pid()) \
         SELECT classid, objid, objsubid, mode, granted, pid, application_name, usename, \
                client_addr, state, {}, {}, {}, \
                floor(extract(epoch FROM clock_timestamp() - coalesce(held_since, waiting_since)))::bigint, \
                CASE WHEN NOT granted THEN row_number() OVER (PARTITION BY classid, objid, objsubid, granted \
                     ORDER BY waiting_since NULLS LAST, pid) END, \
                visible, current_user \
         FROM r \
         ORDER BY classid, objid, objsubid, granted DESC, waiting_since NULLS LAST, held_since, pid",
        ts("backend_start"),
        ts("held_since"),
        ts("waiting_since"),
        tag = regex_quote(pg::sql::GRANTED_TAG),
    )
}

/// `text` as a POSIX regular expression matching itself, for a SQL string literal.
fn regex_quote(text: &str) -> String {
    let mut out = String::new();
    for c in text.chars() {
        if "\\^$.|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        if c == '\'' {
            out.push('\'');
        }
        out.push(c);
    }
    out
}

/// Every advisory lock in the current database.
pub const ALL_ADVISORY: &str = "l.locktype = 'advisory' AND \
    l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// Runs [`rows_sql`] (after `prefix`, which may be empty) and parses the rows.
pub fn query(
    session: &mut Session,
    prefix: &str,
    filter: &str,
) -> Result<Vec<Row>, postgres::Error> {
    let messages = session.query(&format!("{prefix}{}", rows_sql(filter)))?;
    let mut rows: Vec<Row> = messages
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => parse_row(|i| r.get(i)),
            _ => None,
        })
        .collect();
    share_keys(&mut rows);
    Ok(rows)
}

fn parse_row<'a>(get: impl Fn(usize) -> Option<&'a str>) -> Option<Row> {
    let text = |i| get(i).map(str::to_string);
    let flag = |i| get(i) == Some("t");
    let classid: u32 = get(0)?.parse().ok()?;
    let objid: u32 = get(1)?.parse().ok()?;
    let id = match get(2)? {
        "2" => LockId::Pair(classid as i32, objid as i32),
        _ => LockId::Big((u64::from(classid) << 32 | u64::from(objid)) as i64),
    };
    let application_name = text(6);
    let key = application_name
        .as_deref()
        .and_then(|name| key_from_application_name(name, id));
    Some(Row {
        id,
        key,
        shared: get(3) == Some("ShareLock"),
        granted: flag(4),
        pid: get(5).and_then(|p| p.parse().ok()),
        application_name,
        user: text(7),
        client_addr: text(8),
        state: text(9),
        backend_start: text(10),
        held_since: text(11),
        waiting_since: text(12),
        age_secs: get(13).and_then(|s| s.parse().ok()),
        position: get(14).and_then(|s| s.parse().ok()),
        visible: flag(15),
        current_user: text(16).unwrap_or_default(),
    })
}

/// The key in `pglock:<key>@<host>:<pid>`, if it really is the key of `id`.
pub fn key_from_application_name(name: &str, id: LockId) -> Option<String> {
    let (label, _host_pid) = name.strip_prefix("pglock:")?.rsplit_once('@')?;
    (!label.is_empty() && LockId::from_key(label) == id).then(|| label.to_string())
}

/// A key is a property of the lock: once one session on it names it, every row of it gets it.
fn share_keys(rows: &mut [Row]) {
    let known: Vec<(LockId, String)> = rows
        .iter()
        .filter_map(|r| Some((r.id, r.key.clone()?)))
        .collect();
    for row in rows.iter_mut().filter(|r| r.key.is_none()) {
        row.key = known
            .iter()
            .find(|(id, _)| *id == row.id)
            .map(|(_, k)| k.clone());
    }
}

fn is_pglock(row: &Row) -> bool {
    row.application_name
        .as_deref()
        .is_some_and(|a| a.starts_with("pglock:"))
}

/// `2026-11-26T03:00:01.000Z` as `2026-11-26 03:00:01 UTC`.
pub fn human_time(iso: &str) -> String {
    match iso.get(..19) {
        Some(t) => format!("{} UTC", t.replacen('T', " ", 1)),
        None => iso.to_string(),
    }
}

fn since_text(iso: Option<&str>, age: Option<i64>) -> Option<String> {
    let iso = iso?;
    let age = age.map_or(String::new(), |s| format!(" ({})", age_text(s)));
    Some(format!("{}{age}", human_time(iso)))
}

/// An age in whole seconds, as the server's clock gives it: `0s`, `59s`, `3m05s`, `2h13m`.
pub fn age_text(secs: i64) -> String {
    duration::format(Duration::from_secs(secs.max(0) as u64)).replace("ms", "s")
}

/// A session in one phrase: `pglock:k@web-3:48121 (backend 5150, client 10.0.4.7) since ...`.
/// pglock's application_name already says who it is; for anything else the user name helps.
pub fn describe(row: &Row) -> String {
    let name = match row.application_name.as_deref() {
        Some(a) if !a.is_empty() => a.to_string(),
        _ => "a session without application_name".to_string(),
    };
    let mut parts = Vec::new();
    if !is_pglock(row) {
        if let Some(user) = &row.user {
            parts.push(format!("user {user}"));
        }
    }
    match row.pid {
        Some(pid) => parts.push(format!("backend {pid}")),
        None => parts.push("a prepared transaction".into()),
    }
    if row.visible {
        parts.push(format!(
            "client {}",
            row.client_addr.as_deref().unwrap_or("local socket")
        ));
    } else if row.pid.is_some() {
        parts.push(format!(
            "details hidden from role {}: it needs pg_read_all_stats",
            row.current_user
        ));
    }
    let mut text = format!("{name} ({})", parts.join(", "));
    let since = if row.granted {
        &row.held_since
    } else {
        &row.waiting_since
    };
    if let Some(since) = since_text(since.as_deref(), row.age_secs) {
        text.push_str(" since ");
        text.push_str(&since);
    }
    text
}

/// The rows that keep a request of this mode out: every holder for an exclusive request, the
/// exclusive holders for a shared one.
fn blockers(rows: &[Row], shared: bool) -> Vec<&Row> {
    rows.iter()
        .filter(|r| r.granted && !(shared && r.shared))
        .collect()
}

/// One phrase naming what keeps the lock from us: `held by X` or, when a shared request only
/// queues behind an exclusive waiter, `awaited first by Y`.
pub fn holder_phrase(rows: &[Row], shared: bool) -> Option<String> {
    let holders = blockers(rows, shared);
    if let Some(first) = holders.first() {
        let more = match holders.len() - 1 {
            0 => String::new(),
            1 => " and 1 other".into(),
            n => format!(" and {n} others"),
        };
        return Some(format!("held by {}{more}", describe(first)));
    }
    rows.iter()
        .find(|r| !r.granted)
        .map(|w| format!("awaited first by {}", describe(w)))
}

/// The one line printed when --nowait finds the lock busy or --timeout expires. It asks the lock
/// connection, which is open and idle at that point, so a conflict costs one more round trip and
/// no extra connection. Falls back to the plain message if the question fails.
pub fn conflict_message(
    session: &mut Session,
    req: &Request,
    label: &str,
    timed_out: Option<Duration>,
) -> String {
    // A lock_timeout error leaves an xact-scope transaction aborted; end it first.
    let prefix = if req.scope == Scope::Xact {
        "ROLLBACK; "
    } else {
        ""
    };
    let lead = match timed_out {
        Some(waited) => format!("timed out after {}: ", duration::format(waited)),
        None => String::new(),
    };
    // A semaphore is busy when all its slots are: name their holders.
    let (filter, what) = match &req.semaphore {
        None => (req.id.pg_locks_filter(), format!("lock \"{label}\"")),
        Some(sem) => (
            sem.slots
                .iter()
                .map(|slot| format!("({})", slot.pg_locks_filter()))
                .collect::<Vec<_>>()
                .join(" OR "),
            format!("lock \"{label}\" (all {} slots)", sem.slots.len()),
        ),
    };
    match query(session, prefix, &format!("({filter})")) {
        Ok(rows) => match holder_phrase(&rows, req.shared) {
            Some(phrase) => format!("{lead}{what} is {phrase}"),
            None => format!("{lead}lock \"{label}\" was busy; its holder has released it since"),
        },
        Err(e) => {
            step!(
                "cannot find out who holds the lock: {}",
                pg::describe_error(&e)
            );
            format!("{lead}lock \"{label}\" is busy")
        }
    }
}

/// Runs a subcommand and returns the exit status.
pub fn command(sub: &Sub) -> Result<u8> {
    match sub {
        Sub::Status(args) => status(args),
        Sub::List(args) => list(args),
        Sub::Key(args) => key(args),
    }
}

fn connect(server: &Server, what: &str) -> Result<Session> {
    let target = conninfo::resolve(server.database_url.as_deref(), &conninfo::process_env)?;
    // `pglock-status@host:pid`: visibly pglock, but not `pglock:` so it never reads as a holder.
    let name =
        crate::appname::application_name("").replacen("pglock:", &format!("pglock-{what}"), 1);
    // Keepalives matter to connections that stay open; this one lives for one query.
    let opener = Opener::new(&target, &name, None, Duration::from_secs(5))?;
    opener.open().map_err(|e| opener.failure(&e))
}

fn fetch(session: &mut Session, filter: &str) -> Result<Vec<Row>> {
    query(session, "", filter)
        .map_err(|e| anyhow::anyhow!("{}", pg::describe_error(&e)))
        .context("cannot read pg_locks")
}

fn status(args: &StatusArgs) -> Result<u8> {
    let (label, id) = args.which.resolve(args.hash.key_hash);
    let mut session = connect(&args.server, "status")?;
    let rows = fetch(&mut session, &id.pg_locks_filter())?;
    let held = rows.iter().any(|r| r.granted);
    if args.json {
        let (holders, waiters): (Vec<&Row>, Vec<&Row>) = rows.iter().partition(|r| r.granted);
        let out = json!({
            "key": args.which.key,
            "lock_id": lock_id_json(id),
            "held": held,
            "holders": holders.into_iter().map(row_json).collect::<Vec<_>>(),
            "waiters": waiters.into_iter().map(row_json).collect::<Vec<_>>(),
        });
        println!("{}", pretty(&out));
    } else {
        let name = match &args.which.key {
            Some(k) => format!("lock \"{k}\" (id {id})"),
            None => format!("lock {label}"),
        };
        println!("{name} is {}", if held { "held" } else { "free" });
        if !rows.is_empty() {
            print_table(&rows, false);
        }
    }
    note_hidden(&rows);
    Ok(if held {
        exit::STATUS_HELD
    } else {
        exit::STATUS_FREE
    })
}

fn list(args: &ListArgs) -> Result<u8> {
    let mut session = connect(&args.server, "list")?;
    let rows = fetch(&mut session, ALL_ADVISORY)?;
    if args.json {
        let out: Vec<Value> = rows.iter().map(row_json).collect();
        println!("{}", pretty(&Value::Array(out)));
    } else if rows.is_empty() {
        println!("no advisory locks in this database");
    } else {
        print_table(&rows, true);
    }
    note_hidden(&rows);
    Ok(0)
}

fn key(args: &KeyArgs) -> Result<u8> {
    let id = match (&args.key, args.lock_id) {
        (Some(k), _) => {
            println!("key       {k}");
            args.hash.key_hash.id(k)
        }
        (None, Some(id)) => id,
        (None, None) => unreachable!("clap requires KEY or --lock-id"),
    };
    let (classid, objid, objsubid) = id.pg_locks_coordinates();
    let kind = match id {
        LockId::Big(_) => "one bigint: pg_advisory_lock(bigint)",
        LockId::Pair(..) => "two int4s: pg_advisory_lock(int4, int4)",
    };
    println!("lock id   {id}  ({kind})");
    println!("classid   {classid}");
    println!("objid     {objid}");
    println!("objsubid  {objsubid}");
    println!();
    println!("-- Who holds it and who waits for it (run it in the database pglock uses):");
    println!(
        "SELECT l.pid, l.mode, l.granted, a.application_name, a.usename, a.client_addr,\n       \
         a.backend_start, a.state_change\n  \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid\n \
         WHERE l.locktype = 'advisory'\n   \
         AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())\n   \
         AND l.classid = {classid} AND l.objid = {objid} AND l.objsubid = {objsubid};"
    );
    Ok(0)
}

fn lock_id_json(id: LockId) -> Value {
    match id {
        LockId::Big(v) => json!(v),
        LockId::Pair(a, b) => json!([a, b]),
    }
}

/// One pg_locks row as JSON; the schema is documented in the README ("Finding who holds a lock").
fn row_json(r: &Row) -> Value {
    let (classid, objid, objsubid) = r.id.pg_locks_coordinates();
    json!({
        "lock_id": lock_id_json(r.id),
        "classid": classid,
        "objid": objid,
        "objsubid": objsubid,
        "key": r.key,
        "mode": if r.shared { "shared" } else { "exclusive" },
        "granted": r.granted,
        "pid": r.pid,
        "application_name": r.application_name,
        "user": r.user,
        "client_addr": r.client_addr,
        "state": r.state,
        "backend_start": r.backend_start,
        "held_since": r.held_since,
        "waiting_since": r.waiting_since,
        "queue_position": r.position,
        "details_visible": r.visible,
    })
}

fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

fn print_table(rows: &[Row], with_lock: bool) {
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut header = vec![];
    if with_lock {
        header.push("LOCK");
    }
    header.extend([
        "MODE",
        "STATE",
        "PID",
        "APPLICATION",
        "USER",
        "CLIENT",
        "SINCE",
    ]);
    table.push(header.into_iter().map(String::from).collect());
    for r in rows {
        let mut line = Vec::new();
        if with_lock {
            line.push(r.key.clone().unwrap_or_else(|| r.id.to_string()));
        }
        let hidden = || "?".to_string();
        line.push(if r.shared { "shared" } else { "exclusive" }.into());
        line.push(match r.position {
            Some(n) if !r.granted => format!("waiting #{n}"),
            _ if !r.granted => "waiting".into(),
            _ => "held".into(),
        });
        line.push(r.pid.map_or("-".into(), |p| p.to_string()));
        line.push(
            r.application_name
                .clone()
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "-".into()),
        );
        line.push(r.user.clone().unwrap_or_else(|| "-".into()));
        line.push(if r.visible {
            r.client_addr.clone().unwrap_or_else(|| "local".into())
        } else {
            hidden()
        });
        let since = if r.granted {
            &r.held_since
        } else {
            &r.waiting_since
        };
        line.push(since_text(since.as_deref(), r.age_secs).unwrap_or_else(hidden));
        table.push(line);
    }
    print!("{}", align(&table));
}

/// Left-aligned columns two spaces apart; the last column is not padded.
fn align(table: &[Vec<String>]) -> String {
    let cols = table.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            table
                .iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for row in table {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(cell);
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// Empty fields must not look like facts: say why they are empty.
fn note_hidden(rows: &[Row]) {
    if let Some(r) = rows.iter().find(|r| !r.visible && r.pid.is_some()) {
        eprintln!(
            "pglock: role {} may not see other roles' sessions in pg_stat_activity: client \
             addresses, states and times are missing (grant it pg_read_all_stats)",
            r.current_user
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> Row {
        Row {
            id: LockId::from_key("nightly-report"),
            key: None,
            shared: false,
            granted: true,
            pid: Some(5150),
            application_name: Some("pglock:nightly-report@web-3:48121".into()),
            user: Some("app".into()),
            client_addr: Some("10.0.4.7".into()),
            state: Some("idle".into()),
            backend_start: Some("2026-11-26T02:59:59.000Z".into()),
            held_since: Some("2026-11-26T03:00:01.250Z".into()),
            waiting_since: None,
            age_secs: Some(7980),
            position: None,
            visible: true,
            current_user: "postgres".into(),
        }
    }

    #[test]
    fn describes_a_pglock_holder_like_the_issue() {
        assert_eq!(
            format!(
                "lock \"nightly-report\" is {}",
                holder_phrase(&[row()], false).unwrap()
            ),
            "lock \"nightly-report\" is held by pglock:nightly-report@web-3:48121 (backend 5150, \
             client 10.0.4.7) since 2026-11-26 03:00:01 UTC (2h13m)"
        );
    }

    #[test]
    fn describes_other_holders_with_their_user() {
        let mut r = row();
        r.application_name = Some("psql".into());
        r.client_addr = None;
        assert_eq!(
            describe(&r),
            "psql (user app, backend 5150, client local socket) since 2026-11-26 03:00:01 UTC (2h13m)"
        );
        r.visible = false;
        r.held_since = None;
        assert_eq!(
            describe(&r),
            "psql (user app, backend 5150, details hidden from role postgres: it needs \
             pg_read_all_stats)"
        );
    }

    #[test]
    fn shared_requests_are_blocked_only_by_exclusive_holders() {
        let mut shared = row();
        shared.shared = true;
        let mut waiter = row();
        waiter.granted = false;
        waiter.pid = Some(6000);
        waiter.application_name = Some("app".into());
        let rows = [shared.clone(), waiter];
        assert!(holder_phrase(&rows, false).unwrap().starts_with("held by "));
        assert!(
            holder_phrase(&rows, true)
                .unwrap()
                .starts_with("awaited first by app (user app, backend 6000")
        );
        let two = [row(), row()];
        assert!(
            holder_phrase(&two, false)
                .unwrap()
                .ends_with(" and 1 other")
        );
    }

    #[test]
    fn keys_come_only_from_names_that_hash_to_the_id() {
        let id = LockId::from_key("a@b");
        assert_eq!(
            key_from_application_name("pglock:a@b@host:1", id).as_deref(),
            Some("a@b")
        );
        assert_eq!(key_from_application_name("pglock:a@host:1", id), None);
        assert_eq!(key_from_application_name("psql", id), None);
        // pglock --lock-id 42 names itself pglock:42@..., which is not the key of lock 42.
        assert_eq!(
            key_from_application_name("pglock:42@host:1", LockId::Big(42)),
            None
        );
    }

    #[test]
    fn parses_both_id_forms() {
        let cells = |sub: &'static str| {
            move |i: usize| -> Option<&'static str> {
                [
                    "4294967295",
                    "7",
                    sub,
                    "ShareLock",
                    "f",
                    "12",
                    "x",
                    "u",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "3",
                    "2",
                    "t",
                    "me",
                ]
                .get(i)
                .copied()
            }
        };
        let big = parse_row(cells("1")).unwrap();
        assert_eq!(big.id, LockId::Big(-4294967289));
        let pair = parse_row(cells("2")).unwrap();
        assert_eq!(pair.id, LockId::Pair(-1, 7));
        assert!(pair.shared && !pair.granted);
        assert_eq!(pair.position, Some(2));
    }

    #[test]
    fn quotes_regex_and_sql() {
        assert_eq!(regex_quote("/* a.b */"), "/\\* a\\.b \\*/");
        assert_eq!(regex_quote("it's"), "it''s");
        assert!(rows_sql("true").contains("'^/\\* pglock: granted [0-9]{1,15} '"));
    }

    #[test]
    fn aligns_columns() {
        let t = vec![
            vec!["A".to_string(), "BB".into(), "C".into()],
            vec!["aaa".to_string(), "b".into(), "c".into()],
        ];
        assert_eq!(align(&t), "A    BB  C\naaa  b   c\n");
    }
}
