//! The one line printed when `--nowait` finds the lock busy or `--timeout` expires: who holds
//! it. The run path calls this with its own lock connection, open and idle at that point, so a
//! conflict costs one more round trip and no extra connection.

use super::model;
use super::render::holder_phrase;
use super::sql::Locks;
use crate::key::LockId;
use crate::lock::Request;
use crate::pg::sql::Scope;
use crate::pg::{self, Session};
use crate::{duration, step};
use std::time::Duration;

/// The message; falls back to the plain one if the question fails.
pub fn conflict_message(
    session: &mut Session,
    req: &Request,
    label: &str,
    timed_out: Option<Duration>,
) -> String {
    let lead = match timed_out {
        Some(waited) => format!("timed out after {}: ", duration::format(waited)),
        None => String::new(),
    };
    // A semaphore is busy when all its slots are: name their holders.
    let (ids, what): (Vec<LockId>, String) = match &req.semaphore {
        None => (vec![req.id], format!("lock \"{label}\"")),
        Some(sem) => (
            sem.slots.clone(),
            format!("lock \"{label}\" (all {} slots)", sem.slots.len()),
        ),
    };
    // A lock_timeout error leaves an xact-scope transaction aborted; end it first.
    let after_rollback = req.scope == Scope::Xact;
    match model::query(session, Locks::These(&ids), after_rollback) {
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
