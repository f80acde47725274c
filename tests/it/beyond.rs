//! Beyond flock: --limit (a semaphore), --key-hash (other libraries' lock ids), --min-hold.

use crate::util::bouncer::Bouncer;
use crate::util::*;
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// Lock rows of the semaphore's queue: (granted, waiting).
fn gate_rows(env: &TestEnv) -> (i64, i64) {
    let gate = Lock::gate(env.key());
    (env.rows(gate, true), env.rows(gate, false))
}

#[test]
fn twenty_contenders_never_exceed_three_slots() {
    contend(20, 3, "session");
}

#[test]
fn xact_scope_semaphore_never_exceeds_its_slots() {
    contend(8, 2, "xact");
}

fn contend(contenders: usize, limit: usize, scope: &str) {
    let env = TestEnv::new("limit");
    let log = env.path("log");
    let script = format!(
        "echo \"enter $(date +%s%N) $PGLOCK_SLOT\" >> {0}; sleep 0.1; \
         echo \"leave $(date +%s%N) $PGLOCK_SLOT\" >> {0}",
        log.display()
    );
    let limit_s = limit.to_string();
    let children: Vec<_> = (0..contenders)
        .map(|_| env.start_script(&["--limit", &limit_s, "--scope", scope], &script))
        .collect();
    for child in children {
        child.finish().assert_success();
    }
    let mut events: Vec<(u128, bool, String)> = read(&log)
        .lines()
        .map(|l| {
            let f: Vec<_> = l.split(' ').collect();
            (f[1].parse().unwrap(), f[0] == "enter", f[2].to_string())
        })
        .collect();
    assert_eq!(events.len(), 2 * contenders, "every run completes");
    // Leaves before enters at the same instant.
    events.sort_by_key(|e| (e.0, e.1));
    let (mut now, mut most) = (Vec::<String>::new(), 0);
    for (_, enter, slot) in events {
        if enter {
            assert!(slot.parse::<usize>().unwrap() < limit, "slot {slot}");
            assert!(!now.contains(&slot), "slot {slot} given twice");
            now.push(slot);
        } else {
            now.retain(|s| *s != slot);
        }
        most = most.max(now.len());
        assert!(now.len() <= limit, "{} holders at once", now.len());
    }
    assert_eq!(most, limit, "the limit was never reached");
}

/// Issue 23, item 10: an administrator's pg_cancel_backend of a `--limit` waiter ends its wait
/// with the conflict status, as the README's fault table says, whether it waits at the head of
/// the queue (blocked on a slot) or behind it (on the gate). The semaphore used to take any
/// cancel for its own wake-up and wait on.
#[test]
fn an_administrators_cancel_ends_a_session_scope_limit_wait() {
    administrators_cancel("session", &[]);
}

#[test]
fn an_administrators_cancel_ends_an_xact_scope_limit_wait() {
    administrators_cancel("xact", &[]);
}

#[test]
fn an_administrators_cancel_ends_a_limit_wait_through_a_transaction_pooling_pgbouncer() {
    let bouncer = Bouncer::start("transaction");
    administrators_cancel("xact", &["-d", &bouncer.conninfo()]);
}

/// How many sessions wait for one of the first `n` slots.
fn slot_waiters(env: &TestEnv, n: usize) -> i64 {
    (0..n)
        .map(|i| env.rows(Lock::slot(env.key(), i), false))
        .sum()
}

/// `via`: how to reach the server (a pooler), else the test server itself.
fn administrators_cancel(scope: &str, via: &[&str]) {
    let env = TestEnv::new("limitcancel");
    let args = [&["--limit", "2", "--scope", scope][..], via].concat();
    let (a, b) = (env.hold(&args), env.hold(&args));
    // An hour between re-checks: the head's wait is one statement throughout.
    let waiting = [&args[..], &["--check-interval", "1h"]].concat();
    let ran = format!("touch {}/ran", env.dir().display());
    let mut head = env.start_script(&waiting, &ran);
    wait_until("the head of the queue blocked on a slot", || {
        gate_rows(&env).0 == 1 && slot_waiters(&env, 2) == 1
    });
    let mut queued = env.start_script(&waiting, &ran);
    wait_until("a waiter behind the head", || gate_rows(&env).1 == 1);
    let gate = Lock::gate(env.key());
    let cancel = |pid: i32| {
        let cancelled: bool = sql()
            .query_one("SELECT pg_cancel_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(cancelled, "backend {pid} was not signalled");
    };
    let bound = Duration::from_secs(10);
    let expected = format!(
        "pglock: the wait for lock \"{}\" was cancelled on the server",
        env.key()
    );
    for (who, waiter) in [("behind the head", &mut queued), ("at the head", &mut head)] {
        let granted = who == "at the head";
        cancel(lock_pids(&mut env.probe(), gate, granted)[0]);
        let cancelled = Instant::now();
        while waiter.exited().is_none() {
            assert!(
                cancelled.elapsed() < bound,
                "the waiter {who} still waits {bound:?} after its cancel: {}",
                waiter.stderr_so_far()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    for waiter in [queued, head] {
        waiter
            .finish()
            .assert_code(75)
            .assert_stderr_contains(&expected);
    }
    assert!(!env.exists("ran"), "a cancelled waiter ran its command");
    assert_eq!(gate_rows(&env), (0, 0), "nobody is left in the queue");
    // The holders are unharmed, and a freed slot is taken as before.
    let freed = a.slot();
    a.release().assert_success();
    env.run_script(
        &args,
        &format!("echo $PGLOCK_SLOT > {}/slot", env.dir().display()),
    )
    .assert_success();
    assert_eq!(read(&env.path("slot")).trim(), freed.to_string());
    b.release().assert_success();
}

/// Issue 23, item 11: a cancel that lands on a holder's lock check (an administrator's
/// pg_cancel_backend, or a semaphore wake-up arriving after its waiter became a holder) neither
/// frees the slot while the command runs (xact scope: it aborted the lock's transaction) nor
/// passes for a lost lock (session scope: the command was stopped, exit 74). Two holders of
/// `--limit 2` check every 200 ms under a stream of cancels while a third waits at the head of
/// the queue: the waiter must not get in, and every command ends with its own status.
#[test]
fn stray_cancels_never_cost_a_session_scope_holder_its_slot() {
    stray_cancels_on_holders("session", &[]);
}

#[test]
fn stray_cancels_never_cost_an_xact_scope_holder_its_slot() {
    stray_cancels_on_holders("xact", &[]);
}

#[test]
fn stray_cancels_never_cost_a_holder_its_slot_through_a_transaction_pooling_pgbouncer() {
    let bouncer = Bouncer::start("transaction");
    stray_cancels_on_holders("xact", &["-d", &bouncer.conninfo()]);
}

/// `via`: how to reach the server (a pooler), else the test server itself.
fn stray_cancels_on_holders(scope: &str, via: &[&str]) {
    let env = TestEnv::new("limitcheckcancel");
    let args = [
        &[
            "--limit",
            "2",
            "--scope",
            scope,
            "--check-interval",
            "200ms",
        ][..],
        via,
    ]
    .concat();
    let (log, stop) = (env.path("log"), env.path("stop"));
    let script = format!(
        "echo \"enter $(date +%s%N) $PGLOCK_SLOT\" >> {0}; \
         while [ ! -e {1} ]; do sleep 0.05; done; \
         echo \"leave $(date +%s%N) $PGLOCK_SLOT\" >> {0}; exit 3",
        log.display(),
        stop.display()
    );
    let entered = || {
        read(&log)
            .lines()
            .filter(|l| l.starts_with("enter"))
            .count()
    };
    let mut holders = vec![
        env.start_script(&args, &script),
        env.start_script(&args, &script),
    ];
    wait_until("both holders' commands", || entered() == 2);
    let pids: Vec<i32> = (0..2)
        .flat_map(|i| lock_pids(&mut env.probe(), Lock::slot(env.key(), i), true))
        .collect();
    assert_eq!(pids.len(), 2, "{pids:?}");
    // After their first check (pg_stat_activity shows its tag): an xact-scope holder makes the
    // savepoint its checks run in at the first one, and a cancel in the microseconds before that
    // still ends the transaction (see lock::Holder).
    wait_until("both holders' first lock check", || {
        let checked: i64 = env
            .probe()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1) \
                 AND query LIKE '/* pglock: held for %'",
                &[&pids],
            )
            .unwrap()
            .get(0);
        checked == 2
    });
    let mut waiter = env.start_script(&args, &script);
    wait_until("the third at the head of the queue", || {
        gate_rows(&env).0 == 1 && slot_waiters(&env, 2) == 1
    });
    let mut canceller = sql();
    let start = Instant::now();
    let mut landed = 0;
    while start.elapsed() < Duration::from_secs(4) {
        for pid in &pids {
            let signalled: bool = canceller
                .query_one("SELECT pg_cancel_backend($1)", &[pid])
                .unwrap()
                .get(0);
            assert!(signalled, "holder backend {pid} is gone");
            landed += 1;
        }
        // Up to half a millisecond apart (and a round trip): a check takes a fraction of a
        // millisecond, so many are hit, on any of their parts (it took 20 to 40% of the runs
        // with cancels up to 8 ms apart to see the old code fail).
        let jitter = start.elapsed().subsec_nanos() % 500_000;
        std::thread::sleep(Duration::from_nanos(jitter.into()));
    }
    for (who, pglock) in holders.iter_mut().chain([&mut waiter]).enumerate() {
        assert!(
            pglock.exited().is_none(),
            "pglock {who} ended during {landed} cancels: {}",
            pglock.stderr_so_far()
        );
    }
    assert_eq!(
        entered(),
        2,
        "the waiter got a slot while both commands ran"
    );
    std::fs::write(&stop, "").unwrap();
    holders.push(waiter);
    for pglock in holders {
        pglock.finish().assert_code(3).assert_stderr_lacks("lost");
    }
    let mut events: Vec<(u128, bool)> = read(&log)
        .lines()
        .map(|l| {
            let f: Vec<_> = l.split(' ').collect();
            (f[1].parse().unwrap(), f[0] == "enter")
        })
        .collect();
    assert_eq!(events.len(), 6, "{}", read(&log));
    // Leaves before enters at the same instant.
    events.sort();
    let mut running = 0;
    for (_, enter) in events {
        running += if enter { 1 } else { -1 };
        assert!(running <= 2, "three commands at once:\n{}", read(&log));
    }
}

#[test]
fn nowait_is_busy_only_when_every_slot_is_taken() {
    let env = TestEnv::new("limitnowait");
    let a = env.hold(&["--limit", "2"]);
    // One slot is still free.
    run(env.pglock(&["--limit", "2", "-n", "-c", "echo $PGLOCK_SLOT"])).assert_success();
    let b = env.hold(&["--limit", "2"]);
    run(env.pglock(&["--limit", "2", "-n", "--", "true"])).assert_code(75);
    a.release().assert_success();
    b.release().assert_success();
}

#[test]
fn a_release_wakes_the_head_of_the_queue_without_polling() {
    let env = TestEnv::new("limitwake");
    let (a, b) = (env.hold(&["--limit", "2"]), env.hold(&["--limit", "2"]));
    // A re-check interval of an hour: only the release's wake-up can hand the slot over.
    let waiter = env.start_script(
        &["--limit", "2", "--check-interval", "1h"],
        &format!("echo $PGLOCK_SLOT > {}/slot", env.dir().display()),
    );
    wait_until("the waiter at the head of the queue", || {
        gate_rows(&env).0 == 1
    });
    let released = Instant::now();
    let freed = b.slot();
    b.release().assert_success();
    let out = waiter.finish();
    let took = released.elapsed();
    out.assert_success();
    eprintln!("semaphore hand-off, release to the waiter's exit: {took:?}");
    assert!(took < Duration::from_secs(10), "hand-off took {took:?}");
    assert_eq!(read(&env.path("slot")).trim(), freed.to_string());
    a.release().assert_success();
}

/// Issue 23, item 7: a --timeout that runs out while queued behind the head of the queue is a
/// conflict (75, or -E N) in both scopes; in xact scope it used to exit 1 ("canceling statement
/// due to lock timeout").
#[test]
fn a_timeout_while_queued_behind_the_head_is_a_conflict() {
    for scope in ["session", "xact"] {
        let env = TestEnv::new("limitqueued");
        let args = ["--limit", "2", "--scope", scope];
        let (a, b) = (env.hold(&args), env.hold(&args));
        let head = env.start_script(&args, "true");
        wait_until("the head of the queue", || gate_rows(&env).0 == 1);
        let late = || {
            let mut cmd = env.pglock(&args);
            cmd.args(["--timeout", "1"]);
            cmd
        };
        let out = run(late().args(["--", "true"]));
        out.assert_code(75)
            .assert_one_pglock_line()
            .assert_stderr_contains("timed out after ");
        run(late().args(["-E", "9", "--", "true"])).assert_code(9);
        // Nothing was left behind in the queue: the head is still its only holder.
        assert_eq!(gate_rows(&env), (1, 0), "{scope}");
        a.release().assert_success();
        head.finish().assert_success();
        b.release().assert_success();
    }
}

#[test]
fn a_killed_holders_slot_is_reused() {
    let env = TestEnv::new("limitkill");
    env.run_script(&["--limit", "1", "--check-interval", "1s"], "true")
        .assert_success();
    let a = env.hold(&["--limit", "2"]);
    let b = env.hold(&["--limit", "2"]);
    let waiter = env.start_script(
        &["--limit", "2", "--check-interval", "1s"],
        &format!("echo $PGLOCK_SLOT > {}/c", env.dir().display()),
    );
    wait_until("the waiter at the head of the queue", || {
        gate_rows(&env).0 == 1
    });
    a.kill(Signal::SIGKILL);
    waiter.finish().assert_success();
    assert_eq!(
        read(&env.path("c")).trim(),
        a.slot().to_string(),
        "the dead holder's slot"
    );
    b.kill(Signal::SIGTERM);
    b.release();
    a.release().assert_signal(Signal::SIGKILL);
}

#[test]
fn waiters_get_slots_in_arrival_order() {
    let env = TestEnv::new("limitfifo");
    let mut holders: Vec<Holder> = (0..3).map(|_| env.hold(&["--limit", "3"])).collect();
    let order = env.path("order");
    let mut waiters = Vec::new();
    for i in 0..10 {
        waiters.push(env.start_script(
            &["--limit", "3"],
            &format!("echo {i} >> {}; sleep 0.05", order.display()),
        ));
        // The next one arrives only once this one is queued.
        wait_until("the waiter to queue", || {
            let (granted, waiting) = gate_rows(&env);
            granted + waiting == i + 1
        });
    }
    // All three slots come free at once.
    for h in &mut holders {
        h.let_go();
    }
    for h in holders {
        h.release().assert_success();
    }
    for w in waiters {
        w.finish().assert_success();
    }
    let got: Vec<usize> = read(&order).lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(got.len(), 10);
    for (position, arrival) in got.iter().enumerate() {
        assert!(
            position.abs_diff(*arrival) <= 2,
            "waiter {arrival} ran {position}th: {got:?}"
        );
    }
}

#[test]
fn limit_with_shared_is_a_usage_error() {
    run(pglock().args(["--key", "k", "--limit", "2", "--shared", "--", "true"])).assert_code(2);
    for bad in ["0", "1025", "x"] {
        run(pglock().args(["--key", "k", "--limit", bad, "--", "true"])).assert_code(2);
    }
}

#[test]
fn key_hash_schemes_share_locks_with_other_libraries() {
    // (scheme, key, id that library computes): vectors from the field notes, and non-ASCII
    // ones computed with Python's hashlib/hmac.
    let vectors: [(&str, &str, i64); 6] = [
        ("sqlx", "nightly-report", 8797529593787444750),
        (
            "sqlx",
            "my first Postgres advisory lock!",
            -5560419505042474287,
        ),
        ("sqlx", "夜间报告", -3912964464901551898),
        ("postgres-lock", "nightly-report", 106076166759017618),
        ("postgres-lock", "straße-backup", 138453920063380248),
        ("sha256", "🔒", 7701668758205862634),
    ];
    let mut holder = sql();
    for (scheme, key, id) in vectors {
        holder
            .execute("SELECT pg_advisory_lock($1)", &[&id])
            .unwrap();
        run(pglock().args(["--key", key, "--key-hash", scheme, "-n", "--", "true"]))
            .assert_code(75);
        run(pglock().args(["key", "--key-hash", scheme, key]))
            .assert_stdout_contains(&id.to_string());
        holder
            .execute("SELECT pg_advisory_unlock($1)", &[&id])
            .unwrap();
        run(pglock().args(["--key", key, "--key-hash", scheme, "-n", "--", "true"]))
            .assert_success();
    }
}

#[test]
fn min_hold_keeps_the_lock_after_a_short_command() {
    let env = TestEnv::new("minhold");
    // Connected first: on a loaded machine a new connection alone can take a second.
    drop(env.probe());
    let start = Instant::now();
    let child = env.start_script(
        &["--min-hold", "1500ms"],
        &format!("touch {}/done; exit 4", env.dir().display()),
    );
    env.wait_for_file("done");
    assert_eq!(env.granted(), 1, "released before --min-hold");
    child.finish().assert_code(4);
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert_eq!(env.granted(), 0);
}

#[test]
fn a_signal_ends_the_min_hold_early() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let env = TestEnv::new("minholdsig");
        let child = env.start_script(
            &["--min-hold", "1h"],
            &format!("touch {}/done", env.dir().display()),
        );
        env.wait_for_file("done");
        // The command is done; pglock is in its extra hold once only it holds the lock.
        // (A stood-down dead man's switch may linger briefly as a zombie.)
        wait_until("the command to exit", || {
            std::fs::read_to_string(format!("/proc/{}/task/{0}/children", child.id()))
                .unwrap_or_default()
                .split_whitespace()
                .all(|pid| !alive(pid.parse().unwrap()))
        });
        assert_eq!(env.granted(), 1);
        child.kill(sig);
        child.finish().assert_code(0);
        assert_eq!(env.granted(), 0);
    }
}
