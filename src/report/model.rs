//! The pg_locks model: one [`Row`] per holder or waiter of an advisory lock, read by column
//! name from the report query, and what pglock knows each lock to be ([`Known`]).
//!
//! A lock is named from the application_names of the pglock sessions on it: `pglock:<key>@…`
//! names the lock of that key under each key-hash scheme and, with `/N` at its end, the queue
//! and N slots of the key's `--limit` semaphore. A name counts only when one of those ids is the
//! lock's: a shortened key, or someone else's name that looks like pglock's, names nothing.
//!
//! What "since" means. pg_locks records when a waiter started waiting (`waitstart`, PG 14+) but
//! nothing about when a holder got the lock. A pglock holder tags the lock checks it runs with
//! how long it has held the lock (pg::sql::HELD_TAG), and its last query and that query's start
//! are visible in pg_stat_activity, so for it we report the difference, all in the server's
//! clock. Otherwise, for an idle holder we report `state_change`, the moment its last
//! statement ended: the lock was taken by that statement or an earlier one, so it has been held
//! at least that long (for a pglock that has not run a check yet, the lock call is that
//! statement). For a holder busy running a statement the server cannot tell; we report its
//! `backend_start`, the earliest moment it could have taken the lock.

use super::sql::{self, Locks};
use crate::appname::{AppName, Label};
use crate::key::{self, KeyHash, LockId};
use crate::pg::Session;
use clap::ValueEnum;
use std::collections::{HashMap, HashSet};
use tokio_postgres::SimpleQueryMessage;

/// One pg_locks row of an advisory lock, with what pg_stat_activity says about its session.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub id: LockId,
    /// What the lock is to pglock, when a pglock session's name says so (see [`name_locks`]).
    pub known: Option<Known>,
    pub shared: bool,
    pub granted: bool,
    /// None for a prepared transaction, which holds locks without a backend.
    pub pid: Option<i32>,
    /// As the server has it.
    pub application_name: Option<String>,
    /// The application_name of a pglock session, parsed.
    pub app: Option<AppName>,
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
    /// `supersede` or `replace`: what a pglock run started with `--supersede` or `--replace`
    /// accepts from newer runs, as its last statement's marker says.
    pub accepts: Option<String>,
}

/// A lock as pglock knows it: a key's (or a raw id's) lock, or part of its `--limit` semaphore.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Known {
    pub label: Label,
    pub part: Part,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Part {
    /// The lock itself (no `--limit`).
    Whole,
    /// Slot i (0-based) of the semaphore.
    Slot(usize),
    /// The semaphore's gate, where its waiters queue.
    Queue,
}

impl Row {
    /// The key, when the lock is a key's (or one of its semaphore's locks).
    pub fn key(&self) -> Option<&str> {
        match &self.known.as_ref()?.label {
            Label::Key(k) => Some(k),
            Label::LockId(_) => None,
        }
    }

    pub fn part(&self) -> Option<Part> {
        self.known.as_ref().map(|k| k.part)
    }

    /// A pglock session: its name already says who it is.
    pub fn is_pglock(&self) -> bool {
        self.app.is_some()
    }
}

/// Every lock id that `label` may stand for, with what it is: the key under each key-hash
/// scheme (or the raw id), and for `limit` above 1 the gate and slots of its semaphore.
pub fn ids_of(label: &Label, limit: u16) -> Vec<(LockId, Part)> {
    let mut ids = match label {
        Label::Key(k) => KeyHash::value_variants()
            .iter()
            .map(|hash| (hash.id(k), Part::Whole))
            .collect(),
        Label::LockId(id) => vec![(*id, Part::Whole)],
    };
    if limit > 1 {
        let base = label.base();
        ids.push((key::gate_id(&base), Part::Queue));
        ids.extend((0..usize::from(limit)).map(|i| (key::slot_id(&base, i), Part::Slot(i))));
    }
    ids
}

/// Runs the report query and parses its rows (not yet named: see [`name_locks`]).
pub fn query(
    session: &mut Session,
    locks: Locks,
    after_rollback: bool,
) -> Result<Vec<Row>, tokio_postgres::Error> {
    let messages = session.query(&sql::rows(locks, after_rollback))?;
    let mut rows = Vec::new();
    for message in &messages {
        if let SimpleQueryMessage::Row(r) = message {
            rows.extend(parse_row(|name| r.try_get(name))?);
        }
    }
    Ok(rows)
}

/// One row from its columns by name; None for a row that is not an advisory lock's.
pub fn parse_row<'a, E>(
    get: impl Fn(&str) -> Result<Option<&'a str>, E>,
) -> Result<Option<Row>, E> {
    let text = |name| get(name).map(|v| v.map(str::to_string));
    let number = |name| get(name).map(|v| v.and_then(|v| v.parse::<i64>().ok()));
    let flag = |name| get(name).map(|v| v == Some("t"));
    let coordinate = |name| get(name).map(|v| v.and_then(|v| v.parse::<u32>().ok()));
    let (Some(classid), Some(objid)) = (coordinate("classid")?, coordinate("objid")?) else {
        return Ok(None);
    };
    let id = match get("objsubid")? {
        Some("2") => LockId::Pair(classid as i32, objid as i32),
        _ => LockId::Big((u64::from(classid) << 32 | u64::from(objid)) as i64),
    };
    let application_name = text("application_name")?;
    Ok(Some(Row {
        id,
        known: None,
        shared: get("mode")? == Some("ShareLock"),
        granted: flag("granted")?,
        pid: number("pid")?.and_then(|p| i32::try_from(p).ok()),
        app: application_name.as_deref().and_then(AppName::parse),
        application_name,
        user: text("usename")?,
        client_addr: text("client_addr")?,
        state: text("state")?,
        backend_start: text("backend_start")?,
        held_since: text("held_since")?,
        waiting_since: text("waiting_since")?,
        age_secs: number("age_secs")?,
        position: number("queue_position")?,
        visible: flag("visible")?,
        current_user: text("viewer")?.unwrap_or_default(),
        accepts: text("accepts")?,
    }))
}

/// Says what each row's lock is: first from `given` (what the caller asked for), then from the
/// names of the pglock sessions among the rows. A name is a property of the lock, so it names
/// every row of its lock, a foreign session's too.
pub fn name_locks(rows: &mut [Row], given: Vec<(LockId, Known)>) {
    let present: HashSet<LockId> = rows.iter().map(|r| r.id).collect();
    let mut known: HashMap<LockId, Known> = given.into_iter().collect();
    let mut labels: HashMap<&Label, u16> = HashMap::new();
    for app in rows.iter().filter_map(|r| r.app.as_ref()) {
        if let Some(label) = app.label() {
            let limit = labels.entry(label).or_insert(1);
            *limit = (*limit).max(app.limit().unwrap_or(1));
        }
    }
    let mut found = Vec::new();
    for (label, limit) in labels {
        for (id, part) in ids_of(label, limit) {
            if present.contains(&id) && !known.contains_key(&id) {
                let label = label.clone();
                found.push((id, Known { label, part }));
            }
        }
    }
    known.extend(found);
    for row in rows.iter_mut() {
        row.known = known.get(&row.id).cloned();
    }
}

/// A key's locks together, the lock itself first, then its slots in order and its queue; the
/// locks nobody names after them. Within a lock the query's order stands (holders, then waiters
/// in line).
pub fn sort_by_lock(rows: &mut [Row]) {
    rows.sort_by_cached_key(|r| {
        r.known
            .as_ref()
            .map(|k| (k.label.to_string(), k.part))
            .ok_or(())
    });
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::appname::{Kind, Observer};

    /// An idle pglock holder of `nightly-report`.
    pub fn row() -> Row {
        let name = "pglock:nightly-report@web-3:48121";
        Row {
            id: LockId::from_key("nightly-report"),
            known: None,
            shared: false,
            granted: true,
            pid: Some(5150),
            application_name: Some(name.into()),
            app: AppName::parse(name),
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
            accepts: None,
        }
    }

    pub fn named(mut row: Row, name: &str) -> Row {
        row.application_name = Some(name.into());
        row.app = AppName::parse(name);
        row
    }

    #[test]
    fn parses_both_id_forms_by_column_name() {
        let cells = |sub: &'static str| {
            move |name: &str| -> Result<Option<&'static str>, ()> {
                Ok(match name {
                    "classid" => Some("4294967295"),
                    "objid" => Some("7"),
                    "objsubid" => Some(sub),
                    "mode" => Some("ShareLock"),
                    "granted" => Some("f"),
                    "pid" => Some("12"),
                    "application_name" => Some("pglock:%23a@h:1"),
                    "usename" => Some("u"),
                    "age_secs" => Some("3"),
                    "queue_position" => Some("2"),
                    "visible" => Some("t"),
                    "viewer" => Some("me"),
                    _ => None,
                })
            }
        };
        let big = parse_row(cells("1")).unwrap().unwrap();
        assert_eq!(big.id, LockId::Big(-4294967289));
        let pair = parse_row(cells("2")).unwrap().unwrap();
        assert_eq!(pair.id, LockId::Pair(-1, 7));
        assert!(pair.shared && !pair.granted && pair.visible);
        assert_eq!(
            (pair.position, pair.age_secs, pair.pid),
            (Some(2), Some(3), Some(12))
        );
        assert_eq!(pair.current_user, "me");
        assert_eq!(pair.app.unwrap().label(), Some(&Label::Key("#a".into())));
        // Every name the parser asks for is one the query selects.
        let asked = std::cell::RefCell::new(Vec::new());
        let _ = parse_row(|name: &str| -> Result<Option<&str>, ()> {
            asked.borrow_mut().push(name.to_string());
            Ok(Some("1"))
        });
        for name in asked.into_inner() {
            assert!(sql::COLUMNS.contains(&name.as_str()), "{name}");
        }
    }

    #[test]
    fn keys_come_only_from_names_that_hash_to_the_id() {
        let key = |rows: &[Row]| {
            let mut rows = rows.to_vec();
            name_locks(&mut rows, vec![]);
            rows.iter()
                .map(|r| r.key().map(str::to_string))
                .collect::<Vec<_>>()
        };
        let mut r = named(row(), "pglock:a%40b@host:1");
        r.id = LockId::from_key("a@b");
        assert_eq!(key(&[r.clone()]), [Some("a@b".to_string())]);
        // A shortened name, someone else's, and a lock id's: no key.
        assert_eq!(key(&[named(r.clone(), "pglock:a@host:1")]), [None]);
        assert_eq!(key(&[named(r.clone(), "psql")]), [None]);
        let mut raw = named(row(), "pglock:#42@host:1");
        raw.id = LockId::Big(42);
        assert_eq!(key(&[raw.clone()]), [None]);
        let mut rows = [raw];
        name_locks(&mut rows, vec![]);
        assert_eq!(
            rows[0].known,
            Some(Known {
                label: Label::LockId(LockId::Big(42)),
                part: Part::Whole
            })
        );
        // The old form of a lock id's name is not the key "42".
        let mut old = named(row(), "pglock:42@host:1");
        old.id = LockId::Big(42);
        assert_eq!(key(&[old]), [None]);
        // Another scheme's id of the key still names it.
        let mut sqlx = named(row(), "pglock:nightly-report@host:1");
        sqlx.id = KeyHash::Sqlx.id("nightly-report");
        assert_eq!(key(&[sqlx]), [Some("nightly-report".to_string())]);
    }

    #[test]
    fn a_name_names_every_row_of_its_lock_and_the_semaphore_parts() {
        let base = "s";
        let mut holder = named(row(), "pglock:s@h:1/3");
        holder.id = key::slot_id(base, 2);
        let mut foreign = named(row(), "psql");
        foreign.id = key::slot_id(base, 2);
        let mut head = named(row(), "pglock:s@h:2/3");
        head.id = key::gate_id(base);
        let mut stranger = named(row(), "psql");
        stranger.id = key::slot_id(base, 1);
        let mut rows = [holder, foreign, head, stranger];
        name_locks(&mut rows, vec![]);
        let parts: Vec<_> = rows.iter().map(Row::part).collect();
        assert_eq!(
            parts,
            [
                Some(Part::Slot(2)),
                Some(Part::Slot(2)),
                Some(Part::Queue),
                Some(Part::Slot(1))
            ]
        );
        assert!(rows.iter().all(|r| r.key() == Some("s")));
        // Slots above the name's limit are not its.
        let mut above = named(row(), "pglock:s@h:1/2");
        above.id = key::slot_id(base, 2);
        let mut rows = [above];
        name_locks(&mut rows, vec![]);
        assert_eq!(rows[0].known, None);
    }

    #[test]
    fn rows_sort_by_key_then_slot_number_then_queue() {
        let at = |name: &str, id: LockId| {
            let mut r = named(row(), name);
            r.id = id;
            r
        };
        let mut rows = [
            at("psql", LockId::Big(1)),
            at("pglock:s@h:1/11", key::gate_id("s")),
            at("pglock:s@h:2/11", key::slot_id("s", 10)),
            at("pglock:b@h:3", LockId::from_key("b")),
            at("pglock:s@h:4/11", key::slot_id("s", 2)),
        ];
        name_locks(&mut rows, vec![]);
        sort_by_lock(&mut rows);
        let order: Vec<_> = rows.iter().map(|r| (r.key(), r.part())).collect();
        assert_eq!(
            order,
            [
                (Some("b"), Some(Part::Whole)),
                (Some("s"), Some(Part::Slot(2))),
                (Some("s"), Some(Part::Slot(10))),
                (Some("s"), Some(Part::Queue)),
                (None, None)
            ]
        );
    }

    #[test]
    fn what_the_caller_asked_for_comes_first() {
        let mut r = named(row(), "psql");
        r.id = LockId::Big(42);
        let given = Known {
            label: Label::Key("k".into()),
            part: Part::Slot(0),
        };
        let mut rows = [r];
        name_locks(&mut rows, vec![(LockId::Big(42), given.clone())]);
        assert_eq!(rows[0].known, Some(given));
        assert!(!rows[0].is_pglock());
        assert_eq!(
            AppName::parse("pglock-watch@h:1").map(|a| a.kind),
            Some(Kind::Observer(Observer::Watch))
        );
    }
}
