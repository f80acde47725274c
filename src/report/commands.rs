//! The `status`, `list` and `key` subcommands: a connection of their own (`pglock-status@…`,
//! `pglock-list@…`), one query, and a report on stdout.
//!
//! A report is rendered whole and then written once. A write that fails (a full disk, a closed
//! terminal) ends pglock with status 1 and one `pglock:` line, never a panic; a reader that went
//! away (`pglock list | head`) ends it quietly through SIGPIPE, as with ls (main restores the
//! default disposition for subcommands).

use super::model::{self, Known, Part, Row};
use super::render::{self, First};
use super::sql::{self, Locks};
use crate::appname::{AppName, Label, Observer, printable};
use crate::key::{self, LockId};
use crate::lock::semaphore::MAX_SLOTS;
use crate::pg::{self, Opener, Session};
use crate::{conninfo, duration, exit, output};
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

/// A report subcommand as the command line asked for it (`options` builds it from clap's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Status(StatusArgs),
    List(ListArgs),
    Key(KeyArgs),
}

/// `pglock status`: the key (None for `--lock-id`), the lock's id, `--limit`, `--json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusArgs {
    pub key: Option<String>,
    pub id: LockId,
    pub limit: Option<u16>,
    pub json: bool,
    pub database_url: Option<String>,
}

/// `pglock list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListArgs {
    pub json: bool,
    pub database_url: Option<String>,
}

/// `pglock key`: the key (None for `--lock-id`), the lock's id, `--limit`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyArgs {
    pub key: Option<String>,
    pub id: LockId,
    pub limit: Option<u16>,
}

/// Runs a subcommand and returns the exit status.
pub fn command(request: &Request) -> Result<u8> {
    match request {
        Request::Status(args) => status(args),
        Request::List(args) => list(args),
        Request::Key(args) => key(args),
    }
}

fn connect(database_url: &Option<String>, observer: Observer) -> Result<Session> {
    let target = conninfo::resolve(database_url.as_deref(), &conninfo::process_env)?;
    let name = AppName::observer(observer).encoded();
    // Keepalives matter to connections that stay open; this one lives for one query.
    let opener = Opener::new(&target, &name, None, Duration::from_secs(5))?;
    let mut session = opener.open().map_err(|e| opener.failure(&e))?;
    // That query gets as long as the connect: a frozen server must not hang a report.
    session.wait_until(Some(duration::after(
        Instant::now(),
        opener.connect_timeout(),
    )));
    Ok(session)
}

fn fetch(session: &mut Session, locks: Locks, given: Vec<(LockId, Known)>) -> Result<Vec<Row>> {
    let mut rows = model::query(session, locks, false)
        .map_err(|e| anyhow::anyhow!("{}", pg::describe_error(&e)))
        .context("cannot read pg_locks")?;
    model::name_locks(&mut rows, given);
    model::sort_by_lock(&mut rows);
    Ok(rows)
}

/// A note on stderr; one that cannot be written is dropped.
fn note(rows: &[Row]) {
    if let Some(text) = render::hidden_note(rows) {
        let _ = writeln!(std::io::stderr(), "{text}");
    }
}

fn status(args: &StatusArgs) -> Result<u8> {
    let id = args.id;
    let label = Label::new(args.key.as_deref(), id);
    let given = status_locks(&label, id, args.limit);
    let ids: Vec<LockId> = given.iter().map(|(id, _)| *id).collect();
    let mut session = connect(&args.database_url, Observer::Status)?;
    let rows = fetch(&mut session, Locks::These(&ids), given)?;
    let summary = Summary::of(&rows, args.limit);
    let text = if args.json {
        status_json(args.key.as_deref(), id, &rows, &summary)
    } else {
        let names = match &args.key {
            Some(k) => {
                let name = format!("lock \"{}\"", printable(k));
                (format!("{name} (id {id})"), name)
            }
            None => (format!("lock {id}"), format!("lock {id}")),
        };
        status_text(names, &rows, &summary)
    };
    output::emit(&text)?;
    note(&rows);
    Ok(if summary.held() {
        exit::STATUS_HELD
    } else {
        exit::STATUS_FREE
    })
}

/// The locks `status` reads: the lock itself, and the queue and slots of a `--limit` semaphore
/// on it (all that can exist when the limit is not given).
fn status_locks(label: &Label, id: LockId, limit: Option<u16>) -> Vec<(LockId, Known)> {
    let known = |part| Known {
        label: label.clone(),
        part,
    };
    let mut locks = vec![(id, known(Part::Whole))];
    let slots = limit.map_or(MAX_SLOTS, usize::from);
    if slots > 1 {
        let base = label.base();
        locks.push((key::gate_id(&base), known(Part::Queue)));
        locks.extend((0..slots).map(|i| (key::slot_id(&base, i), known(Part::Slot(i)))));
    }
    locks
}

/// What `status` found.
struct Summary {
    whole_held: bool,
    slots_taken: usize,
    /// The semaphore's size: `--limit`, or the largest a holder's name gives.
    limit: Option<u16>,
    /// Slots or a queue are in use, or `--limit` was given.
    semaphore: bool,
}

impl Summary {
    fn of(rows: &[Row], asked: Option<u16>) -> Summary {
        let slots: BTreeSet<usize> = rows
            .iter()
            .filter(|r| r.granted)
            .filter_map(|r| match r.part() {
                Some(Part::Slot(i)) => Some(i),
                _ => None,
            })
            .collect();
        let in_semaphore = |r: &&Row| matches!(r.part(), Some(Part::Slot(_) | Part::Queue));
        let named = rows
            .iter()
            .filter(in_semaphore)
            .filter_map(|r| r.app.as_ref()?.limit())
            .max();
        let asked = asked.filter(|&n| n > 1);
        Summary {
            whole_held: rows
                .iter()
                .any(|r| r.granted && r.part() == Some(Part::Whole)),
            slots_taken: slots.len(),
            limit: asked.or(named),
            semaphore: asked.is_some() || rows.iter().any(|r| in_semaphore(&r)),
        }
    }

    fn held(&self) -> bool {
        self.whole_held || self.slots_taken > 0
    }

    /// `2 of 3 slots taken`, or without a known limit `2 slots taken`.
    fn slots_text(&self) -> Option<String> {
        let n = self.slots_taken;
        let plural = if n == 1 { "" } else { "s" };
        self.semaphore.then(|| match self.limit {
            Some(limit) => format!("{n} of {limit} slots taken"),
            None => format!("{n} slot{plural} taken"),
        })
    }
}

/// The headline and the table. `names` is the lock with its id and without: a semaphore's
/// slots have ids of their own.
fn status_text(names: (String, String), rows: &[Row], summary: &Summary) -> String {
    let (with_id, name) = names;
    let state = if summary.held() { "held" } else { "free" };
    let mut text = match (summary.whole_held, summary.slots_text()) {
        (_, None) => format!("{with_id} is {state}"),
        (false, Some(slots)) => format!("{name} is {state}: {slots} (--limit)"),
        (true, Some(slots)) => format!("{with_id} is held; its --limit semaphore has {slots}"),
    };
    text.push('\n');
    if !rows.is_empty() {
        let first = if summary.semaphore {
            First::Slot
        } else {
            First::None
        };
        text.push_str(&render::table(rows, first));
    }
    text
}

fn status_json(key: Option<&str>, id: LockId, rows: &[Row], summary: &Summary) -> String {
    let (holders, waiters): (Vec<&Row>, Vec<&Row>) = rows
        .iter()
        .partition(|r| r.granted && r.part() != Some(Part::Queue));
    let out = json!({
        "key": key,
        "lock_id": render::lock_id_json(id),
        "held": summary.held(),
        "limit": summary.limit,
        "slots_taken": summary.semaphore.then_some(summary.slots_taken),
        "holders": holders.into_iter().map(render::row_json).collect::<Vec<_>>(),
        "waiters": waiters.into_iter().map(render::row_json).collect::<Vec<_>>(),
    });
    format!("{}\n", render::pretty(&out))
}

fn list(args: &ListArgs) -> Result<u8> {
    let mut session = connect(&args.database_url, Observer::List)?;
    let rows = fetch(&mut session, Locks::All, vec![])?;
    let text = if args.json {
        let out: Vec<Value> = rows.iter().map(render::row_json).collect();
        format!("{}\n", render::pretty(&Value::Array(out)))
    } else if rows.is_empty() {
        "no advisory locks in this database\n".to_string()
    } else {
        render::table(&rows, First::Lock)
    };
    output::emit(&text)?;
    note(&rows);
    Ok(0)
}

fn key(args: &KeyArgs) -> Result<u8> {
    let mut text = String::new();
    let id = args.id;
    if let Some(k) = &args.key {
        text.push_str(&format!("key       {}\n", printable(k)));
    }
    let label = Label::new(args.key.as_deref(), id);
    let (classid, objid, objsubid) = id.pg_locks_coordinates();
    let kind = match id {
        LockId::Big(_) => "one bigint: pg_advisory_lock(bigint)",
        LockId::Pair(..) => "two int4s: pg_advisory_lock(int4, int4)",
    };
    text.push_str(&format!(
        "lock id   {id}  ({kind})\nclassid   {classid}\nobjid     {objid}\nobjsubid  {objsubid}\n"
    ));
    let mut ids = vec![id];
    if let Some(limit) = args.limit.filter(|&n| n > 1) {
        let base = label.base();
        let mut parts: Vec<(String, LockId)> = (0..usize::from(limit))
            .map(|i| (format!("slot {i}"), key::slot_id(&base, i)))
            .collect();
        parts.push(("queue".into(), key::gate_id(&base)));
        text.push_str(&format!(
            "\n--limit {limit} uses these locks instead, one bigint each (objsubid 1):\n"
        ));
        text.push_str(&semaphore_table(&parts));
        ids = parts.into_iter().map(|(_, id)| id).collect();
    }
    text.push_str("\n-- Who holds it and who waits for it (run it in the database pglock uses):\n");
    text.push_str(&sql::paste(&ids));
    text.push('\n');
    output::emit(&text)?;
    Ok(0)
}

/// `slot 0    -4774651977129594492  3183282011  2040131204`, one line a lock.
fn semaphore_table(parts: &[(String, LockId)]) -> String {
    let mut out = format!(
        "{:<10}{:<22}{:<12}{}\n",
        "LOCK", "LOCK ID", "CLASSID", "OBJID"
    );
    for (what, id) in parts {
        let (classid, objid, _) = id.pg_locks_coordinates();
        out.push_str(&format!(
            "{what:<10}{:<22}{classid:<12}{objid}\n",
            id.to_string()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::model::tests::{named, row};

    fn slot_row(name: &str, i: usize, granted: bool) -> Row {
        let mut r = named(row(), name);
        r.id = key::slot_id("s", i);
        r.granted = granted;
        r
    }

    fn summarize(mut rows: Vec<Row>, asked: Option<u16>) -> (Summary, Vec<Row>) {
        let label = Label::Key("s".into());
        let given = status_locks(&label, LockId::from_key("s"), asked);
        model::name_locks(&mut rows, given);
        (Summary::of(&rows, asked), rows)
    }

    #[test]
    fn status_reads_every_slot_unless_told_the_limit() {
        let label = Label::Key("s".into());
        let all = status_locks(&label, LockId::from_key("s"), None);
        assert_eq!(all.len(), 2 + MAX_SLOTS);
        assert_eq!(all[1].0, key::gate_id("s"));
        assert_eq!(all.last().unwrap().0, key::slot_id("s", MAX_SLOTS - 1));
        assert_eq!(
            status_locks(&label, LockId::from_key("s"), Some(3)).len(),
            5
        );
        assert_eq!(
            status_locks(&label, LockId::from_key("s"), Some(1)).len(),
            1
        );
    }

    #[test]
    fn a_semaphore_in_use_is_held_with_its_slots_counted() {
        let (s, rows) = summarize(
            vec![
                slot_row("pglock:s@h:1/3", 0, true),
                slot_row("pglock:s@h:2/3", 2, true),
            ],
            None,
        );
        assert!(s.held());
        let names = ("lock \"s\" (id 1)".to_string(), "lock \"s\"".to_string());
        let text = status_text(names, &rows, &s);
        assert!(
            text.starts_with("lock \"s\" is held: 2 of 3 slots taken (--limit)\nSLOT "),
            "{text}"
        );
        assert!(text.contains("\nslot 2  exclusive  held "), "{text}");
        // Without the limit in the names (a pooler may hide them) the count stands alone.
        let (s, _) = summarize(vec![slot_row("psql", 1, true)], None);
        assert_eq!(s.slots_text().as_deref(), Some("1 slot taken"));
        let (s, _) = summarize(vec![], Some(3));
        assert!(!s.held());
        assert_eq!(s.slots_text().as_deref(), Some("0 of 3 slots taken"));
        let (s, _) = summarize(vec![], None);
        let text = status_text(("lock 42".into(), "lock 42".into()), &[], &s);
        assert_eq!(text, "lock 42 is free\n");
    }

    #[test]
    fn key_lists_the_semaphore_locks() {
        let table = semaphore_table(&[("slot 0".into(), key::slot_id("k", 0))]);
        assert_eq!(
            table,
            "LOCK      LOCK ID               CLASSID     OBJID\n\
             slot 0    9009068897969849019   2097587310  1015235259\n"
        );
    }
}
