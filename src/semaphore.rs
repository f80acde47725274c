//! `--limit N`: a counting semaphore, at most N holders of a key at once, built from advisory
//! locks.
//!
//! Design. The key has N slot locks and one gate lock (ids in `key::semaphore_id`).
//! - A newcomer first tries every slot in one statement (`pg_try_advisory_lock` over the slot
//!   ids, stopping at the first success). With `--nowait` that is all it does.
//! - Otherwise it queues on the gate, an ordinary blocking advisory lock. PostgreSQL grants a
//!   lock's waiters in arrival order, so the gate is the semaphore's fair FIFO queue, and only its
//!   holder, the head of the queue, ever waits for a slot.
//! - The head waits in a single statement that tries every slot again and, if none is free,
//!   blocks on one of them: `COALESCE((try all), (block on slot k))`. Trying and blocking in one
//!   statement leaves no moment in which a release can be missed.
//! - A holder releasing its slot also cancels the head's statement (`pg_cancel_backend` on the
//!   gate's holder, in the same round trip as the unlock), so the head tries all slots again at
//!   once and takes the freed one. Nothing polls.
//! - A holder that dies frees its slot without cancelling anybody. If that is slot k the head
//!   gets it at once; otherwise the head's wait ends after --check-interval (lock_timeout) and
//!   it tries all slots again. That re-check, one query per interval by the head alone, is the
//!   only periodic work, and it happens only while every slot is taken.
//! - A cancel can race with a grant, so after any interrupted wait the head asks pg_locks which
//!   slot, if any, it holds.
//!
//! Limits: every user of a key must pass the same N; a user with a larger N takes slots that a
//! smaller N never sees, so the smaller limit is not enforced. The head warns when it sees slots
//! above its own N in use. Cancelling the head needs the right to signal its backend (same role,
//! or pg_signal_backend); without it a release is noticed at the next re-check.

use crate::cli::Scope;
use crate::key::{self, LockId};
use crate::lock::{
    Acquired, Held, Request, Session, final_value, first_value, lock_fn, lock_timeout_ms,
    outcome_of, prelude,
};
use crate::{step, warn};
use postgres::error::SqlState;
use std::time::{Duration, Instant};

/// The highest --limit.
pub const MAX_SLOTS: usize = 1024;

#[derive(Debug, Clone)]
pub struct Semaphore {
    base: String,
    pub gate: LockId,
    pub slots: Vec<LockId>,
    /// How often the head of the queue re-checks for slots freed by holders that died.
    pub recheck: Duration,
}

impl Semaphore {
    /// `base` is the key, or `lock-id:ID` for a raw id.
    pub fn new(base: &str, limit: usize, recheck: Duration) -> Semaphore {
        Semaphore {
            base: base.to_string(),
            gate: key::gate_id(base),
            slots: (0..limit).map(|i| slot_id(base, i)).collect(),
            recheck,
        }
    }
}

fn slot_id(base: &str, i: usize) -> LockId {
    key::slot_id(base, i)
}

fn id_array(ids: &[LockId]) -> String {
    let list: Vec<String> = ids.iter().map(LockId::sql_args).collect();
    format!("ARRAY[{}]::bigint[]", list.join(","))
}

/// The first slot this session can take at once, as a 0-based number, or no row.
fn try_all(scope: Scope, slots: &[LockId]) -> String {
    format!(
        "SELECT t.n - 1 FROM unnest({}) WITH ORDINALITY AS t(id, n) WHERE {}(t.id) LIMIT 1",
        id_array(slots),
        lock_fn(true, scope, false)
    )
}

/// Which slot this session already holds, if any (after a wait that may have raced a grant).
fn mine(slots: &[LockId]) -> String {
    format!(
        "SELECT t.n - 1 FROM unnest({}) WITH ORDINALITY AS t(id, n) JOIN pg_locks l \
         ON l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted AND l.pid = pg_backend_pid() \
         AND l.classid = ((t.id >> 32) & 4294967295)::oid AND l.objid = (t.id & 4294967295)::oid \
         LIMIT 1",
        id_array(slots)
    )
}

/// Appended to a slot's release: cancel the gate holder's wait statement so it looks again.
/// Only that statement: a cancel landing on any other would abort more than a wait.
pub fn wake_gate_sql(gate: LockId) -> String {
    format!(
        "; SELECT pg_cancel_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE {} AND l.granted AND l.pid <> pg_backend_pid() AND a.state = 'active' \
         AND starts_with(a.query, '{WAIT_MARK}') AND pg_has_role(a.usesysid, 'MEMBER')",
        gate.pg_locks_filter()
    )
}

fn slot_in(messages: &[postgres::SimpleQueryMessage]) -> Option<usize> {
    final_value(messages).and_then(|v| v.parse().ok())
}

/// Marks the head's wait statement, so that a release cancels that statement and nothing else.
const WAIT_MARK: &str = "/* pglock: semaphore wait */";

pub fn acquire(
    session: &mut Session,
    req: &Request,
    sem: &Semaphore,
    interrupted: &dyn Fn() -> bool,
) -> Result<Acquired, postgres::Error> {
    let deadline = req.timeout.map(|t| Instant::now() + t);
    loop {
        match attempt(session, req, sem, interrupted, deadline) {
            Err(e) if req.scope == Scope::Xact && is_cancel(&e) && !interrupted() => {
                // A wake-up meant for our wait statement landed on another one and aborted the
                // transaction. Nothing is held but the gate: start over.
                step!("semaphore wait disturbed; starting over");
                session.simple_query("ROLLBACK; SELECT pg_advisory_unlock_all()")?;
            }
            other => return other,
        }
    }
}

fn is_cancel(e: &postgres::Error) -> bool {
    e.code() == Some(&SqlState::QUERY_CANCELED)
}

/// Runs an idempotent statement, repeating it if a stray wake-up cancels it.
fn query_again(
    session: &mut Session,
    sql: &str,
    interrupted: &dyn Fn() -> bool,
) -> Result<Vec<postgres::SimpleQueryMessage>, postgres::Error> {
    let mut tries = 0;
    loop {
        match session.simple_query(sql) {
            Err(e) if is_cancel(&e) && !interrupted() && tries < 5 => tries += 1,
            other => return other,
        }
    }
}

fn attempt(
    session: &mut Session,
    req: &Request,
    sem: &Semaphore,
    interrupted: &dyn Fn() -> bool,
    deadline: Option<Instant>,
) -> Result<Acquired, postgres::Error> {
    let local = req.scope == Scope::Xact;
    let take = |session: &mut Session, slot: usize| {
        session.hold(Held {
            id: sem.slots[slot],
            shared: false,
            scope: req.scope,
            slot: Some((slot, sem.gate)),
        });
        step!("took semaphore slot {slot} of {}", sem.slots.len());
        Ok(Acquired::Held)
    };

    // 1. The settings and one try over every slot.
    let first = format!("{}{}", prelude(req, 0), try_all(req.scope, &sem.slots));
    match session.simple_query(&first) {
        Ok(messages) => {
            if let Some(slot) = slot_in(&messages) {
                return take(session, slot);
            }
        }
        Err(e) => return outcome_of(e),
    }
    if req.nowait {
        return Ok(Acquired::Busy);
    }

    // 2. Queue at the gate.
    if left(deadline) == Some(Duration::ZERO) {
        return Ok(Acquired::TimedOut);
    }
    let gate = format!(
        "SELECT set_config('lock_timeout', '{}', {local}); SELECT pg_advisory_lock({})",
        lock_timeout_ms(false, left(deadline)),
        sem.gate.sql_args()
    );
    let holds_gate = format!(
        "SELECT count(*) FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid() AND l.granted",
        sem.gate.pg_locks_filter()
    );
    loop {
        match session.simple_query(&gate) {
            Ok(_) => break,
            // In session scope a wake-up can only have come with the grant: see whether it did.
            Err(e) if !local && is_cancel(&e) && !interrupted() => {
                let held = query_again(session, &holds_gate, interrupted)?;
                if final_value(&held).as_deref() != Some("0") {
                    break;
                }
            }
            Err(e) if local => return Err(e),
            Err(e) => return outcome_of(e),
        }
    }
    step!("at the head of the queue for {} slots", sem.slots.len());
    warn_about_larger_limits(session, sem);

    // 3. At the head: wait for any slot.
    let savepoint = if local { "SAVEPOINT pglock_wait; " } else { "" };
    let rollback = if local {
        "ROLLBACK TO SAVEPOINT pglock_wait; RELEASE SAVEPOINT pglock_wait; "
    } else {
        ""
    };
    let mut round = 0;
    loop {
        if interrupted() {
            return Ok(Acquired::Cancelled);
        }
        let wait = match left(deadline) {
            Some(Duration::ZERO) => return Ok(Acquired::TimedOut),
            Some(left) => left.min(sem.recheck),
            None => sem.recheck,
        };
        let k = round % sem.slots.len();
        round += 1;
        let sql = format!(
            "{WAIT_MARK} {savepoint}SELECT set_config('lock_timeout', '{}', {local}); \
             SELECT COALESCE(({}), (SELECT {k} FROM (SELECT {}({})) AS w))",
            lock_timeout_ms(false, Some(wait)),
            try_all(req.scope, &sem.slots),
            lock_fn(false, req.scope, false),
            sem.slots[k].sql_args()
        );
        let slot = match session.simple_query(&sql) {
            Ok(messages) => slot_in(&messages),
            Err(e) if is_cancel(&e) || e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE) => {
                if interrupted() {
                    return Ok(Acquired::Cancelled);
                }
                // Woken by a release, or time to re-check; the wait may have been granted just
                // before it ended (a transaction lock is undone with the savepoint).
                let check = format!("{rollback}{}", mine(&sem.slots));
                slot_in(&query_again(session, &check, interrupted)?)
            }
            Err(e) => return Err(e),
        };
        if let Some(slot) = slot {
            let leave = format!(
                "{}SELECT pg_advisory_unlock({})",
                if local {
                    "RELEASE SAVEPOINT pglock_wait; "
                } else {
                    ""
                },
                sem.gate.sql_args()
            );
            session.simple_query(&leave).or_else(|e| {
                if !local && is_cancel(&e) {
                    // Unlocking the gate twice only earns a warning.
                    query_again(session, &leave, interrupted)
                } else {
                    Err(e)
                }
            })?;
            return take(session, slot);
        }
    }
}

/// Time left before `deadline`: None without one, Some(ZERO) once it has passed.
fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// A holder of a slot above our N means another user of the key passed a larger --limit.
fn warn_about_larger_limits(session: &mut Session, sem: &Semaphore) {
    let n = sem.slots.len();
    if n >= MAX_SLOTS {
        return;
    }
    let above: Vec<LockId> = (n..MAX_SLOTS).map(|i| slot_id(&sem.base, i)).collect();
    let sql = format!(
        "SELECT count(*) FROM unnest({}) AS t(id) JOIN pg_locks l \
         ON l.locktype = 'advisory' AND l.objsubid = 1 AND l.granted \
         AND l.classid = ((t.id >> 32) & 4294967295)::oid AND l.objid = (t.id & 4294967295)::oid",
        id_array(&above)
    );
    if let Ok(messages) = session.simple_query(&sql) {
        if first_value(&messages).is_some_and(|c| c != "0") {
            warn!(
                "slots above --limit {n} are in use: every user of this key must pass the same --limit"
            );
        }
    }
}
