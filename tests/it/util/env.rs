//! [`TestEnv`]: what one test works in. A directory and a lock key of its own, pglock commands
//! on that key, a pglock holding it, and a connection that watches its rows in pg_locks.

use super::hold::{Holder, holder};
use super::{Lock, Run, Started, lock_rows, pglock, run, sql, start, unique_key};
use postgres::Client;
use std::cell::{Cell, RefCell, RefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

pub struct TestEnv {
    key: String,
    dir: PathBuf,
    probe: RefCell<Option<Client>>,
    _turn: Turn,
}

impl TestEnv {
    /// A fresh directory and key, both named after `name`.
    pub fn new(name: &str) -> TestEnv {
        TestEnv::with_turn(name, Turn::shared())
    }

    /// As [`TestEnv::new`], for a test that must have the machine to itself: it waits for the
    /// tests already running to end, and no other test starts before it ends.
    pub fn alone(name: &str) -> TestEnv {
        TestEnv::with_turn(name, Turn::alone())
    }

    /// As [`TestEnv::new`], with a key the test made itself (unique all the same).
    pub fn keyed(name: &str, key: String) -> TestEnv {
        let mut env = TestEnv::new(name);
        env.key = key;
        env
    }

    fn with_turn(name: &str, turn: Turn) -> TestEnv {
        let key = unique_key(name);
        let dir = std::env::temp_dir().join(&key);
        std::fs::create_dir_all(&dir).unwrap();
        TestEnv {
            key,
            dir,
            probe: RefCell::new(None),
            _turn: turn,
        }
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The lock of this key.
    pub fn lock(&self) -> Lock {
        Lock::key(&self.key)
    }

    /// Its lock id.
    pub fn id(&self) -> i64 {
        self.lock().id()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// A file in the test's directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Whether that file exists: the markers that commands touch.
    pub fn exists(&self, name: &str) -> bool {
        self.path(name).exists()
    }

    /// Waits until the command under test has touched that file.
    #[track_caller]
    pub fn wait_for_file(&self, name: &str) {
        let path = self.path(name);
        super::wait_until(&format!("{}", path.display()), || path.exists());
    }

    /// `pglock --key KEY ARGS`.
    pub fn pglock(&self, args: &[&str]) -> Command {
        let mut cmd = pglock();
        cmd.args(["--key", &self.key]).args(args);
        cmd
    }

    /// `pglock --key KEY ARGS -c SCRIPT`, started (see [`start`]).
    pub fn start_script(&self, args: &[&str], script: &str) -> Started {
        start(self.pglock(args).args(["-c", script]))
    }

    /// `pglock --key KEY ARGS -c SCRIPT`, run to its end (see [`run`]).
    #[track_caller]
    pub fn run_script(&self, args: &[&str], script: &str) -> Run {
        run(self.pglock(args).args(["-c", script]))
    }

    /// A pglock holding this key (with `args`, say `--limit 3`) until [`Holder::release`].
    #[track_caller]
    pub fn hold(&self, args: &[&str]) -> Holder {
        self.holder(args)
            .held()
            .unwrap_or_else(|run| panic!("the holder did not get the lock: {run}"))
    }

    /// As [`TestEnv::hold`], without waiting for the lock: for a holder that queues.
    pub fn holder(&self, args: &[&str]) -> Holder {
        holder(self.pglock(args))
    }

    /// The test's connection for looking at the server.
    pub fn probe(&self) -> RefMut<'_, Client> {
        RefMut::map(self.probe.borrow_mut(), |p| p.get_or_insert_with(sql))
    }

    /// How many sessions hold (`granted`) or wait for `lock`.
    pub fn rows(&self, lock: Lock, granted: bool) -> i64 {
        lock_rows(&mut self.probe(), lock, granted)
    }

    /// How many sessions hold this key's lock.
    pub fn granted(&self) -> i64 {
        self.rows(self.lock(), true)
    }

    /// How many sessions wait for this key's lock.
    pub fn waiting(&self) -> i64 {
        self.rows(self.lock(), false)
    }

    /// The backend that holds this key's lock (there must be exactly one).
    #[track_caller]
    pub fn backend_pid(&self) -> i32 {
        let pids = super::lock_pids(&mut self.probe(), self.lock(), true);
        assert_eq!(pids.len(), 1, "holders of {:?}: {pids:?}", self.key);
        pids[0]
    }

    /// Terminates the backends that hold this key's lock (as an administrator or a failover
    /// would end them) and returns how many there were.
    pub fn terminate_holder(&self) -> usize {
        let pids = super::lock_pids(&mut self.probe(), self.lock(), true);
        for pid in &pids {
            self.probe()
                .execute("SELECT pg_terminate_backend($1)", &[pid])
                .unwrap();
        }
        pids.len()
    }
}

impl Drop for TestEnv {
    /// The directory goes with a passing test and stays, for a look, with a failing one.
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test directory kept: {}", self.dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Tests run side by side (two at a time on two cores). A test whose load would skew the
/// others' timing bounds, and theirs its own, takes the machine alone: the torture test, which
/// ran alone when it was a test binary of its own.
static TURNS: RwLock<()> = RwLock::new(());

thread_local! {
    /// Whether this test (libtest gives each its own thread) already has its turn: a second
    /// TestEnv in the same test must not queue behind a waiting `alone` test.
    static HAS_TURN: Cell<bool> = const { Cell::new(false) };
}

/// A test's turn on the machine, held for as long as its first TestEnv lives.
struct Turn {
    _shared: Option<RwLockReadGuard<'static, ()>>,
    _alone: Option<RwLockWriteGuard<'static, ()>>,
    first: bool,
}

impl Turn {
    fn shared() -> Turn {
        let first = !HAS_TURN.replace(true);
        Turn {
            // Poisoned only by a panic in an `alone` test, which is reported by itself.
            _shared: first.then(|| TURNS.read().unwrap_or_else(|e| e.into_inner())),
            _alone: None,
            first,
        }
    }

    fn alone() -> Turn {
        assert!(!HAS_TURN.replace(true), "an `alone` test's first TestEnv");
        Turn {
            _shared: None,
            _alone: Some(TURNS.write().unwrap_or_else(|e| e.into_inner())),
            first: true,
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if self.first {
            HAS_TURN.set(false);
        }
    }
}
