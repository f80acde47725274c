//! Bounds that hold whatever the other side does (issue 18, A): a frozen backend, a waiter whose
//! own connection goes silent, a server that accepts connections and never answers, and a
//! network that freezes while the command shuts down. Each uses the real fault: SIGSTOP to the
//! backend, a proxy that swallows bytes, a listener that never speaks.

use crate::util::proxy::Proxy;
use crate::util::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::net::TcpListener;
use std::time::{Duration, Instant};

/// A backend stopped with SIGSTOP, continued again when the test ends, pass or fail.
struct Frozen(i32);

impl Frozen {
    fn stop(pid: i32) -> Frozen {
        kill(Pid::from_raw(pid), Signal::SIGSTOP).unwrap();
        Frozen(pid)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(self.0), Signal::SIGCONT);
    }
}

/// The backend of the one session that waits for the test's lock.
fn waiter_backend(env: &TestEnv) -> i32 {
    let pids = lock_pids(&mut env.probe(), env.lock(), false);
    assert_eq!(pids.len(), 1, "waiters: {pids:?}");
    pids[0]
}

/// A waiter through a proxy that counts connections, queued behind a holder in SQL.
fn queued_waiter(env: &TestEnv, proxy: &Proxy, args: &[&str]) -> Started {
    let child = start(
        env.pglock(args)
            .args(["--", "true"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    wait_until("pglock to queue", || env.waiting() == 1);
    child
}

fn arrivals_since(proxy: &Proxy, since: Instant) -> usize {
    proxy.arrivals().iter().filter(|&&at| at >= since).count()
}

/// Sends `signal` and waits for pglock to exit; how long that took, and how it ended.
fn exit_after(mut child: Started, signal: Signal) -> (Duration, Run) {
    let sent = Instant::now();
    child.kill(signal);
    wait_within("pglock to exit", Duration::from_secs(60), || {
        child.exited().is_some()
    });
    (sent.elapsed(), child.finish())
}

#[test]
fn sigterm_ends_a_wait_on_a_frozen_backend_with_a_handful_of_cancel_requests() {
    let env = TestEnv::new("frozenbackend");
    let mut holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let mut child = queued_waiter(&env, &proxy, &[]);
    let frozen = Frozen::stop(waiter_backend(&env));
    let sent = Instant::now();
    child.kill(Signal::SIGTERM);
    wait_within("pglock to exit", Duration::from_secs(10), || {
        child.exited().is_some()
    });
    let took = sent.elapsed();
    // Leave time for cancel requests that would still come (they did, ~18 a second).
    std::thread::sleep(Duration::from_millis(500));
    let cancels = arrivals_since(&proxy, sent);
    drop(frozen);
    child.finish().assert_code(128 + 15);
    eprintln!("frozen backend: exit {took:?} after SIGTERM, {cancels} cancel requests");
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert!(cancels <= 4, "{cancels} cancel requests");
    env.lock().unlock_in_sql(&mut holder);
}

#[test]
fn a_second_sigterm_ends_a_deaf_wait_at_once() {
    let env = TestEnv::new("secondterm");
    let _holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let mut child = queued_waiter(&env, &proxy, &[]);
    let frozen = Frozen::stop(waiter_backend(&env));
    child.kill(Signal::SIGTERM);
    std::thread::sleep(Duration::from_millis(200));
    let second = Instant::now();
    child.kill(Signal::SIGTERM);
    wait_within("pglock to exit", Duration::from_secs(10), || {
        child.exited().is_some()
    });
    let took = second.elapsed();
    drop(frozen);
    child.finish().assert_code(128 + 15);
    // The first signal alone would have given it a second.
    assert!(took < Duration::from_millis(600), "{took:?}");
}

#[test]
fn sigterm_ends_a_wait_whose_own_connection_went_silent() {
    let env = TestEnv::new("silentwaiter");
    let _holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let child = queued_waiter(&env, &proxy, &["--check-interval", "30s"]);
    // Only the waiter's connection: a cancel request still gets through.
    proxy.freeze_existing();
    let (took, out) = exit_after(child, Signal::SIGTERM);
    out.assert_code(128 + 15);
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn timeout_holds_on_the_client_when_the_backend_is_frozen() {
    let env = TestEnv::new("frozentimeout");
    let _holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let started = Instant::now();
    let mut child = queued_waiter(&env, &proxy, &["--timeout", "2s"]);
    let frozen = Frozen::stop(waiter_backend(&env));
    wait_within("pglock to exit", Duration::from_secs(15), || {
        child.exited().is_some()
    });
    let took = started.elapsed();
    drop(frozen);
    child
        .finish()
        .assert_code(75)
        .assert_stderr_contains("timed out after 2s");
    // --timeout plus the one-second grace, plus start-up.
    assert!(took < Duration::from_millis(3800), "{took:?}");
}

#[test]
fn timeout_holds_when_the_waiters_connection_goes_silent() {
    let env = TestEnv::new("silenttimeout");
    let _holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let started = Instant::now();
    let mut child = queued_waiter(&env, &proxy, &["--timeout", "3s"]);
    proxy.freeze_existing();
    wait_within("pglock to exit", Duration::from_secs(20), || {
        child.exited().is_some()
    });
    let took = started.elapsed();
    child.finish().assert_code(75);
    assert!(took < Duration::from_millis(4800), "{took:?}");
}

/// A server that accepts connections and never says a word (a hung server, a broken balancer).
fn mute_server() -> (TcpListener, u16) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    (listener, port)
}

#[test]
fn connect_timeout_bounds_the_whole_connect() {
    let env = TestEnv::new("muteconnect");
    let (_listener, port) = mute_server();
    let started = Instant::now();
    let out = run(env
        .pglock(&["--connect-timeout", "2", "--", "true"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", port.to_string()));
    let took = started.elapsed();
    out.assert_code(69)
        .assert_stderr_contains("no answer within 2s");
    assert!(took < Duration::from_secs(4), "{took:?}");
}

#[test]
fn sigterm_ends_a_connect_to_a_mute_server() {
    let env = TestEnv::new("muteterm");
    let (listener, port) = mute_server();
    let mut child = start(
        env.pglock(&["--connect-timeout", "60", "--", "true"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string()),
    );
    // Connected at the TCP level: the accept queue has it.
    let _accepted = listener.accept().unwrap();
    let sent = Instant::now();
    child.kill(Signal::SIGTERM);
    wait_within("pglock to exit", Duration::from_secs(10), || {
        child.exited().is_some()
    });
    let took = sent.elapsed();
    child.finish().assert_code(128 + 15);
    assert!(took < Duration::from_secs(2), "{took:?}");
}

/// A command that exits on SIGTERM after touching `ready`, run through `proxy`.
fn stoppable(env: &TestEnv, proxy: &Proxy, args: &[&str], vars: &[(&str, &str)]) -> Started {
    let script = until_sigterm(&format!("touch {}/ready", env.dir().display()), "exit 0");
    let child = start(
        env.pglock(args)
            .args(["-c", &script])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string())
            .envs(vars.iter().copied()),
    );
    env.wait_for_file("ready");
    child
}

#[test]
fn sigterm_during_the_command_shortens_a_release_to_a_frozen_network() {
    let env = TestEnv::new("termfrozenrelease");
    let proxy = Proxy::start();
    let child = stoppable(&env, &proxy, &["--check-interval", "30s"], &[]);
    proxy.freeze();
    let (took, out) = exit_after(child, Signal::SIGTERM);
    out.assert_success();
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[test]
fn sigterm_during_the_command_shortens_the_ledgers_end_and_the_release() {
    let env = TestEnv::new("termfrozenledger");
    let table = format!("public.deadline_runs_{}", std::process::id());
    run(pglock().arg("init").env("PGLOCK_LEDGER", &table)).assert_success();
    let proxy = Proxy::start();
    let args = ["--scope", "xact", "--record", "--check-interval", "20s"];
    let child = stoppable(&env, &proxy, &args, &[("PGLOCK_LEDGER", &table)]);
    proxy.freeze();
    let (took, out) = exit_after(child, Signal::SIGTERM);
    out.assert_success();
    assert!(took < Duration::from_millis(2500), "{took:?}");
    sql().batch_execute(&format!("DROP TABLE {table}")).unwrap();
}

#[test]
fn sigterm_during_the_command_ends_min_hold() {
    let env = TestEnv::new("termminhold");
    let proxy = Proxy::start();
    let child = stoppable(&env, &proxy, &["--min-hold", "1h"], &[]);
    let (took, out) = exit_after(child, Signal::SIGTERM);
    out.assert_success();
    assert!(took < Duration::from_secs(2), "{took:?}");
    assert_eq!(env.granted(), 0);
}

#[test]
fn a_healthy_release_under_timeout_is_confirmed() {
    let env = TestEnv::new("timeoutrelease");
    // timeout(1) signals pglock and then its own process group: pglock gets SIGTERM twice, the
    // second maybe while it releases. Neither may cut a release that a live server answers.
    for _ in 0..10 {
        let mut cmd = wrapped("timeout", &["0.3"]);
        cmd.args(["--key", env.key(), "--", "sleep", "5"]);
        run(cmd)
            .assert_code(124)
            .assert_stderr_lacks("not confirmed");
    }
    assert_eq!(env.granted(), 0);
}

#[test]
fn a_sighup_the_command_survives_leaves_the_lock_checks_their_bound() {
    let env = TestEnv::new("hupreload");
    let script = format!(
        "trap 'touch {d}/hup' HUP; touch {d}/ready; while [ ! -e {d}/go ]; do sleep 0.05; done",
        d = env.dir().display()
    );
    let child = env.start_script(&["--check-interval", "3s"], &script);
    env.wait_for_file("ready");
    // A daemon's reload: it handles the signal and runs on.
    child.kill(Signal::SIGHUP);
    env.wait_for_file("hup");
    // Slow lock checks, each answered within the interval: the lock is not lost. The backend
    // is frozen for all but moments of two intervals, so that checks fall in the freezes.
    let backend = env.backend_pid();
    for _ in 0..3 {
        let frozen = Frozen::stop(backend);
        std::thread::sleep(Duration::from_millis(2500));
        drop(frozen);
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(env.path("go"), "").unwrap();
    child.finish().assert_success().assert_stderr_lacks("lost");
}

#[test]
fn a_report_whose_query_gets_no_answer_ends_within_the_connect_timeout() {
    let env = TestEnv::new("mutereport");
    let proxy = Proxy::start();
    // The network falls silent as the report asks the server about the lock.
    proxy.mute_at("FROM pg_locks");
    let started = Instant::now();
    let mut child = start(
        pglock()
            .args(["status", "--key", env.key()])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string())
            .env("PGSSLMODE", "disable")
            .env("PGCONNECT_TIMEOUT", "2"),
    );
    wait_within("the report to end", Duration::from_secs(10), || {
        child.exited().is_some()
    });
    let took = started.elapsed();
    // Connected, so not 69: "any other failure".
    child
        .finish()
        .assert_code(1)
        .assert_stderr_starts_with("pglock: cannot read pg_locks")
        .assert_one_pglock_line();
    // The connect and the query each get 2 s.
    assert!(took < Duration::from_secs(6), "{took:?}");
}
