//! Cuts a connection whose server stops answering: a statement that gets no reply within its
//! limit fails at once instead of waiting for TCP to give up (which takes minutes).

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
    expired: bool,
    stop: bool,
}

impl Watchdog {
    /// Starts the `watchdog` thread for the socket `fd`. It sleeps until armed.
    pub fn start(fd: RawFd) -> std::io::Result<Watchdog> {
        let state = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || watch(fd, &shared))?;
        Ok(Watchdog { state })
    }

    /// Starts the countdown for one statement.
    pub fn arm(&self, limit: Duration) {
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        st.deadline = Some(Instant::now() + limit);
        st.expired = false;
        cvar.notify_one();
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
    /// Stops the thread without waiting for it to exit (a wake-up and a join cost milliseconds
    /// on a virtual machine's idle CPUs). Once `stop` is set under the lock, the thread never
    /// touches the socket again, so the descriptor may be closed and reused at once.
    fn drop(&mut self) {
        let (lock, cvar) = &*self.state;
        lock.lock().unwrap_or_else(|p| p.into_inner()).stop = true;
        cvar.notify_one();
    }
}

fn watch(fd: RawFd, shared: &(Mutex<State>, Condvar)) {
    let (lock, cvar) = shared;
    let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
    while !st.stop {
        st = match st.deadline {
            None => cvar.wait(st).unwrap_or_else(|p| p.into_inner()),
            Some(deadline) if Instant::now() >= deadline => {
                st.expired = true;
                st.deadline = None;
                socket::cut(fd);
                st
            }
            Some(deadline) => {
                let left = deadline.saturating_duration_since(Instant::now());
                cvar.wait_timeout(st, left)
                    .unwrap_or_else(|p| p.into_inner())
                    .0
            }
        };
    }
}
