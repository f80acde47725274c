//! Fencing and faults: what pglock does when the lock, the connection or pglock itself breaks.
//! Every fault is real: backends terminated by the server, a TCP proxy that goes silent or cuts
//! connections, SIGKILLed processes, a real PgBouncer.

use crate::util::bouncer::Bouncer;
use crate::util::proxy::Proxy;
use crate::util::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::path::Path;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// A command that records when it gets SIGTERM, then exits 9.
fn term_recorder(dir: &Path) -> String {
    format!(
        "trap 'date +%s%N > {0}/term; exit 9' TERM; touch {0}/ready; sleep 300 & wait",
        dir.display()
    )
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

fn terminate_backend_of(key: &str) -> u128 {
    let mut c = sql();
    let at = nanos_now();
    let n: i64 = c
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("pglock:{key}@%")],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "no backend found for {key}");
    at
}

#[test]
fn a_terminated_backend_stops_the_command_within_a_second() {
    let k = unique_key("terminated");
    let dir = temp_dir("terminated");
    // A long check interval: only watching the socket can be this fast.
    let child = start(pglock().args([
        "--key",
        &k,
        "--check-interval",
        "1h",
        "-c",
        &term_recorder(&dir),
    ]));
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    let killed_at = terminate_backend_of(&k);
    let (rc, err) = finish(child);
    assert_eq!(rc, 74, "{err}");
    let termed_at: u128 = read(&dir.join("term"))
        .trim()
        .parse()
        .expect("the command got no SIGTERM");
    let delay = Duration::from_nanos((termed_at - killed_at) as u64);
    eprintln!("backend terminated -> command SIGTERMed after {delay:?}");
    assert!(
        delay < Duration::from_secs(1),
        "SIGTERM came {delay:?} after the backend died"
    );
    assert!(
        err.contains(&format!("pglock: lock \"{k}\" lost: ")),
        "{err}"
    );
    assert!(err.contains("terminating the command"), "{err}");
}

#[test]
fn a_silent_network_is_detected_within_the_bound() {
    let k = unique_key("silent");
    let dir = temp_dir("silent");
    let proxy = Proxy::start();
    let interval = Duration::from_millis(500);
    let child = start(
        pglock()
            .args([
                "--key",
                &k,
                "--check-interval",
                "500ms",
                "-c",
                &term_recorder(&dir),
            ])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    let frozen_at = Instant::now();
    proxy.freeze();
    let (rc, err) = finish(child);
    let took = frozen_at.elapsed();
    assert_eq!(rc, 74, "{err}");
    assert!(dir.join("term").exists(), "the command got no SIGTERM");
    let bound = 2 * interval + Duration::from_secs(5);
    eprintln!("silent network with --check-interval {interval:?}: detected after {took:?}");
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    assert!(err.contains("no answer"), "{err}");
}

#[test]
fn a_waiter_whose_connection_is_cut_reconnects_and_gets_the_lock() {
    let k = unique_key("reconnect");
    let id = key_id(&k);
    let dir = temp_dir("reconnect");
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&id])
        .unwrap();
    let proxy = Proxy::start();
    let child = start(
        pglock()
            .args(["--key", &k, "-v", "-c"])
            .arg(format!("touch {}/ran", dir.display()))
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    let mut probe = sql();
    wait_until("the first wait", LIMIT, || {
        lock_rows(&mut probe, id, false) == 1
    });
    proxy.cut_all();
    wait_until("a second connection", LIMIT, || proxy.accepted() >= 2);
    wait_until("the second wait", LIMIT, || {
        lock_rows(&mut probe, id, false) == 1
    });
    assert!(!dir.join("ran").exists());
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&id])
        .unwrap();
    let (rc, err) = finish(child);
    assert_eq!(rc, 0, "{err}");
    assert!(dir.join("ran").exists());
    assert!(
        err.contains("retrying"),
        "reconnection not logged with -v: {err}"
    );
}

#[test]
fn a_command_that_ignores_sigterm_gets_sigkill_after_kill_after() {
    let k = unique_key("stubborn");
    let dir = temp_dir("stubborn");
    let script = format!(
        "trap 'touch {0}/term' TERM; touch {0}/ready; while :; do sleep 0.1; done",
        dir.display()
    );
    let child = start(pglock().args(["--key", &k, "--kill-after", "1s", "-c", &script]));
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    let start = Instant::now();
    terminate_backend_of(&k);
    let (rc, err) = finish(child);
    let took = start.elapsed();
    assert_eq!(rc, 74, "{err}");
    assert!(dir.join("term").exists(), "no SIGTERM first");
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL before --kill-after: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "no SIGKILL: {took:?}");
}

#[test]
fn the_command_gets_sigterm_when_pglock_is_killed_and_the_lock_is_free() {
    let k = unique_key("orphan");
    let dir = temp_dir("orphan");
    let child = start(pglock().args(["--key", &k, "-c", &term_recorder(&dir)]));
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    let pgid = child_of(child.id());
    wait_until("sh and its sleep", LIMIT, || group_members(pgid).len() == 2);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    // The shell's background sleep keeps pglock's stderr open unless it is stopped too.
    finish(child);
    wait_until("the command's SIGTERM", LIMIT, || dir.join("term").exists());
    wait_until("the whole group to go", LIMIT, || {
        group_members(pgid).is_empty()
    });
    let mut probe = sql();
    wait_until("the lock to be freed", LIMIT, || {
        lock_rows(&mut probe, key_id(&k), true) == 0
    });
}

#[test]
fn a_sigkilled_waiter_leaves_the_queue() {
    let k = unique_key("deadwaiter");
    let id = key_id(&k);
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&id])
        .unwrap();
    let child = start(pglock().args(["--key", &k, "--", "true"]));
    let mut probe = sql();
    wait_until("the waiter", LIMIT, || {
        lock_rows(&mut probe, id, false) == 1
    });
    // Before PostgreSQL 14 only the wait guard gets a dead waiter out of the queue.
    let mut guard = 0;
    wait_until("the wait guard", LIMIT, || {
        guard = wait_guard_of(child.id()).unwrap_or(0);
        guard != 0
    });
    assert!(
        sockets_of(guard).is_empty(),
        "the guard must not keep the lock connection open"
    );
    // A group kill, which must miss the guard: it runs in a session of its own.
    nix::sys::signal::killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    finish(child);
    wait_until("the guard to do its work and exit", LIMIT, || {
        !std::path::Path::new(&format!("/proc/{guard}/cmdline")).exists()
            || read(Path::new(&format!("/proc/{guard}/stat"))).contains(") Z")
    });
    let start = Instant::now();
    wait_until("the dead waiter to leave", Duration::from_secs(5), || {
        lock_rows(&mut probe, id, false) == 0
    });
    eprintln!("dead waiter left the queue after {:?}", start.elapsed());
}

#[test]
fn on_lost_ignore_lets_the_command_finish() {
    let k = unique_key("ignore");
    let dir = temp_dir("ignore");
    let script = format!(
        "trap 'touch {0}/term' TERM; touch {0}/ready; while [ ! -e {0}/go ]; do sleep 0.05; done; exit 6",
        dir.display()
    );
    let child = start(pglock().args(["--key", &k, "--on-lost", "ignore", "-c", &script]));
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    terminate_backend_of(&k);
    std::fs::write(dir.join("go"), "").unwrap();
    let (rc, err) = finish(child);
    assert_eq!(rc, 6, "{err}");
    assert!(!dir.join("term").exists(), "the command was signalled");
    assert!(err.contains("lost"), "no warning: {err}");
}

#[test]
fn xact_scope_excludes_through_pgbouncer_transaction_pooling() {
    let bouncer = Bouncer::start("transaction");
    let k = unique_key("bouncer");
    let conninfo = bouncer.conninfo();
    counter_contention(4, 6, &["--key", &k, "--scope", "xact", "-d", &conninfo]);
}

#[test]
fn retry_connect_waits_for_a_server_that_comes_up_late() {
    use std::io::BufRead;
    let k = unique_key("late");
    let proxy = Proxy::start_closed();
    let mut late = pglock();
    late.args(["--key", &k, "-v", "--retry-connect", "30s", "--", "true"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", proxy.port.to_string());
    let mut child = start(&mut late);
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    // The server "comes up" once pglock has failed and said it will retry.
    loop {
        let line = rx.recv_timeout(LIMIT).expect("no retry logged");
        if line.contains("retrying") {
            break;
        }
    }
    proxy.open();
    assert!(child.wait().unwrap().success());

    // Without --retry-connect the same situation is an immediate 69.
    let down = Proxy::start_closed();
    let (rc, err) = finish(start(
        pglock()
            .args(["--key", &k, "--", "true"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", down.port.to_string()),
    ));
    assert_eq!(rc, 69, "{err}");
}

/// The wait guard a waiting pglock started, if any: a child of one of its threads.
fn wait_guard_of(pglock: u32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pglock}/task")).ok()?;
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .collect::<Vec<_>>()
        })
        .find(|pid| read(Path::new(&format!("/proc/{pid}/cmdline"))).contains("__wait-guard"))
}

/// The sockets a process has open.
fn sockets_of(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|dir| {
            dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
                .map(|p| p.display().to_string())
                .filter(|p| p.starts_with("socket:"))
                .collect()
        })
        .unwrap_or_default()
}
