//! The core behaviour, end to end: the real binary against a real server.

use crate::util::*;
use nix::sys::signal::Signal;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

#[test]
fn passes_on_the_commands_exit_status() {
    let env = TestEnv::new("status");
    run(env.pglock(&["--", "true"])).assert_code(0);
    env.run_script(&[], "exit 7").assert_code(7);
    env.run_script(&[], "kill -KILL $$").assert_code(137);
    env.run_script(&[], "kill -TERM $$").assert_code(143);
}

#[test]
fn unrunnable_commands_exit_126_and_127_and_release_the_lock() {
    let env = TestEnv::new("unrunnable");
    run(env.pglock(&["--", "/nonexistent/cmd"]))
        .assert_code(127)
        .assert_stderr_starts_with("pglock: ")
        .assert_stderr_contains("not found");
    let file = env.path("plain-file");
    std::fs::write(&file, "not a program").unwrap();
    run(env.pglock(&["--"]).arg(&file))
        .assert_code(126)
        .assert_one_pglock_line();
    assert_eq!(env.granted(), 0);
}

#[test]
fn nowait_exits_with_the_conflict_status_without_running() {
    let env = TestEnv::new("nowait");
    let mut holder = env.lock().take_in_sql();
    let touch = format!("touch {}", env.path("ran").display());
    env.run_script(&["--nowait"], &touch)
        .assert_code(75)
        .assert_stderr_starts_with("pglock: ")
        .assert_stderr_contains(env.key());
    env.run_script(&["-n", "-E", "9"], &touch).assert_code(9);
    env.run_script(&["-n", "-q"], &touch)
        .assert_code(75)
        .assert_stderr("");
    env.run_script(&["--timeout", "0"], &touch).assert_code(75);
    assert!(!env.exists("ran"), "the command ran without the lock");
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();
    env.run_script(&["-n"], &touch).assert_code(0);
    assert!(env.exists("ran"));
}

#[test]
fn timeout_expires_on_time() {
    let env = TestEnv::new("timeout");
    let _holder = env.lock().take_in_sql();
    let start = Instant::now();
    let out = run(env.pglock(&["--timeout", "700ms", "--", "true"]));
    let took = start.elapsed();
    out.assert_code(75).assert_stderr_contains("timed out");
    assert!(
        took >= Duration::from_millis(700),
        "gave up early: {took:?}"
    );
    assert!(
        took < Duration::from_millis(700 + 3000),
        "gave up late: {took:?}"
    );
}

#[test]
fn a_waiter_runs_as_soon_as_the_lock_is_released() {
    let env = TestEnv::new("handoff");
    let mut holder = env.lock().take_in_sql();
    let waiter = env.start_script(&[], &format!("touch {}", env.path("ran").display()));
    wait_until("the waiter's pg_locks row", || env.waiting() == 1);
    assert!(!env.exists("ran"));
    env.lock().unlock_in_sql(&mut holder);
    waiter.finish().assert_success();
    assert!(env.exists("ran"));
    assert_eq!(env.granted() + env.waiting(), 0);
}

#[test]
fn shared_holders_coexist_and_exclude_exclusive_ones() {
    let env = TestEnv::new("shared");
    let id = env.id();
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock_shared($1)", &[&id])
        .unwrap();
    run(env.pglock(&["-s", "-n", "--", "true"])).assert_code(0);
    run(env.pglock(&["-n", "--", "true"])).assert_code(75);
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&id])
        .unwrap();
    run(env.pglock(&["-s", "-n", "--", "true"])).assert_code(75);
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();

    // Two pglock shared holders at once, and an exclusive one shut out while they hold.
    let a = env.hold(&["-s"]);
    let b = env.hold(&["-s"]);
    run(env.pglock(&["-n", "--", "true"])).assert_code(75);
    a.release().assert_success();
    b.release().assert_success();
}

/// pglock tries a lock before it queues for it; the try must not let a shared holder jump
/// ahead of an exclusive one that is already waiting.
#[test]
fn a_shared_newcomer_queues_behind_a_waiting_exclusive_one() {
    let env = TestEnv::new("sharedorder");
    let id = env.id();
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock_shared($1)", &[&id])
        .unwrap();
    let log = env.path("log");
    let exclusive = start(env.pglock(&["-c", &format!("echo x >> {}", log.display())]));
    wait_until("the exclusive waiter to queue", || env.waiting() == 1);
    run(env.pglock(&["-s", "-n", "--", "true"])).assert_code(75);
    let shared = start(env.pglock(&["-s", "-c", &format!("echo s >> {}", log.display())]));
    wait_until("the shared waiter to queue", || env.waiting() == 2);
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();
    exclusive.finish().assert_success();
    shared.finish().assert_success();
    assert_eq!(read(&log), "x\ns\n");
}

#[test]
fn xact_scope_holds_the_lock_inside_an_open_transaction() {
    let env = TestEnv::new("xact");
    let holder = env.hold(&["--scope", "xact"]);
    let row = env
        .probe()
        .query_one(
            "SELECT state, xact_start IS NOT NULL FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("pglock:{}@%:{}", env.key(), holder.id())],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "idle in transaction");
    assert!(row.get::<_, bool>(1));
    assert_eq!(env.granted(), 1);
    // It excludes a session-scope holder.
    run(env.pglock(&["-n", "--", "true"])).assert_code(75);
    holder.release().assert_success();
    assert_eq!(env.granted(), 0);
    env.run_script(&["--scope", "xact"], "echo $PGLOCK_SCOPE")
        .assert_success()
        .assert_stdout("xact\n");
    // A failing command rolls back, which also releases.
    env.run_script(&["--scope", "xact"], "exit 3")
        .assert_code(3);
    assert_eq!(env.granted(), 0);
}

#[test]
fn lock_id_shares_locks_taken_in_sql() {
    let big = 4_000_000_000_i64 + std::process::id() as i64;
    let _big = Lock::Id(big).take_in_sql();
    run(pglock().args(["--lock-id", &big.to_string(), "-n", "--", "true"])).assert_code(75);
    let (a, b) = unique_pair();
    let _pair = Lock::Pair(a, b).take_in_sql();
    run(pglock().args(["--lock-id", &format!("{a},{b}"), "-n", "--", "true"])).assert_code(75);
    let (c, d) = unique_pair();
    run(pglock().args([
        "--lock-id",
        &format!("{c},{d}"),
        "-n",
        "-c",
        "test \"$PGLOCK_LOCK_ID\" = \"$PGLOCK_KEY\"",
    ]))
    .assert_code(0);
    // The pair and the bigint spaces are separate even when the numbers line up.
    let same_bits = ((a as i64) << 32) | (b as u32 as i64);
    run(pglock().args(["--lock-id", &same_bits.to_string(), "-n", "--", "true"])).assert_code(0);
}

#[test]
fn key_formula_matches_the_documented_sql() {
    let env = TestEnv::new("formula-é");
    let mut holder = sql();
    let row = holder
        .query_one(
            "SELECT pg_advisory_lock(id), id FROM (SELECT ('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint AS id) s",
            &[&env.key()],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(1), env.id());
    run(env.pglock(&["-n", "--", "true"])).assert_code(75);
}

#[test]
fn the_command_gets_the_lock_in_its_environment() {
    let env = TestEnv::new("env");
    env.run_script(&[], "echo \"$PGLOCK_KEY|$PGLOCK_LOCK_ID|$PGLOCK_SCOPE\"")
        .assert_stdout(&format!("{}|{}|session\n", env.key(), env.id()));
}

#[test]
fn the_command_inherits_no_socket() {
    let env = TestEnv::new("nosocket");
    let out = env.run_script(&[], "for f in /proc/$$/fd/*; do readlink $f; done; true");
    out.assert_success();
    let fds = out.stdout();
    assert!(fds.lines().count() >= 3, "{fds}");
    assert!(
        !fds.contains("socket:"),
        "the command inherited a socket:\n{fds}"
    );
}

#[test]
fn application_name_names_key_host_and_pid() {
    let env = TestEnv::new("appname");
    let holder = env.hold(&[]);
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let expected = format!("pglock:{}@{host}:{}", env.key(), holder.id());
    let n: i64 = env
        .probe()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&expected],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "no session named {expected}");
    holder.release().assert_success();
}

#[test]
fn mutual_exclusion_under_contention() {
    counter_contention(&TestEnv::new("mutex"), 4, 8, &[]);
}

#[test]
fn sigterm_and_sigusr1_reach_the_command() {
    for (sig, name) in [(Signal::SIGTERM, "TERM"), (Signal::SIGUSR1, "USR1")] {
        let env = TestEnv::new("forward");
        let script = format!(
            "trap 'echo {name} > {0}/got; exit 5' {name}; touch {0}/ready; while :; do sleep 1; done",
            env.dir().display()
        );
        let child = env.start_script(&[], &script);
        env.wait_for_file("ready");
        child.kill(sig);
        let out = child.finish();
        assert_eq!(read(&env.path("got")).trim(), name, "{out}");
        // The shell's sleep dies of the signal too; the trap then exits 5.
        out.assert_code(5);
    }
}

#[test]
fn sigterm_reaches_the_whole_pipeline() {
    let env = TestEnv::new("tree");
    let child = env.start_script(
        &[],
        &format!("touch {}/ready; sleep 300 | cat", env.dir().display()),
    );
    env.wait_for_file("ready");
    let pgid = child_of(child.id());
    wait_until("sleep and cat to start", || group_members(pgid).len() >= 3);
    child.kill(Signal::SIGTERM);
    child.finish().assert_code(143);
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "processes left behind"
    );
}

/// How often the SIGINT-counting helper reports.
const TICK: Duration = Duration::from_millis(20);

/// Child helper: counts SIGINTs with a real handler and reports `COUNT TICKS` to a file every
/// tick (the tick number shows that it is still counting), until a stop file appears. Used as
/// the command under pglock by the test below.
#[test]
fn helper_count_sigint() {
    let Ok(dir) = std::env::var("PGLOCK_TEST_SIGCOUNT_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    // SAFETY: the handler does one atomic add, which is async-signal-safe.
    unsafe {
        signal_hook::low_level::register(signal_hook::consts::SIGINT, move || {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })
        .unwrap();
    }
    std::fs::write(dir.join("ready"), "").unwrap();
    for tick in 0u64.. {
        let stop = dir.join("stop").exists();
        let n = count.load(std::sync::atomic::Ordering::SeqCst);
        std::fs::write(dir.join("count.tmp"), format!("{n} {tick}")).unwrap();
        std::fs::rename(dir.join("count.tmp"), dir.join("count")).unwrap();
        if stop {
            std::process::exit(0);
        }
        std::thread::sleep(TICK);
    }
}

/// The helper's last report: (SIGINTs counted, tick).
fn sigint_report(env: &TestEnv) -> (usize, u64) {
    let text = read(&env.path("count"));
    let (n, tick) = text.split_once(' ').unwrap_or(("0", "0"));
    (n.parse().unwrap(), tick.parse().unwrap())
}

/// How long a duplicate SIGINT gets to show up. pglock forwards a signal within microseconds of
/// receiving it, so a second copy (the terminal's own to the command's group plus pglock's
/// forwarded one) would arrive together with the first; the window is 25 helper ticks.
const DUPLICATE_WINDOW: Duration = Duration::from_millis(500);

#[test]
fn a_process_group_sigint_reaches_the_command_once() {
    let env = TestEnv::new("once");
    let child = start(
        env.pglock(&["--"])
            .args(helper(concat!(module_path!(), "::helper_count_sigint")))
            .env("PGLOCK_TEST_SIGCOUNT_DIR", env.dir())
            .stdout(Stdio::null()),
    );
    env.wait_for_file("ready");
    // What a terminal's Ctrl-C does: signal the whole group pglock was started in.
    child.kill_group(Signal::SIGINT);
    wait_until("the SIGINT to arrive", || sigint_report(&env).0 == 1);
    // Absence, observed: through the window every report says 1, and a report the helper made
    // after the window closed (a later tick) still says 1, so it counted every SIGINT that
    // arrived within the window.
    throughout("one SIGINT", DUPLICATE_WINDOW, || {
        sigint_report(&env).0 == 1
    });
    let closed = sigint_report(&env).1;
    wait_until("a report from after the window", || {
        sigint_report(&env).1 > closed
    });
    assert_eq!(sigint_report(&env).0, 1, "a second SIGINT arrived");
    std::fs::write(env.path("stop"), "").unwrap();
    child.finish().assert_success();
    assert_eq!(sigint_report(&env).0, 1);
}

#[test]
fn an_interrupted_waiter_gives_up_cleanly() {
    for (sig, rc) in [
        (Signal::SIGINT, 130),
        (Signal::SIGTERM, 143),
        (Signal::SIGHUP, 129),
    ] {
        let env = TestEnv::new("interrupt");
        let _holder = env.lock().take_in_sql();
        let waiter = env.start_script(&[], &format!("touch {}/ran", env.dir().display()));
        wait_until("the waiter's pg_locks row", || env.waiting() == 1);
        waiter.kill(sig);
        waiter.finish().assert_code(rc);
        assert_eq!(env.waiting(), 0, "a waiting row stayed behind");
        assert!(!env.exists("ran"), "the command ran after an interrupt");
    }
}

#[test]
fn usage_errors_exit_2_before_connecting() {
    let long = "k".repeat(1025);
    let cases: Vec<Vec<&str>> = vec![
        vec!["--key", "", "--", "true"],
        vec!["--key", &long, "--", "true"],
        vec!["--key", "a", "--lock-id", "1", "--", "true"],
        vec!["--", "true"],
        vec!["--lock-id", "x", "--", "true"],
        vec!["--lock-id", "1,99999999999", "--", "true"],
        vec!["--key", "a", "--timeout", "-1", "--", "true"],
        vec!["--key", "a", "--timeout", "soon", "--", "true"],
        vec!["--key", "a"],
        vec!["--key", "a", "-c", "true", "--", "true"],
        vec!["--key", "a", "-E", "256", "--", "true"],
        vec!["--key", "a", "--scope", "forever", "--", "true"],
    ];
    for args in cases {
        // Nothing listens on port 1: a connection attempt would exit 69 instead.
        run(pglock()
            .args(&args)
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", "1"))
        .assert_code(2)
        .assert_stderr_lacks("panicked");
    }
}

#[test]
fn connection_failures_exit_69_and_never_show_the_password() {
    let secret = "s3cret-Pa55";
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    let host = std::env::var("PGHOST").unwrap_or_else(|_| "localhost".into());
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    let urls = [
        format!("postgresql://{user}:{secret}@127.0.0.1:1/postgres"),
        format!("postgresql://{user}:{secret}@{host}:{port}/postgres"),
        format!(
            "postgresql://{user}@{host}:{port}/no_such_db_{}",
            std::process::id()
        ),
    ];
    for url in &urls {
        for verbose in [false, true] {
            let mut cmd = pglock();
            cmd.args(["--key", "k", "-d", url, "--", "true"]);
            if verbose {
                cmd.arg("-v");
            }
            let out = run(&mut cmd);
            out.assert_code(69).assert_stderr_lacks(secret);
            let last = out.stderr().lines().last().unwrap_or("");
            assert!(last.starts_with("pglock: cannot connect to "), "{out}");
        }
    }
    // The server's own reason is passed on.
    run(pglock().args(["--key", "k", "-d", &urls[2], "--", "true"]))
        .assert_stderr_contains("does not exist");
}

#[test]
fn a_nested_pglock_hands_its_command_none_of_the_outer_locks_variables() {
    let outer = TestEnv::new("nestouter");
    let inner = TestEnv::new("nestinner");
    let script = format!(
        "{} --key {} -c 'echo \"${{PGLOCK_FENCING_TOKEN-unset}} ${{PGLOCK_SLOT-unset}} $PGLOCK_KEY\"'",
        BIN,
        inner.key()
    );
    let out = run(outer
        .pglock(&["--fencing-token", "--limit", "2", "-c", &script])
        .stdout(std::process::Stdio::piped()));
    out.assert_success()
        .assert_stdout(&format!("unset unset {}\n", inner.key()));
}
