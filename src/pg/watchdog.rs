//! Cuts a connection whose server stops answering: a statement that gets no reply within its
//! limit fails at once instead of waiting for TCP to give up (which takes minutes).
//!
//! Arming it must not wake its thread: on a virtual machine, waking a thread on an idle CPU
//! costs up to milliseconds, and the release it bounds sits between one holder's command and
//! the next holder's. So the thread, when it has no deadline, looks again every `period` (the
//! shortest limit it will be given, --check-interval), and an arm only wakes it when its
//! deadline comes before the thread's next look, which for limits of at least `period` never
//! happens after the first look.

use super::socket;
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub struct Watchdog {
    state: Arc<(Mutex<State>, Condvar)>,
}

#[derive(Default)]
struct State {
    deadline: Option<Instant>,
    /// When the thread looks next; None before its first look.
    wakes_at: Option<Instant>,
    expired: bool,
    stop: bool,
}

impl Watchdog {
    /// Starts the `watchdog` thread for the socket `fd`, looking every `period` while unarmed.
    pub fn start(fd: RawFd, period: Duration) -> std::io::Result<Watchdog> {
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(fd, period, &shared))?;
        Ok(Watchdog { state })
    }

    /// Starts the countdown for one statement.
    pub fn arm(&self, limit: Duration) {
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        let deadline = Instant::now() + limit;
        st.deadline = Some(deadline);
        st.expired = false;
        if st.wakes_at.is_none_or(|w| w > deadline) {
            cvar.notify_one();
        }
    }

    /// Stops the countdown; true if it had already run out and cut the connection.
    pub fn disarm(&self) -> bool {
        let (lock, _) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        st.deadline = None;
        st.expired
    }
}

impl Drop for Watchdog {
    /// Stops the thread without waiting for it to exit (it ends at its next look). Once `stop`
    /// is set under the lock, the thread never touches the socket again, so the descriptor may
    /// be closed and reused at once.
    fn drop(&mut self) {
        let (lock, _) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
    }
}

fn watch(fd: RawFd, period: Duration, shared: &(Mutex<State>, Condvar)) {
    let (lock, cvar) = shared;
    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
    while !st.stop {
        let now = Instant::now();
        let until = match st.deadline {
            Some(deadline) if now >= deadline => {
                st.expired = true;
                st.deadline = None;
                socket::cut(fd);
                continue;
            }
            Some(deadline) => deadline,
            None => now + period,
        };
        st.wakes_at = Some(until);
        st = cvar
            .wait_timeout(st, until.saturating_duration_since(now))
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}
