//! Waiting out failures of the lock connection: whether to try again
//! ([`crate::pg::classify`]), for how long (the wait the user asked for), and how long to pause
//! before the next try.
//!
//! How long failures that may pass are retried:
//! - `--nowait`: not beyond `--retry-connect`; then exit 69.
//! - waiting, before the server ever answered: `--retry-connect` too (a server that is down when
//!   pglock starts); then exit 69.
//! - waiting, once the server answered, even if only to say it has no free connection slot:
//!   within `--timeout`, or for as long as it takes without one; then exit 75. A slot is a queue
//!   to wait in, so running out of slots is retried like a dropped connection.
//!
//! A fatal failure ends pglock at once, whatever the window.
//!
//! The pause is capped exponential backoff with full jitter: uniform between zero and a ceiling
//! that doubles from [`FIRST`] to [`CAP`]. Waiters that lost their connections together (a
//! restart, a pooler, a network blip) then come back spread over the whole ceiling instead of in
//! lockstep, and a herd waiting for connection slots does not knock in waves. Waiting for a slot
//! has a ceiling of its own, from [`SLOT_FIRST`] to [`SLOT_CAP`]: such a wait can be long, and
//! every try costs the server a backend start and an authentication: W waiters retrying at a
//! mean 2.5 s (W = 1000: 400 logins a second) load it more than they wait.

use crate::pg::classify::{self, Class, Fatal};
use crate::pg::session::Failed;
use crate::pg::sql::Scope;
use crate::pg::{Opener, describe_error};
use crate::report::Note;
use crate::{duration, step};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The first backoff ceiling.
pub const FIRST: Duration = Duration::from_millis(100);
/// The highest backoff ceiling after a broken connection: an outage is usually short.
pub const CAP: Duration = Duration::from_secs(5);
/// The first ceiling when there was no free connection slot.
pub const SLOT_FIRST: Duration = Duration::from_millis(500);
/// The highest ceiling when there was no free connection slot: W waiters in backoff then try
/// about W / 7.5 times a second together.
pub const SLOT_CAP: Duration = Duration::from_secs(15);

/// Capped exponential backoff with full jitter.
pub struct Backoff {
    first: Duration,
    cap: Duration,
    ceiling: Duration,
    rng: Rng,
}

impl Backoff {
    /// Seeded from the clock and the process id, so that processes started together differ.
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff::with_seed(first, cap, seed())
    }

    fn with_seed(first: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff {
            first,
            cap,
            ceiling: first.min(cap),
            rng: Rng(seed),
        }
    }

    /// The next pause: uniform in [0, ceiling]; then the ceiling doubles, up to the cap.
    pub fn next(&mut self) -> Duration {
        let nanos = self.ceiling.as_nanos().min(u64::MAX.into()) as u64;
        let pause = Duration::from_nanos(self.rng.below(nanos.saturating_add(1)));
        self.ceiling = (self.ceiling * 2).min(self.cap);
        pause
    }

    /// Back to the first ceiling, after a connection that lasted.
    pub fn reset(&mut self) {
        self.ceiling = self.first.min(self.cap);
    }
}

/// SplitMix64: a few lines instead of a dependency; spreading retries needs no better.
pub(super) struct Rng(u64);

impl Rng {
    /// Seeded as [`Backoff::new`] is, so that hosts started by the same clock differ.
    pub(super) fn seeded() -> Rng {
        Rng(seed())
    }

    /// Uniform in [0, 1).
    pub(super) fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, n) (n > 0), by multiply-and-shift.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
    }
}

fn seed() -> u64 {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32) ^ u64::from(std::process::id())
}

/// Where the failure happened.
#[derive(Debug, Clone, Copy)]
pub enum Stage {
    /// Opening the lock connection, which started at `began`.
    Connect { began: Instant },
    /// Taking the lock; the lock query was sent at `asked`.
    Lock { asked: Instant },
}

/// What the caller does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The pause is over: connect again.
    Again,
    /// A terminating signal arrived during the pause.
    Interrupted(Signal),
    /// Give up as "cannot connect" (69).
    Unavailable,
    /// Give up as "the wait is over" (75); the text says what kept pglock from the lock.
    TimedOut(String),
    /// Give up as "other failure" (1), with the reason.
    Fatal(String),
}

/// The windows for retrying, fixed when the wait starts.
pub struct Window {
    pub nowait: bool,
    /// The end of --retry-connect.
    pub connect_until: Instant,
    /// The end of --timeout, if any.
    pub deadline: Option<Instant>,
}

/// One wait's retry state.
pub struct Retry<'a> {
    opener: &'a Opener,
    scope: Scope,
    label: &'a str,
    quiet: bool,
    window: Window,
    started: Instant,
    /// The server answered at least once, if only to say it has no slot.
    reached: bool,
    backoff: Backoff,
    slot_backoff: Backoff,
    note: Option<Note>,
}

impl<'a> Retry<'a> {
    pub fn new(
        opener: &'a Opener,
        scope: Scope,
        label: &'a str,
        quiet: bool,
        window: Window,
    ) -> Retry<'a> {
        Retry {
            opener,
            scope,
            label,
            quiet,
            window,
            started: Instant::now(),
            reached: false,
            backoff: Backoff::new(FIRST, CAP),
            slot_backoff: Backoff::new(SLOT_FIRST, SLOT_CAP),
            note: None,
        }
    }

    /// The lock connection is open.
    pub fn connected(&mut self) {
        self.reached = true;
        self.note = None;
    }

    /// Decides about a failure and, when it is worth another try, pauses (through `pause`, which
    /// returns a terminating signal that cut the pause short).
    pub fn failed(
        &mut self,
        e: &Failed,
        stage: Stage,
        pause: &dyn Fn(Duration) -> Option<Signal>,
    ) -> Verdict {
        let (class, why) = self.classify(e, stage);
        let slot = match class {
            Class::Transient { slot } => slot,
            Class::Fatal(Fatal::Connect) if matches!(stage, Stage::Connect { .. }) => {
                return Verdict::Unavailable;
            }
            // After connecting, even a refusal is about what pglock asked for.
            Class::Fatal(_) => return Verdict::Fatal(why),
        };
        self.reached |= slot;
        let (until, gives_up) = window(&self.window, self.reached, slot, &why);
        if let Stage::Lock { asked } = stage {
            if asked.elapsed() >= CAP {
                self.backoff.reset();
                self.slot_backoff.reset();
            }
        }
        let mut delay = if slot {
            self.slot_backoff.next()
        } else {
            self.backoff.next()
        };
        if let Some(until) = until {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                self.note = None;
                step!("{why}; giving up");
                return gives_up;
            }
            delay = delay.min(left);
        }
        step!("{why}; retrying in {}", duration::format(delay));
        self.note = None;
        if slot && !self.window.nowait && !self.quiet {
            self.note = Note::show(&format!(
                "pglock: waiting {} for a connection slot for lock \"{}\" ({e})",
                duration::format(self.started.elapsed()),
                self.label,
            ));
        }
        match pause(delay) {
            Some(sig) => Verdict::Interrupted(sig),
            None => Verdict::Again,
        }
    }

    /// The class of a failure and the reason to log or report.
    fn classify(&self, failed: &Failed, stage: Stage) -> (Class, String) {
        // No answer in time does not say the server is gone for good.
        let e = match failed {
            Failed::Error(e) => e,
            Failed::Connect(io) => {
                return (
                    classify::classify_io(io),
                    format!("cannot connect: {failed}"),
                );
            }
            other => {
                let why = match stage {
                    Stage::Connect { .. } => format!("cannot connect: {other}"),
                    Stage::Lock { .. } => format!("connection lost while waiting: {other}"),
                };
                return (Class::Transient { slot: false }, why);
            }
        };
        let described = describe_error(e);
        let class = classify::classify(e);
        let lock_asked = match stage {
            Stage::Connect { began } if queued(e, began) => {
                let why = format!(
                    "the connection was closed after {} without a reason (a pooler's queue \
                     timeout, such as PgBouncer's query_wait_timeout?)",
                    duration::format(began.elapsed())
                );
                return (Class::Transient { slot: true }, why);
            }
            Stage::Connect { .. } => return (class, format!("cannot connect: {described}")),
            Stage::Lock { asked } => asked,
        };
        let said = e.as_db_error().map_or("", |d| d.message());
        if said.contains("not allowed in statement pooling mode") {
            return (class, classify::REJECTS_TRANSACTIONS.to_string());
        }
        // The sync client mostly drops a pooler's error that ends a query: ask the pooler.
        if class == (Class::Transient { slot: false })
            && self.scope == Scope::Xact
            && e.code().is_none()
            && lock_asked.elapsed() < classify::REJECTED_WITHIN
            && classify::rejects_transactions(self.opener)
        {
            let why = classify::REJECTS_TRANSACTIONS.to_string();
            return (Class::Fatal(Fatal::Other), why);
        }
        let why = match class {
            Class::Fatal(_) => described,
            _ => format!("connection lost while waiting: {described}"),
        };
        (class, why)
    }
}

/// Whether a connection attempt that ended in a closed connection had been waiting in a queue.
/// A server that is down (or a proxy or pooler in front of it) hangs up at once; a pooler that
/// gives up on a client waiting for a server connection (PgBouncer's query_wait_timeout, in whole
/// seconds) held it open first. The pooler's error itself is lost: see [`crate::pg::classify`].
fn queued(e: &tokio_postgres::Error, began: Instant) -> bool {
    e.is_closed() && e.code().is_none() && began.elapsed() >= classify::QUEUED_AFTER
}

/// Until when a failure that may pass is retried (None: for ever), and the verdict when that time
/// has come. `reached`: the server answered before; `slot`: this failure was a full house.
fn window(w: &Window, reached: bool, slot: bool, why: &str) -> (Option<Instant>, Verdict) {
    if w.nowait || !(reached || slot) {
        return (Some(w.connect_until), Verdict::Unavailable);
    }
    let why = if slot {
        format!("no free connection slot ({why})")
    } else {
        format!("the last try failed ({why})")
    };
    (
        w.deadline.map(|d| d.max(w.connect_until)),
        Verdict::TimedOut(why),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_stay_under_a_doubling_ceiling() {
        let mut b = Backoff::with_seed(FIRST, CAP, 7);
        let mut ceiling = FIRST;
        for _ in 0..40 {
            let pause = b.next();
            assert!(pause <= ceiling, "{pause:?} > {ceiling:?}");
            ceiling = (ceiling * 2).min(CAP);
        }
        // Late pauses spread over the whole capped range, not only its top.
        let late: Vec<Duration> = (0..200).map(|_| b.next()).collect();
        assert!(late.iter().all(|&p| p <= CAP));
        assert!(late.iter().any(|&p| p < CAP / 4), "{late:?}");
        assert!(late.iter().any(|&p| p > CAP * 3 / 4), "{late:?}");
        b.reset();
        assert!(b.next() <= FIRST);
    }

    #[test]
    fn two_seeds_diverge() {
        let mut a = Backoff::with_seed(FIRST, CAP, 1);
        let mut b = Backoff::with_seed(FIRST, CAP, 2);
        let a: Vec<Duration> = (0..8).map(|_| a.next()).collect();
        let b: Vec<Duration> = (0..8).map(|_| b.next()).collect();
        assert_ne!(a, b);
        let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
        assert!(same <= 1, "{a:?} {b:?}");
    }

    #[test]
    fn first_pauses_of_a_herd_spread_over_the_first_ceiling() {
        // What a herd that lost its connections together does next: 100 processes, one seed each.
        let firsts: Vec<Duration> = (0..100u64)
            .map(|i| Backoff::with_seed(FIRST, CAP, seed() ^ i.wrapping_mul(0x9e37)).next())
            .collect();
        let (lo, hi) = (firsts.iter().min().unwrap(), firsts.iter().max().unwrap());
        assert!(*hi - *lo > FIRST / 2, "{lo:?}..{hi:?}");
        let per_tenth = |k: u32| {
            firsts
                .iter()
                .filter(|&&p| p >= FIRST * k / 10 && p < FIRST * (k + 1) / 10)
                .count()
        };
        assert!((0..10).all(|k| per_tenth(k) < 40), "{firsts:?}");
    }

    #[test]
    fn windows() {
        let now = Instant::now();
        let (connect, timeout) = (now + CAP, now + 2 * CAP);
        let w = |nowait, deadline| Window {
            nowait,
            connect_until: connect,
            deadline,
        };
        let until = |w: &Window, reached, slot| window(w, reached, slot, "x").0;
        // --nowait: --retry-connect only, whatever happened.
        for (reached, slot) in [(false, false), (true, false), (false, true), (true, true)] {
            let (until, verdict) = window(&w(true, None), reached, slot, "x");
            assert_eq!((until, verdict), (Some(connect), Verdict::Unavailable));
        }
        // Waiting for a server that never answered: --retry-connect, then 69.
        assert_eq!(
            window(&w(false, Some(timeout)), false, false, "x"),
            (Some(connect), Verdict::Unavailable)
        );
        // No slot, or the server answered before: --timeout, or for ever, then 75.
        let waiting = w(false, Some(timeout));
        assert_eq!(until(&waiting, false, true), Some(timeout));
        assert_eq!(until(&waiting, true, false), Some(timeout));
        assert!(matches!(
            window(&waiting, true, true, "x").1,
            Verdict::TimedOut(why) if why.contains("connection slot")
        ));
        assert_eq!(until(&w(false, None), true, false), None);
        assert_eq!(until(&w(false, None), false, true), None);
        // A --timeout shorter than --retry-connect does not cut the latter short.
        assert_eq!(until(&w(false, Some(now)), true, true), Some(connect));
    }

    #[test]
    fn degenerate_ranges() {
        let mut zero = Backoff::with_seed(Duration::ZERO, CAP, 3);
        assert_eq!(zero.next(), Duration::ZERO);
        let mut capped = Backoff::with_seed(CAP * 2, CAP, 3);
        assert!(capped.next() <= CAP);
        let mut r = Rng(5);
        assert!((0..1000).all(|_| r.below(1) == 0));
    }
}
