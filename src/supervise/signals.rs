//! Signal routing: one `signals` thread receives every signal pglock handles and acts on it at
//! once, whatever the main thread is blocked in.
//!
//! - A terminating signal outside the command's lifetime hurries whatever pglock is blocked in
//!   (a connect, the lock wait, a statement, the release): it gets at most a second more, and a
//!   second signal cuts it at once ([`deadline::hurry`]). A lock wait is also cancelled on the
//!   server, with a handful of cancel requests at most: a frozen backend ignores them all, and
//!   then the deadline cuts the connection.
//! - While the command runs, every forwarded signal goes to the command's process group, so it
//!   reaches a wrapping shell's children too. The latest one that asks to stop (HUP, INT, QUIT,
//!   TERM) is remembered with its time: if it ended the command (the run decides, see
//!   `run::ended_by_signal`), what follows (the ledger's record, the release) must end a second
//!   after it, and --min-hold ends. The lock checks while the command runs keep their bound, and
//!   a signal the command survived cuts nothing short: a daemon that reloads on SIGHUP runs on
//!   with its lock, and ends as if it had never been signalled.
//! - In every phase it writes the signal number to a pipe, so the main loop can poll(2) it next
//!   to the lock connection's socket.
//! - A signal that was ignored when pglock started (nohup, a shell's background job) stays
//!   ignored, for pglock and for the command.
//!
//! Nothing blocking runs on the signal thread: cancel requests go out on a thread of their own.

use crate::pg::Canceller;
use crate::pg::deadline;
use anyhow::{Context, Result};
use nix::sys::signal::{SigSet, SigmaskHow, Signal, killpg, pthread_sigmask};
use nix::unistd::Pid;
use signal_hook::consts::signal::*;
use signal_hook::iterator::Signals;
use signal_hook::iterator::backend::Handle;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
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

/// The signals by which a user, a terminal or a service manager asks a job to stop.
const STOP: &[i32] = &[SIGHUP, SIGINT, SIGQUIT, SIGTERM];

/// Cancel requests for one interrupted wait: the first at once, then again after these pauses,
/// in case the first reached the server before the lock query did (it is then ignored).
const CANCEL_AGAIN_AFTER: &[Duration] = &[Duration::from_millis(200), Duration::from_millis(300)];

/// Whether `sig` was ignored when pglock started, as nohup(1) and shells' background jobs leave
/// SIGHUP, SIGINT and SIGQUIT: such a signal is neither caught nor forwarded, so that it stays
/// ignored for the command too.
fn ignored_at_start(sig: i32) -> bool {
    // SAFETY: sigaction with a null new action only reads the current disposition into `old`,
    // a zeroed sigaction (a valid value for the plain C struct).
    unsafe {
        let mut old: nix::libc::sigaction = std::mem::zeroed();
        nix::libc::sigaction(sig, std::ptr::null(), &mut old) == 0
            && old.sa_sigaction == nix::libc::SIG_IGN
    }
}

/// The forwarded signals, held back on the calling thread until this is dropped: one sent
/// before the [`Router`] is installed then waits for it, instead of ending pglock by default.
/// Lets the run path do its single-threaded start-up (see `tls::trust_store`) before the
/// router's thread exists. Threads started meanwhile, the router's among them, keep them
/// blocked; the router does not mind on which thread its handlers run.
pub struct Deferred {
    previous: SigSet,
}

impl Deferred {
    pub fn block() -> Result<Deferred> {
        let set: SigSet = FORWARDED
            .iter()
            .filter_map(|&sig| Signal::try_from(sig).ok())
            .collect();
        let mut previous = SigSet::empty();
        pthread_sigmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut previous))
            .context("cannot block signals during start-up")?;
        Ok(Deferred { previous })
    }
}

impl Drop for Deferred {
    /// Signals that arrived meanwhile are delivered now: to the router's handlers once it is
    /// installed, or with their default action when start-up failed before it.
    fn drop(&mut self) {
        let _ = pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&self.previous), None);
    }
}

/// What a signal means right now.
enum Route {
    /// Nothing to act on: only remember terminating signals.
    Idle,
    /// Waiting for the lock (attempt number): a terminating signal cancels the wait.
    Waiting(Canceller, u64),
    /// The command runs in this process group.
    Child(Pid),
}

struct State {
    route: Route,
    /// The first terminating signal that arrived outside the command's lifetime.
    interrupted: Option<Signal>,
    /// The latest signal that asked pglock to stop, in any phase, and when it came.
    stop: Option<(Signal, Instant)>,
    /// Counts lock waits, so a late cancel never touches a later attempt's connection.
    attempt: u64,
}

pub struct Router {
    state: Arc<Mutex<State>>,
    wake: UnixStream,
    handle: Handle,
}

/// Everything but SIGWINCH ends a process by default; SIGCHLD only wakes the loop.
fn terminating(sig: i32) -> bool {
    sig != SIGWINCH && sig != SIGCHLD
}

impl Router {
    /// Installs the handlers and starts the routing thread.
    pub fn start() -> Result<Router> {
        let mut watched: Vec<i32> = FORWARDED
            .iter()
            .copied()
            .filter(|&sig| !ignored_at_start(sig))
            .collect();
        watched.push(SIGCHLD);
        let mut signals = Signals::new(&watched).context("cannot install signal handlers")?;
        let handle = signals.handle();
        let (wake, mut ring) = UnixStream::pair().context("cannot create the wake-up pipe")?;
        wake.set_nonblocking(true)?;
        let state = Arc::new(Mutex::new(State {
            route: Route::Idle,
            interrupted: None,
            stop: None,
            attempt: 0,
        }));
        let shared = Arc::clone(&state);
        std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                for sig in signals.forever() {
                    route(&shared, sig);
                    let _ = ring.write_all(&[sig as u8]);
                }
            })
            .context("cannot start the signal thread")?;
        Ok(Router {
            state,
            wake,
            handle,
        })
    }

    /// From now on a terminating signal cancels the lock wait through `canceller`. Returns the
    /// signal instead if one already arrived: then there is nothing to wait for.
    pub fn waiting(&self, canceller: Canceller) -> Option<Signal> {
        let mut st = lock(&self.state);
        if st.interrupted.is_none() {
            st.attempt += 1;
            let attempt = st.attempt;
            st.route = Route::Waiting(canceller, attempt);
        }
        st.interrupted
    }

    /// The latest signal that asked pglock to stop, forwarded to the command or not, and when
    /// it came: what follows the command is cut short for it if it ended the command.
    pub fn last_stop(&self) -> Option<(Signal, Instant)> {
        lock(&self.state).stop
    }

    /// Sleeps for `d`, or less if a terminating signal arrives; returns that signal.
    pub fn pause(&self, d: Duration) -> Option<Signal> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        let until = crate::duration::after(Instant::now(), d);
        loop {
            if let Some(sig) = self.interrupted() {
                return Some(sig);
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            let ms = PollTimeout::try_from(left.as_millis().clamp(1, i32::MAX as u128) as i32)
                .unwrap_or(PollTimeout::MAX);
            let _ = poll(&mut [PollFd::new(self.wake_fd(), PollFlags::POLLIN)], ms);
            self.drain();
        }
    }

    /// The lock wait is over: signals are only remembered again.
    pub fn idle(&self) {
        lock(&self.state).route = Route::Idle;
    }

    /// The first terminating signal received while no command ran.
    pub fn interrupted(&self) -> Option<Signal> {
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
    pub fn wake_fd(&self) -> BorrowedFd<'_> {
        self.wake.as_fd()
    }

    /// Empties the wake-up pipe and returns the signals it carried, oldest first.
    pub fn drain(&self) -> Vec<i32> {
        let mut buf = [0u8; 64];
        let mut out = Vec::new();
        while let Ok(n) = (&self.wake).read(&mut buf) {
            if n == 0 {
                break;
            }
            out.extend(buf[..n].iter().map(|&b| i32::from(b)));
        }
        out
    }
}

impl Drop for Router {
    /// Stops the thread without waiting for it. Waking a thread and waiting for it to exit
    /// costs milliseconds on a virtual machine's idle CPUs, and nothing depends on it: a cancel
    /// request that may still be under way concerns a wait the main thread has already left,
    /// and the router is dropped only on the way out of the process.
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Acts on one signal.
fn route(state: &Arc<Mutex<State>>, sig: i32) {
    let mut st = lock(state);
    if STOP.contains(&sig) {
        let stop = Signal::try_from(sig).unwrap_or(Signal::SIGTERM);
        st.stop = Some((stop, Instant::now()));
    }
    match &st.route {
        Route::Child(pgid) if sig != SIGCHLD => {
            if let Ok(s) = Signal::try_from(sig) {
                let _ = killpg(*pgid, s);
            }
        }
        _ if terminating(sig) => {
            let first = st.interrupted.is_none();
            st.interrupted
                .get_or_insert(Signal::try_from(sig).unwrap_or(Signal::SIGTERM));
            if let (Route::Waiting(canceller, attempt), true) = (&st.route, first) {
                cancel_while_waiting(state, canceller.clone(), *attempt);
            }
            drop(st);
            deadline::hurry();
        }
        _ => {}
    }
}

/// Cancels the lock wait `attempt` on the server, on a `cancel` thread, a few times at most
/// while the main thread is still in it. The deadline, not this, bounds the wait.
fn cancel_while_waiting(state: &Arc<Mutex<State>>, canceller: Canceller, attempt: u64) {
    let state = Arc::clone(state);
    let still_waiting = move || matches!(lock(&state).route, Route::Waiting(_, a) if a == attempt);
    let _ = std::thread::Builder::new()
        .name("cancel".into())
        .spawn(move || {
            let started = Instant::now();
            canceller.cancel_within(deadline::GRACE);
            for pause in CANCEL_AGAIN_AFTER {
                std::thread::sleep(*pause);
                if !still_waiting() || started.elapsed() >= deadline::GRACE {
                    return;
                }
                canceller.cancel_within(deadline::GRACE.saturating_sub(started.elapsed()));
            }
        });
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic in the signal thread must not take the supervisor down with it.
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
