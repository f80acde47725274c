//! The wait guard: the dead man's switch's sibling for the time before the lock is granted.
//!
//! A pglock that dies while it waits (SIGKILL, the OOM killer) leaves its backend in the server's
//! queue. PostgreSQL 14 and later notice the vanished client within
//! `client_connection_check_interval`, which pglock sets; older servers notice only when the lock
//! is granted and they try to answer, so the dead waiter holds the lock for a moment and, until
//! then, keeps its place in the queue. The guard closes that gap on every version: a pglock
//! process of its own (`pglock __wait-guard NAME`, in a session of its own so that a group kill
//! misses it) that reads a pipe from the waiter. A byte stands it down; end of file means the
//! waiter died, and the guard connects with the same settings and cancels the waiting backend:
//! the one with the waiter's backend pid, only if it still carries the waiter's application_name
//! and waits for a lock (two pglocks may share a name: the same host name and PID 1 in two
//! containers).
//!
//! Starting a process costs a few milliseconds, so it is armed only for waits that last longer
//! than [`ARM_AFTER`]; a lock granted at once never starts one.

use crate::conninfo;
use crate::pg::{Opener, sql};
use crate::step;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The hidden first argument that makes pglock a wait guard.
pub const ARG: &str = "__wait-guard";

/// A wait shorter than this is not guarded beyond what the server does itself.
pub const ARM_AFTER: Duration = Duration::from_millis(200);

/// The guard's own connection must not hang on a server that is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Guards one lock wait; dropping it stands the guard down.
pub struct WaitGuard {
    shared: Arc<Mutex<Shared>>,
}

#[derive(Default)]
struct Shared {
    /// The wait is over: launch nothing more.
    over: bool,
    /// The running guard's stdin.
    line: Option<ChildStdin>,
}

impl WaitGuard {
    /// Starts the `wait-guard` thread, which starts the guard process after [`ARM_AFTER`]
    /// unless the wait is over by then.
    ///
    /// Nothing ever wakes the thread: it sleeps out [`ARM_AFTER`] and then looks, and once it
    /// has launched a guard it waits for the guard to exit. Waking a thread on a virtual
    /// machine's idle CPU costs up to milliseconds, and a lock that was just granted is the
    /// worst moment for it (the command is about to start).
    pub fn start(app_name: &str, backend: Option<i32>, database_url: Option<&str>) -> WaitGuard {
        let shared = Arc::new(Mutex::new(Shared::default()));
        let mine = Arc::clone(&shared);
        let (app_name, url) = (app_name.to_string(), database_url.map(str::to_string));
        // Without the backend's pid there is nothing the guard could safely cancel.
        let Some(backend) = backend else {
            lock(&shared).over = true;
            return WaitGuard { shared };
        };
        let _ = std::thread::Builder::new()
            .name("wait-guard".into())
            .spawn(move || {
                std::thread::sleep(ARM_AFTER);
                let mut guard = {
                    // Under the lock, so that a guard that starts is always stood down.
                    let mut st = lock(&mine);
                    if st.over {
                        return;
                    }
                    let Some(mut guard) = launch(&app_name, backend, url.as_deref()) else {
                        return;
                    };
                    st.line = guard.stdin.take();
                    guard
                };
                // Reap it: it exits as soon as it reads the byte the waiter writes.
                let _ = guard.wait();
            });
        WaitGuard { shared }
    }
}

impl Drop for WaitGuard {
    /// Stands the guard down on the waiter's own thread, so that the byte is written before
    /// pglock moves on (and maybe exits: end of file would make the guard cancel).
    fn drop(&mut self) {
        let mut st = lock(&self.shared);
        st.over = true;
        if let Some(mut line) = st.line.take() {
            let _ = line.write_all(b"x");
        }
    }
}

/// Every guard this process started: its children, but not the command's, so not leftovers.
static LAUNCHED: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// The pids of the guards this process started (some may have exited).
pub fn launched() -> Vec<u32> {
    LAUNCHED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

fn lock(shared: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

fn launch(app_name: &str, backend: i32, database_url: Option<&str>) -> Option<Child> {
    let exe = std::env::current_exe().ok()?;
    let mut cmd = Command::new(exe);
    cmd.arg(ARG)
        .arg(app_name)
        .arg(backend.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::null());
    // Through the environment, not argv: a URL may hold a password, and ps shows argv.
    match database_url {
        Some(url) => cmd.env("PGLOCK_DATABASE_URL", url),
        None => cmd.env_remove("PGLOCK_DATABASE_URL"),
    };
    // SAFETY: setsid(2) is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            nix::unistd::setsid()?;
            Ok(())
        });
    }
    match cmd.spawn() {
        Ok(child) => {
            step!("wait guard started as pid {}", child.id());
            LAUNCHED
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(child.id());
            Some(child)
        }
        Err(e) => {
            step!("cannot start the wait guard: {e}");
            None
        }
    }
}

/// `pglock __wait-guard NAME PID`: waits for the waiter's pipe to close without a byte, then
/// cancels the wait of backend PID if it is still named NAME. Its exit status is only for the
/// record.
pub fn serve(app_name: &str, backend: i32) -> u8 {
    let mut byte = [0u8; 1];
    loop {
        match std::io::stdin().read(&mut byte) {
            Ok(1) => return 0,
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    match cancel(app_name, backend) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

fn cancel(app_name: &str, backend: i32) -> anyhow::Result<()> {
    let url = std::env::var("PGLOCK_DATABASE_URL").ok();
    let target = conninfo::resolve(url.as_deref(), &conninfo::process_env)?;
    let opener = Opener::new(
        &target,
        "pglock-guard",
        Some(CONNECT_TIMEOUT),
        CONNECT_TIMEOUT,
    )?;
    let mut session = opener.open()?;
    // Bounded like the connect: a guard must not outlive its purpose on a server that froze.
    session.query_within(&sql::cancel_waiter(app_name, backend), CONNECT_TIMEOUT)?;
    session.close();
    Ok(())
}
