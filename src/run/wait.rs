//! Waiting for the lock: connect, take it or queue for it, and reconnect with capped backoff if
//! the server goes away meanwhile, within the wait the user asked for.

use crate::exit::Outcome;
use crate::lock::{self, Acquired, Holder, Request, Wait};
use crate::options::RunOptions;
use crate::pg::error::{describe_error, is_transient};
use crate::pg::{Opener, Session};
use crate::report::{self, Watch};
use crate::supervise::signals::Router;
use crate::supervise::wait_guard::WaitGuard;
use crate::{duration, step};
use anyhow::Result;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// Reconnection backoff: doubling from the first delay up to the cap.
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_CAP: Duration = Duration::from_secs(5);

/// How the wait ended, short of an error.
pub enum Waited {
    Held(Box<Holder>),
    /// Ended by this outcome: interrupted, or not obtained.
    Gave(Outcome),
}

/// What one connection's attempt came to.
enum Attempt {
    Done(Waited),
    /// The connection broke while waiting: reconnect, if the wait allows.
    Broken(postgres::Error),
}

struct Waiter<'a> {
    opts: &'a RunOptions,
    opener: &'a Opener,
    router: &'a Router,
    request: &'a Request,
    started: Instant,
    deadline: Option<Instant>,
    delay: Duration,
}

/// Connects and waits for the lock. A connection that breaks while waiting is reopened with
/// capped exponential backoff, within --timeout when one is given; the first connection is
/// retried for --retry-connect.
pub fn wait_for_lock(
    opts: &RunOptions,
    opener: &Opener,
    router: &Router,
    request: &Request,
) -> Result<Waited> {
    let started = Instant::now();
    let deadline = match request.wait {
        Wait::For(t) => Some(started + t),
        _ => None,
    };
    let mut waiter = Waiter {
        opts,
        opener,
        router,
        request,
        started,
        deadline,
        delay: BACKOFF_FIRST,
    };
    let mut retry_until = Some(started + opts.retry_connect);
    loop {
        let session = match opener.open() {
            Ok(session) => session,
            Err(e) if is_transient(&e) => {
                let why = format!("cannot connect: {}", describe_error(&e));
                match waiter.backoff(&why, retry_until.or(deadline)) {
                    Backoff::GiveUp => return Err(opener.failure(&e)),
                    Backoff::Interrupted(sig) => {
                        return Ok(Waited::Gave(Outcome::Interrupted(sig)));
                    }
                    Backoff::Again => continue,
                }
            }
            Err(e) => return Err(opener.failure(&e)),
        };
        match waiter.attempt(session)? {
            Attempt::Done(waited) => return Ok(waited),
            Attempt::Broken(e) => {
                // From here on, reconnecting is bounded by --timeout alone.
                retry_until = None;
                let why = format!("connection lost while waiting: {}", describe_error(&e));
                match waiter.backoff(&why, deadline) {
                    Backoff::GiveUp => {
                        return Ok(Waited::Gave(waiter.not_obtained(Acquired::TimedOut, None)));
                    }
                    Backoff::Interrupted(sig) => {
                        return Ok(Waited::Gave(Outcome::Interrupted(sig)));
                    }
                    Backoff::Again => continue,
                }
            }
        }
    }
}

enum Backoff {
    Again,
    GiveUp,
    Interrupted(Signal),
}

impl Waiter<'_> {
    /// Sleeps before the next connection, unless that would pass `until`.
    fn backoff(&mut self, why: &str, until: Option<Instant>) -> Backoff {
        if until.is_some_and(|u| Instant::now() + self.delay > u) {
            return Backoff::GiveUp;
        }
        step!("{why}; retrying in {}", duration::format(self.delay));
        let sig = self.router.pause(self.delay);
        self.delay = (self.delay * 2).min(BACKOFF_CAP);
        match sig {
            Some(sig) => Backoff::Interrupted(sig),
            None => Backoff::Again,
        }
    }

    /// One connection's try or wait.
    fn attempt(&self, mut session: Session) -> Result<Attempt> {
        let label = &self.opts.target.label;
        let mut request = self.request.clone();
        request.wait = request.wait.until(self.deadline);
        if request.wait == Wait::Try {
            step!("trying lock \"{label}\" (id {})", request.id);
        } else {
            step!("waiting for lock \"{label}\" (id {})", request.id);
        }
        if let Some(sig) = self.router.waiting(session.canceller()) {
            return Ok(Attempt::Done(Waited::Gave(Outcome::Interrupted(sig))));
        }
        let waits = request.wait != Wait::Try;
        let observer = waits.then(|| self.observe()).flatten();
        let guard = waits.then(|| {
            WaitGuard::start(
                self.opener.application_name(),
                self.opts.database_url.as_deref(),
            )
        });
        let acquired = lock::acquire(&mut session, &request, &|| {
            self.router.interrupted().is_some()
        });
        drop(guard);
        drop(observer);
        self.router.idle();
        if let Some(sig) = self.router.interrupted() {
            step!("interrupted by signal {sig} while waiting; giving up");
            // Closing the connection also drops the lock if the grant raced with the cancel.
            return Ok(Attempt::Done(Waited::Gave(Outcome::Interrupted(sig))));
        }
        let outcome = match acquired {
            Ok(Acquired::Held(held)) => {
                step!(
                    "acquired lock \"{label}\" after {}",
                    duration::format(self.started.elapsed())
                );
                return Ok(Attempt::Done(Waited::Held(Box::new(Holder::new(
                    session, held,
                )))));
            }
            Ok(Acquired::Busy) if self.request.wait == Wait::Try => Acquired::Busy,
            Ok(Acquired::Busy | Acquired::TimedOut) => Acquired::TimedOut,
            Ok(Acquired::Cancelled) => Acquired::Cancelled,
            Err(e) if is_transient(&e) => return Ok(Attempt::Broken(e)),
            Err(e) => anyhow::bail!("cannot take lock \"{label}\": {}", describe_error(&e)),
        };
        let message = self.not_obtained(outcome, Some(&mut session));
        Ok(Attempt::Done(Waited::Gave(message)))
    }

    /// The observer of a wait, when anyone will see what it finds.
    fn observe(&self) -> Option<Watch> {
        Watch::start(&report::Wait {
            opener: self.opener,
            id: self.request.id,
            semaphore: self.request.semaphore.as_ref(),
            label: &self.opts.target.label,
            shared: self.request.shared,
            verbose: self.opts.verbose,
            quiet: self.opts.quiet,
        })
    }

    /// The lock was not obtained: a message unless --quiet. When the lock connection is still
    /// there, the message names the holder; that costs a query, so it is only asked for when
    /// the message will be printed.
    fn not_obtained(&self, outcome: Acquired, session: Option<&mut Session>) -> Outcome {
        if self.opts.quiet {
            return Outcome::NotObtained(None);
        }
        let label = &self.opts.target.label;
        if outcome == Acquired::Cancelled {
            return Outcome::NotObtained(Some(format!(
                "the wait for lock \"{label}\" was cancelled on the server (pg_cancel_backend?)"
            )));
        }
        let timed_out = (outcome == Acquired::TimedOut).then(|| match self.request.wait {
            Wait::For(t) => t,
            _ => self.started.elapsed(),
        });
        let message = match (session, timed_out) {
            (Some(session), _) => report::conflict_message(session, self.request, label, timed_out),
            (None, Some(waited)) => format!(
                "timed out after {} waiting for lock \"{label}\"",
                duration::format(waited)
            ),
            (None, None) => format!("lock \"{label}\" is busy"),
        };
        Outcome::NotObtained(Some(message))
    }
}
