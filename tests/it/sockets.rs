//! Each connection's own socket and deadline (issue 23): host lists and several addresses, a
//! terminating signal during a connect, a try that gets no answer, a reconnect inside --timeout,
//! and a machine without /proc. Real faults: listeners that accept and never speak, a proxy that
//! falls silent on a given statement or on every connection, a mount namespace without /proc.

use crate::util::proxy::Proxy;
use crate::util::*;
use nix::sys::signal::Signal;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// Servers that accept connections and never say a word; their ports as a PGPORT list.
fn mute_servers(n: usize) -> (Vec<TcpListener>, String) {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<String> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port().to_string())
        .collect();
    (listeners, ports.join(","))
}

/// Whether a client has connected to `listener` (it is in the accept queue).
fn was_tried(listener: &TcpListener) -> bool {
    listener.set_nonblocking(true).unwrap();
    listener.accept().is_ok()
}

/// Runs `cmd` to its end, with how long it took.
fn timed(cmd: &mut Command) -> (Duration, Run) {
    let started = Instant::now();
    let out = run(cmd);
    (started.elapsed(), out)
}

#[test]
fn a_host_list_of_mute_servers_gets_one_connect_timeout_per_host() {
    let env = TestEnv::new("mutehosts");
    let (listeners, ports) = mute_servers(2);
    let (took, out) = timed(
        env.pglock(&["--connect-timeout", "1", "--", "true"])
            .env("PGHOST", "127.0.0.1,127.0.0.1")
            .env("PGPORT", &ports),
    );
    out.assert_code(69)
        .assert_stderr_contains("no answer within 1s")
        .assert_one_pglock_line();
    assert!(listeners.iter().all(was_tried), "not every host was tried");
    // One second per host, and start-up; before, this never ended.
    assert!(took < Duration::from_millis(3500), "{took:?}");
}

#[test]
fn reports_and_ledger_commands_bound_each_host_too() {
    let env = TestEnv::new("mutereports");
    let (_listeners, ports) = mute_servers(2);
    for args in [
        vec!["status", "--key", env.key()],
        vec!["list"],
        vec!["history", "--all"],
        vec!["prune", "--older-than", "30d", "--dry-run"],
    ] {
        let (took, out) = timed(
            pglock()
                .args(&args)
                .env("PGHOST", "127.0.0.1,127.0.0.1")
                .env("PGPORT", &ports)
                .env("PGCONNECT_TIMEOUT", "2"),
        );
        out.assert_code(69).assert_one_pglock_line();
        // Two seconds per host (libpq's smallest connect_timeout), and start-up.
        assert!(took < Duration::from_secs(6), "{args:?}: {took:?}");
    }
}

#[test]
fn a_signal_cuts_a_multi_host_connect_at_once() {
    let env = TestEnv::new("mutehoststerm");
    let (listeners, ports) = mute_servers(2);
    let mut child = start(
        env.pglock(&["--connect-timeout", "60", "--", "true"])
            .env("PGHOST", "127.0.0.1,127.0.0.1")
            .env("PGPORT", &ports),
    );
    // Connected at the TCP level to the first host: its accept queue has it.
    let _first = listeners[0].accept().unwrap();
    let sent = Instant::now();
    child.kill(Signal::SIGTERM);
    wait_within("pglock to exit", Duration::from_secs(10), || {
        child.exited().is_some()
    });
    let took = sent.elapsed();
    child.finish().assert_code(128 + 15);
    // A connect has nothing to finish: no grace second, and the second host is not tried.
    assert!(took < Duration::from_millis(500), "{took:?}");
    assert!(
        !was_tried(&listeners[1]),
        "the second host was tried after the signal"
    );
}

/// A pglock through `proxy`, plaintext so that the proxy can read its statements.
fn through(env: &TestEnv, proxy: &Proxy, args: &[&str]) -> Command {
    let mut cmd = env.pglock(args);
    cmd.env("PGHOST", "127.0.0.1")
        .env("PGPORT", proxy.port.to_string())
        .env("PGSSLMODE", "disable");
    cmd
}

#[test]
fn a_try_that_gets_no_answer_ends_within_a_second_or_two() {
    let env = TestEnv::new("mutetry");
    let proxy = Proxy::start();
    // The network falls silent as the try goes out (the first statement asks for the lock).
    proxy.mute_at("advisory");
    for wait in [&["--nowait"][..], &["--timeout", "0"][..]] {
        let mut args = wait.to_vec();
        args.extend(["--", "true"]);
        let (took, out) = timed(&mut through(&env, &proxy, &args));
        out.assert_code(69).assert_one_pglock_line();
        // Before, 12 s and more (the kernel's retransmissions).
        assert!(took < Duration::from_millis(2500), "{wait:?}: {took:?}");
    }
}

#[test]
fn a_reconnect_during_a_timeout_ends_with_the_timeout() {
    let env = TestEnv::new("reconnecttimeout");
    let _holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let started = Instant::now();
    let mut child = start(&mut through(
        &env,
        &proxy,
        &["--timeout", "3s", "--connect-timeout", "30", "--", "true"],
    ));
    wait_until("pglock to queue", || env.waiting() == 1);
    // The waiter's connection breaks, and the server it reconnects to never answers.
    proxy.freeze();
    proxy.cut_all();
    wait_within("pglock to exit", Duration::from_secs(60), || {
        child.exited().is_some()
    });
    let took = started.elapsed();
    child.finish().assert_code(75);
    // --timeout and its grace second, not the 30 s connect timeout.
    assert!(took < Duration::from_millis(4800), "{took:?}");
}

#[test]
fn pglock_needs_no_proc_to_connect_and_run() {
    let env = TestEnv::new("noproc");
    need("unshare", "util-linux");
    let marker = env.dir().join("ran");
    let out = run(Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg("mount -t tmpfs none /proc && test ! -e /proc/self && exec \"$@\"")
        .arg("sh")
        .arg(env!("CARGO_BIN_EXE_pglock"))
        .args(["--key", env.key(), "--", "touch"])
        .arg(&marker));
    out.assert_success();
    assert!(marker.exists(), "the command did not run");
}
