//! What the integration tests share: the built binary with a clean environment, a SQL client on
//! the test server (from the same PG* variables pglock reads), unique keys, one time limit, and
//! waiting on observable events; [`TestEnv`], the one environment a test works in; [`Run`], the
//! one way to look at how a command ended; [`Lock`], the one formula for pg_locks coordinates;
//! and the servers, poolers and proxies some tests put in front of pglock.

pub mod bouncer;
pub mod cluster;
mod env;
mod hold;
mod locks;
pub mod proxy;
mod run;

pub use env::TestEnv;
pub use hold::{Holder, try_hold};
pub use locks::{Lock, key_id, lock_pids, lock_rows};
pub use run::{Run, Started, run, start, start_keeping_stderr};

use postgres::{Client, NoTls};
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a test waits for something it expects (a command to start or end, a row in
/// pg_locks, a file) before it fails. Generous, as only a failing test ever waits this long: the
/// machine is shared and often loaded, and the slowest wait that passes is a herd of 16 pglocks
/// reconnecting (tests/it/fleet.rs). A bound that a test asserts on is written out where it is
/// asserted.
pub const LIMIT: Duration = Duration::from_secs(60);

pub const BIN: &str = env!("CARGO_BIN_EXE_pglock");

/// A pglock command that sees none of the PGLOCK_* variables this process has; the PG* ones
/// (pg_virtualenv's server) stay.
pub fn pglock() -> Command {
    let mut cmd = Command::new(BIN);
    clean(&mut cmd);
    cmd
}

/// `program ARGS pglock`, with pglock's environment as clean as [`pglock`]'s: for pglock under
/// faketime(1) or setpriv(1).
pub fn wrapped(program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(program);
    cmd.args(args).arg(BIN);
    clean(&mut cmd);
    cmd
}

fn clean(cmd: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("PGLOCK_") {
            cmd.env_remove(name);
        }
    }
}

/// This test binary, told to run just the helper test at `path`, written as
/// `concat!(module_path!(), "::helper_name")` so that it follows the module: for tests whose
/// command under pglock is a helper test (which does nothing unless its variable is set).
pub fn helper(path: &str) -> Vec<OsString> {
    // module_path!() starts with the crate's name, which test names leave out.
    let (_, name) = path.split_once("::").expect("a module path");
    let exe = std::env::current_exe().unwrap();
    vec![
        exe.into(),
        "--exact".into(),
        name.into(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ]
}

/// A key no other test uses, even when tests run in parallel or again against the same server.
pub fn unique_key(name: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "test-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A raw (int4, int4) lock id no other test uses.
pub fn unique_pair() -> (i32, i32) {
    static N: AtomicUsize = AtomicUsize::new(0);
    (
        std::process::id() as i32,
        -1 - N.fetch_add(1, Ordering::Relaxed) as i32,
    )
}

/// The test server's connection settings, from PG* like libpq would: for a client with another
/// user or database.
pub fn sql_config() -> postgres::Config {
    let mut config = postgres::Config::new();
    let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
    config.host(var("PGHOST").as_deref().unwrap_or("/var/run/postgresql"));
    config.port(var("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432));
    config.user(var("PGUSER").as_deref().unwrap_or("postgres"));
    if let Some(pw) = var("PGPASSWORD") {
        config.password(pw);
    }
    config.dbname(var("PGDATABASE").as_deref().unwrap_or("postgres"));
    config
}

/// A plain client on the test server.
pub fn sql() -> Client {
    sql_config()
        .connect(NoTls)
        .expect("tests need a PostgreSQL server: run them as `pg_virtualenv cargo test`")
}

/// Polls `cond` until it holds; panics with `what` after [`LIMIT`]. For waiting on server state
/// (pg_locks rows) and files, which have no push notification.
#[track_caller]
pub fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    wait_within(what, LIMIT, cond);
}

/// As [`wait_until`], with a bound of the test's own (one it asserts on).
#[track_caller]
pub fn wait_within(what: &str, limit: Duration, cond: impl FnMut() -> bool) {
    wait_showing(what, limit, cond, String::new);
}

/// As [`wait_within`]; a timeout's panic adds what `show` says then (a screen, a log).
#[track_caller]
pub fn wait_showing(
    what: &str,
    limit: Duration,
    mut cond: impl FnMut() -> bool,
    show: impl Fn() -> String,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}{}",
            show()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_key(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `sh -c` script for a command that runs until SIGTERM: it runs `first` once its trap is set,
/// and `on_term` when the signal comes.
///
/// It waits for short background sleeps, not for `sleep 300 &`: dash loses a SIGTERM that
/// reaches a background child before that child execs (its copy of the trap is still
/// installed), and a stray `sleep 300` would hold the test's stderr pipe for five minutes (1 in
/// 200 under load, without pglock). And not for foreground sleeps either: dash reports a
/// foreground child killed by SIGTERM ("Terminated") on stderr, and dies of SIGPIPE doing so
/// when stderr is a closed pipe, before its trap runs.
pub fn until_sigterm(first: &str, on_term: &str) -> String {
    format!("trap '{on_term}' TERM; {first}; while :; do sleep 0.1 & wait; done")
}

pub fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The processes in a process group, from /proc.
pub fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Fields after the parenthesised command name: state ppid pgrp ...
            let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
            let fields: Vec<_> = rest.split(' ').collect();
            fields.len() > 2 && fields[0] != "Z" && fields[2] == pgid.to_string()
        })
        .collect()
}

/// What is written to a terminal, read from its pseudo-terminal master until every slave is
/// closed (EIO then ends the reading thread, which drops its reference).
pub fn terminal_output(master: std::os::fd::OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = file.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

/// Whether a process exists and is not a zombie, from /proc.
pub fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    !stat.is_empty() && !state.starts_with('Z')
}

/// The process group pglock (`pid`) started its command in: the child that leads a group
/// and is not one of pglock's helpers.
pub fn child_of(pid: u32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|&c| group_members(c).contains(&c) && !is_helper(c))
        .expect("pglock has no child leading a process group")
}

/// pglock's own helpers (the dead man's switch, a fork; the wait guard) lead process groups too,
/// and run pglock's binary.
fn is_helper(pid: i32) -> bool {
    let exe = |pid: i32| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    exe(pid).is_some_and(|e| e.ends_with("pglock"))
}

/// `workers` threads each run pglock on the test's key `runs` times (with `args`) around a
/// non-atomic read-modify-write of a counter file, bracketed by enter/leave records: the count
/// must come out exact and the records must never interleave.
pub fn counter_contention(env: &TestEnv, workers: usize, runs: usize, args: &[&str]) {
    std::fs::write(env.path("counter"), "0").unwrap();
    let script = format!(
        "cd {}; echo enter >> log; n=$(cat counter); echo $((n + 1)) > counter.tmp; \
         mv counter.tmp counter; echo leave >> log",
        env.dir().display()
    );
    let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    args.extend(["--key".into(), env.key().into(), "-c".into(), script]);
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let args = args.clone();
            std::thread::spawn(move || {
                for _ in 0..runs {
                    run(pglock().args(&args)).assert_success();
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        read(&env.path("counter")).trim(),
        (workers * runs).to_string()
    );
    let log = read(&env.path("log"));
    let lines: Vec<_> = log.lines().collect();
    assert_eq!(lines.len(), 2 * workers * runs);
    for pair in lines.chunks(2) {
        assert_eq!(
            pair,
            ["enter", "leave"],
            "critical sections overlapped:\n{log}"
        );
    }
}

/// Checks that `cond` holds throughout `window`, polling as [`wait_until`] does and failing at
/// once when it does not: how a test shows that something did not happen. The window is named
/// where it is chosen, with the reason for its length.
#[track_caller]
pub fn throughout(what: &str, window: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    loop {
        assert!(cond(), "{what}: broken after {:?}", start.elapsed());
        if start.elapsed() >= window {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Fails the test at once, saying what to install, when `program` is not on the PATH.
#[track_caller]
pub fn need(program: &str, package: &str) {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let found = std::env::split_paths(&path).any(|dir| dir.join(program).is_file());
    assert!(
        found,
        "{program} is needed for this test: apt-get install {package}"
    );
}
