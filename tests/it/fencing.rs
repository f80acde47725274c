//! Fencing and faults: what pglock does when the lock, the connection or pglock itself breaks.
//! Every fault is real: backends terminated by the server, a TCP proxy that goes silent or cuts
//! connections, SIGKILLed processes, a real PgBouncer.

use crate::util::bouncer::Bouncer;
use crate::util::proxy::Proxy;
use crate::util::*;
use nix::sys::signal::Signal;
use std::path::Path;
use std::time::{Duration, Instant};

/// A command that records when it gets SIGTERM, then exits 9.
fn term_recorder(dir: &Path) -> String {
    let d = dir.display();
    until_sigterm(
        &format!("touch {d}/ready"),
        &format!("date +%s%N > {d}/term; exit 9"),
    )
}

fn nanos_now() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

#[test]
fn a_terminated_backend_stops_the_command_within_a_second() {
    let env = TestEnv::new("terminated");
    // A long check interval: only watching the socket can be this fast.
    let child = env.start_script(&["--check-interval", "1h"], &term_recorder(env.dir()));
    env.wait_for_file("ready");
    let killed_at = nanos_now();
    assert_eq!(env.terminate_holder(), 1, "no backend holds the lock");
    let out = child.finish();
    out.assert_code(74);
    let termed_at: u128 = read(&env.path("term"))
        .trim()
        .parse()
        .expect("the command got no SIGTERM");
    let delay = Duration::from_nanos((termed_at - killed_at) as u64);
    eprintln!("backend terminated -> command SIGTERMed after {delay:?}");
    assert!(
        delay < Duration::from_secs(1),
        "SIGTERM came {delay:?} after the backend died"
    );
    out.assert_stderr_contains(&format!("pglock: lock \"{}\" lost: ", env.key()))
        .assert_stderr_contains("terminating the command");
}

#[test]
fn a_silent_network_is_detected_within_the_bound() {
    let env = TestEnv::new("silent");
    let proxy = Proxy::start();
    let interval = Duration::from_millis(500);
    let child = start(
        env.pglock(&["--check-interval", "500ms", "-c", &term_recorder(env.dir())])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    env.wait_for_file("ready");
    let frozen_at = Instant::now();
    proxy.freeze();
    let out = child.finish();
    let took = frozen_at.elapsed();
    out.assert_code(74);
    assert!(env.exists("term"), "the command got no SIGTERM");
    let bound = 2 * interval + Duration::from_secs(5);
    eprintln!("silent network with --check-interval {interval:?}: detected after {took:?}");
    assert!(took < bound, "took {took:?}, bound {bound:?}");
    out.assert_stderr_contains("no answer");
}

#[test]
fn a_waiter_whose_connection_is_cut_reconnects_and_gets_the_lock() {
    let env = TestEnv::new("reconnect");
    let mut holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let child = start(
        env.pglock(&["-v", "-c"])
            .arg(format!("touch {}/ran", env.dir().display()))
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    wait_until("the first wait", || env.waiting() == 1);
    proxy.cut_all();
    wait_until("a second connection", || proxy.accepted() >= 2);
    wait_until("the second wait", || env.waiting() == 1);
    assert!(!env.exists("ran"));
    env.lock().unlock_in_sql(&mut holder);
    // With -v, the reconnection is logged.
    child
        .finish()
        .assert_code(0)
        .assert_stderr_contains("retrying");
    assert!(env.exists("ran"));
}

#[test]
fn a_command_that_ignores_sigterm_gets_sigkill_after_kill_after() {
    let env = TestEnv::new("stubborn");
    let script = format!(
        "trap 'touch {0}/term' TERM; touch {0}/ready; while :; do sleep 0.1; done",
        env.dir().display()
    );
    let child = env.start_script(&["--kill-after", "1s"], &script);
    env.wait_for_file("ready");
    let start = Instant::now();
    assert_eq!(env.terminate_holder(), 1, "no backend holds the lock");
    let out = child.finish();
    let took = start.elapsed();
    out.assert_code(74);
    assert!(env.exists("term"), "no SIGTERM first");
    assert!(
        took >= Duration::from_secs(1),
        "SIGKILL before --kill-after: {took:?}"
    );
    assert!(took < Duration::from_secs(6), "no SIGKILL: {took:?}");
}

#[test]
fn the_command_gets_sigterm_when_pglock_is_killed_and_the_lock_is_free() {
    let env = TestEnv::new("orphan");
    let child = env.start_script(&[], &term_recorder(env.dir()));
    env.wait_for_file("ready");
    let pgid = child_of(child.id());
    wait_until("sh and its sleep", || group_members(pgid).len() == 2);
    child.kill(Signal::SIGKILL);
    // The shell's background sleep keeps pglock's stderr open unless it is stopped too.
    child.finish().assert_signal(Signal::SIGKILL);
    env.wait_for_file("term");
    wait_until("the whole group to go", || group_members(pgid).is_empty());
    wait_until("the lock to be freed", || env.granted() == 0);
}

#[test]
fn a_sigkilled_waiter_leaves_the_queue() {
    let env = TestEnv::new("deadwaiter");
    let _holder = env.lock().take_in_sql();
    let child = start(env.pglock(&["--", "true"]));
    wait_until("the waiter", || env.waiting() == 1);
    // Before PostgreSQL 14 only the wait guard gets a dead waiter out of the queue.
    let mut guard = 0;
    wait_until("the wait guard", || {
        guard = wait_guard_of(child.id()).unwrap_or(0);
        guard != 0
    });
    assert!(
        sockets_of(guard).is_empty(),
        "the guard must not keep the lock connection open"
    );
    // A group kill, which must miss the guard: it runs in a session of its own.
    child.kill_group(Signal::SIGKILL);
    child.finish().assert_signal(Signal::SIGKILL);
    wait_until("the guard to do its work and exit", || !alive(guard));
    let start = Instant::now();
    wait_within("the dead waiter to leave", Duration::from_secs(5), || {
        env.waiting() == 0
    });
    eprintln!("dead waiter left the queue after {:?}", start.elapsed());
}

#[test]
fn on_lost_ignore_lets_the_command_finish() {
    let env = TestEnv::new("ignore");
    let script = format!(
        "trap 'touch {0}/term' TERM; touch {0}/ready; while [ ! -e {0}/go ]; do sleep 0.05; done; exit 6",
        env.dir().display()
    );
    let child = env.start_script(&["--on-lost", "ignore"], &script);
    env.wait_for_file("ready");
    assert_eq!(env.terminate_holder(), 1, "no backend holds the lock");
    // pglock has noticed the loss, which is when it would have signalled the command.
    wait_until("the warning", || {
        child.stderr_so_far().contains("the command keeps running")
    });
    std::fs::write(env.path("go"), "").unwrap();
    child.finish().assert_code(6).assert_stderr_contains("lost");
    assert!(!env.exists("term"), "the command was signalled");
}

#[test]
fn xact_scope_excludes_through_pgbouncer_transaction_pooling() {
    let bouncer = Bouncer::start("transaction");
    let env = TestEnv::new("bouncer");
    let conninfo = bouncer.conninfo();
    counter_contention(&env, 4, 6, &["--scope", "xact", "-d", &conninfo]);
}

#[test]
fn retry_connect_waits_for_a_server_that_comes_up_late() {
    let env = TestEnv::new("late");
    let proxy = Proxy::start_closed();
    let child = start(
        env.pglock(&["-v", "--retry-connect", "30s", "--", "true"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    // The server "comes up" once pglock has failed and said it will retry.
    wait_until("a retry logged", || {
        child.stderr_so_far().contains("retrying")
    });
    proxy.open();
    child.finish().assert_success();

    // Without --retry-connect the same situation is an immediate 69.
    let down = Proxy::start_closed();
    run(env
        .pglock(&["--", "true"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", down.port.to_string()))
    .assert_code(69);
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

/// Two pglocks may carry the same application_name (the same host name, both PID 1 in their
/// containers): a dead waiter's guard must cancel its own backend's wait and no other.
#[test]
fn the_wait_guard_cancels_only_its_waiters_backend() {
    let env = TestEnv::new("guardpid");
    let holder = env.lock().take_in_sql();
    let child = start(env.pglock(&["--", "true"]));
    wait_until("the waiter", || env.waiting() == 1);
    let waiter = lock_pids(&mut env.probe(), env.lock(), false)[0];
    let name: String = env
        .probe()
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&waiter],
        )
        .unwrap()
        .get(0);
    // A second waiter under the very same name.
    let id = env.id();
    let twin = std::thread::spawn(move || {
        let mut client = sql();
        client
            .batch_execute(&format!("SET application_name = '{name}'"))
            .unwrap();
        client
            .execute("SELECT pg_advisory_lock($1)", &[&id])
            .map(|_| ())
    });
    wait_until("the twin to wait", || env.waiting() == 2);
    let mut guard = 0;
    wait_until("the wait guard", || {
        guard = wait_guard_of(child.id()).unwrap_or(0);
        guard != 0
    });
    child.kill_group(Signal::SIGKILL);
    child.finish().assert_signal(Signal::SIGKILL);
    wait_until("the guard to do its work and exit", || !alive(guard));
    wait_until("the dead waiter to leave", || env.waiting() == 1);
    throughout(
        "the twin to keep waiting",
        Duration::from_millis(500),
        || env.waiting() == 1 && !twin.is_finished(),
    );
    // Let the twin have the lock and go.
    drop(holder);
    twin.join().unwrap().expect("the twin's wait was cancelled");
}

/// The guard's cancel is bounded like its connect: a guard whose query gets no answer (a frozen
/// server, a network gone silent) exits instead of lingering.
#[test]
fn a_wait_guard_whose_cancel_gets_no_answer_exits_within_its_connect_timeout() {
    let env = TestEnv::new("muteguard");
    let _holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    // The network falls silent as the guard asks for the cancel.
    proxy.mute_at("pg_cancel_backend");
    let child = start(
        env.pglock(&["--", "true"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string())
            .env("PGSSLMODE", "disable"),
    );
    wait_until("the waiter", || env.waiting() == 1);
    let mut guard = 0;
    wait_until("the wait guard", || {
        guard = wait_guard_of(child.id()).unwrap_or(0);
        guard != 0
    });
    child.kill_group(Signal::SIGKILL);
    let killed = Instant::now();
    // Its connect and its cancel each get 5 s.
    wait_within("the guard to exit", Duration::from_secs(12), || {
        !alive(guard)
    });
    eprintln!("the guard exited {:?} after the kill", killed.elapsed());
    // The guard held pglock's stderr until it exited.
    child.finish().assert_signal(Signal::SIGKILL);
}
