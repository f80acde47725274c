//! Who holds what, against a real server: holder reports on a conflict, the waiting status line
//! and -v reports, `pglock status`, `pglock list --json`, `pglock key`, and the permission note.

use crate::util::*;
use serde_json::{Value, json};
use std::io::Read;
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(20);

/// A pglock holding `key` exclusively around `cat`, which ends when we close its stdin.
struct Holder {
    child: Child,
}

impl Holder {
    fn start(key: &str) -> Holder {
        Holder::run(&["--key", key], |client| {
            lock_rows(client, key_id(key), true) == 1
        })
    }

    /// pglock with `args` around `cat`, once `ready` sees it on the server.
    fn run(args: &[&str], mut ready: impl FnMut(&mut postgres::Client) -> bool) -> Holder {
        let child = pglock()
            .args(args)
            .args(["--", "cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut client = sql();
        wait_until("the holder to queue or take the lock", LIMIT, || {
            ready(&mut client)
        });
        Holder { child }
    }

    /// The holder's backend pid, from pg_locks.
    fn backend_pid(key: &str) -> i32 {
        let id = key_id(key);
        sql()
            .query_one(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted \
                 AND ((classid::bigint << 32) | objid::bigint) = $1 AND objsubid = 1",
                &[&id],
            )
            .unwrap()
            .get(0)
    }

    fn release(mut self) {
        drop(self.child.stdin.take());
        assert!(self.child.wait().unwrap().success());
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until `key` has `n` waiters queued in pg_locks.
fn wait_for_waiters(key: &str, n: i64) {
    let mut client = sql();
    let id = key_id(key);
    wait_until("waiters to queue", LIMIT, || {
        lock_rows(&mut client, id, false) == n
    });
}

#[test]
fn busy_conflict_names_the_pglock_holder() {
    let key = unique_key("busy");
    let holder = Holder::start(&key);
    let pid = Holder::backend_pid(&key);
    let out = pglock()
        .args(["--key", &key, "--nowait", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    let err = stderr(&out);
    let expect = format!("pglock: lock \"{key}\" is held by pglock:{key}@");
    assert!(err.starts_with(&expect), "{err}");
    assert!(err.contains(&format!("(backend {pid}, client ")), "{err}");
    assert!(err.contains(" UTC ("), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    // --quiet: nothing at all.
    let out = pglock()
        .args(["--key", &key, "--nowait", "--quiet", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(75));
    assert_eq!(stderr(&out), "");
    holder.release();
}

#[test]
fn timeout_names_the_holder_in_both_scopes() {
    let key = unique_key("timeout");
    let holder = Holder::start(&key);
    let pid = Holder::backend_pid(&key);
    for scope in ["session", "xact"] {
        let out = pglock()
            .args([
                "--key",
                &key,
                "--timeout",
                "0.2",
                "--scope",
                scope,
                "--",
                "true",
            ])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(75), "{scope}");
        let err = stderr(&out);
        assert!(
            err.starts_with(&format!(
                "pglock: timed out after 200ms: lock \"{key}\" is held by pglock:{key}@"
            )),
            "{scope}: {err}"
        );
        assert!(err.contains(&format!("backend {pid}")), "{scope}: {err}");
    }
    holder.release();
}

#[test]
fn busy_conflict_names_a_foreign_holder_with_its_user() {
    let key = unique_key("foreign");
    let mut client = sql();
    client
        .batch_execute("SET application_name = 'report-builder'")
        .unwrap();
    let pid: i32 = client
        .query_one(
            "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1)) l",
            &[&key_id(&key)],
        )
        .unwrap()
        .get(0);
    let out = pglock()
        .args(["--key", &key, "-n", "--", "true"])
        .output()
        .unwrap();
    let err = stderr(&out);
    let user = std::env::var("PGUSER").unwrap_or_else(|_| "postgres".into());
    assert!(
        err.starts_with(&format!(
            "pglock: lock \"{key}\" is held by report-builder (user {user}, backend {pid}, client "
        )),
        "{err}"
    );
}

#[test]
fn since_stays_at_the_grant_while_lock_checks_run() {
    let key = unique_key("since");
    let mut holder = pglock()
        .args(["--key", &key, "--check-interval", "100ms", "--", "cat"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let pid = {
        let mut client = sql();
        wait_until("the holder to take the lock", LIMIT, || {
            lock_rows(&mut client, key_id(&key), true) == 1
        });
        Holder::backend_pid(&key)
    };
    // A check has run once its tagged query is the session's last one; its start is well after
    // the grant (one check interval), and state_change has moved past it.
    let mut client = sql();
    let mut check_started = || -> Option<String> {
        client
            .query_one(
                "SELECT CASE WHEN query LIKE '/* pglock: granted %' THEN \
                 to_char(query_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') END \
                 FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0)
    };
    let mut check = None;
    wait_until("a lock check", LIMIT, || {
        check = check_started();
        check.is_some()
    });
    let out = pglock()
        .args(["status", "--key", &key, "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
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
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());
}

#[test]
fn status_exit_codes() {
    let key = unique_key("status");
    let free = pglock().args(["status", "--key", &key]).output().unwrap();
    assert_eq!(free.status.code(), Some(3), "{}", stderr(&free));
    assert!(stdout(&free).contains("is free"), "{}", stdout(&free));

    let holder = Holder::start(&key);
    let pid = Holder::backend_pid(&key);
    let held = pglock().args(["status", "--key", &key]).output().unwrap();
    assert_eq!(held.status.code(), Some(0), "{}", stderr(&held));
    let text = stdout(&held);
    assert!(text.contains("is held"), "{text}");
    assert!(text.contains(&format!("pglock:{key}@")), "{text}");
    assert!(text.contains(&pid.to_string()), "{text}");

    let json = pglock()
        .args(["status", "--key", &key, "--json"])
        .output()
        .unwrap();
    assert_eq!(json.status.code(), Some(0));
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(v["held"], true);
    assert_eq!(v["key"], key.as_str());
    assert_eq!(v["lock_id"], key_id(&key));
    assert_eq!(v["holders"][0]["pid"], pid);
    assert_eq!(v["waiters"], Value::Array(vec![]));
    holder.release();

    // A raw id held from SQL.
    let mut client = sql();
    client
        .batch_execute("SELECT pg_advisory_lock(-7, 9)")
        .unwrap();
    let pair = pglock()
        .args(["status", "--lock-id", "-7,9"])
        .output()
        .unwrap();
    assert_eq!(pair.status.code(), Some(0), "{}", stderr(&pair));
    client
        .batch_execute("SELECT pg_advisory_unlock(-7, 9)")
        .unwrap();

    let down = pglock()
        .args(["status", "--key", &key])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", "1")
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(69), "{}", stderr(&down));
    assert!(stderr(&down).starts_with("pglock: "), "{}", stderr(&down));

    let usage = pglock().args(["status"]).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}

#[test]
fn list_json_shows_holder_and_waiter() {
    let key = unique_key("list");
    let holder = Holder::start(&key);
    let mut waiter = pglock()
        .args(["--key", &key, "--", "true"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_for_waiters(&key, 1);
    let mut client = sql();
    client
        .batch_execute("SELECT pg_advisory_lock_shared(3, -4)")
        .unwrap();

    let out = pglock().args(["list", "--json"]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    for row in &rows {
        check_schema(row);
    }
    let ours: Vec<&Value> = rows
        .iter()
        .filter(|r| r["lock_id"] == key_id(&key))
        .collect();
    assert_eq!(ours.len(), 2, "{rows:#?}");
    let (held, waiting) = (ours[0], ours[1]);
    assert_eq!(held["granted"], true);
    assert_eq!(held["key"], key.as_str());
    assert_eq!(held["mode"], "exclusive");
    assert_eq!(held["pid"], Holder::backend_pid(&key));
    assert!(
        held["application_name"]
            .as_str()
            .unwrap()
            .starts_with(&format!("pglock:{key}@"))
    );
    assert!(held["held_since"].is_string());
    assert!(held["waiting_since"].is_null());
    assert_eq!(waiting["granted"], false);
    assert_eq!(waiting["key"], key.as_str());
    assert!(waiting["waiting_since"].is_string());
    assert_eq!(waiting["queue_position"], 1);

    let pair = rows
        .iter()
        .find(|r| r["lock_id"] == serde_json::json!([3, -4]))
        .expect("the pair lock");
    assert_eq!(pair["mode"], "shared");
    assert!(pair["key"].is_null());
    assert_eq!(pair["objsubid"], 2);

    // The table form shows the key and both states.
    let table = pglock().args(["list"]).output().unwrap();
    let text = stdout(&table);
    assert!(text.starts_with("LOCK "), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with(&key) && l.contains(" held ")),
        "{text}"
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with(&key) && l.contains(" waiting #1 ")),
        "{text}"
    );

    client
        .batch_execute("SELECT pg_advisory_unlock_shared(3, -4)")
        .unwrap();
    holder.release();
    assert!(waiter.wait().unwrap().success());
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
    let key = unique_key("key");
    let out = pglock().args(["key", &key]).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    let field = |name: &str| -> String {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.split_whitespace().next().unwrap().to_string())
            .unwrap_or_else(|| panic!("no {name} in {text}"))
    };
    let id = key_id(&key);
    assert_eq!(field("lock id "), id.to_string());
    assert_eq!(field("classid "), ((id as u64) >> 32).to_string());
    assert_eq!(field("objid "), (id as u64 & 0xffff_ffff).to_string());
    assert_eq!(field("objsubid "), "1");

    // The printed query finds the lock when something holds it.
    let query = &text[text.find("SELECT").unwrap()..];
    let query = query.trim_end_matches([';', '\n']);
    let mut client = sql();
    assert!(client.query(query, &[]).unwrap().is_empty());
    let mut other = sql();
    let pid: i32 = other
        .query_one(
            "SELECT pg_backend_pid() FROM (SELECT pg_advisory_lock($1)) l",
            &[&id],
        )
        .unwrap()
        .get(0);
    let rows = client.query(query, &[]).unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].get::<_, i32>(0), pid);

    // The pair form, and no server needed: an unreachable one doesn't matter.
    let out = pglock()
        .args(["key", "--lock-id", "-1,7"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = stdout(&out);
    assert!(text.contains("classid   4294967295\n"), "{text}");
    assert!(text.contains("objid     7\n"), "{text}");
    assert!(text.contains("objsubid  2\n"), "{text}");
}

#[test]
fn a_command_named_like_a_subcommand_still_runs() {
    let key = unique_key("named");
    let dir = temp_dir("named");
    let marker = dir.join("ran");
    let script = dir.join("status");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\n", marker.display()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", dir.display(), std::env::var("PATH").unwrap());
    let out = pglock()
        .args(["--key", &key, "--", "status"])
        .env("PATH", path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(marker.exists());
}

#[test]
fn hidden_sessions_are_reported_not_shown_empty() {
    let key = unique_key("perm");
    let role = format!("pglock_nostats_{}", std::process::id());
    let mut admin = sql();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'pw'"
        ))
        .unwrap();
    let holder = Holder::start(&key);
    let as_role = |args: &[&str]| {
        pglock()
            .args(args)
            .env("PGUSER", &role)
            .env("PGPASSWORD", "pw")
            .output()
            .unwrap()
    };
    let status = as_role(&["status", "--key", &key]);
    assert_eq!(status.status.code(), Some(0), "{}", stderr(&status));
    let err = stderr(&status);
    assert!(
        err.contains(&format!("role {role} may not see")) && err.contains("pg_read_all_stats"),
        "{err}"
    );
    assert!(stdout(&status).contains(" ? "), "{}", stdout(&status));
    // A note that cannot be written is dropped: the report and its status stand.
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let quiet = pglock()
        .args(["status", "--key", &key])
        .env("PGUSER", &role)
        .env("PGPASSWORD", "pw")
        .stderr(full)
        .output()
        .unwrap();
    assert_eq!(quiet.status.code(), Some(0));
    assert_eq!(stdout(&quiet), stdout(&status));

    let busy = as_role(&["--key", &key, "--nowait", "--", "true"]);
    assert_eq!(busy.status.code(), Some(75));
    assert!(
        stderr(&busy).contains(&format!(
            "details hidden from role {role}: it needs pg_read_all_stats"
        )),
        "{}",
        stderr(&busy)
    );
    holder.release();
    admin.batch_execute(&format!("DROP ROLE {role}")).unwrap();
}

/// Reads a pty master until every slave is closed, collecting what was written.
fn collect(master: std::os::fd::OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut buf = [0u8; 4096];
        // EIO once the last slave is closed ends the loop.
        while let Ok(n @ 1..) = file.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

#[test]
fn terminal_status_line_appears_and_is_erased() {
    let key = unique_key("tty");
    let holder = Holder::start(&key);
    let pid = Holder::backend_pid(&key);
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 250,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).unwrap();
    let mut cmd = pglock();
    cmd.args(["--key", &key, "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave));
    let mut waiter = cmd.spawn().unwrap();
    drop(cmd); // our copy of the slave must go, or the reader never sees the end
    let seen = collect(pty.master);
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    wait_until("the status line to name the holder", LIMIT, || {
        let t = text();
        t.contains(&format!(
            "\"{key}\" (1st of 1 in line); held by pglock:{key}@"
        ))
    });
    let t = text();
    assert!(t.contains(&format!("backend {pid}")), "{t:?}");
    assert!(t.starts_with("\r\x1b[2Kpglock: waiting "), "{t:?}");
    assert!(!t.contains('\n'), "a status line, not log lines: {t:?}");

    holder.release();
    assert!(waiter.wait().unwrap().success());
    wait_until("the terminal to close", LIMIT, || {
        Arc::strong_count(&seen) == 1
    });
    let t = text();
    assert!(t.ends_with("\r\x1b[2K"), "the line must be erased: {t:?}");
}

#[test]
fn no_status_line_and_no_observer_when_stderr_is_a_pipe() {
    let key = unique_key("pipe");
    let holder = Holder::start(&key);
    let waiter = pglock()
        .args(["--key", &key, "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_waiters(&key, 1);
    // Absence can't be observed, only given time: the observer would connect after 300 ms.
    std::thread::sleep(Duration::from_millis(1200));
    let observers: i64 = sql()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1",
            &[&format!("pglock-watch@{}:{}", hostname(), waiter.id())],
        )
        .unwrap()
        .get(0);
    assert_eq!(observers, 0);
    holder.release();
    let out = waiter.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(stderr(&out), "");
}

#[test]
fn verbose_wait_reports_the_holder_when_it_starts() {
    let key = unique_key("verbose");
    let holder = Holder::start(&key);
    let pid = Holder::backend_pid(&key);
    let mut waiter = pglock()
        .args(["--key", &key, "-v", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let mut err = waiter.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = err.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    wait_until("the holder line", LIMIT, || {
        log.lock().unwrap().contains("1st of 1 in line")
    });
    holder.release();
    assert!(waiter.wait().unwrap().success());
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
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

/// Slot `i` of the `--limit` semaphore on `base` (SHA-256 of base NUL "slot" NUL i), or its
/// queue (base NUL "gate"), computed here as the README gives the formula.
fn semaphore_lock(base: &str, what: &str) -> i64 {
    key_id(&format!("{base}\0{what}"))
}

fn slot(base: &str, i: usize) -> i64 {
    semaphore_lock(base, &format!("slot\0{i}"))
}

/// Granted rows among the first `n` slots of `base`'s semaphore.
fn slots_taken(client: &mut postgres::Client, base: &str, n: usize) -> i64 {
    (0..n).map(|i| lock_rows(client, slot(base, i), true)).sum()
}

#[test]
fn status_and_list_see_a_limit_semaphore() {
    let key = unique_key("sem");
    let args = ["--key", key.as_str(), "--limit", "3"];
    let mut holders: Vec<Holder> = (1..=2)
        .map(|n| Holder::run(&args, |c| slots_taken(c, &key, 3) == n))
        .collect();

    // The README's "is a deploy running?" guard, with and without the limit.
    for extra in [&[][..], &["--limit", "3"][..]] {
        let out = pglock()
            .args(["status", "--key", &key])
            .args(extra)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = stdout(&out);
        assert!(
            text.starts_with(&format!(
                "lock \"{key}\" is held: 2 of 3 slots taken (--limit)\nSLOT "
            )),
            "{text}"
        );
        assert_eq!(text.lines().filter(|l| l.starts_with("slot ")).count(), 2);
        assert!(text.contains(&format!("pglock:{key}@")), "{text}");
    }
    let json = pglock()
        .args(["status", "--key", &key, "--json"])
        .output()
        .unwrap();
    let v: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        (&v["held"], &v["limit"], &v["slots_taken"]),
        (&json!(true), &json!(3), &json!(2))
    );
    assert_eq!(v["holders"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(v["holders"][0]["key"], key.as_str());
    assert!(v["holders"][0]["slot"].as_u64().unwrap() < 3, "{v}");

    // Fill the third slot, then queue two more: the first waits at the head of the queue, the
    // second behind it.
    holders.push(Holder::run(&args, |c| slots_taken(c, &key, 3) == 3));
    let gate = semaphore_lock(&key, "gate");
    holders.push(Holder::run(&args, |c| lock_rows(c, gate, true) == 1));
    holders.push(Holder::run(&args, |c| lock_rows(c, gate, false) == 1));

    let out = pglock().args(["list", "--json"]).output().unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let ours: Vec<&Value> = rows.iter().filter(|r| r["key"] == key.as_str()).collect();
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
            Some(i) => assert_eq!(id, slot(&key, i as usize)),
            None => assert_eq!(id, gate),
        }
    }
    let table = stdout(&pglock().args(["list"]).output().unwrap());
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
            .all(|l| !l.starts_with(&format!("--lock-id {gate} "))),
        "{table}"
    );

    // `key --limit` prints the same ids, and a query that finds the holders.
    let out = pglock()
        .args(["key", &key, "--limit", "3"])
        .output()
        .unwrap();
    let text = stdout(&out);
    for (what, id) in [
        ("slot 0", slot(&key, 0)),
        ("slot 2", slot(&key, 2)),
        ("queue", gate),
    ] {
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
        holder.release();
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
    let key = short_key("dé\tp");
    let shown = key.replace('\t', "\\t");
    let holder = Holder::start(&key);
    let pid = Holder::backend_pid(&key);
    let name: String = sql()
        .query_one(
            "SELECT application_name FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap()
        .get(0);
    let encoded = key.replace('é', "%C3%A9").replace('\t', "%09");
    assert!(name.starts_with(&format!("pglock:{encoded}@")), "{name}");

    let busy = pglock()
        .args(["--key", &key, "--nowait", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(busy.status.code(), Some(75));
    assert!(
        stderr(&busy).contains(&format!(" is held by pglock:{shown}@")),
        "{}",
        stderr(&busy)
    );
    let status = pglock().args(["status", "--key", &key]).output().unwrap();
    let text = stdout(&status);
    assert!(
        text.starts_with(&format!("lock \"{shown}\" (id ")),
        "{text}"
    );
    assert!(text.contains(&format!(" pglock:{shown}@")), "{text}");

    let list = pglock().args(["list", "--json"]).output().unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&list.stdout).unwrap();
    let row = rows
        .iter()
        .find(|r| r["lock_id"] == key_id(&key))
        .expect("the lock");
    assert_eq!(row["key"], key.as_str());
    assert_eq!(row["application_name"], name.as_str());
    let table = stdout(&pglock().args(["list"]).output().unwrap());
    assert!(
        table
            .lines()
            .any(|l| cells(l).starts_with(&[&shown, "exclusive", "held"])),
        "{table}"
    );
    holder.release();
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
    let by_key = Holder::start(&n);
    let by_id = Holder::run(&["--lock-id", &n], |c| lock_rows(c, id, true) == 1);

    let table = stdout(&pglock().args(["list"]).output().unwrap());
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
    let out = pglock().args(["list", "--json"]).output().unwrap();
    let rows: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let raw = rows.iter().find(|r| r["lock_id"] == id).unwrap();
    assert_eq!(
        (&raw["key"], &raw["for_lock_id"]),
        (&Value::Null, &json!(id))
    );
    let keyed = rows.iter().find(|r| r["lock_id"] == key_id(&n)).unwrap();
    assert_eq!(
        (&keyed["key"], &keyed["for_lock_id"]),
        (&json!(n), &Value::Null)
    );

    let status = pglock().args(["status", "--lock-id", &n]).output().unwrap();
    assert!(
        stdout(&status).starts_with(&format!("lock {n} is held\n")),
        "{}",
        stdout(&status)
    );
    by_key.release();
    by_id.release();
}

#[test]
fn a_report_that_cannot_be_written_is_one_error_line_not_a_panic() {
    let key = unique_key("full");
    let holder = Holder::start(&key);
    for args in [
        vec!["key", "foo"],
        vec!["status", "--key", &key],
        vec!["list"],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .unwrap();
        let out = pglock().args(&args).stdout(full).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err,
            "pglock: cannot write the report to standard output: No space left on device \
             (os error 28)\n",
            "{args:?}"
        );
    }
    holder.release();
}

#[test]
fn a_report_to_a_closed_pipe_ends_quietly() {
    use std::os::unix::process::ExitStatusExt;
    for args in [vec!["key", "foo"], vec!["list"]] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let out = pglock()
            .args(&args)
            .stdout(Stdio::from(write))
            .output()
            .unwrap();
        assert_eq!(stderr(&out), "", "{args:?}");
        assert_eq!(out.status.signal(), Some(nix::libc::SIGPIPE), "{args:?}");
    }
}

#[test]
fn verbose_wait_on_a_full_semaphore_names_its_holders() {
    let key = unique_key("semwait");
    let args = ["--key", key.as_str(), "--limit", "2"];
    let holders: Vec<Holder> = (1..=2)
        .map(|n| Holder::run(&args, |c| slots_taken(c, &key, 2) == n))
        .collect();
    let mut waiter = pglock()
        .args(args)
        .args(["-v", "--", "true"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    let mut err = waiter.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        while let Ok(n @ 1..) = err.read(&mut buf) {
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    wait_until("the holder line", LIMIT, || {
        log.lock().unwrap().contains("1st of 1 in line")
    });
    for holder in holders {
        holder.release();
    }
    assert!(waiter.wait().unwrap().success());
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    let line = log
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
    let key = unique_key("vfull");
    let holder = Holder::start(&key);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    let mut waiter = pglock()
        .args(["--key", &key, "-v", "--", "true"])
        .stderr(full)
        .spawn()
        .unwrap();
    // The observer has looked, and so has written (or dropped) its holder line, once its
    // session has finished the report query.
    let observer = format!("pglock-watch@{}:{}", hostname(), waiter.id());
    let mut client = sql();
    wait_until("the observer's first look", LIMIT, || {
        if let Some(status) = waiter.try_wait().unwrap() {
            panic!("pglock ended while waiting: {status}");
        }
        let looked: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
                 AND state = 'idle' AND query LIKE 'WITH r AS (%'",
                &[&observer],
            )
            .unwrap()
            .get(0);
        looked == 1
    });
    holder.release();
    assert_eq!(waiter.wait().unwrap().code(), Some(0));
}
