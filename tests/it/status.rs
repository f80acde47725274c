//! Who holds what, against a real server: holder reports on a conflict, the waiting status line
//! and -v reports, `pglock status`, `pglock list --json`, `pglock key`, and the permission note.

use crate::util::*;
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `pglock status --key KEY ARGS`.
fn status(key: &str, args: &[&str]) -> Run {
    run(pglock().args(["status", "--key", key]).args(args))
}

/// `pglock list ARGS`.
fn list(args: &[&str]) -> Run {
    run(pglock().arg("list").args(args))
}

#[test]
fn busy_conflict_names_the_pglock_holder() {
    let env = TestEnv::new("busy");
    let key = env.key();
    let holder = env.hold(&[]);
    let pid = env.backend_pid();
    run(env.pglock(&["--nowait", "--", "true"]))
        .assert_code(75)
        .assert_stderr_starts_with(&format!("pglock: lock \"{key}\" is held by pglock:{key}@"))
        .assert_stderr_contains(&format!("(backend {pid}, client "))
        .assert_stderr_contains(" UTC (")
        .assert_one_pglock_line();

    // --quiet: nothing at all.
    run(env.pglock(&["--nowait", "--quiet", "--", "true"]))
        .assert_code(75)
        .assert_stderr("");
    holder.release().assert_success();
}

#[test]
fn timeout_names_the_holder_in_both_scopes() {
    let env = TestEnv::new("timeout");
    let key = env.key();
    let holder = env.hold(&[]);
    let pid = env.backend_pid();
    for scope in ["session", "xact"] {
        run(env.pglock(&["--timeout", "0.2", "--scope", scope, "--", "true"]))
            .assert_code(75)
            .assert_stderr_starts_with(&format!(
                "pglock: timed out after 200ms: lock \"{key}\" is held by pglock:{key}@"
            ))
            .assert_stderr_contains(&format!("backend {pid}"));
    }
    holder.release().assert_success();
}

#[test]
fn busy_conflict_names_a_foreign_holder_with_its_user() {
    let env = TestEnv::new("foreign");
    let key = env.key();
    let mut client = sql();
    client
        .batch_execute("SET application_name = 'report-builder'")
        .unwrap();
    let pid: i32 = client
        .query_one(
            "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1)) l",
            &[&env.id()],
        )
        .unwrap()
        .get(0);
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    run(env.pglock(&["-n", "--", "true"])).assert_stderr_starts_with(&format!(
        "pglock: lock \"{key}\" is held by report-builder (user {user}, backend {pid}, client "
    ));
}

#[test]
fn since_stays_at_the_grant_while_lock_checks_run() {
    let env = TestEnv::new("since");
    let holder = env.hold(&["--check-interval", "100ms"]);
    let pid = env.backend_pid();
    // A check has run once its tagged query is the session's last one; its start is well after
    // the grant (one check interval), and state_change has moved past it.
    let check_started = || -> Option<String> {
        env.probe()
            .query_one(
                "SELECT CASE WHEN query LIKE '/* pglock: held for %' THEN \
                 to_char(query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') END \
                 FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0)
    };
    let mut check = None;
    wait_until("a lock check", || {
        check = check_started();
        check.is_some()
    });
    let v = status(env.key(), &["--json"]).json();
    let since = v["holders"][0]["held_since"].as_str().unwrap().to_string();
    let connected = v["holders"][0]["backend_start"]
        .as_str()
        .unwrap()
        .to_string();
    // ISO 8601 in UTC with fixed widths compares as text.
    assert!(since >= connected, "{since} < {connected}");
    assert!(
        since < check.clone().unwrap(),
        "{since} is not before the check at {check:?}"
    );
    holder.release().assert_success();
}

#[test]
fn status_exit_codes() {
    let env = TestEnv::new("status");
    let key = env.key();
    status(key, &[])
        .assert_code(3)
        .assert_stdout_contains("is free");

    let holder = env.hold(&[]);
    let pid = env.backend_pid();
    status(key, &[])
        .assert_code(0)
        .assert_stdout_contains("is held")
        .assert_stdout_contains(&format!("pglock:{key}@"))
        .assert_stdout_contains(&pid.to_string());

    let json = status(key, &["--json"]);
    json.assert_code(0);
    let v = json.json();
    assert_eq!(v["held"], true);
    assert_eq!(v["key"], key);
    assert_eq!(v["lock_id"], env.id());
    assert_eq!(v["holders"][0]["pid"], pid);
    assert_eq!(v["waiters"], Value::Array(vec![]));
    holder.release().assert_success();

    // A raw id held from SQL, negative first.
    let (a, b) = unique_pair();
    let _pair = Lock::Pair(b, a).take_in_sql();
    run(pglock().args(["status", "--lock-id", &format!("{b},{a}")])).assert_code(0);

    run(pglock()
        .args(["status", "--key", key])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", "1"))
    .assert_code(69)
    .assert_stderr_starts_with("pglock: ");

    run(pglock().args(["status"])).assert_code(2);
}

#[test]
fn list_json_shows_holder_and_waiter() {
    let env = TestEnv::new("list");
    let key = env.key();
    let holder = env.hold(&[]);
    let waiter = start(env.pglock(&["--", "true"]));
    wait_until("the waiter to queue", || env.waiting() == 1);
    let (a, b) = unique_pair();
    let mut client = sql();
    client
        .execute("SELECT pg_advisory_lock_shared($1, $2)", &[&a, &b])
        .unwrap();

    let out = list(&["--json"]);
    out.assert_code(0);
    let rows = out.json();
    let rows = rows.as_array().unwrap();
    for row in rows {
        check_schema(row);
    }
    let ours: Vec<&Value> = rows.iter().filter(|r| r["lock_id"] == env.id()).collect();
    assert_eq!(ours.len(), 2, "{rows:#?}");
    let (held, waiting) = (ours[0], ours[1]);
    assert_eq!(held["granted"], true);
    assert_eq!(held["key"], key);
    assert_eq!(held["mode"], "exclusive");
    assert_eq!(held["pid"], env.backend_pid());
    assert!(
        held["application_name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pglock:{key}@"))
    );
    assert!(held["held_since"].is_string());
    assert!(held["waiting_since"].is_null());
    assert_eq!(waiting["granted"], false);
    assert_eq!(waiting["key"], key);
    assert!(waiting["waiting_since"].is_string());
    assert_eq!(waiting["queue_position"], 1);

    let pair = rows
        .iter()
        .find(|r| r["lock_id"] == json!([a, b]))
        .expect("the pair lock");
    assert_eq!(pair["mode"], "shared");
    assert!(pair["key"].is_null());
    assert_eq!(pair["objsubid"], 2);

    // The table form shows the key and both states.
    let text = list(&[]).stdout();
    assert!(text.starts_with("LOCK "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(key) && l.contains(" held ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(key) && l.contains(" waiting #1 ")),
        "{text}"
    );

    client
        .execute("SELECT pg_advisory_unlock_shared($1, $2)", &[&a, &b])
        .unwrap();
    holder.release().assert_success();
    waiter.finish().assert_success();
}

/// The documented `list --json` schema: every field, with its type.
fn check_schema(row: &Value) {
    let obj = row.as_object().expect("an object per row");
    let id = &obj["lock_id"];
    assert!(
        id.is_i64()
            || id
                .as_array()
                .is_some_and(|a| a.len() == 2 && a.iter().all(Value::is_i64)),
        "{row}"
    );
    for field in ["classid", "objid", "objsubid"] {
        assert!(obj[field].is_u64(), "{field}: {row}");
    }
    let for_id = &obj["for_lock_id"];
    assert!(
        for_id.is_null() || for_id.is_i64() || for_id.as_array().is_some_and(|a| a.len() == 2),
        "{row}"
    );
    assert!(obj["slot"].is_null() || obj["slot"].is_u64(), "{row}");
    assert!(obj["queue"].is_boolean(), "{row}");
    assert!(
        obj["mode"] == "exclusive" || obj["mode"] == "shared",
        "{row}"
    );
    assert!(obj["granted"].is_boolean() && obj["details_visible"].is_boolean());
    assert!(obj["pid"].is_i64() || obj["pid"].is_null());
    for field in [
        "key",
        "application_name",
        "user",
        "client_addr",
        "state",
        "backend_start",
        "held_since",
        "waiting_since",
    ] {
        assert!(
            obj[field].is_string() || obj[field].is_null(),
            "{field}: {row}"
        );
    }
    for field in ["backend_start", "held_since", "waiting_since"] {
        if let Some(t) = obj[field].as_str() {
            assert!(
                t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T",
                "{t}"
            );
        }
    }
    let granted = obj["granted"] == true;
    assert_eq!(obj["waiting_since"].is_null(), granted, "{row}");
    assert_eq!(obj["queue_position"].is_null(), granted, "{row}");
}

#[test]
fn key_prints_the_coordinates_and_a_query_that_finds_the_lock() {
    let env = TestEnv::new("key");
    let out = run(pglock().args(["key", env.key()]));
    out.assert_code(0);
    let text = out.stdout();
    let field = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let (classid, objid, objsubid) = env.lock().coordinates();
    assert_eq!(field("lock id "), env.id().to_string());
    assert_eq!(field("classid "), classid.to_string());
    assert_eq!(field("objid "), objid.to_string());
    assert_eq!(field("objsubid "), objsubid.to_string());

    // The printed query finds the lock when something holds it.
    let query = &text[text.find("SELECT").unwrap()..];
    let query = query.trim_end_matches([';', '\n']);
    let mut client = sql();
    assert!(client.query(query, &[]).unwrap().is_empty());
    let mut other = sql();
    let pid: i32 = other
        .query_one(
            "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1)) l",
            &[&env.id()],
        )
        .unwrap()
        .get(0);
    let rows = client.query(query, &[]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), pid);

    // The pair form, and no server needed: an unreachable one doesn't matter.
    run(pglock()
        .args(["key", "--lock-id", "-1,7"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", "1"))
    .assert_code(0)
    .assert_stdout_contains("classid   4294967295\n")
    .assert_stdout_contains("objid     7\n")
    .assert_stdout_contains("objsubid  2\n");
}

#[test]
fn a_command_named_like_a_subcommand_still_runs() {
    let env = TestEnv::new("named");
    let script = env.path("status");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\n", env.path("ran").display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", env.dir().display(), std::env::var("PATH").unwrap());
    run(env.pglock(&["--", "status"]).env("PATH", path)).assert_code(0);
    assert!(env.exists("ran"));
}

#[test]
fn hidden_sessions_are_reported_not_shown_empty() {
    let env = TestEnv::new("perm");
    let key = env.key();
    let role = format!("pglock_nostats_{}", std::process::id());
    let mut admin = sql();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'pw'"
        ))
        .unwrap();
    let holder = env.hold(&[]);
    let as_role =
        |cmd: &mut std::process::Command| run(cmd.env("PGUSER", &role).env("PGPASSWORD", "pw"));
    let shown = as_role(pglock().args(["status", "--key", key]));
    shown
        .assert_code(0)
        .assert_stderr_contains(&format!("role {role} may not see"))
        .assert_stderr_contains("pg_read_all_stats")
        .assert_stdout_contains(" ? ");
    // A note that cannot be written is dropped: the report and its status stand.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    as_role(pglock().args(["status", "--key", key]).stderr(full))
        .assert_code(0)
        .assert_stdout(&shown.stdout());

    as_role(&mut env.pglock(&["--nowait", "--", "true"]))
        .assert_code(75)
        .assert_stderr_contains(&format!(
            "details hidden from role {role}: it needs pg_read_all_stats"
        ));
    holder.release().assert_success();
    admin.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

#[test]
fn terminal_status_line_appears_and_is_erased() {
    let env = TestEnv::new("tty");
    let key = env.key();
    let holder = env.hold(&[]);
    let pid = env.backend_pid();
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 250,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).unwrap();
    let mut cmd = env.pglock(&["--", "true"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::from(pty.slave));
    let waiter = start_keeping_stderr(&mut cmd);
    drop(cmd); // our copy of the slave must go, or the reader never sees the end
    let seen = terminal_output(pty.master);
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    wait_until("the status line to name the holder", || {
        let t = text();
        t.contains(&format!(
            "\"{key}\" (1st of 1 in line); held by pglock:{key}@"
        ))
    });
    let t = text();
    assert!(t.contains(&format!("backend {pid}")), "{t:?}");
    assert!(t.starts_with("\r\x1b[2Kpglock: waiting "), "{t:?}");
    assert!(!t.contains('\n'), "a status line, not log lines: {t:?}");

    holder.release().assert_success();
    waiter.finish().assert_success();
    wait_until("the terminal to close", || Arc::strong_count(&seen) == 1);
    let t = text();
    assert!(t.ends_with("\r\x1b[2K"), "the line must be erased: {t:?}");
}

/// The observer sessions of the pglock with this pid.
fn observers(env: &TestEnv, pid: u32) -> i64 {
    env.probe()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("pglock-watch@{}:{pid}", hostname())],
        )
        .unwrap()
        .get(0)
}

/// How long a waiter gets to show an observer it should not have. For a status line, the
/// observer starts 300 ms into the wait (TTY_GRACE in src/report/watch.rs); the window is four
/// times that.
const OBSERVER_WINDOW: Duration = Duration::from_millis(1200);

#[test]
fn no_status_line_and_no_observer_when_stderr_is_a_pipe() {
    let env = TestEnv::new("pipe");
    let holder = env.hold(&[]);
    let waiter = start(env.pglock(&["--", "true"]));
    // A control beside it: with -v, an observer starts (even sooner), so one does show up on
    // this server under this load.
    let control = start(env.pglock(&["-v", "--", "true"]));
    wait_until("both to queue", || env.waiting() == 2);
    // Absence, observed on the server: from the moment both wait, for the whole window and
    // until the control's observer has shown up, both still wait and the piped waiter has no
    // observer session.
    let since = Instant::now();
    let mut control_seen = false;
    wait_until(
        "the window to pass with the control's observer seen",
        || {
            assert_eq!(observers(&env, waiter.id()), 0, "an observer for a pipe");
            assert_eq!(env.waiting(), 2, "a waiter stopped waiting");
            control_seen |= observers(&env, control.id()) > 0;
            control_seen && since.elapsed() >= OBSERVER_WINDOW
        },
    );
    holder.release().assert_success();
    waiter.finish().assert_code(0).assert_stderr("");
    control.finish().assert_success();
}

#[test]
fn verbose_wait_reports_the_holder_when_it_starts() {
    let env = TestEnv::new("verbose");
    let key = env.key();
    let holder = env.hold(&[]);
    let pid = env.backend_pid();
    let waiter = start(env.pglock(&["-v", "--", "true"]));
    wait_until("the holder line", || {
        waiter.stderr_so_far().contains("1st of 1 in line")
    });
    holder.release().assert_success();
    let out = waiter.finish();
    out.assert_success();
    let log = out.stderr();
    let line = log
        .lines()
        .find(|l| l.contains("is held by"))
        .unwrap_or_else(|| panic!("no holder line in {log}"));
    assert!(
        line.contains(&format!("pglock: lock \"{key}\" is held by pglock:{key}@"))
            && line.contains(&format!("backend {pid}"))
            && line.contains("1st of 1 in line"),
        "{line}"
    );
    assert!(!log.contains('\r'), "no status line with -v: {log:?}");
}

fn hostname() -> String {
    nix::unistd::gethostname().unwrap().into_string().unwrap()
}

/// Granted rows among the first `n` slots of the semaphore on the test's key.
fn slots_taken(env: &TestEnv, n: usize) -> i64 {
    (0..n)
        .map(|i| env.rows(Lock::slot(env.key(), i), true))
        .sum()
}

#[test]
fn status_and_list_see_a_limit_semaphore() {
    let env = TestEnv::new("sem");
    let key = env.key();
    let limit = ["--limit", "3"];
    let mut holders: Vec<Holder> = (1..=2).map(|_| env.hold(&limit)).collect();
    assert_eq!(slots_taken(&env, 3), 2);

    // The README's "is a deploy running?" guard, with and without the limit.
    for extra in [&[][..], &limit[..]] {
        let out = status(key, extra);
        out.assert_code(0)
            .assert_stdout_contains(&format!("pglock:{key}@"));
        let text = out.stdout();
        assert!(
            text.starts_with(&format!(
                "lock \"{key}\" is held: 2 of 3 slots taken (--limit)\nSLOT "
            )),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| l.starts_with("slot ")).count(), 2);
    }
    let v = status(key, &["--json"]).json();
    assert_eq!(
        (&v["held"], &v["limit"], &v["slots_taken"]),
        (&json!(true), &json!(3), &json!(2))
    );
    assert_eq!(v["holders"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["holders"][0]["key"], key);
    assert!(v["holders"][0]["slot"].as_u64().unwrap() < 3, "{v}");

    // Fill the third slot, then queue two more: the first waits at the head of the queue, the
    // second behind it.
    holders.push(env.hold(&limit));
    assert_eq!(slots_taken(&env, 3), 3);
    let gate = Lock::gate(key);
    holders.push(env.holder(&limit));
    wait_until("the head of the queue", || env.rows(gate, true) == 1);
    holders.push(env.holder(&limit));
    wait_until("a second in the queue", || env.rows(gate, false) == 1);

    let rows = list(&["--json"]).json();
    let ours: Vec<&Value> = rows
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["key"] == key)
        .collect();
    // The head of the queue also waits on one slot.
    let mut slots: Vec<u64> = ours
        .iter()
        .filter(|r| r["granted"] == true)
        .filter_map(|r| r["slot"].as_u64())
        .collect();
    slots.sort();
    assert_eq!(slots, [0, 1, 2], "{ours:#?}");
    let queue: Vec<&&Value> = ours.iter().filter(|r| r["queue"] == true).collect();
    assert_eq!(queue.len(), 2, "{ours:#?}");
    for row in &ours {
        check_schema(row);
        let id = row["lock_id"].as_i64().unwrap();
        match row["slot"].as_u64() {
            Some(i) => assert_eq!(id, Lock::slot(key, i as usize).id()),
            None => assert_eq!(id, gate.id()),
        }
    }
    let table = list(&[]).stdout();
    for expect in [
        format!("{key} slot 0 "),
        format!("{key} slot 2 "),
        format!("{key} queue "),
    ] {
        assert!(
            table.lines().any(|l| l.starts_with(&expect)),
            "{expect}: {table}"
        );
    }
    let queue_lines: Vec<&str> = table
        .lines()
        .filter(|l| l.starts_with(&format!("{key} queue ")))
        .collect();
    assert!(queue_lines[0].contains(" next in line "), "{table}");
    assert!(queue_lines[1].contains(" in line #2 "), "{table}");
    assert!(
        table
            .lines()
            .all(|l| !l.starts_with(&format!("--lock-id {} ", gate.id()))),
        "{table}"
    );

    // `key --limit` prints the same ids, and a query that finds the holders.
    let text = run(pglock().args(["key", key, "--limit", "3"])).stdout();
    for (what, lock) in [
        ("slot 0", Lock::slot(key, 0)),
        ("slot 2", Lock::slot(key, 2)),
        ("queue", gate),
    ] {
        let id = lock.id();
        assert!(
            text.lines()
                .any(|l| l.starts_with(what) && l.split_whitespace().any(|w| w == id.to_string())),
            "{what} {id}: {text}"
        );
    }
    let query = text[text.find("SELECT").unwrap()..].trim_end_matches([';', '\n']);
    // Three holders; the head holds the queue and waits on a slot; one more waits in the queue.
    assert_eq!(sql().query(query, &[]).unwrap().len(), 6, "{query}");

    for holder in holders {
        holder.release().assert_success();
    }
}

/// A table line's words.
fn cells(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// A key made of `word` and something unique, short enough to fit in application_name whole.
fn short_key(word: &str) -> String {
    unique_key("x").replacen("test-x", word, 1)
}

#[test]
fn keys_with_non_ascii_and_control_characters_survive_in_reports() {
    let env = TestEnv::keyed("nonascii", short_key("dé\tp"));
    let key = env.key();
    let shown = key.replace('\t', "\\t");
    let holder = env.hold(&[]);
    let pid = env.backend_pid();
    let name: String = env
        .probe()
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    let encoded = key.replace('é', "%C3%A9").replace('\t', "%09");
    assert!(name.starts_with(&format!("pglock:{encoded}@")), "{name}");

    run(env.pglock(&["--nowait", "--", "true"]))
        .assert_code(75)
        .assert_stderr_contains(&format!(" is held by pglock:{shown}@"));
    let text = status(key, &[]).stdout();
    assert!(
        text.starts_with(&format!("lock \"{shown}\" (id ")),
        "{text}"
    );
    assert!(text.contains(&format!(" pglock:{shown}@")), "{text}");

    let rows = list(&["--json"]).json();
    let row = rows
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["lock_id"] == env.id())
        .expect("the lock");
    assert_eq!(row["key"], key);
    assert_eq!(row["application_name"], name.as_str());
    let table = list(&[]).stdout();
    assert!(
        table
            .lines()
            .any(|l| cells(l).starts_with(&[&shown, "exclusive", "held"])),
        "{table}"
    );
    holder.release().assert_success();
}

#[test]
fn a_key_and_a_lock_id_of_the_same_number_read_differently() {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = format!(
        "{}{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    );
    let id: i64 = n.parse().unwrap();
    let env = TestEnv::keyed("number", n.clone());
    let by_key = env.hold(&[]);
    let by_id = try_hold(pglock().args(["--lock-id", &n])).unwrap();

    let table = list(&[]).stdout();
    let by_key_line = [n.as_str(), "exclusive", "held"];
    assert!(
        table.lines().any(|l| cells(l).starts_with(&by_key_line)),
        "{table}"
    );
    let by_id_line = ["--lock-id", n.as_str(), "exclusive", "held"];
    assert!(
        table
            .lines()
            .any(|l| cells(l).starts_with(&by_id_line) && l.contains(&format!(" pglock:#{n}@"))),
        "{table}"
    );
    let rows = list(&["--json"]).json();
    let rows = rows.as_array().unwrap();
    let raw = rows.iter().find(|r| r["lock_id"] == id).unwrap();
    assert_eq!(
        (&raw["key"], &raw["for_lock_id"]),
        (&Value::Null, &json!(id))
    );
    let keyed = rows.iter().find(|r| r["lock_id"] == env.id()).unwrap();
    assert_eq!(
        (&keyed["key"], &keyed["for_lock_id"]),
        (&json!(n), &Value::Null)
    );

    let status = run(pglock().args(["status", "--lock-id", &n])).stdout();
    assert!(
        status.starts_with(&format!("lock {n} is held\n")),
        "{status}"
    );
    by_key.release().assert_success();
    by_id.release().assert_success();
}

#[test]
fn a_report_that_cannot_be_written_is_one_error_line_not_a_panic() {
    let env = TestEnv::new("full");
    let holder = env.hold(&[]);
    for args in [
        vec!["key", "foo"],
        vec!["status", "--key", env.key()],
        vec!["list"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        run(pglock().args(&args).stdout(full))
            .assert_code(1)
            .assert_stderr(
                "pglock: cannot write the report to standard output: No space left on device \
                 (os error 28)\n",
            );
    }
    holder.release().assert_success();
}

#[test]
fn a_report_to_a_closed_pipe_ends_quietly() {
    for args in [vec!["key", "foo"], vec!["list"]] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        run(pglock().args(&args).stdout(Stdio::from(write)))
            .assert_stderr("")
            .assert_signal(Signal::SIGPIPE);
    }
}

#[test]
fn verbose_wait_on_a_full_semaphore_names_its_holders() {
    let env = TestEnv::new("semwait");
    let key = env.key();
    let holders: Vec<Holder> = (0..2).map(|_| env.hold(&["--limit", "2"])).collect();
    assert_eq!(slots_taken(&env, 2), 2);
    let waiter = start(env.pglock(&["--limit", "2", "-v", "--", "true"]));
    wait_until("the holder line", || {
        waiter.stderr_so_far().contains("1st of 1 in line")
    });
    for holder in holders {
        holder.release().assert_success();
    }
    let out = waiter.finish();
    out.assert_success();
    let line = out
        .stderr()
        .lines()
        .find(|l| l.contains("1st of 1 in line"))
        .unwrap();
    assert!(
        line.contains(&format!("lock \"{key}\" is held by pglock:{key}@"))
            && line.contains("/2 (backend ")
            && line.contains(" and 1 other; waiting "),
        "{line}"
    );
}

#[test]
fn verbose_wait_with_stderr_on_a_full_disk_runs_the_command() {
    let env = TestEnv::new("vfull");
    let holder = env.hold(&[]);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut waiter = start_keeping_stderr(env.pglock(&["-v", "--", "true"]).stderr(full));
    // The observer has looked, and so has written (or dropped) its holder line, once its
    // session has finished the report query.
    let observer = format!("pglock-watch@{}:{}", hostname(), waiter.id());
    wait_until("the observer's first look", || {
        if let Some(status) = waiter.exited() {
            panic!("pglock ended while waiting: {status}");
        }
        let looked: i64 = env
            .probe()
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'idle' AND query LIKE 'WITH r AS (%'",
                &[&observer],
            )
            .unwrap()
            .get(0);
        looked == 1
    });
    holder.release().assert_success();
    waiter.finish().assert_code(0);
}

/// A holder whose clock is days off: "held since" is in the server's clock all the same.
#[test]
fn since_does_not_mix_the_holders_clock_with_the_servers() {
    need("faketime", "faketime");
    let env = TestEnv::new("sinceskew");
    let holder = try_hold(wrapped("faketime", &["-f", "+3d"]).args([
        "--key",
        env.key(),
        "--check-interval",
        "100ms",
    ]))
    .unwrap_or_else(|run| panic!("the holder did not get the lock: {run}"));
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
    let v = status(env.key(), &["--json"]).json();
    let since = v["holders"][0]["held_since"].as_str().unwrap().to_string();
    let age: f64 = env
        .probe()
        .query_one(
            "SELECT extract(epoch FROM now() - $1::text::timestamptz)::float8",
            &[&since],
        )
        .unwrap()
        .get(0);
    assert!(
        (0.0..60.0).contains(&age),
        "held since {since}: {age} s ago by the server's clock"
    );
    holder.release().assert_success();
}
