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
//! - An administrator's pg_cancel_backend looks the same to the head (57014), and must end its
//!   wait (exit 75), so the head names in its wait statement's text the holders it waits on,
//!   and blocks only while exactly they hold the slots; a release wakes the head only if it is
//!   named there. A cancel after which every named holder still holds its slot is therefore no
//!   wake-up but someone else's cancel. (A waiter behind the head, on the gate, is never woken:
//!   any cancel there is someone else's.)
//! - A holder that dies frees its slot without cancelling anybody. If that is slot k the head
//!   gets it at once; otherwise the head's wait ends after --check-interval (lock_timeout) and
//!   it tries all slots again. That re-check, one query per interval by the head alone, is the
//!   only periodic work, and it happens only while every slot is taken.
//! - A cancel can race with a grant, so after any interrupted wait the head asks pg_locks which
//!   slot, if any, it holds; in xact scope the wait's error aborted the transaction, and the
//!   head starts a new one (keeping the gate, a session lock), which gives back a raced grant.
//! - A wake-up can land on any statement of the head, not only its wait: the release read the
//!   head as waiting a moment before its cancel arrived. So every statement the head runs can be
//!   repeated after a cancel (no savepoints: a cancel between a savepoint's statements leaves
//!   nothing to roll back to). One delayed past the head's next wait (the releasing backend
//!   descheduled between reading pg_stat_activity and signalling, while its freed slot was taken
//!   by a newcomer) lands on a wait that no longer names that holder, and reads as an
//!   administrator's cancel: never seen, and the only way a wake-up can end a wait.
//!
//! Limits: every user of a key must pass the same N; a user with a larger N takes slots that a
//! smaller N never sees, so the smaller limit is not enforced. The head warns when it sees slots
//! above its own N in use. Cancelling the head needs the right to signal its backend (same role,
//! or pg_signal_backend); without it a release is noticed at the next re-check.

use super::{Acquired, Held, Request, Wait, outcome_of, token_in};
use crate::key::{self, LockId};
use crate::pg::Session;
use crate::pg::error::{is_cancel, is_lock_timeout};
use crate::pg::session::{final_column, final_value};
use crate::pg::sql::HOLDERS_COLUMN;
use crate::pg::sql::{self, Scope};
use crate::{step, warn};
use std::time::{Duration, Instant};
use tokio_postgres::SimpleQueryMessage;

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

    /// Slot `slot`, granted by the statement that answered `messages` (its fencing token).
    fn held(&self, scope: Scope, slot: usize, messages: &[SimpleQueryMessage]) -> Acquired {
        step!("took semaphore slot {slot} of {}", self.slots.len());
        Acquired::Held(Held {
            id: self.slots[slot],
            shared: false,
            scope,
            slot: Some((slot, self.gate)),
            token: token_in(messages),
        })
    }

    /// The slot a `held_slots` answer names.
    fn slot_of(&self, messages: &[SimpleQueryMessage]) -> Option<usize> {
        let classid: u32 = final_column(messages, "classid")?.parse().ok()?;
        let objid: u32 = final_column(messages, "objid")?.parse().ok()?;
        self.slots
            .iter()
            .position(|s| s.pg_locks_coordinates() == (classid, objid, 1))
    }
}

fn slot_id(base: &str, i: usize) -> LockId {
    key::slot_id(base, i)
}

fn slot_in(messages: &[SimpleQueryMessage]) -> Option<usize> {
    final_value(messages).and_then(|v| v.parse().ok())
}

pub fn acquire(
    session: &mut Session,
    req: &Request,
    sem: &Semaphore,
    interrupted: &dyn Fn() -> bool,
    waiting: &mut dyn FnMut(Option<i32>),
) -> Result<Acquired, tokio_postgres::Error> {
    let mut taker = Taker {
        session,
        req,
        sem,
        interrupted,
        waiting,
        deadline: match req.wait {
            Wait::For(t) => Some(crate::duration::after(Instant::now(), t)),
            _ => None,
        },
        named: None,
    };
    loop {
        match taker.attempt() {
            Err(e) if req.scope == Scope::Xact && is_cancel(&e) && !interrupted() => {
                // A wake-up meant for the head's wait landed on another statement (leaving the
                // gate with a slot) and aborted the transaction: give back the gate and any
                // slot, and start over. Repeatable, like every statement here.
                step!("semaphore wait disturbed; starting over");
                taker.query_again(sql::RESTART_TRANSACTION)?;
            }
            other => return other,
        }
    }
}

/// One acquisition: the session, what to take, and when to stop waiting.
struct Taker<'a> {
    session: &'a mut Session,
    req: &'a Request,
    sem: &'a Semaphore,
    interrupted: &'a dyn Fn() -> bool,
    /// Runs before the first wait (see [`super::acquire`]).
    waiting: &'a mut dyn FnMut(Option<i32>),
    deadline: Option<Instant>,
    /// The slot holders the head's wait names (see [`sql::head_wait`]); None before it read
    /// them.
    named: Option<String>,
}

impl Taker<'_> {
    /// Runs an idempotent statement, repeating it if a stray wake-up cancels it.
    fn query_again(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        let mut tries = 0;
        loop {
            match self.session.query(sql) {
                Err(e) if is_cancel(&e) && !(self.interrupted)() && tries < 5 => tries += 1,
                other => return other,
            }
        }
    }

    fn attempt(&mut self) -> Result<Acquired, tokio_postgres::Error> {
        let (scope, sem) = (self.req.scope, self.sem);
        // 1. The settings and one try over every slot.
        let try_slots = sql::try_slots(scope, &sem.slots);
        let first = format!(
            "{}{}",
            sql::prelude(scope, 0, self.req.settings),
            match self.req.token {
                true => sql::with_token(&try_slots),
                false => try_slots,
            }
        );
        match self.session.query(&first) {
            Ok(messages) => {
                self.session.learn_backend_pid(&messages);
                if let Some(slot) = slot_in(&messages) {
                    return Ok(sem.held(scope, slot, &messages));
                }
            }
            Err(e) => return outcome_of(e),
        }
        if self.req.wait == Wait::Try {
            return Ok(Acquired::Busy);
        }
        // 2. Queue at the gate.
        (self.waiting)(self.session.backend_pid());
        if let Some(outcome) = self.queue_at_gate()? {
            return Ok(outcome);
        }
        step!("at the head of the queue for {} slots", sem.slots.len());
        if !warn_about_larger_limits(self.session, sem) && self.req.scope == Scope::Xact {
            self.fresh_transaction()?;
        }
        // 3. At the head: wait for any slot.
        self.wait_at_head()
    }

    /// Waits for the gate; Some(outcome) if the wait ended without it.
    fn queue_at_gate(&mut self) -> Result<Option<Acquired>, tokio_postgres::Error> {
        let local = self.req.scope == Scope::Xact;
        if left(self.deadline) == Some(Duration::ZERO) {
            return Ok(Some(Acquired::TimedOut));
        }
        let timeout = sql::lock_timeout_ms(left(self.deadline));
        let gate = sql::gate(self.req.scope, timeout, self.sem.gate);
        let holds_gate = sql::holds(self.sem.gate, None);
        match self.session.query(&gate) {
            Ok(_) => Ok(None),
            // Releases wake only the head, so a cancel here is someone else's: the wait ends,
            // unless in session scope the cancel raced the grant (the session then has the
            // gate, and goes on as the head).
            Err(e) if !local && is_cancel(&e) && !(self.interrupted)() => {
                let held = self.query_again(&holds_gate)?;
                match final_value(&held).as_deref() != Some("0") {
                    true => Ok(None),
                    false => Ok(Some(Acquired::Cancelled)),
                }
            }
            // Its --timeout running out (lock_timeout) is a conflict, as anywhere.
            Err(e) => outcome_of(e).map(Some),
        }
    }

    fn wait_at_head(&mut self) -> Result<Acquired, tokio_postgres::Error> {
        let (scope, sem, token) = (self.req.scope, self.sem, self.req.token);
        let mut round = 0;
        loop {
            if (self.interrupted)() {
                return Ok(Acquired::Cancelled);
            }
            let wait = match left(self.deadline) {
                Some(Duration::ZERO) => return Ok(Acquired::TimedOut),
                Some(left) => left.min(sem.recheck),
                None => sem.recheck,
            };
            let k = round % sem.slots.len();
            round += 1;
            let timeout = sql::lock_timeout_ms(Some(wait));
            let named = self.named.take();
            let statement = sql::head_wait(scope, timeout, &sem.slots, k, token, named.as_deref());
            let (slot, messages) = match self.session.query(&statement) {
                // No slot: the holders were not (or no longer) those named; name them now.
                Ok(messages) => (slot_in(&messages), messages),
                Err(e) if is_cancel(&e) || is_lock_timeout(&e) => {
                    if (self.interrupted)() {
                        return Ok(Acquired::Cancelled);
                    }
                    // Woken by a release, cancelled by someone else, or time to re-check. The
                    // wait may have been granted just before it ended: a transaction's grant goes
                    // with the transaction, a session lock is then held.
                    let (slot, messages) = match scope {
                        Scope::Xact => (None, self.fresh_transaction()?),
                        Scope::Session => {
                            let messages = self.query_again(&sql::held_slots(&sem.slots, token))?;
                            (sem.slot_of(&messages), messages)
                        }
                    };
                    let now = final_column(&messages, HOLDERS_COLUMN);
                    if slot.is_none()
                        && is_cancel(&e)
                        && !released(named.as_deref(), now.as_deref())
                    {
                        step!("the semaphore wait was cancelled, and no holder it named left");
                        return Ok(Acquired::Cancelled);
                    }
                    (slot, messages)
                }
                Err(e) => return Err(e),
            };
            if let Some(slot) = slot {
                self.leave_gate()?;
                return Ok(sem.held(scope, slot, &messages));
            }
            self.named = final_column(&messages, HOLDERS_COLUMN);
        }
    }

    /// Xact scope: a new transaction in place of one a failed statement aborted, keeping the
    /// gate (see [`sql::fresh_transaction`]); its answer names the slots' holders.
    fn fresh_transaction(&mut self) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        self.query_again(&sql::fresh_transaction(self.req.settings, &self.sem.slots))
    }

    fn leave_gate(&mut self) -> Result<(), tokio_postgres::Error> {
        let leave = sql::leave_gate(self.sem.gate);
        match self.session.query(&leave) {
            // Unlocking the gate twice only earns a warning. In xact scope the cancel aborted
            // the transaction, slot and all: [`acquire`] starts over.
            Err(e) if self.req.scope == Scope::Session && is_cancel(&e) => {
                self.query_again(&leave).map(drop)
            }
            other => other.map(drop),
        }
    }
}

/// Whether a holder that the head's wait named (`named`, pids separated by spaces) no longer
/// holds a slot (`now`): then a cancel of that wait may be its release's wake-up. A wait that
/// named nobody, or holders that could not be read, cannot tell: a wake-up, to be safe.
fn released(named: Option<&str>, now: Option<&str>) -> bool {
    let (Some(named), Some(now)) = (named, now) else {
        return true;
    };
    let now: Vec<&str> = now.split(' ').collect();
    named.split(' ').any(|pid| !now.contains(&pid))
}

/// Time left before `deadline`: None without one, Some(ZERO) once it has passed.
fn left(deadline: Option<Instant>) -> Option<Duration> {
    deadline.map(|d| d.saturating_duration_since(Instant::now()))
}

/// A holder of a slot above our N, in this database, means another user of the key passed a
/// larger --limit. False if the question failed (a stray wake-up can cancel it).
fn warn_about_larger_limits(session: &mut Session, sem: &Semaphore) -> bool {
    let n = sem.slots.len();
    if n >= MAX_SLOTS {
        return true;
    }
    let above: Vec<LockId> = (n..MAX_SLOTS).map(|i| slot_id(&sem.base, i)).collect();
    let Ok(messages) = session.query(&sql::count_held(&above)) else {
        return false;
    };
    if final_column(&messages, "n").is_some_and(|c| c != "0") {
        warn!(
            "slots above --limit {n} are in use: every user of this key must pass the same --limit"
        );
    }
    true
}
