//! Rows as people and programs read them: the one-phrase holder description of conflicts and
//! the status line, the tables of `status` and `list`, and their JSON.
//!
//! Names are shown decoded (`pglock:déploy@web-3:4812`, see appname.rs) with control
//! characters escaped; JSON keeps `application_name` exactly as the server has it and gives the
//! decoded key in `key`.

use super::model::{Part, Row};
use crate::appname::{Label, printable};
use crate::duration;
use crate::key::LockId;
use serde_json::{Value, json};
use std::time::Duration;

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

/// The session's name as a person reads it: pglock's decoded, anyone else's as it is.
fn session_name(row: &Row) -> Option<String> {
    match (&row.app, row.application_name.as_deref()) {
        (Some(app), _) => Some(app.to_string()),
        (None, Some(name)) if !name.is_empty() => Some(printable(name)),
        _ => None,
    }
}

/// A session in one phrase: `pglock:k@web-3:48121 (backend 5150, client 10.0.4.7) since ...`.
/// pglock's application_name already says who it is; for anything else the user name helps.
pub fn describe(row: &Row) -> String {
    let name = session_name(row).unwrap_or_else(|| "a session without application_name".into());
    let mut parts = Vec::new();
    if !row.is_pglock() {
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
    if let Some(since) = since_text(since(row), row.age_secs) {
        text.push_str(" since ");
        text.push_str(&since);
    }
    text
}

fn since(row: &Row) -> Option<&str> {
    if row.granted {
        row.held_since.as_deref()
    } else {
        row.waiting_since.as_deref()
    }
}

/// The rows that keep a request of this mode out: every holder for an exclusive request, the
/// exclusive holders for a shared one. A semaphore's queue is not held by anyone who blocks.
fn blockers(rows: &[Row], shared: bool) -> Vec<&Row> {
    rows.iter()
        .filter(|r| r.granted && !(shared && r.shared) && r.part() != Some(Part::Queue))
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

/// What a row's lock is, for the LOCK column: `deploy-prod`, `deploy-prod slot 2`,
/// `deploy-prod queue`, `--lock-id 42`; a lock no pglock session names is shown by its id.
pub fn lock_text(row: &Row) -> String {
    match &row.known {
        Some(known) => match known.part {
            Part::Whole => known.label.to_string(),
            part => format!("{} {}", known.label, part_text(part)),
        },
        None => Label::LockId(row.id).to_string(),
    }
}

/// `slot 2`, `queue`, or `-` for a plain lock.
pub fn part_text(part: Part) -> String {
    match part {
        Part::Whole => "-".into(),
        Part::Slot(i) => format!("slot {i}"),
        Part::Queue => "queue".into(),
    }
}

/// The STATE column. A semaphore's queue is a lock too: its holder is next in line for a slot,
/// and its waiters come after it.
fn state_text(row: &Row, rows: &[Row]) -> String {
    let state = queue_state(row, rows);
    match &row.accepts {
        Some(word) => format!("{state}, {word}"),
        None => state,
    }
}

fn queue_state(row: &Row, rows: &[Row]) -> String {
    let queue = row.part() == Some(Part::Queue);
    match (row.granted, row.position) {
        (true, _) if queue => "next in line".into(),
        (true, _) => "held".into(),
        (false, Some(n)) if queue => {
            let head = rows.iter().any(|r| r.id == row.id && r.granted);
            format!("in line #{}", n + i64::from(head))
        }
        (false, Some(n)) => format!("waiting #{n}"),
        (false, None) => "waiting".into(),
    }
}

/// The first column of a table, if any.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum First {
    None,
    /// `list`: which lock (see [`lock_text`]).
    Lock,
    /// `status` of a semaphore: which slot.
    Slot,
}

/// The rows as an aligned table with a header.
pub fn table(rows: &[Row], first: First) -> String {
    let mut header = match first {
        First::None => vec![],
        First::Lock => vec!["LOCK"],
        First::Slot => vec!["SLOT"],
    };
    header.extend([
        "MODE",
        "STATE",
        "PID",
        "APPLICATION",
        "USER",
        "CLIENT",
        "SINCE",
    ]);
    let mut table: Vec<Vec<String>> = vec![header.into_iter().map(String::from).collect()];
    for r in rows {
        let mut line = match first {
            First::None => vec![],
            First::Lock => vec![lock_text(r)],
            First::Slot => vec![r.part().map_or("-".into(), part_text)],
        };
        line.extend(cells(r, rows));
        table.push(line);
    }
    align(&table)
}

fn cells(r: &Row, rows: &[Row]) -> [String; 7] {
    let hidden = || "?".to_string();
    let dash = || "-".to_string();
    [
        if r.shared { "shared" } else { "exclusive" }.into(),
        state_text(r, rows),
        r.pid.map_or_else(dash, |p| p.to_string()),
        session_name(r).unwrap_or_else(dash),
        r.user.clone().unwrap_or_else(dash),
        if r.visible {
            r.client_addr.clone().unwrap_or_else(|| "local".into())
        } else {
            hidden()
        },
        since_text(since(r), r.age_secs).unwrap_or_else(hidden),
    ]
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
            line.push_str(cell);
            if c + 1 < row.len() {
                let pad = widths[c] - cell.chars().count() + 2;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

pub fn lock_id_json(id: LockId) -> Value {
    match id {
        LockId::Big(v) => json!(v),
        LockId::Pair(a, b) => json!([a, b]),
    }
}

/// One pg_locks row as JSON; the schema is documented in the README ("Finding who holds a lock").
pub fn row_json(r: &Row) -> Value {
    let (classid, objid, objsubid) = r.id.pg_locks_coordinates();
    let for_lock_id = match r.known.as_ref().map(|k| &k.label) {
        Some(Label::LockId(id)) => lock_id_json(*id),
        _ => Value::Null,
    };
    json!({
        "lock_id": lock_id_json(r.id),
        "classid": classid,
        "objid": objid,
        "objsubid": objsubid,
        "key": r.key(),
        "for_lock_id": for_lock_id,
        "slot": match r.part() { Some(Part::Slot(i)) => json!(i), _ => Value::Null },
        "queue": r.part() == Some(Part::Queue),
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
        "accepts": r.accepts,
    })
}

pub fn pretty(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
}

/// Empty fields must not look like facts: why they are empty, when some are.
pub fn hidden_note(rows: &[Row]) -> Option<String> {
    let r = rows.iter().find(|r| !r.visible && r.pid.is_some())?;
    Some(format!(
        "pglock: role {} may not see other roles' sessions in pg_stat_activity: client \
         addresses, states and times are missing (grant it pg_read_all_stats)",
        r.current_user
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key;
    use crate::report::model::name_locks;
    use crate::report::model::tests::{named, row};

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
        let mut r = named(row(), "psql");
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
    fn names_are_shown_decoded_and_escaped() {
        let r = named(row(), "pglock:d%C3%A9ploy%0A@web-3:7/3");
        assert!(
            describe(&r).starts_with("pglock:déploy\\n@web-3:7/3 (backend 5150, client "),
            "{}",
            describe(&r)
        );
        let r = named(row(), "evil\u{1b}[2J");
        assert!(describe(&r).starts_with("evil\\u{1b}[2J (user app,"));
    }

    #[test]
    fn shared_requests_are_blocked_only_by_exclusive_holders() {
        let mut shared = row();
        shared.shared = true;
        let mut waiter = named(row(), "app");
        waiter.granted = false;
        waiter.pid = Some(6000);
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
    fn the_lock_column_tells_keys_ids_and_slots_apart() {
        let mut key42 = named(row(), "pglock:42@h:1");
        key42.id = LockId::from_key("42");
        let mut id42 = named(row(), "pglock:#42@h:2");
        id42.id = LockId::Big(42);
        let mut foreign = named(row(), "psql");
        foreign.id = LockId::Pair(1, 2);
        let mut slot = named(row(), "pglock:#42@h:3/2");
        slot.id = key::slot_id("lock-id:42", 1);
        let mut head = named(row(), "pglock:s@h:4/2");
        head.id = key::gate_id("s");
        let mut waiter = head.clone();
        waiter.granted = false;
        waiter.position = Some(1);
        let mut rows = [key42, id42, foreign, slot, head, waiter];
        name_locks(&mut rows, vec![]);
        let text: Vec<String> = rows.iter().map(lock_text).collect();
        assert_eq!(
            text,
            [
                "42",
                "--lock-id 42",
                "--lock-id 1,2",
                "--lock-id 42 slot 1",
                "s queue",
                "s queue"
            ]
        );
        assert_eq!(state_text(&rows[4], &rows), "next in line");
        assert_eq!(state_text(&rows[5], &rows), "in line #2");
        let json = row_json(&rows[3]);
        assert_eq!(
            (&json["slot"], &json["for_lock_id"]),
            (&json!(1), &json!(42))
        );
        assert_eq!(
            (&json["key"], &json["queue"]),
            (&Value::Null, &json!(false))
        );
        assert_eq!(row_json(&rows[4])["key"], "s");
        assert_eq!(row_json(&rows[4])["queue"], true);
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
