//! Shared helpers for the integration tests: the built binary, a SQL client on the test server
//! (from the same PG* variables pglock reads), unique lock keys, and waiting on observable events.
#![allow(dead_code)]

pub mod bouncer;
pub mod cluster;
pub mod proxy;

use postgres::{Client, NoTls};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pglock");

/// A pglock command with a clean environment apart from the PG* variables.
pub fn pglock() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_remove("PGLOCK_DATABASE_URL");
    cmd
}

/// This test binary, told to run just the helper test at `path`, written as
/// `concat!(module_path!(), "::helper_name")` so that it follows the module: for tests whose
/// command under pglock is a helper test (which does nothing unless its variable is set).
pub fn helper(path: &str) -> Vec<std::ffi::OsString> {
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

/// A plain client on the test server, configured from PG* like libpq would.
pub fn sql() -> Client {
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
        .connect(NoTls)
        .expect("tests need a PostgreSQL server: run them as `pg_virtualenv cargo test`")
}

/// The SHA-256 lock id for a key, computed independently of pglock's own code.
pub fn key_id(key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key.as_bytes());
    i64::from_be_bytes(d[..8].try_into().unwrap())
}

/// Polls `cond` until it holds; panics with `what` after `limit`. For waiting on server state
/// (pg_locks rows) and files, which have no push notification.
pub fn wait_until(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Number of pg_locks rows for a bigint lock id, by granted state.
pub fn lock_rows(client: &mut Client, id: i64, granted: bool) -> i64 {
    let classid = ((id as u64) >> 32) as i64;
    let objid = (id as u64 & 0xffff_ffff) as i64;
    client
        .query_one(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1 \
             AND objid::bigint = $2 AND objsubid = 1 AND granted = $3",
            &[&classid, &objid, &granted],
        )
        .unwrap()
        .get(0)
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_key(name));
    std::fs::create_dir_all(&dir).unwrap();
    dir
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

/// The process group pglock (`pid`) started its command in: the child that leads a group.
pub fn child_of(pid: u32) -> i32 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children
        .split_whitespace()
        .filter_map(|c| c.parse::<i32>().ok())
        .find(|&c| group_members(c).contains(&c))
        .expect("pglock has no child leading a process group")
}

/// Starts a command (usually `pglock()` with arguments) in its own process group, as a shell
/// would start a job, with stdin and stderr piped: closing stdin ends commands that read it.
pub fn start(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap()
}

/// pglock with `args`, running `script` with -c.
pub fn start_script(args: &[&str], script: &str) -> Child {
    start(pglock().args(args).args(["-c", script]))
}

/// Closes the child's stdin, waits for it, and returns its exit status and stderr.
pub fn finish(mut child: Child) -> (i32, String) {
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `workers` threads each run pglock `runs` times (with `args`) around a non-atomic
/// read-modify-write of a counter file, bracketed by enter/leave records: the count must come
/// out exact and the records must never interleave.
pub fn counter_contention(workers: usize, runs: usize, args: &[&str]) {
    let dir = temp_dir("counter");
    std::fs::write(dir.join("counter"), "0").unwrap();
    let script = format!(
        "cd {}; echo enter >> log; n=$(cat counter); echo $((n + 1)) > counter.tmp; \
         mv counter.tmp counter; echo leave >> log",
        dir.display()
    );
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let handles: Vec<_> = (0..workers)
        .map(|_| {
            let (args, script) = (args.clone(), script.clone());
            std::thread::spawn(move || {
                for _ in 0..runs {
                    let out = pglock()
                        .args(&args)
                        .args(["-c", &script])
                        .stdin(Stdio::null())
                        .output()
                        .unwrap();
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                }
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(
        read(&dir.join("counter")).trim(),
        (workers * runs).to_string()
    );
    let log = read(&dir.join("log"));
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
