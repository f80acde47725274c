//! `--supersede` and `--replace` (issue 26) against a real server: several real pglock processes
//! on one key, a plain holder, a host clock minutes ahead (faketime), xact scope, the ledger's
//! statuses and what `pglock status` shows.

use crate::util::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// The line a superseded waiter ends with, up to its host.
fn superseded(key: &str) -> String {
    format!("pglock: \"{key}\" superseded by a newer run on ")
}

/// How many sessions of `key`'s lock wait with a marked (`--supersede`/`--replace`) statement.
fn marked_waiters(env: &TestEnv) -> i64 {
    let (classid, objid, objsubid) = env.lock().coordinates();
    env.probe()
        .query_one(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.locktype = 'advisory' AND l.classid = $1::bigint::oid \
             AND l.objid = $2::bigint::oid AND l.objsubid = $3 AND NOT l.granted \
             AND a.query LIKE '/* pglock %'",
            &[&classid, &objid, &objsubid],
        )
        .unwrap()
        .get(0)
}

/// `faketime OFFSET pglock --key KEY ARGS`: a host whose clock is off.
fn skewed(env: &TestEnv, offset: &str, args: &[&str]) -> Command {
    let mut cmd = wrapped("faketime", &["-f", offset]);
    cmd.args(["--key", env.key()]).args(args);
    cmd
}

/// Five deploys 200 ms apart while a plain holder runs: each newcomer sends the one before it
/// away within a second, with the line, and only the newest runs when the holder is done.
#[test]
fn only_the_newest_deploy_waits_and_runs() {
    let env = TestEnv::new("supersede5");
    let holder = env.hold(&[]);
    let mut older: Option<(Started, Instant)> = None;
    let ran = env.path("ran");
    for n in 0..5 {
        let script = format!("echo {n} >> {}", ran.display());
        let started = env.start_script(&["--supersede", "-q"], &script);
        let at = Instant::now();
        if let Some((mut previous, _)) = older.take() {
            wait_within(
                "the older deploy to give up",
                Duration::from_secs(1),
                || previous.exited().is_some(),
            );
            previous
                .finish()
                .assert_code(75)
                .assert_stderr_starts_with(&superseded(env.key()))
                .assert_stderr_contains("; not running it")
                .assert_one_pglock_line();
        }
        wait_until("the newest deploy to queue", || marked_waiters(&env) == 1);
        assert_eq!(env.waiting(), 1);
        older = Some((started, at));
        std::thread::sleep(Duration::from_millis(200).saturating_sub(at.elapsed()));
    }
    holder.release().assert_success();
    older.unwrap().0.finish().assert_success();
    assert_eq!(read(&ran), "4\n");
}

/// A plain waiter is never superseded, and a --supersede waiter never supersedes one: both
/// keep their places in line and run in turn.
#[test]
fn plain_waiters_are_left_alone() {
    let env = TestEnv::new("supersedemix");
    let holder = env.hold(&[]);
    let order = env.path("order");
    let echo = |word: &str| format!("echo {word} >> {}", order.display());
    let plain = env.start_script(&[], &echo("plain"));
    wait_until("the plain waiter", || env.waiting() == 1);
    let first = env.start_script(&["--supersede"], &echo("first"));
    wait_until("the first deploy", || marked_waiters(&env) == 1);
    // A plain newcomer does not send the --supersede waiter away either.
    let late = env.start_script(&[], &echo("late"));
    wait_until("three waiters", || env.waiting() == 3);
    let newest = env.start_script(&["--supersede"], &echo("newest"));
    let mut first = first;
    wait_within(
        "the first deploy to give up",
        Duration::from_secs(1),
        || first.exited().is_some(),
    );
    first.finish().assert_code(75);
    wait_until("the newest deploy", || marked_waiters(&env) == 1);
    assert_eq!(env.waiting(), 3, "the plain waiters stay in line");
    let mut holder = holder;
    holder.let_go();
    for run in [plain, late, newest] {
        run.finish().assert_success();
    }
    holder.release().assert_success();
    let order = read(&order);
    assert!(
        !order.contains("first") && order.lines().count() == 3,
        "{order}"
    );
}

/// A host whose clock is ten minutes ahead neither jumps the queue (its deploy, started first,
/// is superseded by a later one from a host with the right time) nor is superseded wrongly (its
/// deploy, started last, is the one that runs).
#[test]
fn a_clock_ahead_neither_jumps_the_queue_nor_loses_its_place() {
    need("faketime", "faketime");
    let env = TestEnv::new("supersedeskew");
    let holder = env.hold(&[]);
    let mut ahead = start(skewed(
        &env,
        "+10m",
        &[
            "--supersede",
            "-c",
            &format!("echo ahead >> {}", env.path("ran").display()),
        ],
    ));
    wait_until("the deploy from the host ahead", || {
        marked_waiters(&env) == 1
    });
    let mut right = env.start_script(
        &["--supersede"],
        &format!("echo right >> {}", env.path("ran").display()),
    );
    wait_within(
        "the deploy from the host ahead to give up",
        Duration::from_secs(1),
        || ahead.exited().is_some(),
    );
    ahead
        .finish()
        .assert_code(75)
        .assert_stderr_starts_with(&superseded(env.key()));
    wait_until("the deploy from the right host", || {
        marked_waiters(&env) == 1
    });
    let last = start(skewed(
        &env,
        "+10m",
        &[
            "--supersede",
            "-c",
            &format!("echo last >> {}", env.path("ran").display()),
        ],
    ));
    wait_within(
        "the deploy from the right host to give up",
        Duration::from_secs(1),
        || right.exited().is_some(),
    );
    right.finish().assert_code(75);
    wait_until("the last deploy", || marked_waiters(&env) == 1);
    holder.release().assert_success();
    last.finish().assert_success();
    assert_eq!(read(&env.path("ran")), "last\n");
}

/// The command of a --replace run: says when it started, and on SIGTERM takes 300 ms to stop,
/// writing the time of its last write on the way out.
fn replaceable(env: &TestEnv, name: &str) -> String {
    format!(
        "trap 'sleep 0.3; date +%s%N > {end}; exit 1' TERM; date +%s%N > {start}; \
         while :; do sleep 0.05; done",
        start = env.path(&format!("{name}-start")).display(),
        end = env.path(&format!("{name}-end")).display(),
    )
}

fn nanos(env: &TestEnv, name: &str) -> u128 {
    read(&env.path(name)).trim().parse().unwrap()
}

/// --replace stops a running --replace holder (SIGTERM within a second), which says so, exits 75
/// and releases only once its command has exited: the new command starts after its last write.
fn replaces(scope: &str, check_interval: &str, within: Duration) {
    let env = TestEnv::new(&format!("replace{scope}"));
    let args = [
        "--replace",
        "--scope",
        scope,
        "--check-interval",
        check_interval,
    ];
    let mut old = env.start_script(&args, &replaceable(&env, "old"));
    env.wait_for_file("old-start");
    let asked = Instant::now();
    let new = env.start_script(
        &args,
        &format!("date +%s%N > {}", env.path("new-start").display()),
    );
    wait_within("the old command's SIGTERM", within, || {
        env.exists("old-end")
    });
    let stopped_in = asked.elapsed();
    wait_until("the old pglock", || old.exited().is_some());
    let old = old.finish();
    // The shell says "Terminated" of its sleep; pglock says one line.
    assert_eq!(old.stderr().matches("pglock:").count(), 1, "{old}");
    old.assert_code(75)
        .assert_stderr_starts_with(&format!(
            "pglock: \"{}\" replaced by a newer run on ",
            env.key()
        ))
        .assert_stderr_contains("; stopped the command");
    new.finish().assert_success();
    assert!(
        nanos(&env, "new-start") > nanos(&env, "old-end"),
        "the new command started before the old one's last write"
    );
    eprintln!("{scope}: the old command was told to stop {stopped_in:?} after the new run started");
}

#[test]
fn replace_stops_the_running_holder_in_session_scope() {
    replaces(
        "session",
        "5s",
        Duration::from_secs(1) + Duration::from_millis(300),
    );
}

#[test]
fn replace_stops_the_running_holder_in_xact_scope() {
    replaces("xact", "300ms", Duration::from_millis(1600));
}

/// A holder started without --replace is not stopped: the --replace run waits for it.
#[test]
fn replace_leaves_other_holders_alone() {
    let env = TestEnv::new("replaceplain");
    let holder = env.hold(&["--supersede"]);
    let new = env.start_script(&["--replace"], "true");
    wait_until("the --replace run to queue", || marked_waiters(&env) == 1);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(env.granted(), 1);
    holder.release().assert_success();
    new.finish().assert_success();
}

/// Ledger statuses: the replaced run is `replaced`, a superseded waiter writes nothing, and the
/// newest run `succeeded`. The table is made as before --replace, then upgraded by init.
#[test]
fn the_ledger_records_replaced_runs() {
    let env = TestEnv::new("replaceledger");
    let table = format!("public.deploys_test_{}", std::process::id());
    let ledger = ["--record", "--ledger", &table];
    let init = |print| {
        let mut cmd = pglock();
        cmd.args(["init", "--ledger", &table]);
        if print {
            cmd.arg("--print");
        }
        run(cmd)
    };
    // As an earlier pglock made it: without 'replaced' in the status check.
    let script = init(true).stdout().replace(", 'replaced'", "");
    env.probe().batch_execute(&script).unwrap();
    init(false).assert_success();
    init(false).assert_success();
    let mut args = vec!["--replace", "--kill-after", "2s"];
    args.extend(ledger);
    let mut old = env.start_script(&args, &replaceable(&env, "old"));
    env.wait_for_file("old-start");
    // A waiter that is superseded before it ever holds the lock: no row.
    let mut middle = env.start_script(&["--supersede", "--record", "--ledger", &table], "true");
    wait_until("the middle run to queue", || marked_waiters(&env) == 1);
    let new = env.start_script(&args, "true");
    wait_until("the middle run", || middle.exited().is_some());
    middle.finish().assert_code(75);
    wait_until("the old run", || old.exited().is_some());
    old.finish().assert_code(75);
    new.finish().assert_success();
    let statuses: Vec<String> = env
        .probe()
        .query(&format!("SELECT status FROM {table} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    env.probe()
        .batch_execute(&format!("DROP TABLE {table}"))
        .unwrap();
    assert_eq!(statuses, ["replaced", "succeeded"]);
}

/// `pglock status` names what each session accepts.
#[test]
fn status_shows_supersede_and_replace() {
    let env = TestEnv::new("deploystatus");
    let holder = env.hold(&["--replace", "--check-interval", "100ms"]);
    let plain = env.start_script(&[], "true");
    wait_until("the plain waiter", || env.waiting() == 1);
    let waiter = env.start_script(&["--supersede"], "true");
    wait_until("the --supersede waiter", || marked_waiters(&env) == 1);
    let pid = env.backend_pid();
    wait_until("a lock check", || {
        env.probe()
            .query_one(
                "SELECT query LIKE '/* pglock: held for %' FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0)
    });
    let shown = run(pglock().args(["status", "--key", env.key()]));
    let text = shown.stdout();
    let line = |word: &str| text.lines().filter(|l| l.contains(word)).count();
    assert_eq!(line("held, replace"), 1, "{text}");
    assert_eq!(line("waiting #2, supersede"), 1, "{text}");
    assert_eq!(line(", supersede") + line(", replace"), 2, "{text}");
    holder.release().assert_success();
    plain.finish().assert_success();
    waiter.finish().assert_success();
}

#[test]
fn contradictions_are_usage_errors() {
    for args in [
        &["--supersede", "--nowait"][..],
        &["--replace", "--shared"],
        &["--replace", "--limit", "2"],
        &["--supersede", "--timeout", "0"],
    ] {
        run(pglock()
            .args(["--key", "k"])
            .args(args)
            .args(["--", "true"]))
        .assert_code(2);
    }
}
