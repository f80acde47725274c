//! The core behaviour, end to end: the real binary against a real server.

use crate::util::*;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(20);

fn code(cmd: &mut std::process::Command) -> (i32, String) {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn wait_file(path: &Path) {
    wait_until(&format!("{}", path.display()), LIMIT, || path.exists());
}

#[test]
fn passes_on_the_commands_exit_status() {
    let k = unique_key("status");
    assert_eq!(code(pglock().args(["--key", &k, "--", "true"])).0, 0);
    assert_eq!(code(pglock().args(["--key", &k, "-c", "exit 7"])).0, 7);
    assert_eq!(
        code(pglock().args(["--key", &k, "-c", "kill -KILL $$"])).0,
        137
    );
    assert_eq!(
        code(pglock().args(["--key", &k, "-c", "kill -TERM $$"])).0,
        143
    );
}

#[test]
fn unrunnable_commands_exit_126_and_127_and_release_the_lock() {
    let k = unique_key("unrunnable");
    let (rc, err) = code(pglock().args(["--key", &k, "--", "/nonexistent/cmd"]));
    assert_eq!(rc, 127, "{err}");
    assert!(
        err.starts_with("pglock: ") && err.contains("not found"),
        "{err}"
    );
    let dir = temp_dir("unrunnable");
    let file = dir.join("plain-file");
    std::fs::write(&file, "not a program").unwrap();
    let (rc, err) = code(pglock().args(["--key", &k, "--"]).arg(&file));
    assert_eq!(rc, 126, "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(lock_rows(&mut sql(), key_id(&k), true), 0);
}

#[test]
fn nowait_exits_with_the_conflict_status_without_running() {
    let k = unique_key("nowait");
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key_id(&k)])
        .unwrap();
    let dir = temp_dir("nowait");
    let marker = dir.join("ran");
    let touch = format!("touch {}", marker.display());
    let (rc, err) = code(pglock().args(["--key", &k, "--nowait", "-c", &touch]));
    assert_eq!(rc, 75);
    assert!(err.starts_with("pglock: ") && err.contains(&k), "{err}");
    let (rc, _) = code(pglock().args(["--key", &k, "-n", "-E", "9", "-c", &touch]));
    assert_eq!(rc, 9);
    let (rc, err) = code(pglock().args(["--key", &k, "-n", "-q", "-c", &touch]));
    assert_eq!((rc, err.as_str()), (75, ""));
    let (rc, _) = code(pglock().args(["--key", &k, "--timeout", "0", "-c", &touch]));
    assert_eq!(rc, 75);
    assert!(!marker.exists(), "the command ran without the lock");
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();
    assert_eq!(code(pglock().args(["--key", &k, "-n", "-c", &touch])).0, 0);
    assert!(marker.exists());
}

#[test]
fn timeout_expires_on_time() {
    let k = unique_key("timeout");
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&key_id(&k)])
        .unwrap();
    let start = Instant::now();
    let (rc, err) = code(pglock().args(["--key", &k, "--timeout", "700ms", "--", "true"]));
    let took = start.elapsed();
    assert_eq!(rc, 75, "{err}");
    assert!(err.contains("timed out"), "{err}");
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
    let k = unique_key("handoff");
    let id = key_id(&k);
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&id])
        .unwrap();
    let dir = temp_dir("handoff");
    let marker = dir.join("ran");
    let waiter = start_script(&["--key", &k], &format!("touch {}", marker.display()));
    let mut probe = sql();
    wait_until("the waiter's pg_locks row", LIMIT, || {
        lock_rows(&mut probe, id, false) == 1
    });
    assert!(!marker.exists());
    holder
        .execute("SELECT pg_advisory_unlock($1)", &[&id])
        .unwrap();
    assert_eq!(finish(waiter).0, 0);
    assert!(marker.exists());
    assert_eq!(
        lock_rows(&mut probe, id, true) + lock_rows(&mut probe, id, false),
        0
    );
}

#[test]
fn shared_holders_coexist_and_exclude_exclusive_ones() {
    let k = unique_key("shared");
    let id = key_id(&k);
    let mut holder = sql();
    holder
        .execute("SELECT pg_advisory_lock_shared($1)", &[&id])
        .unwrap();
    assert_eq!(
        code(pglock().args(["--key", &k, "-s", "-n", "--", "true"])).0,
        0
    );
    assert_eq!(code(pglock().args(["--key", &k, "-n", "--", "true"])).0, 75);
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&id])
        .unwrap();
    assert_eq!(
        code(pglock().args(["--key", &k, "-s", "-n", "--", "true"])).0,
        75
    );
    holder
        .execute("SELECT pg_advisory_unlock_all()", &[])
        .unwrap();

    // Two pglock shared holders at once, and an exclusive one shut out while they hold.
    let dir = temp_dir("shared");
    let a = start_script(
        &["--key", &k, "-s"],
        &format!("touch {}/a; cat", dir.display()),
    );
    let b = start_script(
        &["--key", &k, "-s"],
        &format!("touch {}/b; cat", dir.display()),
    );
    wait_file(&dir.join("a"));
    wait_file(&dir.join("b"));
    assert_eq!(code(pglock().args(["--key", &k, "-n", "--", "true"])).0, 75);
    assert_eq!(finish(a).0, 0);
    assert_eq!(finish(b).0, 0);
}

#[test]
fn xact_scope_holds_the_lock_inside_an_open_transaction() {
    let k = unique_key("xact");
    let id = key_id(&k);
    let dir = temp_dir("xact");
    let ready = dir.join("ready");
    let child = start_script(
        &["--key", &k, "--scope", "xact"],
        &format!(
            "echo $PGLOCK_SCOPE > {0}/scope; touch {0}/ready; cat",
            dir.display()
        ),
    );
    wait_file(&ready);
    let mut probe = sql();
    let pid = child.id().to_string();
    let row = probe
        .query_one(
            "SELECT state, xact_start IS NOT NULL FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("pglock:{k}@%:{pid}")],
        )
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "idle in transaction");
    assert!(row.get::<_, bool>(1));
    assert_eq!(lock_rows(&mut probe, id, true), 1);
    // It excludes a session-scope holder.
    assert_eq!(code(pglock().args(["--key", &k, "-n", "--", "true"])).0, 75);
    assert_eq!(finish(child).0, 0);
    assert_eq!(read(&dir.join("scope")).trim(), "xact");
    assert_eq!(lock_rows(&mut probe, id, true), 0);
    // A failing command rolls back, which also releases.
    assert_eq!(
        code(pglock().args(["--key", &k, "--scope", "xact", "-c", "exit 3"])).0,
        3
    );
    assert_eq!(lock_rows(&mut probe, id, true), 0);
}

#[test]
fn lock_id_shares_locks_taken_in_sql() {
    let mut holder = sql();
    let big = 4_000_000_000_i64 + std::process::id() as i64;
    holder
        .execute("SELECT pg_advisory_lock($1)", &[&big])
        .unwrap();
    let big_s = big.to_string();
    assert_eq!(
        code(pglock().args(["--lock-id", &big_s, "-n", "--", "true"])).0,
        75
    );
    let (a, b) = (std::process::id() as i32, -8_i32);
    holder
        .execute("SELECT pg_advisory_lock($1, $2)", &[&a, &b])
        .unwrap();
    let pair = format!("{a},{b}");
    assert_eq!(
        code(pglock().args(["--lock-id", &pair, "-n", "--", "true"])).0,
        75
    );
    let other = format!("{a},{}", b + 1);
    let (rc, err) = code(pglock().args([
        "--lock-id",
        &other,
        "-n",
        "-c",
        "test \"$PGLOCK_LOCK_ID\" = \"$PGLOCK_KEY\"",
    ]));
    assert_eq!(rc, 0, "{err}");
    // The pair and the bigint spaces are separate even when the numbers line up.
    let same_bits = ((a as i64) << 32) | (b as u32 as i64);
    let same_bits = same_bits.to_string();
    assert_eq!(
        code(pglock().args(["--lock-id", &same_bits, "-n", "--", "true"])).0,
        0
    );
}

#[test]
fn key_formula_matches_the_documented_sql() {
    let k = unique_key("formula-é");
    let mut holder = sql();
    let row = holder
        .query_one(
            "SELECT pg_advisory_lock(id), id FROM (SELECT ('x' || left(encode(sha256(convert_to($1, 'UTF8')), 'hex'), 16))::bit(64)::bigint AS id) s",
            &[&k],
        )
        .unwrap();
    assert_eq!(row.get::<_, i64>(1), key_id(&k));
    assert_eq!(code(pglock().args(["--key", &k, "-n", "--", "true"])).0, 75);
}

#[test]
fn the_command_gets_the_lock_in_its_environment() {
    let k = unique_key("env");
    let out = pglock()
        .args([
            "--key",
            &k,
            "-c",
            "echo \"$PGLOCK_KEY|$PGLOCK_LOCK_ID|$PGLOCK_SCOPE\"",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{k}|{}|session", key_id(&k))
    );
}

#[test]
fn the_command_inherits_no_socket() {
    let k = unique_key("nosocket");
    let out = pglock()
        .args([
            "--key",
            &k,
            "-c",
            "for f in /proc/$$/fd/*; do readlink $f; done; true",
        ])
        .output()
        .unwrap();
    let fds = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert!(fds.lines().count() >= 3, "{fds}");
    assert!(
        !fds.contains("socket:"),
        "the command inherited a socket:\n{fds}"
    );
}

#[test]
fn application_name_names_key_host_and_pid() {
    let k = unique_key("appname");
    let dir = temp_dir("appname");
    let child = start_script(
        &["--key", &k],
        &format!("touch {}/ready; cat", dir.display()),
    );
    wait_file(&dir.join("ready"));
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    let expected = format!("pglock:{k}@{host}:{}", child.id());
    let n: i64 = sql()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&expected],
        )
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "no session named {expected}");
    assert_eq!(finish(child).0, 0);
}

#[test]
fn mutual_exclusion_under_contention() {
    let k = unique_key("mutex");
    counter_contention(4, 8, &["--key", &k]);
}

#[test]
fn sigterm_and_sigusr1_reach_the_command() {
    for (sig, name) in [(Signal::SIGTERM, "TERM"), (Signal::SIGUSR1, "USR1")] {
        let k = unique_key("forward");
        let dir = temp_dir("forward");
        let script = format!(
            "trap 'echo {name} > {0}/got; exit 5' {name}; touch {0}/ready; while :; do sleep 1; done",
            dir.display()
        );
        let child = start_script(&["--key", &k], &script);
        wait_file(&dir.join("ready"));
        kill(Pid::from_raw(child.id() as i32), sig).unwrap();
        let (rc, err) = finish(child);
        assert_eq!(read(&dir.join("got")).trim(), name, "{err}");
        // The shell's sleep dies of the signal too; the trap then exits 5.
        assert_eq!(rc, 5, "{err}");
    }
}

#[test]
fn sigterm_reaches_the_whole_pipeline() {
    let k = unique_key("tree");
    let dir = temp_dir("tree");
    let child = start_script(
        &["--key", &k],
        &format!("touch {}/ready; sleep 300 | cat", dir.display()),
    );
    wait_file(&dir.join("ready"));
    let pgid = child_of(child.id());
    wait_until("sleep and cat to start", LIMIT, || {
        group_members(pgid).len() >= 3
    });
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let (rc, err) = finish(child);
    assert_eq!(rc, 143, "{err}");
    assert_eq!(
        group_members(pgid),
        Vec::<i32>::new(),
        "processes left behind"
    );
}

/// Child helper: counts SIGINTs with a real handler, reports the count to a file, and exits when
/// a stop file appears. Used as the command under pglock by the test below.
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
    let mut reported = usize::MAX;
    loop {
        let stop = dir.join("stop").exists();
        let n = count.load(std::sync::atomic::Ordering::SeqCst);
        if n != reported {
            std::fs::write(dir.join("count.tmp"), n.to_string()).unwrap();
            std::fs::rename(dir.join("count.tmp"), dir.join("count")).unwrap();
            reported = n;
        }
        if stop {
            std::process::exit(0);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_process_group_sigint_reaches_the_command_once() {
    let k = unique_key("once");
    let dir = temp_dir("once");
    let mut cmd = pglock();
    cmd.args(["--key", &k, "--"])
        .args(helper(concat!(module_path!(), "::helper_count_sigint")))
        .env("PGLOCK_TEST_SIGCOUNT_DIR", &dir)
        .stdout(Stdio::null())
        .stdin(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    wait_file(&dir.join("ready"));
    // What a terminal's Ctrl-C does: signal the whole group pglock was started in.
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGINT).unwrap();
    wait_until("the SIGINT to arrive", LIMIT, || {
        read(&dir.join("count")).trim() == "1"
    });
    // A duplicate would arrive within microseconds; the helper reports every 20 ms.
    std::thread::sleep(Duration::from_millis(100));
    std::fs::write(dir.join("stop"), "").unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(read(&dir.join("count")).trim(), "1");
}

#[test]
fn an_interrupted_waiter_gives_up_cleanly() {
    for (sig, rc) in [
        (Signal::SIGINT, 130),
        (Signal::SIGTERM, 143),
        (Signal::SIGHUP, 129),
    ] {
        let k = unique_key("interrupt");
        let id = key_id(&k);
        let mut holder = sql();
        holder
            .execute("SELECT pg_advisory_lock($1)", &[&id])
            .unwrap();
        let dir = temp_dir("interrupt");
        let waiter = start_script(&["--key", &k], &format!("touch {}/ran", dir.display()));
        let mut probe = sql();
        wait_until("the waiter's pg_locks row", LIMIT, || {
            lock_rows(&mut probe, id, false) == 1
        });
        kill(Pid::from_raw(waiter.id() as i32), sig).unwrap();
        let (got, err) = finish(waiter);
        assert_eq!(got, rc, "{err}");
        assert_eq!(
            lock_rows(&mut probe, id, false),
            0,
            "a waiting row stayed behind"
        );
        holder
            .execute("SELECT pg_advisory_unlock($1)", &[&id])
            .unwrap();
        assert!(
            !dir.join("ran").exists(),
            "the command ran after an interrupt"
        );
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
        let (rc, err) = code(
            pglock()
                .args(&args)
                .env("PGHOST", "127.0.0.1")
                .env("PGPORT", "1"),
        );
        assert_eq!(rc, 2, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
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
            let (rc, err) = code(&mut cmd);
            assert_eq!(rc, 69, "{url}: {err}");
            assert!(!err.contains(secret), "password leaked: {err}");
            let last = err.lines().last().unwrap_or("");
            assert!(last.starts_with("pglock: cannot connect to "), "{err}");
        }
    }
    // The server's own reason is passed on.
    let mut cmd = pglock();
    cmd.args(["--key", "k", "-d", &urls[2], "--", "true"]);
    let (_, err) = code(&mut cmd);
    assert!(err.contains("does not exist"), "{err}");
    let _ = std::io::stderr().flush();
}
