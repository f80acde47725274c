//! Beyond flock: --limit (a semaphore), --key-hash (other libraries' lock ids), --min-hold.

use crate::util::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

/// Lock rows of the semaphore's gate: (granted, waiting).
fn gate_rows(key: &str) -> (i64, i64) {
    let gate = key_id(&format!("{key}\0gate"));
    let mut c = sql();
    (
        lock_rows(&mut c, gate, true),
        lock_rows(&mut c, gate, false),
    )
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
    let k = unique_key("limit");
    let dir = temp_dir("limit");
    let log = dir.join("log");
    let script = format!(
        "echo \"enter $(date +%s%N) $PGLOCK_SLOT\" >> {0}; sleep 0.1; \
         echo \"leave $(date +%s%N) $PGLOCK_SLOT\" >> {0}",
        log.display()
    );
    let limit_s = limit.to_string();
    let children: Vec<_> = (0..contenders)
        .map(|_| {
            start_script(
                &["--key", &k, "--limit", &limit_s, "--scope", scope],
                &script,
            )
        })
        .collect();
    for child in children {
        let (rc, err) = finish(child);
        assert_eq!(rc, 0, "{err}");
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

#[test]
fn nowait_is_busy_only_when_every_slot_is_taken() {
    let k = unique_key("limitnowait");
    let dir = temp_dir("limitnowait");
    let hold = |name: &str| {
        start_script(
            &["--key", &k, "--limit", "2"],
            &format!(
                "touch {0}/{name}; while [ ! -e {0}/go ]; do sleep 0.05; done",
                dir.display()
            ),
        )
    };
    let a = hold("a");
    wait_until("a", LIMIT, || dir.join("a").exists());
    let out = pglock()
        .args(["--key", &k, "--limit", "2", "-n", "-c", "echo $PGLOCK_SLOT"])
        .output()
        .unwrap();
    assert!(out.status.success(), "one slot is still free");
    let b = hold("b");
    wait_until("b", LIMIT, || dir.join("b").exists());
    let out = pglock()
        .args(["--key", &k, "--limit", "2", "-n", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    std::fs::write(dir.join("go"), "").unwrap();
    assert_eq!(finish(a).0, 0);
    assert_eq!(finish(b).0, 0);
}

#[test]
fn a_release_wakes_the_head_of_the_queue_without_polling() {
    let k = unique_key("limitwake");
    let dir = temp_dir("limitwake");
    let holder = |name: &str| {
        start_script(
            &["--key", &k, "--limit", "2"],
            &format!(
                "touch {0}/{name}; while [ ! -e {0}/go-{name} ]; do sleep 0.02; done",
                dir.display()
            ),
        )
    };
    let (a, b) = (holder("a"), holder("b"));
    wait_until("both holders", LIMIT, || {
        dir.join("a").exists() && dir.join("b").exists()
    });
    // A re-check interval of an hour: only the release's wake-up can hand the slot over.
    let waiter = start_script(
        &["--key", &k, "--limit", "2", "--check-interval", "1h"],
        &format!("echo $PGLOCK_SLOT > {}/slot", dir.display()),
    );
    wait_until("the waiter at the head of the queue", LIMIT, || {
        gate_rows(&k).0 == 1
    });
    let released = Instant::now();
    std::fs::write(dir.join("go-b"), "").unwrap();
    assert_eq!(finish(b).0, 0);
    let (rc, err) = finish(waiter);
    let took = released.elapsed();
    assert_eq!(rc, 0, "{err}");
    eprintln!("semaphore hand-off, release to the waiter's exit: {took:?}");
    assert!(took < Duration::from_secs(10), "hand-off took {took:?}");
    assert!(["0", "1"].contains(&read(&dir.join("slot")).trim()));
    std::fs::write(dir.join("go-a"), "").unwrap();
    assert_eq!(finish(a).0, 0);
}

#[test]
fn a_killed_holders_slot_is_reused() {
    let k = unique_key("limitkill");
    let dir = temp_dir("limitkill");
    let a = start_script(
        &["--key", &k, "--limit", "1", "--check-interval", "1s"],
        "true",
    );
    finish(a);
    let holder = |name: &str| {
        start_script(
            &["--key", &k, "--limit", "2"],
            &format!("echo $PGLOCK_SLOT > {0}/{name}; sleep 300", dir.display()),
        )
    };
    let a = holder("a");
    wait_until("a", LIMIT, || !read(&dir.join("a")).is_empty());
    let b = holder("b");
    wait_until("b", LIMIT, || !read(&dir.join("b")).is_empty());
    let waiter = start_script(
        &["--key", &k, "--limit", "2", "--check-interval", "1s"],
        &format!("echo $PGLOCK_SLOT > {}/c", dir.display()),
    );
    wait_until("the waiter at the head of the queue", LIMIT, || {
        gate_rows(&k).0 == 1
    });
    kill(Pid::from_raw(a.id() as i32), Signal::SIGKILL).unwrap();
    let (rc, err) = finish(waiter);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(
        read(&dir.join("c")),
        read(&dir.join("a")),
        "the dead holder's slot"
    );
    kill(Pid::from_raw(b.id() as i32), Signal::SIGTERM).unwrap();
    finish(b);
    drop(a);
}

#[test]
fn waiters_get_slots_in_arrival_order() {
    let k = unique_key("limitfifo");
    let dir = temp_dir("limitfifo");
    let go = dir.join("go");
    let holders: Vec<_> = (0..3)
        .map(|i| {
            start_script(
                &["--key", &k, "--limit", "3"],
                &format!(
                    "touch {0}/h{i}; while [ ! -e {0}/go ]; do sleep 0.02; done",
                    dir.display()
                ),
            )
        })
        .collect();
    wait_until("three holders", LIMIT, || {
        (0..3).all(|i| dir.join(format!("h{i}")).exists())
    });
    let order = dir.join("order");
    let mut waiters = Vec::new();
    for i in 0..10 {
        waiters.push(start_script(
            &["--key", &k, "--limit", "3"],
            &format!("echo {i} >> {}; sleep 0.05", order.display()),
        ));
        // The next one arrives only once this one is queued.
        wait_until("the waiter to queue", LIMIT, || {
            let (granted, waiting) = gate_rows(&k);
            granted + waiting == i + 1
        });
    }
    std::fs::write(&go, "").unwrap();
    for h in holders {
        assert_eq!(finish(h).0, 0);
    }
    for w in waiters {
        let (rc, err) = finish(w);
        assert_eq!(rc, 0, "{err}");
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
    let out = pglock()
        .args(["--key", "k", "--limit", "2", "--shared", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    for bad in ["0", "1025", "x"] {
        let out = pglock()
            .args(["--key", "k", "--limit", bad, "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "--limit {bad}");
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
        let out = pglock()
            .args(["--key", key, "--key-hash", scheme, "-n", "--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(75), "{scheme} {key}");
        let shown = pglock()
            .args(["key", "--key-hash", scheme, key])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&shown.stdout).contains(&id.to_string()));
        holder
            .execute("SELECT pg_advisory_unlock($1)", &[&id])
            .unwrap();
        let out = pglock()
            .args(["--key", key, "--key-hash", scheme, "-n", "--", "true"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{scheme} {key} once free");
    }
}

#[test]
fn min_hold_keeps_the_lock_after_a_short_command() {
    let k = unique_key("minhold");
    let id = key_id(&k);
    let dir = temp_dir("minhold");
    let start = Instant::now();
    let child = start_script(
        &["--key", &k, "--min-hold", "1500ms"],
        &format!("touch {}/done; exit 4", dir.display()),
    );
    wait_until("the command", LIMIT, || dir.join("done").exists());
    let mut probe = sql();
    assert_eq!(
        lock_rows(&mut probe, id, true),
        1,
        "released before --min-hold"
    );
    let (rc, err) = finish(child);
    assert_eq!(rc, 4, "{err}");
    assert!(start.elapsed() >= Duration::from_millis(1500));
    assert_eq!(lock_rows(&mut probe, id, true), 0);
}

#[test]
fn a_signal_ends_the_min_hold_early() {
    for sig in [Signal::SIGTERM, Signal::SIGINT] {
        let k = unique_key("minholdsig");
        let id = key_id(&k);
        let dir = temp_dir("minholdsig");
        let child = start_script(
            &["--key", &k, "--min-hold", "1h"],
            &format!("touch {}/done", dir.display()),
        );
        wait_until("the command", LIMIT, || dir.join("done").exists());
        let mut probe = sql();
        // The command is done; pglock is in its extra hold once only it holds the lock.
        // (A stood-down dead man's switch may linger briefly as a zombie.)
        wait_until("the command to exit", LIMIT, || {
            std::fs::read_to_string(format!("/proc/{}/task/{0}/children", child.id()))
                .unwrap_or_default()
                .split_whitespace()
                .all(|pid| {
                    let stat =
                        std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
                    stat.rsplit_once(") ")
                        .is_none_or(|(_, rest)| rest.starts_with('Z'))
                })
        });
        assert_eq!(lock_rows(&mut probe, id, true), 1);
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let (rc, err) = finish(child);
        assert_eq!(rc, 0, "{err}");
        assert_eq!(lock_rows(&mut probe, id, true), 0);
    }
}
