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
use crate::key::{LockId, semaphore_id};
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
            gate: semaphore_id(base, "gate"),
            slots: (0..limit).map(|i| slot_id(base, i)).collect(),
            recheck,
        }
    }
}

fn slot_id(base: &str, i: usize) -> LockId {
    semaphore_id(base, &format!("slot\0{i}"))
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

/// Appended to a slot's release: cancel the statement of the gate's holder so it looks again.
pub fn wake_gate_sql(gate: LockId) -> String {
    format!(
        "; SELECT pg_cancel_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE {} AND l.granted AND l.pid <> pg_backend_pid() AND pg_has_role(a.usesysid, 'MEMBER')",
        gate.pg_locks_filter()
    )
}

fn slot_in(messages: &[postgres::SimpleQueryMessage]) -> Option<usize> {
    final_value(messages).and_then(|v| v.parse().ok())
}

pub fn acquire(
    session: &mut Session,
    req: &Request,
    sem: &Semaphore,
    interrupted: &dyn Fn() -> bool,
) -> Result<Acquired, postgres::Error> {
    let deadline = req.timeout.map(|t| Instant::now() + t);
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
    if let Err(e) = session.simple_query(&gate) {
        return outcome_of(e);
    }
    step!("at the head of the queue for {} slots", sem.slots.len());
    warn_about_larger_limits(session, sem);

    // 3. At the head: wait for any slot.
    let leave_gate = format!(
        "{}SELECT pg_advisory_unlock({})",
        if local {
            "RELEASE SAVEPOINT pglock_wait; "
        } else {
            ""
        },
        sem.gate.sql_args()
    );
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
            "{}SELECT set_config('lock_timeout', '{}', {local}); \
             SELECT COALESCE(({}), (SELECT {k} FROM (SELECT {}({})) AS w))",
            if local { "SAVEPOINT pglock_wait; " } else { "" },
            lock_timeout_ms(false, Some(wait)),
            try_all(req.scope, &sem.slots),
            lock_fn(false, req.scope, false),
            sem.slots[k].sql_args()
        );
        let slot = match session.simple_query(&sql) {
            Ok(messages) => slot_in(&messages),
            Err(e)
                if matches!(
                    e.code(),
                    Some(&SqlState::QUERY_CANCELED) | Some(&SqlState::LOCK_NOT_AVAILABLE)
                ) =>
            {
                if interrupted() {
                    return Ok(Acquired::Cancelled);
                }
                // Woken by a release, or time to re-check: but the wait may have been granted
                // just before it ended.
                let check = format!(
                    "{}{}",
                    if local {
                        "ROLLBACK TO SAVEPOINT pglock_wait; SAVEPOINT pglock_wait; "
                    } else {
                        ""
                    },
                    mine(&sem.slots)
                );
                slot_in(&session.simple_query(&check)?)
            }
            Err(e) => return Err(e),
        };
        if let Some(slot) = slot {
            // A wake-up aimed at us may land on this statement too; it only needs repeating.
            let mut tries = 0;
            loop {
                match session.simple_query(&leave_gate) {
                    Ok(_) => break,
                    Err(e) if e.code() == Some(&SqlState::QUERY_CANCELED) && tries < 3 => {
                        tries += 1
                    }
                    Err(e) => return Err(e),
                }
            }
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
