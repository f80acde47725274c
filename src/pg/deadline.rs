//! Deadlines for every blocking step on a connection: connecting (TCP, TLS, start-up and
//! authentication together), each statement, and the lock wait. A step that outlives its
//! deadline has its socket cut (shutdown(2)), so the library call blocked on it fails at once,
//! whatever the server, the network or the library would otherwise have done.
//!
//! Deadlines are measured from the event that began the step: its start, or a terminating
//! signal. A signal [`hurry`]s every step under way (at most [`GRACE`] more, for a cancel
//! request or a release to be answered), and a second signal cuts them at once. Steps begun
//! after a signal, or after the command exited following one ([`stopped_by_signal_at`]), must
//! end by the same time, [`GRACE`] after the signal, or [`FLOOR`] after they begin when that is
//! later: so pglock exits within about a second of the signal, however many steps are left.
//!
//! A connect is different ([`OnSignal::Cut`]): it has nothing to finish, so a signal cuts it at
//! once, and one begun after a signal is cut as it begins.
//!
//! One `deadline` thread does the cutting for the whole process; it sleeps until the earliest
//! deadline and touches a socket only while its step is armed (under the lock), so once
//! [`Step::end`] has returned the descriptor may be closed and reused.

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How long a step may still take after a terminating signal: enough for a cancel request or a
/// release to be answered by a server that is alive.
pub const GRACE: Duration = Duration::from_secs(1);

/// The least a step begun after a signal gets: a live server answers a release in
/// milliseconds, and one that the command's own shutdown delayed must still have its chance.
pub const FLOOR: Duration = Duration::from_millis(250);

/// A signal this soon after the one that hurried a step is the same event sent twice (timeout(1)
/// signals its child and then its own process group), not a second request.
const SAME_EVENT: Duration = Duration::from_millis(100);

/// What to cut when a step runs out of time.
#[derive(Debug)]
pub enum Cut {
    /// A connection's socket: shut down, so that the call blocked on it fails at once and the
    /// server sees the session end. The descriptor stays open (its owner closes it).
    Socket(RawFd),
    /// A step that abandons its work when woken (a connect: its socket is closed with it).
    Wake(Arc<Notify>),
}

/// What a terminating signal does to a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnSignal {
    /// At most [`GRACE`] more: a statement, a release, a cancel request.
    Grace,
    /// Cut at once: a connect, which has nothing to finish.
    Cut,
}

struct Armed {
    id: u64,
    at: Option<Instant>,
    cut: Cut,
    on_signal: OnSignal,
    /// When a terminating signal last hurried it.
    hurried: Option<Instant>,
    expired: bool,
}

#[derive(Default)]
struct State {
    steps: Vec<Armed>,
    next_id: u64,
    /// After a request to stop, no step goes on past this (but see [`FLOOR`]).
    cap: Option<Instant>,
    /// The thread exists.
    started: bool,
    /// When the thread looks next, if it sleeps with a timeout.
    wakes_at: Option<Instant>,
}

static STATE: Mutex<State> = Mutex::new(State {
    steps: Vec::new(),
    next_id: 0,
    cap: None,
    started: false,
    wakes_at: None,
});
static WAKE: Condvar = Condvar::new();

fn lock() -> MutexGuard<'static, State> {
    // A panic elsewhere must not disarm the deadlines.
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// One blocking step. Dropping it ends it as [`Step::end`] does.
#[must_use]
pub struct Step {
    id: u64,
    ended: bool,
    due_at_start: bool,
}

/// Arms a step that must be over within `limit` (None: only a signal bounds it).
pub fn begin(limit: Option<Duration>, cut: Cut) -> Step {
    begin_with(limit, cut, OnSignal::Grace)
}

/// As [`begin`], with what a terminating signal does to it.
pub fn begin_with(limit: Option<Duration>, cut: Cut, on_signal: OnSignal) -> Step {
    let now = Instant::now();
    let mut st = lock();
    let capped = st.cap.map(|cap| match on_signal {
        OnSignal::Grace => cap.max(now + FLOOR),
        OnSignal::Cut => now,
    });
    let at = match (limit.map(|l| crate::duration::after(now, l)), capped) {
        (Some(at), Some(cap)) => Some(at.min(cap)),
        (at, cap) => at.or(cap),
    };
    st.next_id += 1;
    let id = st.next_id;
    st.steps.push(Armed {
        id,
        at,
        cut,
        on_signal,
        hurried: None,
        expired: false,
    });
    if let Some(at) = at {
        wake_for(&mut st, at);
    }
    Step {
        id,
        ended: false,
        due_at_start: at.is_some_and(|at| at <= now),
    }
}

impl Step {
    /// Its deadline had passed as it began (a signal came before it): the work is not worth
    /// starting.
    pub fn due_at_start(&self) -> bool {
        self.due_at_start
    }

    /// The step is over: nothing will be cut for it any more. True if its deadline had passed
    /// and its socket was cut, whatever the library call returned.
    pub fn end(mut self) -> bool {
        self.finish()
    }

    fn finish(&mut self) -> bool {
        self.ended = true;
        let mut st = lock();
        let Some(i) = st.steps.iter().position(|s| s.id == self.id) else {
            return false;
        };
        st.steps.swap_remove(i).expired
    }
}

impl Drop for Step {
    fn drop(&mut self) {
        if !self.ended {
            self.finish();
        }
    }
}

/// A terminating signal arrived: every step under way gets at most [`GRACE`] more, and one that
/// a signal hurried before is cut now. Later steps must end by then as well.
pub fn hurry() {
    let now = Instant::now();
    let mut st = lock();
    cap_at(&mut st, now + GRACE);
    let mut earliest = None::<Instant>;
    for step in &mut st.steps {
        let at = match step.hurried {
            _ if step.on_signal == OnSignal::Cut => now,
            Some(then) if now.duration_since(then) >= SAME_EVENT => now,
            Some(_) => step.at.unwrap_or(now + GRACE),
            None => {
                step.hurried = Some(now);
                step.at.map_or(now + GRACE, |at| at.min(now + GRACE))
            }
        };
        step.at = Some(at);
        earliest = Some(earliest.map_or(at, |e| e.min(at)));
    }
    if let Some(at) = earliest {
        wake_for(&mut st, at);
    }
}

/// A signal at `signal` asked pglock to stop while its command ran, and the command has now
/// exited: every step from now on (the ledger's record, the release) must end by [`GRACE`] after
/// that signal (or [`FLOOR`] after it begins).
pub fn stopped_by_signal_at(signal: Instant) {
    cap_at(&mut lock(), signal + GRACE);
}

fn cap_at(st: &mut State, at: Instant) {
    st.cap = Some(st.cap.map_or(at, |cap| cap.min(at)));
}

/// Makes sure the thread looks by `at`: starts it, or wakes it if it sleeps longer.
fn wake_for(st: &mut State, at: Instant) {
    if !st.started {
        let spawned = std::thread::Builder::new()
            .name("deadline".into())
            .spawn(watch);
        // Without the thread nothing is bounded; say so once rather than fail the run.
        match spawned {
            Ok(_) => st.started = true,
            Err(e) => crate::warn!("warning: cannot start the deadline thread ({e})"),
        }
        return;
    }
    if st.wakes_at.is_none_or(|w| w > at) {
        WAKE.notify_one();
    }
}

fn watch() {
    let mut st = lock();
    loop {
        let now = Instant::now();
        let mut next = None::<Instant>;
        for step in &mut st.steps {
            match step.at {
                Some(at) if at <= now && !step.expired => {
                    step.expired = true;
                    cut(&step.cut);
                }
                Some(at) if !step.expired => next = Some(next.map_or(at, |n| n.min(at))),
                _ => {}
            }
        }
        st.wakes_at = next;
        st = match next {
            Some(at) => {
                WAKE.wait_timeout(st, at.saturating_duration_since(now))
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
            None => WAKE.wait(st).unwrap_or_else(|p| p.into_inner()),
        };
    }
}

fn cut(what: &Cut) {
    match what {
        Cut::Socket(fd) => {
            // SAFETY: shutdown(2) does not close the descriptor, and a step's socket stays open
            // while the step is armed: its owner ends the step before it closes the socket, and
            // this runs under the lock that ending takes.
            let fd = unsafe { BorrowedFd::borrow_raw(*fd) };
            // A socket that is already shut down or reset is cut enough.
            let _ = nix::sys::socket::shutdown(
                std::os::fd::AsRawFd::as_raw_fd(&fd),
                nix::sys::socket::Shutdown::Both,
            );
        }
        Cut::Wake(notify) => notify.notify_one(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_step_past_its_deadline_has_its_socket_cut() {
        let (mut mine, _peer) = UnixStream::pair().unwrap();
        let step = begin(
            Some(Duration::from_millis(50)),
            Cut::Socket(mine.as_raw_fd()),
        );
        let started = Instant::now();
        // The peer never writes: only the cut ends this read.
        let n = mine.read(&mut [0u8; 1]).unwrap();
        assert_eq!(n, 0);
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(step.end());
    }

    #[test]
    fn a_step_ended_in_time_is_not_cut() {
        let (mine, _peer) = UnixStream::pair().unwrap();
        let step = begin(
            Some(Duration::from_millis(20)),
            Cut::Socket(mine.as_raw_fd()),
        );
        assert!(!step.end());
        std::thread::sleep(Duration::from_millis(60));
        // Still open: a write goes through.
        assert!(std::io::Write::write(&mut &mine, b"x").is_ok());
    }
}
