//! Waiting for the lock: connect, take it or queue for it, and try again after a failure that
//! may pass (see [`super::retry`]), within the wait the user asked for.

use super::retry::{Retry, Stage, Verdict, Window};
use crate::clock::Stamp;
use crate::exit::Outcome;
use crate::lock::{self, Acquired, Holder, Request, Wait};
use crate::options::RunOptions;
use crate::pg::deadline::GRACE;
use crate::pg::session::Failed;
use crate::pg::{Opener, Session};
use crate::report::{self, Watch};
use crate::supervise::signals::Router;
use crate::supervise::wait_guard::WaitGuard;
use crate::{duration, step};
use anyhow::Result;
use std::time::Instant;

/// How the wait ended, short of an error.
pub enum Waited {
    Held(Box<Holder>),
    /// Ended by this outcome: interrupted, or not obtained.
    Gave(Outcome),
}

/// What one connection's attempt came to.
enum Attempt {
    Done(Waited),
    /// The lock query failed (sent at the instant given, on the backend given): try again, if
    /// the failure may pass and the wait allows.
    Broken(Failed, Instant, Option<i32>),
}

struct Waiter<'a> {
    opts: &'a RunOptions,
    opener: &'a Opener,
    router: &'a Router,
    request: &'a Request,
    started: Instant,
    deadline: Option<Instant>,
}

/// Connects and waits for the lock. Failures that may pass are retried with jittered backoff:
/// the first connection for --retry-connect, a broken connection or a full house within
/// --timeout when one is given (see [`super::retry`]). `prepare` runs when the lock turns out to
/// be taken, before the wait (maybe more than once): what the run needs once it holds the lock
/// is better made then than on the way from the grant to the command.
pub fn wait_for_lock(
    opts: &RunOptions,
    opener: &Opener,
    router: &Router,
    request: &Request,
    prepare: &mut dyn FnMut(),
) -> Result<Waited> {
    let started = Instant::now();
    let deadline = match request.wait {
        Wait::For(t) => Some(duration::after(started, t)),
        _ => None,
    };
    let waiter = Waiter {
        opts,
        opener,
        router,
        request,
        started,
        deadline,
    };
    let label = &opts.target.label;
    let window = Window {
        nowait: request.wait == Wait::Try,
        connect_until: duration::after(started, opts.retry_connect),
        deadline,
    };
    let mut retry = Retry::new(opener, request.scope, label, opts.quiet, window);
    let pause = |d| router.pause(d);
    // The backend of a connection that broke during its wait: it may still be queued, or even
    // have been granted the lock with nobody to hear it. The next connection ends it first.
    let mut stranded = None;
    // Once the server has answered, a reconnect is part of the wait: it ends with --timeout.
    let mut reconnect_until = None;
    loop {
        let began = Instant::now();
        let (e, stage) = match opener.open_until(reconnect_until) {
            Ok(session) => {
                retry.connected();
                reconnect_until = deadline.map(|d| duration::after(d, GRACE));
                match waiter.attempt(session, stranded, prepare)? {
                    Attempt::Done(waited) => return Ok(waited),
                    Attempt::Broken(e, asked, backend) => {
                        stranded = backend.or(stranded);
                        (e, Stage::Lock { asked })
                    }
                }
            }
            Err(e) => (e, Stage::Connect { began }),
        };
        if let Some(sig) = router.interrupted() {
            step!("interrupted by signal {sig}; giving up");
            return Ok(Waited::Gave(Outcome::Interrupted(sig)));
        }
        let connecting = matches!(stage, Stage::Connect { .. });
        match retry.failed(&e, stage, &pause) {
            Verdict::Again => continue,
            Verdict::Interrupted(sig) => return Ok(Waited::Gave(Outcome::Interrupted(sig))),
            Verdict::TimedOut(why) => return Ok(Waited::Gave(waiter.timed_out(&why))),
            Verdict::Unavailable => return Err(opener.failure(&e)),
            Verdict::Fatal(_) if connecting => return Err(opener.failure(&e)),
            Verdict::Fatal(why) => anyhow::bail!("cannot take lock \"{label}\": {why}"),
        }
    }
}

impl Waiter<'_> {
    /// One connection's try or wait.
    fn attempt(
        &self,
        mut session: Session,
        stranded: Option<i32>,
        prepare: &mut dyn FnMut(),
    ) -> Result<Attempt> {
        let label = &self.opts.target.label;
        let mut request = self.request.clone();
        request.wait = request.wait.until(self.deadline);
        request.settings.stranded = stranded;
        if let Some(pid) = stranded {
            step!("ending backend {pid}, left waiting by the connection that broke");
        }
        if request.wait == Wait::Try {
            step!("trying lock \"{label}\" (id {})", request.id);
        } else {
            step!("waiting for lock \"{label}\" (id {})", request.id);
        }
        if let Some(sig) = self.router.waiting(session.canceller()) {
            return Ok(Attempt::Done(Waited::Gave(Outcome::Interrupted(sig))));
        }
        // The server's lock_timeout ends the wait; this bounds it when the server cannot. A try
        // waits for nothing, so its answer gets what any statement gets after a signal.
        session.wait_until(match request.wait {
            Wait::Try => Some(Instant::now() + GRACE),
            _ => self.deadline.map(|d| duration::after(d, GRACE)),
        });
        // Only for a lock that turns out to be taken: its observer and its guard.
        let mut during_wait: Option<(Option<Watch>, WaitGuard)> = None;
        let mut waiting = |backend: Option<i32>| {
            prepare();
            during_wait.get_or_insert_with(|| {
                let guard = WaitGuard::start(
                    self.opener.application_name(),
                    backend,
                    self.opts.database_url.as_deref(),
                );
                (self.observe(), guard)
            });
        };
        let asked = Instant::now();
        let interrupted = || self.router.interrupted().is_some();
        let acquired = lock::acquire(&mut session, &request, &interrupted, &mut waiting);
        // Before anything else: the grant's answer is the lock's first confirmation.
        let answered = Stamp::now();
        drop(during_wait);
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
                let lease_ms = request.settings.lease_ms;
                let holder = Holder::new(session, held, lease_ms, answered);
                let holder = holder.with_deploy(request.deploy);
                return Ok(Attempt::Done(Waited::Held(Box::new(holder))));
            }
            Ok(Acquired::Busy) if self.request.wait == Wait::Try => Acquired::Busy,
            Ok(Acquired::Busy | Acquired::TimedOut) => Acquired::TimedOut,
            Ok(Acquired::Cancelled) => Acquired::Cancelled,
            Ok(Acquired::Superseded(by)) => {
                step!("superseded by {by}; giving up the wait");
                // News, not contention: said even with --quiet. Closing the connection gives
                // back a lock granted in the same instant.
                return Ok(Attempt::Done(Waited::Gave(Outcome::NotObtained(Some(
                    format!(
                        "\"{label}\" superseded by a newer run on {}; not running it",
                        crate::lock::deploy::who(&by)
                    ),
                )))));
            }
            Ok(Acquired::Stale) => {
                step!("the late grant did not hold; connecting again");
                let backend = session.backend_pid();
                let failed = Failed::NoAnswer(lock::LATE_GRANT);
                return Ok(Attempt::Broken(failed, asked, backend));
            }
            Err(_)
                if self
                    .deadline
                    .is_some_and(|d| Instant::now() >= duration::after(d, GRACE)) =>
            {
                step!("no answer from the server by the end of --timeout; the connection was cut");
                return Ok(Attempt::Done(Waited::Gave(
                    self.not_obtained(Acquired::TimedOut, None),
                )));
            }
            Err(e) => {
                let backend = session.backend_pid();
                return Ok(Attempt::Broken(Failed::Error(e), asked, backend));
            }
        };
        let message = self.not_obtained(outcome, Some(&mut session));
        Ok(Attempt::Done(Waited::Gave(message)))
    }

    /// --timeout ran out while pglock could not even queue for the lock: the conflict status,
    /// saying what kept it out.
    fn timed_out(&self, why: &str) -> Outcome {
        match self.not_obtained(Acquired::TimedOut, None) {
            Outcome::NotObtained(Some(message)) => {
                Outcome::NotObtained(Some(format!("{message}; {why}")))
            }
            quiet => quiet,
        }
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
