//! The lock layer: taking one advisory lock (or one slot of a `--limit` semaphore) on a
//! dedicated [`Session`], proving it is still held while the command runs, and releasing it.
//! Statement text comes from [`crate::pg::sql`]; this layer decides what to send and what the
//! answers mean.

pub mod deploy;
pub mod semaphore;
pub mod token;

use crate::clock::Stamp;
use crate::exit::LostReason;
use crate::key::LockId;
use crate::pg::session::{Failed, final_column, final_value};
use crate::pg::sql::{self, Call, Scope};
use crate::pg::{Session, error};
pub use deploy::Deploy;
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
    /// `--supersede`, `--replace`.
    pub deploy: Deploy,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquired {
    Held(Held),
    Busy,
    TimedOut,
    /// The wait was cancelled: by a signal of ours, or by someone's pg_cancel_backend.
    Cancelled,
    /// The grant came so late that the server may have ended the session since (its lease ran
    /// out while the connection was silent), and asking again found no lock: try again.
    Stale,
    /// `--supersede`: a newer run of the lock (its application_name) made this one step aside,
    /// while it waited or right at its grant (the lock then goes with the connection).
    Superseded(String),
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
    // --supersede, --replace: the marker and the cancel of older waiters lead the round trip.
    let first = format!("{}{first}", deploy::arrive(req.deploy, req.scope, req.id));
    let arrived = match session.query(&first) {
        Ok(messages) => {
            session.learn_backend_pid(&messages);
            if final_value(&messages).as_deref() == Some("t") {
                return Ok(held(&messages));
            }
            if req.wait == Wait::Try {
                return Ok(Acquired::Busy);
            }
            out_of_reach(&messages, req.id);
            final_column(&messages, deploy::ARRIVED)
        }
        Err(e) => return outcome_of(e),
    };
    waiting(session.backend_pid());
    let call = Call {
        try_only: false,
        ..call
    };
    // On the clock that counts a suspend of the host: a grant that waited out one is late.
    let asked = Stamp::now();
    let wait = format!(
        "{}{}",
        deploy::marker(req.deploy, req.id),
        sql::wait(call, req.id, req.token)
    );
    let granted = match session.query(&wait) {
        Ok(messages) => match late(&messages, asked) {
            Some(delay) => confirm_late(session, req, delay, held(&messages))?,
            None => held(&messages),
        },
        Err(e) => {
            let outcome = outcome_of(e)?;
            return match (&outcome, &arrived) {
                (Acquired::Cancelled, Some(at)) => {
                    Ok(superseded(session, req, at, false).map_or(outcome, Acquired::Superseded))
                }
                _ => Ok(outcome),
            };
        }
    };
    // Two runs that arrived in the same instant both queued: the newer one keeps its place.
    match (&granted, &arrived) {
        (Acquired::Held(_), Some(at)) => {
            Ok(superseded(session, req, at, true).map_or(granted, Acquired::Superseded))
        }
        _ => Ok(granted),
    }
}

/// Whether a marked run of the lock arrived after this one (`arrived`): the newer run's
/// application_name. `granted`: asked right after the grant, about a newer run queued behind;
/// otherwise after a cancel, about any newer run (one that cancelled this wait). No answer
/// within a second counts as none: the cancel is then reported as it always was.
fn superseded(
    session: &mut Session,
    req: &Request,
    arrived: &str,
    granted: bool,
) -> Option<String> {
    // A cancelled statement aborted the lock's transaction.
    let rollback = match (req.scope, granted) {
        (Scope::Xact, false) => "ROLLBACK; ",
        _ => "",
    };
    let sql = format!("{rollback}{}", deploy::newer(req.id, arrived, granted));
    match session.query_within(&sql, LATE_GRANT) {
        Ok(messages) => final_column(&messages, "newer").filter(|n| !n.is_empty()),
        Err(e) => {
            crate::step!("cannot ask whether a newer run superseded this one: {e}");
            None
        }
    }
}

/// Warns, once per run, about older marked waiters that this run may not cancel: they go on
/// waiting, and so does this run.
fn out_of_reach(messages: &[SimpleQueryMessage], id: LockId) {
    static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let n = final_column(messages, deploy::OUT_OF_REACH).unwrap_or_default();
    if matches!(n.as_str(), "" | "0") || WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    crate::warn!(
        "warning: {n} older waiter(s) of lock {id} run as another role, which pg_cancel_backend \
         may not signal (grant pg_signal_backend, or use one role); waiting behind them"
    );
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
///
/// Its checks must survive a cancel (an administrator's pg_cancel_backend, or a semaphore's
/// wake-up that arrives after its waiter became a holder): a cancel proves nothing about the
/// lock, so a cancelled check is asked again. In session scope the lock outlives any error. In
/// xact scope an error would abort the transaction and free the lock while the command runs,
/// so the first check makes a savepoint and every check runs inside it
/// ([`sql::check_in_savepoint`]): a cancel aborts only the savepoint, and the check asked again
/// rolls back to it. (A savepoint made and released by each check would leave the moment
/// before it, at every check; one kept leaves only the first check's, microseconds once per
/// run: a cancel there aborts the transaction, and the check asked again finds that out, a
/// lost lock, truthfully.) Pausing is safe: a cancel that arrives between statements is dropped
/// by the server.
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
    /// Whether the lease is on (not suspended for a stopped job).
    lease_on: bool,
    /// Xact scope: the checks' savepoint exists, and nothing that must be kept has been done in
    /// it since (the ledger's row, written through [`Holder::session`], is kept by making a new
    /// savepoint, nested, at the next check).
    in_savepoint: bool,
    /// `--supersede`, `--replace`: what the checks carry.
    deploy: Deploy,
    /// `--replace`: the newer run that asked this one to stop, once one did.
    replaced_by: Option<String>,
}

/// How many times a lock check is asked again after cancels, within its time limit: enough
/// for a stream of cancels (half of the checks were hit in tests), not an endless loop.
const CANCELLED_CHECKS: u32 = 64;

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
            lease_on: true,
            in_savepoint: false,
            deploy: Deploy::Plain,
            replaced_by: None,
        }
    }

    /// A holder started with `--supersede` or `--replace`.
    pub fn with_deploy(mut self, deploy: Deploy) -> Holder {
        self.deploy = deploy;
        self
    }

    /// `--replace`: the newer run (its application_name) that asked this holder to stop, by a
    /// notification or found by a check.
    pub fn replace_request(&self) -> Option<&str> {
        self.replaced_by.as_deref()
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
        // What it writes must not be rolled back by a cancelled check.
        self.in_savepoint = false;
        &mut self.session
    }

    /// Handles whatever the server sent unasked: a closed session means a lost lock.
    pub fn readable(&mut self) -> Result<(), LostReason> {
        let result = self.session.readable().map_err(LostReason::Connection);
        self.heard();
        result
    }

    /// `--replace`: a notification on the lock's channel from another session is a newer
    /// `--replace` run's request (this session LISTENed in its first round trip, so every
    /// notification is from a run that arrived later). Others are dropped.
    fn heard(&mut self) {
        let notes = self.session.take_notifications();
        if self.deploy != Deploy::Replace || self.replaced_by.is_some() {
            return;
        }
        let channel = deploy::channel(self.held.id);
        let own = self.session.backend_pid();
        self.replaced_by = notes
            .into_iter()
            .find(|n| n.channel == channel && Some(n.process_id) != own)
            .map(|n| n.payload);
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
            (_, on) => {
                self.lease_on = on;
                self.ask(self.lease(), limit)
            }
        }
    }

    /// The statement that sets the lease as it should be now.
    fn lease(&self) -> String {
        let lease_ms = if self.lease_on { self.lease_ms } else { 0 };
        sql::lease(self.held.scope, lease_ms)
    }

    /// Runs `first` (statements ending in "; ", or nothing) and the check in one round trip,
    /// answered within `limit`, and asks again after a cancel (see [`Holder`]).
    fn ask(&mut self, first: String, limit: Duration) -> Result<(), LostReason> {
        let until = crate::duration::after(Instant::now(), limit);
        let check = deploy::check(self.deploy, self.held.id, &sql::holds(self.held.id, None));
        let mut cancels = 0;
        loop {
            // The tag leads, where reports look for it.
            let tag = sql::held_tag(self.granted.elapsed().as_millis());
            let sql = match (self.held.scope, cancels > 0) {
                (Scope::Session, _) => format!("{tag}{first}{check}"),
                (Scope::Xact, false) => {
                    let savepoint = match self.in_savepoint {
                        true => sql::Savepoint::Inside,
                        false => sql::Savepoint::Make,
                    };
                    sql::check_in_savepoint(&tag, savepoint, &first, &check)
                }
                // Rolling back to the savepoint undoes the lease's settings made in it too.
                (Scope::Xact, true) => {
                    let lease = if self.lease_ms > 0 {
                        self.lease()
                    } else {
                        String::new()
                    };
                    sql::check_in_savepoint(&tag, sql::Savepoint::RollBack, &lease, &check)
                }
            };
            let left = until.saturating_duration_since(Instant::now());
            let asked = Stamp::now();
            match self
                .session
                .query_within(&sql, left.max(Duration::from_millis(1)))
            {
                Err(Failed::Error(e))
                    if error::is_cancel(&e) && cancels < CANCELLED_CHECKS && !left.is_zero() =>
                {
                    crate::step!("the lock check was cancelled on the server; asking again");
                    cancels += 1;
                }
                Err(Failed::NoAnswer(_)) => return Err(LostReason::NoAnswer(limit)),
                Err(Failed::Error(e)) => {
                    return Err(LostReason::CheckFailed(error::describe_error(&e)));
                }
                Err(other @ Failed::Connect(_)) => {
                    return Err(LostReason::CheckFailed(other.to_string()));
                }
                Ok(messages) if final_column(&messages, "n").as_deref() == Some("0") => {
                    return Err(LostReason::NotHeld);
                }
                Ok(messages) => {
                    self.in_savepoint = self.held.scope == Scope::Xact;
                    self.confirmed = asked;
                    if self.replaced_by.is_none() {
                        self.replaced_by = final_column(&messages, deploy::REPLACER);
                    }
                    self.heard();
                    return Ok(());
                }
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
