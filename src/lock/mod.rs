//! The lock layer: taking one advisory lock (or one slot of a `--limit` semaphore) on a
//! dedicated [`Session`], proving it is still held while the command runs, and releasing it.
//! Statement text comes from [`crate::pg::sql`]; this layer decides what to send and what the
//! answers mean.

pub mod semaphore;
pub mod token;

use crate::clock::Stamp;
use crate::exit::LostReason;
use crate::key::LockId;
use crate::pg::session::{Failed, final_column, final_value};
use crate::pg::sql::{self, Call, Scope};
use crate::pg::{Session, error};
pub use semaphore::Semaphore;
use std::time::{Duration, Instant};
pub use token::Token;
use tokio_postgres::SimpleQueryMessage;

/// How long to wait for a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// One try (--nowait, --timeout 0).
    Try,
    /// At most this long (--timeout).
    For(Duration),
    /// As long as it takes.
    Forever,
}

impl Wait {
    /// The wait left of this policy at `deadline`, as the server's lock_timeout sees it.
    pub fn until(self, deadline: Option<Instant>) -> Wait {
        match (self, deadline) {
            (Wait::For(_), Some(d)) => match d.saturating_duration_since(Instant::now()) {
                // --timeout bounds the wait, and connecting ate it all: one last try without
                // waiting still takes a free lock, or finds out who holds it.
                Duration::ZERO => Wait::Try,
                left => Wait::For(left),
            },
            (other, _) => other,
        }
    }

    fn lock_timeout_ms(self) -> u128 {
        match self {
            Wait::Try | Wait::Forever => 0,
            Wait::For(d) => sql::lock_timeout_ms(Some(d)),
        }
    }
}

/// What to take.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: LockId,
    pub shared: bool,
    pub scope: Scope,
    pub wait: Wait,
    /// `--limit N` above 1: take one of N slots instead of `id`.
    pub semaphore: Option<Semaphore>,
    /// The lease, and a backend of ours to end first.
    pub settings: sql::Settings,
    /// `--fencing-token`: read one with the grant.
    pub token: bool,
}

/// The lock a session holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    pub id: LockId,
    pub shared: bool,
    pub scope: Scope,
    /// The semaphore slot, with the gate whose holder a release must wake.
    pub slot: Option<(usize, LockId)>,
    /// With `--fencing-token`: the grant's token, None if the answer had none.
    pub token: Option<Token>,
}

/// How an acquisition attempt ended, short of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    Held(Held),
    Busy,
    TimedOut,
    /// The wait was cancelled: by a signal of ours, or by someone's pg_cancel_backend.
    Cancelled,
    /// The grant came so late that the server may have ended the session since (its lease ran
    /// out while the connection was silent), and asking again found no lock: try again.
    Stale,
}

/// A grant whose answer took longer than this to arrive, beyond what the server itself waited,
/// is confirmed with one more round trip before the command may start.
pub const LATE_GRANT: Duration = Duration::from_secs(1);

/// Takes the lock (or a semaphore slot). `interrupted` tells a cancel caused by a signal from
/// one sent by another pglock.
///
/// Every acquisition tries first, in the round trip that makes the session's settings, and only
/// a lock that is taken goes on to wait: `waiting` runs then (with the backend's pid), once or
/// more, before the wait, so
/// that what only a wait needs (its observer, its guard) costs nothing when the lock is free.
/// The try takes nothing a waiter is owed: PostgreSQL refuses a try that conflicts with a queued
/// waiter just as it queues a blocking request behind one.
pub fn acquire(
    session: &mut Session,
    req: &Request,
    interrupted: &dyn Fn() -> bool,
    waiting: &mut dyn FnMut(Option<i32>),
) -> Result<Acquired, tokio_postgres::Error> {
    if let Some(semaphore) = &req.semaphore {
        return semaphore::acquire(session, req, semaphore, interrupted, waiting);
    }
    let call = Call {
        try_only: true,
        scope: req.scope,
        shared: req.shared,
    };
    let held = |messages: &[SimpleQueryMessage]| {
        Acquired::Held(Held {
            id: req.id,
            shared: req.shared,
            scope: req.scope,
            slot: None,
            token: token_in(messages),
        })
    };
    let timeout = req.wait.lock_timeout_ms();
    let first = match req.token {
        true => sql::acquire_with_token(call, timeout, req.settings, req.id),
        false => sql::acquire(call, timeout, req.settings, req.id),
    };
    match session.query(&first) {
        Ok(messages) => {
            session.learn_backend_pid(&messages);
            if final_value(&messages).as_deref() == Some("t") {
                return Ok(held(&messages));
            }
            if req.wait == Wait::Try {
                return Ok(Acquired::Busy);
            }
        }
        Err(e) => return outcome_of(e),
    }
    waiting(session.backend_pid());
    let call = Call {
        try_only: false,
        ..call
    };
    // On the clock that counts a suspend of the host: a grant that waited out one is late.
    let asked = Stamp::now();
    match session.query(&sql::wait(call, req.id, req.token)) {
        Ok(messages) => match late(&messages, asked) {
            Some(delay) => confirm_late(session, req, delay, held(&messages)),
            None => Ok(held(&messages)),
        },
        Err(e) => outcome_of(e),
    }
}

/// How much longer than the server's own wait the grant's answer took to arrive, when that is
/// more than [`LATE_GRANT`]: a connection that was silent while the grant waited in the
/// server's send buffer. Normally this is one network round trip.
fn late(messages: &[SimpleQueryMessage], asked: Stamp) -> Option<Duration> {
    let server: u64 = final_column(messages, sql::WAITED_COLUMN)?.parse().ok()?;
    let delay = asked
        .elapsed()
        .saturating_sub(Duration::from_millis(server));
    (delay > LATE_GRANT).then_some(delay)
}

/// A late grant counts only if the session, asked again, still holds the lock: the server may
/// have ended it (its lease) and given the lock to another holder after sending the grant.
fn confirm_late(
    session: &mut Session,
    req: &Request,
    delay: Duration,
    held: Acquired,
) -> Result<Acquired, tokio_postgres::Error> {
    crate::step!("the grant arrived {delay:?} late; asking whether it still holds");
    match session.query_within(&sql::holds(req.id, None), LATE_GRANT) {
        Ok(messages) if final_column(&messages, "n").as_deref() != Some("0") => Ok(held),
        Ok(_) => {
            crate::step!("the session no longer holds it");
            Ok(Acquired::Stale)
        }
        Err(Failed::Error(e)) => Err(e),
        Err(other) => {
            crate::step!("no confirmation: {other}");
            Ok(Acquired::Stale)
        }
    }
}

/// The fencing token in a grant's answer, if it has one.
pub(crate) fn token_in(messages: &[SimpleQueryMessage]) -> Option<Token> {
    final_column(messages, "token").and_then(|parts| Token::parse(&parts))
}

/// Maps the errors a lock wait ends with normally.
pub(crate) fn outcome_of(e: tokio_postgres::Error) -> Result<Acquired, tokio_postgres::Error> {
    if error::is_lock_timeout(&e) {
        Ok(Acquired::TimedOut)
    } else if error::is_cancel(&e) {
        Ok(Acquired::Cancelled)
    } else {
        Err(e)
    }
}

/// A session that holds a lock.
pub struct Holder {
    session: Session,
    held: Held,
    /// When the lock was granted; see [`sql::HELD_TAG`].
    granted: Instant,
    /// When the server last said the lock was held: the grant's answer, then each check's
    /// question (its answer says the lock was held at least until the question arrived).
    confirmed: Stamp,
    /// The session's lease (0: none), restored after a suspension.
    lease_ms: u128,
}

/// The release could not be confirmed; the server frees the lock when the session ends.
#[derive(Debug)]
pub struct Unconfirmed(pub String);

impl Holder {
    /// `confirmed`: when the grant's answer arrived.
    pub fn new(session: Session, held: Held, lease_ms: u128, confirmed: Stamp) -> Holder {
        Holder {
            session,
            held,
            granted: Instant::now(),
            confirmed,
            lease_ms,
        }
    }

    /// When the server last said the lock was held.
    pub fn confirmed(&self) -> Stamp {
        self.confirmed
    }

    pub fn held(&self) -> Held {
        self.held
    }

    pub fn socket(&self) -> Option<std::os::fd::RawFd> {
        self.session.socket()
    }

    /// The lock's own connection, for statements that belong with the lock: the run ledger's,
    /// in session scope.
    pub fn session(&mut self) -> &mut Session {
        &mut self.session
    }

    /// Handles whatever the server sent unasked: a closed session means a lost lock.
    pub fn readable(&mut self) -> Result<(), LostReason> {
        self.session.readable().map_err(LostReason::Connection)
    }

    /// Asks the server whether this backend still holds the lock as granted, within `limit`.
    pub fn check(&mut self, limit: Duration) -> Result<(), LostReason> {
        self.ask(String::new(), limit)
    }

    /// Suspends the lease (`on` false: a job stopped at a terminal keeps its lock) or restores
    /// it, and checks the lock in the same round trip. Without a lease there is nothing to
    /// suspend, and restoring it is a plain check.
    pub fn set_lease(&mut self, on: bool, limit: Duration) -> Result<(), LostReason> {
        match (self.lease_ms, on) {
            (0, false) => Ok(()),
            (0, true) => self.check(limit),
            (lease_ms, on) => {
                let lease_ms = if on { lease_ms } else { 0 };
                self.ask(sql::lease(self.held.scope, lease_ms), limit)
            }
        }
    }

    fn ask(&mut self, first: String, limit: Duration) -> Result<(), LostReason> {
        let sql = format!(
            "{first}{}",
            sql::holds(self.held.id, Some(self.granted.elapsed().as_millis()))
        );
        let asked = Stamp::now();
        match self.session.query_within(&sql, limit) {
            Err(Failed::NoAnswer(limit)) => Err(LostReason::NoAnswer(limit)),
            Err(Failed::Error(e)) => Err(LostReason::CheckFailed(error::describe_error(&e))),
            Err(other @ Failed::Connect(_)) => Err(LostReason::CheckFailed(other.to_string())),
            Ok(messages) if final_column(&messages, "n").as_deref() == Some("0") => {
                Err(LostReason::NotHeld)
            }
            Ok(_) => {
                self.confirmed = asked;
                Ok(())
            }
        }
    }

    /// Ends the lock: pg_advisory_unlock for a session lock (it must report that it was held),
    /// COMMIT or ROLLBACK for a transaction lock; then closes the connection. The answer must
    /// come within `limit`. Ok(Err(_)) is a release that could not be confirmed; Err(_) a lock
    /// that turned out to have been lost.
    pub fn release(
        mut self,
        success: bool,
        limit: Duration,
    ) -> Result<Result<(), Unconfirmed>, LostReason> {
        // A semaphore slot frees up: wake the waiter at the gate, if any.
        let wake = self
            .held
            .slot
            .map(|(_, gate)| sql::wake_gate(gate))
            .unwrap_or_default();
        let statement = match self.held.scope {
            Scope::Session => format!("{}{wake}", sql::unlock(self.held.shared, self.held.id)),
            Scope::Xact => format!("{}{wake}", sql::end_transaction(success)),
        };
        let outcome = match self.session.query_within(&statement, limit) {
            Ok(messages) => {
                let was_held = crate::pg::session::first_value(&messages);
                if self.held.scope == Scope::Session && was_held.as_deref() != Some("t") {
                    Err(LostReason::NotHeldAtRelease)
                } else {
                    Ok(Ok(()))
                }
            }
            Err(e) => Ok(Err(Unconfirmed(e.to_string()))),
        };
        self.session.close();
        outcome
    }

    /// Gives the connection up without a word: the server frees the lock with the session.
    pub fn abandon(self) {
        self.session.close();
    }
}
