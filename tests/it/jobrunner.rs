//! The job runner's flags (issue 25) against a real server and real processes: --max-runtime
//! stops a hung command and the lock goes only after it exited; --retries runs a failed command
//! again without giving the lock away, and a signal or a lost lock during the delay ends the
//! run; --splay waits before connecting; the ledger's wait, attempts and `timeout`.

use crate::ledger::{Ledger, nanos};
use crate::util::*;
use nix::sys::signal::Signal;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

/// The lines of a file the command appended to.
fn lines(path: &std::path::Path) -> Vec<String> {
    read(path).lines().map(String::from).collect()
}

/// A hung command is stopped when --max-runtime runs out: SIGTERM to its group, which it takes
/// half a second to obey; the next waiter's command starts only after it exited; 124, one line
/// naming the key and the limit, and the ledger says `timeout`.
#[test]
fn max_runtime_stops_a_hung_command_before_the_lock_goes() {
    let ledger = Ledger::new();
    let env = TestEnv::new("maxrt");
    let key = env.key();
    let (a_started, a_last, b_first) = (env.path("a"), env.path("a_last"), env.path("b_first"));
    let a_script = until_sigterm(
        &format!("touch {}", a_started.display()),
        &format!("sleep 0.5; date +%s%N > {}; exit 143", a_last.display()),
    );
    let began = Instant::now();
    let a = start(
        ledger
            .pglock(&["--key", key, "--record", "--max-runtime", "1s"])
            .args(["--kill-after", "10s", "-c", &a_script]),
    );
    wait_until("A's command running", || a_started.exists());
    let b = start(
        ledger
            .pglock(&["--key", key])
            .args(["-c", &format!("date +%s%N > {}", b_first.display())]),
    );
    wait_until("B waiting", || env.waiting() == 1);
    let a = a.finish();
    let took = began.elapsed();
    a.assert_code(124);
    a.assert_stderr(&format!(
        "pglock: \"{key}\" ran longer than --max-runtime 1s; terminating the command\n"
    ));
    assert!(took < Duration::from_secs(5), "{took:?}");
    b.finish().assert_success();
    let (a_end, b_start) = (nanos(&a_last), nanos(&b_first));
    assert!(
        b_start > a_end,
        "B's command started {} ms before A's command's last instruction",
        (a_end - b_start) / 1_000_000
    );
    assert_eq!(ledger.runs(key), [("timeout".into(), Some(124))]);
    // check counts it as a failure and says why.
    let check = run(ledger.pglock(&["check", "--key", key, "--critical", "1h"]));
    check.assert_code(2);
    check.assert_stdout_contains("last run timed out (--max-runtime), exit 124");
}

/// A command that fails twice and then succeeds: three attempts under one lock, told
/// PGLOCK_ATTEMPT, one ledger row that counts them; the lock is never given away between them.
#[test]
fn retries_run_a_failed_command_again_under_the_lock() {
    let ledger = Ledger::new();
    let env = TestEnv::new("retries");
    let key = env.key();
    let seen = env.path("attempts");
    let script = format!(
        "echo $PGLOCK_ATTEMPT >> {f}; [ $(wc -l < {f}) -ge 3 ]",
        f = seen.display()
    );
    let args = ["--record", "--retries", "3", "--retry-delay", "100ms"];
    ledger.run(key, &args, &script).assert_success();
    assert_eq!(lines(&seen), ["1", "2", "3"]);
    assert_eq!(ledger.runs(key), [("succeeded".into(), Some(0))]);
    let attempts: i32 = sql()
        .query_one(
            &format!("SELECT attempts FROM {} WHERE key = $1", ledger.table),
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(attempts, 3);
    // The last attempt's status, when every one fails.
    std::fs::remove_file(&seen).unwrap();
    let all_fail = format!("echo $PGLOCK_ATTEMPT >> {}; exit 7", seen.display());
    env.run_script(&["--retries", "2", "--retry-delay", "10ms"], &all_fail)
        .assert_code(7);
    assert_eq!(lines(&seen), ["1", "2", "3"]);
}

/// During the delay the lock stays held: a --nowait contender gets 75, and the retry has not
/// run yet.
#[test]
fn a_contender_during_a_retry_delay_finds_the_lock_busy() {
    let env = TestEnv::new("rdelay");
    let seen = env.path("attempts");
    let script = format!("echo $PGLOCK_ATTEMPT >> {}; exit 3", seen.display());
    let first = env.start_script(&["-v", "--retries", "1", "--retry-delay", "2s"], &script);
    wait_until("the retry delay", || {
        first.stderr_so_far().contains("retrying in")
    });
    env.run_script(&["--nowait"], "true").assert_code(75);
    assert_eq!(lines(&seen), ["1"]);
    let first = first.finish();
    first.assert_code(3);
    assert_eq!(lines(&seen), ["1", "2"]);
}

/// A terminating signal during the delay ends pglock at once with 128+N and releases the lock;
/// the retry never runs.
#[test]
fn a_signal_during_a_retry_delay_ends_the_run_at_once() {
    let ledger = Ledger::new();
    let env = TestEnv::new("rsig");
    let key = env.key();
    let seen = env.path("attempts");
    let script = format!("echo $PGLOCK_ATTEMPT >> {}; exit 3", seen.display());
    let first = start(
        ledger
            .pglock(&["--key", key, "-v", "--record", "--retries", "2"])
            .args(["--retry-delay", "30s", "-c", &script]),
    );
    wait_until("the retry delay", || {
        first.stderr_so_far().contains("retrying in")
    });
    let signalled = Instant::now();
    first.kill(Signal::SIGTERM);
    let first = first.finish();
    assert!(signalled.elapsed() < Duration::from_secs(2));
    first.assert_code(143);
    assert_eq!(lines(&seen), ["1"]);
    assert_eq!(env.granted(), 0);
    assert_eq!(ledger.runs(key), [("failed".into(), Some(143))]);
}

/// A lock lost during the delay ends the run with 74; the retry never runs.
#[test]
fn a_lock_lost_during_a_retry_delay_ends_the_run_with_74() {
    let env = TestEnv::new("rlost");
    let seen = env.path("attempts");
    let script = format!("echo $PGLOCK_ATTEMPT >> {}; exit 3", seen.display());
    let first = env.start_script(&["-v", "--retries", "2", "--retry-delay", "30s"], &script);
    wait_until("the retry delay", || {
        first.stderr_so_far().contains("retrying in")
    });
    assert_eq!(env.terminate_holder(), 1);
    let first = first.finish();
    first.assert_code(74);
    assert_eq!(lines(&seen), ["1"]);
}

/// --max-runtime bounds the retries and their delays too.
#[test]
fn max_runtime_bounds_the_retry_delays() {
    let env = TestEnv::new("rbound");
    let began = Instant::now();
    let run = env.run_script(
        &[
            "--retries",
            "5",
            "--retry-delay",
            "30s",
            "--max-runtime",
            "500ms",
        ],
        "exit 3",
    );
    run.assert_code(124);
    run.assert_stderr_contains("ran longer than --max-runtime 500ms; not retrying");
    assert!(began.elapsed() < Duration::from_secs(5));
}

/// A SIGTERM during --splay ends pglock at once, and it never connected: the server it was
/// given (a listener that would accept any connection) saw none. -v logs the chosen delay.
#[test]
fn a_signal_during_the_splay_ends_pglock_without_connecting() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let url = format!("host=127.0.0.1 port={port} connect_timeout=2");
    let env = TestEnv::new("splay");
    let splaying = env.start_script(&["-v", "--splay", "1h", "-d", &url], "true");
    wait_until("the splay", || {
        splaying
            .stderr_so_far()
            .contains("before connecting (--splay 1h00m)")
    });
    let signalled = Instant::now();
    splaying.kill(Signal::SIGTERM);
    let done = splaying.finish();
    assert!(signalled.elapsed() < Duration::from_secs(2));
    done.assert_code(143);
    assert!(
        listener.accept().is_err(),
        "pglock connected during --splay"
    );
    // A short splay, then the run as usual.
    env.run_script(&["--splay", "200ms"], "true")
        .assert_success();
}

#[test]
fn bad_job_runner_flags_are_usage_errors() {
    for (args, flag) in [
        (&["--max-runtime", "0"][..], "--max-runtime"),
        (&["--retries", "101"], "--retries"),
        (&["--retry-delay=-1s"], "--retry-delay"),
        (&["--splay", "soon"], "--splay"),
    ] {
        let done = run(pglock()
            .args(["--key", "k"])
            .args(args)
            .args(["--", "true"]));
        done.assert_code(2);
        done.assert_stderr_contains(flag);
    }
}

/// The ledger records the wait and the attempts; history shows them (its JSON also the tail),
/// metrics exports the last wait (accepted by promtool).
#[test]
fn the_ledger_records_wait_and_attempts() {
    let ledger = Ledger::new();
    let env = TestEnv::new("lwait");
    let key = env.key();
    let holder = env.hold(&[]);
    let waiter = start(
        ledger
            .pglock(&["--key", key, "--record", "--retries", "1"])
            .args(["--retry-delay", "10ms", "-c", "exit 5"]),
    );
    wait_until("the waiter", || env.waiting() == 1);
    std::thread::sleep(Duration::from_millis(300));
    holder.release().assert_success();
    waiter.finish().assert_code(5);
    let history = run(ledger.pglock(&["history", "--key", key, "--json"]));
    let runs = history.json();
    let run0 = &runs[0];
    assert_eq!(run0["status"], "failed");
    assert_eq!(run0["attempts"], 2);
    assert!(run0["output_tail"].is_null());
    let wait = run0["wait_seconds"].as_f64().unwrap();
    assert!((0.3..10.0).contains(&wait), "{wait}");
    let table = run(ledger.pglock(&["history", "--key", key]));
    table.assert_stdout_contains("WAIT");
    table.assert_stdout_contains("TRIES");
    let file = env.path("pglock.prom");
    run(ledger.pglock(&["metrics", "--output", file.to_str().unwrap()])).assert_success();
    let body = read(&file);
    assert!(
        body.contains(&format!("pglock_last_wait_seconds{{key=\"{key}\"}} ")),
        "{body}"
    );
    need("promtool", "prometheus");
    run(Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap()))
    .assert_success();
}

/// A table of the previous pglock (no wait, attempts or tail, a status check without
/// `timeout`): a run says to run `pglock init`, which upgrades it in place, and then a timeout
/// can be recorded. Idempotent.
#[test]
fn init_adds_the_job_runner_columns_in_place() {
    let ledger = Ledger::new();
    let env = TestEnv::new("jrcols");
    let key = env.key();
    let t = &ledger.table;
    let mut client = sql();
    let check: String = client
        .query_one(
            "SELECT conname::text FROM pg_constraint WHERE conrelid = $1::text::regclass \
             AND pg_get_constraintdef(oid) LIKE '%''abandoned''%'",
            &[t],
        )
        .unwrap()
        .get(0);
    client
        .batch_execute(&format!(
            "ALTER TABLE {t} DROP COLUMN waited_ms, DROP COLUMN attempts, DROP COLUMN output_tail, \
             DROP CONSTRAINT \"{check}\", ADD CONSTRAINT \"{check}\" CHECK (status IN \
             ('running', 'succeeded', 'failed', 'lost', 'abandoned'))"
        ))
        .unwrap();
    let refused = ledger.run(key, &["--record"], "true");
    refused.assert_code(78);
    refused.assert_stderr_contains("pglock init");
    run(ledger.pglock(&["init"])).assert_stdout_contains("already exists");
    ledger
        .run(key, &["--record", "--max-runtime", "100ms"], "sleep 5")
        .assert_code(124);
    assert_eq!(ledger.runs(key), [("timeout".into(), Some(124))]);
    run(ledger.pglock(&["init"])).assert_success();
    let checks: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_constraint WHERE conrelid = $1::text::regclass \
             AND pg_get_constraintdef(oid) LIKE '%''timeout''%'",
            &[t],
        )
        .unwrap()
        .get(0);
    assert_eq!(checks, 1);
}
