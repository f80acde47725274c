//! Signal routing: one thread receives every signal pglock handles and acts on it at once,
//! whatever the main thread is blocked in.
//!
//! - While waiting for the lock, a terminating signal cancels the wait on the server.
//! - While the command runs, every forwarded signal goes to the command's process group, so it
//!   reaches a wrapping shell's children too.
//! - In every phase it writes the signal number to a pipe, so the main loop can poll(2) it next
//!   to the lock connection's socket.

use crate::lock::Canceller;
use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use signal_hook::consts::signal::*;
use signal_hook::iterator::Signals;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Signals passed on to the command. Every one of them would otherwise end pglock (or, for
/// SIGWINCH, matter to an interactive command), and pglock must never exit before its command.
pub const FORWARDED: &[i32] = &[
    SIGHUP,
    SIGINT,
    SIGQUIT,
    SIGTERM,
    SIGUSR1,
    SIGUSR2,
    SIGWINCH,
    SIGALRM,
    SIGVTALRM,
    SIGPROF,
    SIGXCPU,
    SIGXFSZ,
    nix::libc::SIGPWR,
    SIGIO,
];

/// What a signal means right now.
enum Route {
    /// Nothing to act on yet: only remember terminating signals.
    Idle,
    /// Waiting for the lock: a terminating signal cancels the wait.
    Waiting(Canceller),
    /// The command runs in this process group.
    Child(Pid),
}

struct State {
    route: Route,
    /// The first terminating signal that arrived outside the command's lifetime.
    interrupted: Option<i32>,
}

pub struct Router {
    state: Arc<Mutex<State>>,
    wake: UnixStream,
}

/// Everything but SIGWINCH ends a process by default; SIGCHLD only wakes the loop.
fn terminating(sig: i32) -> bool {
    sig != SIGWINCH && sig != SIGCHLD
}

impl Router {
    /// Installs the handlers and starts the routing thread.
    pub fn start() -> Result<Router> {
        let mut watched = FORWARDED.to_vec();
        watched.push(SIGCHLD);
        let mut signals = Signals::new(&watched).context("cannot install signal handlers")?;
        let (wake, mut ring) = UnixStream::pair().context("cannot create the wake-up pipe")?;
        wake.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State {
            route: Route::Idle,
            interrupted: None,
        }));
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    let mut st = lock(&shared);
                    match &st.route {
                        Route::Child(pgid) if sig != SIGCHLD => {
                            if let Ok(s) = Signal::try_from(sig) {
                                let _ = killpg(*pgid, s);
                            }
                        }
                        Route::Waiting(_) if terminating(sig) && st.interrupted.is_none() => {
                            st.interrupted = Some(sig);
                            drop(st);
                            cancel_until_done(&shared);
                            st = lock(&shared);
                        }
                        _ if terminating(sig) => {
                            st.interrupted.get_or_insert(sig);
                        }
                        _ => {}
                    }
                    drop(st);
                    let _ = ring.write_all(&[sig as u8]);
                }
            })
            .context("cannot start the signal thread")?;
        Ok(Router { state, wake })
    }

    /// From now on a terminating signal cancels the lock wait through `canceller`. Returns the
    /// signal instead if one already arrived: then there is nothing to wait for.
    pub fn waiting(&self, canceller: Canceller) -> Option<i32> {
        let mut st = lock(&self.state);
        if st.interrupted.is_none() {
            st.route = Route::Waiting(canceller);
        }
        st.interrupted
    }

    /// Sleeps for `d`, or less if a terminating signal arrives; returns that signal.
    pub fn pause(&self, d: Duration) -> Option<i32> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let until = Instant::now() + d;
        loop {
            if let Some(sig) = self.interrupted() {
                return Some(sig);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            // SAFETY: the wake-up socket lives as long as self.
            let wake = unsafe { BorrowedFd::borrow_raw(self.wake_fd()) };
            let ms =
                PollTimeout::try_from(left.as_millis().max(1) as i32).unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut [PollFd::new(wake, PollFlags::POLLIN)], ms);
            self.drain();
        }
    }

    /// The lock wait is over: signals are only remembered again.
    pub fn idle(&self) {
        lock(&self.state).route = Route::Idle;
    }

    /// The first terminating signal received while no command ran.
    pub fn interrupted(&self) -> Option<i32> {
        lock(&self.state).interrupted
    }

    /// Starts the command unless a terminating signal already arrived, and from then on forwards
    /// signals to its process group. Holding the routing lock across the spawn means no signal
    /// falls between "not yet started" and "forwarded".
    pub fn spawn<T>(&self, start: impl FnOnce() -> Result<(T, Pid)>) -> Result<Option<T>> {
        let mut st = lock(&self.state);
        if st.interrupted.is_some() {
            return Ok(None);
        }
        let (child, pgid) = start()?;
        st.route = Route::Child(pgid);
        Ok(Some(child))
    }

    /// The command has exited: its process group may be gone or reused, so stop forwarding.
    pub fn child_gone(&self) {
        lock(&self.state).route = Route::Idle;
    }

    /// The read end of the wake-up pipe: readable when a signal arrived.
    pub fn wake_fd(&self) -> RawFd {
        self.wake.as_raw_fd()
    }

    /// Empties the wake-up pipe and returns the signals it carried, oldest first.
    pub fn drain(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        while let Ok(n) = (&self.wake).read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend(buf[..n].iter().map(|&b| b as i32));
        }
        out
    }
}

/// A cancel request that reaches the server before the lock query does is ignored, so keep
/// cancelling until the main thread has left the wait. This runs only after a signal.
fn cancel_until_done(state: &Mutex<State>) {
    loop {
        {
            let st = lock(state);
            match &st.route {
                Route::Waiting(canceller) => canceller.cancel(),
                _ => return,
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in the signal thread must not take the supervisor down with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
