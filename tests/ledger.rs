//! The run ledger (issue 12) against a real server: --record, --once-per and --max-attempts with
//! real contending processes, a pglock killed mid-run, xact scope through a real
//! transaction-pooling PgBouncer, a host clock days off (faketime), init, a least-privilege
//! role, and the history, check, metrics (parsed by promtool) and prune commands.
//!
//! Each test has its own table (`Ledger::new`), so they run in parallel with each other and with
//! the rest of the suite.

mod common;

use common::bouncer::Bouncer;
use common::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use postgres::Client;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const LIMIT: Duration = Duration::from_secs(30);

/// One test's ledger table, created with `pglock init` and dropped at the end.
struct Ledger {
    table: String,
}

impl Ledger {
    fn new() -> Ledger {
        let ledger = Ledger::unmade();
        let out = ledger.pglock(&["init"]).output().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        ledger
    }

    /// A name no other test uses; nothing created.
    fn unmade() -> Ledger {
        static N: AtomicUsize = AtomicUsize::new(0);
        Ledger {
            table: format!(
                "public.ledger_test_{}_{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ),
        }
    }

    /// pglock with `--ledger` first (it applies to every form).
    fn pglock(&self, args: &[&str]) -> Command {
        let mut cmd = pglock();
        cmd.env("PGLOCK_LEDGER", &self.table).args(args);
        cmd
    }

    /// A lock-and-run of `script` under `key` with `args`.
    fn run(&self, key: &str, args: &[&str], script: &str) -> Output {
        self.pglock(&["--key", key])
            .args(args)
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The key's runs, oldest first: (status, exit_code).
    fn runs(&self, key: &str) -> Vec<(String, Option<i32>)> {
        sql()
            .query(
                &format!(
                    "SELECT status, exit_code FROM {} WHERE key = $1 ORDER BY id",
                    self.table
                ),
                &[&key],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect()
    }

    /// Inserts a finished run that started `ago` (an SQL interval) before now, lasting 1 minute.
    fn insert(&self, client: &mut Client, key: &str, status: &str, ago: &str) {
        let finished = if status == "running" {
            "NULL".to_string()
        } else {
            format!("now() - interval '{ago}' + interval '1 minute'")
        };
        let code = match status {
            "succeeded" => "0",
            "running" | "abandoned" => "NULL",
            _ => "1",
        };
        client
            .execute(
                &format!(
                    "INSERT INTO {} (key, host, pid, backend_pid, db_user, started_at, \
                     finished_at, status, exit_code) VALUES ($1, 'web-9', 1, 1, 'app', \
                     now() - interval '{ago}', {finished}, $2, {code})",
                    self.table
                ),
                &[&key, &status],
            )
            .unwrap();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = sql().batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table));
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn waiters(key: &str) -> i64 {
    lock_rows(&mut sql(), key_id(key), false)
}

fn held(key: &str) -> i64 {
    lock_rows(&mut sql(), key_id(key), true)
}

/// A command that records that it ran and then waits for `go` to exist.
fn ran_then_wait(dir: &Path) -> String {
    format!(
        "echo \"$PGLOCK_RUN_ID\" >> {d}/ran; while [ ! -e {d}/go ]; do sleep 0.01; done",
        d = dir.display()
    )
}

fn lines(path: &Path) -> usize {
    read(path).lines().count()
}

#[test]
fn once_per_among_five_contenders_runs_exactly_once() {
    let ledger = Ledger::new();
    let key = unique_key("once5");
    let dir = temp_dir("once5");
    let script = ran_then_wait(&dir);
    let children: Vec<_> = (0..5)
        .map(|_| {
            start(
                ledger
                    .pglock(&["--key", &key, "--once-per", "1h"])
                    .args(["-c", &script]),
            )
        })
        .collect();
    // One runs, the four others queue behind it: real contention, observed on the server.
    wait_until("one run and four waiters", LIMIT, || {
        lines(&dir.join("ran")) == 1 && waiters(&key) == 4
    });
    std::fs::write(dir.join("go"), "").unwrap();
    let results: Vec<(i32, String)> = children.into_iter().map(finish).collect();
    assert_eq!(lines(&dir.join("ran")), 1);
    let skips = results
        .iter()
        .filter(|(_, err)| err.contains("already succeeded"))
        .count();
    assert_eq!(skips, 4, "{results:?}");
    assert!(results.iter().all(|(code, _)| *code == 0), "{results:?}");
    assert_eq!(ledger.runs(&key), [("succeeded".into(), Some(0))]);
}

#[test]
fn a_failed_run_fails_over_to_the_next_waiter_then_later_runs_skip() {
    let ledger = Ledger::new();
    let key = unique_key("failover");
    let dir = temp_dir("failover");
    // Host A fails while host B waits; B then runs the job itself.
    let a = start(
        ledger
            .pglock(&["--key", &key, "--once-per", "1h"])
            .args(["-c", &format!("{}; exit 1", ran_then_wait(&dir))]),
    );
    wait_until("A running", LIMIT, || lines(&dir.join("ran")) == 1);
    let b = start(ledger.pglock(&["--key", &key, "--once-per", "1h"]).args([
        "-c",
        &format!("echo \"[$PGLOCK_LAST_SUCCESS]\" > {}/b", dir.display()),
    ]));
    wait_until("B waiting", LIMIT, || waiters(&key) == 1);
    std::fs::write(dir.join("go"), "").unwrap();
    assert_eq!(finish(a).0, 1);
    let (code, err) = finish(b);
    assert_eq!(code, 0, "{err}");
    // No earlier success: the variable is there and empty.
    assert_eq!(read(&dir.join("b")), "[]\n");
    assert_eq!(
        ledger.runs(&key),
        [("failed".into(), Some(1)), ("succeeded".into(), Some(0))]
    );

    // Now it is done: a skip says when and where, exits 0, runs nothing and records nothing.
    let never = dir.join("never");
    let skip = ledger.run(
        &key,
        &["--once-per", "1h"],
        &format!("touch {}", never.display()),
    );
    assert_eq!(skip.status.code(), Some(0));
    assert!(!never.exists());
    let err = text(&skip.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.starts_with(&format!("pglock: \"{key}\" already succeeded "))
            && err.contains(" UTC on ")
            && err.ends_with("(--once-per 1h00m)\n"),
        "{err}"
    );
    let quiet = ledger.run(
        &key,
        &["--once-per", "1h", "-q", "--done-exit-code", "9"],
        "true",
    );
    assert_eq!(quiet.status.code(), Some(9));
    assert_eq!(text(&quiet.stderr), "");
    assert_eq!(ledger.runs(&key).len(), 2);

    // --record gets the last success's start, as the ledger has it.
    let at: String = sql()
        .query_one(
            &format!(
                "SELECT to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') \
                 FROM {} WHERE key = $1 AND status = 'succeeded'",
                ledger.table
            ),
            &[&key],
        )
        .unwrap()
        .get(0);
    let env = ledger.run(
        &key,
        &["--record"],
        "echo $PGLOCK_RUN_ID $PGLOCK_LAST_SUCCESS",
    );
    let out = text(&env.stdout);
    let (id, last) = out.trim().split_once(' ').unwrap();
    assert_eq!(last, at);
    assert!(id.parse::<i64>().unwrap() > 0);
}

#[test]
fn max_attempts_stops_replaying_a_deterministic_failure() {
    let ledger = Ledger::new();
    let key = unique_key("attempts");
    let dir = temp_dir("attempts");
    let script = format!("echo x >> {}/ran; exit 3", dir.display());
    for _ in 0..2 {
        let out = ledger.run(&key, &["--once-per", "1h", "--max-attempts", "2"], &script);
        assert_eq!(out.status.code(), Some(3));
    }
    let out = ledger.run(&key, &["--once-per", "1h", "--max-attempts", "2"], &script);
    assert_eq!(out.status.code(), Some(75));
    let err = text(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("failed 2 times within --once-per 1h00m (--max-attempts 2)"),
        "{err}"
    );
    let other = ledger.run(
        &key,
        &["--once-per", "1h", "--max-attempts", "2", "-E", "9"],
        &script,
    );
    assert_eq!(other.status.code(), Some(9));
    // The default is 3: one more try is allowed.
    assert_eq!(
        ledger
            .run(&key, &["--once-per", "1h"], &script)
            .status
            .code(),
        Some(3)
    );
    assert_eq!(lines(&dir.join("ran")), 3);
    assert_eq!(ledger.runs(&key).len(), 3);
}

#[test]
fn a_sigkilled_pglock_leaves_a_running_row_that_the_next_holder_abandons() {
    let ledger = Ledger::new();
    let key = unique_key("killed");
    let dir = temp_dir("killed");
    let mut child = start(
        ledger
            .pglock(&["--key", &key, "--record"])
            .args(["-c", &ran_then_wait(&dir)]),
    );
    wait_until("the command running", LIMIT, || {
        lines(&dir.join("ran")) == 1
    });
    assert_eq!(ledger.runs(&key), [("running".into(), None)]);
    kill(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    child.wait().unwrap();
    wait_until("the lock freed", LIMIT, || held(&key) == 0);
    assert_eq!(ledger.runs(&key), [("running".into(), None)]);

    let next = ledger.run(&key, &["--record"], "true");
    assert!(next.status.success(), "{}", text(&next.stderr));
    assert_eq!(
        ledger.runs(&key),
        [("abandoned".into(), None), ("succeeded".into(), Some(0))]
    );
    // Abandoned rows get an end time too: none is left without one.
    let open: i64 = sql()
        .query_one(
            &format!(
                "SELECT count(*) FROM {} WHERE key = $1 AND finished_at IS NULL",
                ledger.table
            ),
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(open, 0);
}

#[test]
fn shared_holders_do_not_abandon_each_others_runs() {
    let ledger = Ledger::new();
    let key = unique_key("shared");
    let dir = temp_dir("shared");
    let first = start(
        ledger
            .pglock(&["--key", &key, "--shared", "--record"])
            .args(["-c", &ran_then_wait(&dir)]),
    );
    wait_until("the first running", LIMIT, || lines(&dir.join("ran")) == 1);
    let second = ledger.run(&key, &["--shared", "--record"], "true");
    assert!(second.status.success());
    std::fs::write(dir.join("go"), "").unwrap();
    assert_eq!(finish(first).0, 0);
    assert_eq!(
        ledger.runs(&key),
        [("succeeded".into(), Some(0)), ("succeeded".into(), Some(0))]
    );
}

#[test]
fn xact_scope_through_a_transaction_pooling_pgbouncer_records_success_and_failure() {
    let bouncer = Bouncer::start("transaction");
    let ledger = Ledger::new();
    let key = unique_key("bounce");
    let dir = temp_dir("bounce");
    let url = bouncer.conninfo();
    let args = ["--scope", "xact", "-d", &url, "--once-per", "1h"];
    // The running row is visible to everyone while the command runs: it is not inside the
    // lock's transaction.
    let running = start(
        ledger
            .pglock(&["--key", &key])
            .args(args)
            .args(["-c", &format!("{}; exit 4", ran_then_wait(&dir))]),
    );
    wait_until("the running row", LIMIT, || {
        ledger.runs(&key) == [("running".to_string(), None)]
    });
    std::fs::write(dir.join("go"), "").unwrap();
    assert_eq!(finish(running).0, 4);
    let ok = ledger.run(&key, &args, "true");
    assert!(ok.status.success(), "{}", text(&ok.stderr));
    let never = dir.join("never");
    let skip = ledger.run(&key, &args, &format!("touch {}", never.display()));
    assert!(text(&skip.stderr).contains("already succeeded"));
    assert!(!never.exists());
    assert_eq!(
        ledger.runs(&key),
        [("failed".into(), Some(4)), ("succeeded".into(), Some(0))]
    );
    // Reading through the pooler works too.
    let history = ledger
        .pglock(&["history", "--key", &key, "-d", &url])
        .output()
        .unwrap();
    assert!(history.status.success(), "{}", text(&history.stderr));
    assert_eq!(text(&history.stdout).lines().count(), 3);
}

#[test]
fn xact_scope_records_a_lost_lock() {
    let ledger = Ledger::new();
    let key = unique_key("xlost");
    let dir = temp_dir("xlost");
    let child = start(
        ledger
            .pglock(&["--key", &key, "--scope", "xact", "--record"])
            .args(["--check-interval", "200ms", "-c", &ran_then_wait(&dir)]),
    );
    wait_until("the command running", LIMIT, || {
        lines(&dir.join("ran")) == 1
    });
    sql()
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_locks WHERE locktype = 'advisory' \
             AND classid::bigint = $1 AND objid::bigint = $2 AND granted",
            &[
                &(((key_id(&key) as u64) >> 32) as i64),
                &((key_id(&key) as u64 & 0xffff_ffff) as i64),
            ],
        )
        .unwrap();
    let (code, err) = finish(child);
    assert_eq!(code, 74, "{err}");
    assert_eq!(ledger.runs(&key), [("lost".into(), Some(74))]);
}

#[test]
fn a_host_clock_days_off_still_decides_by_the_server_clock() {
    let ledger = Ledger::new();
    let key = unique_key("skew");
    let dir = temp_dir("skew");
    let faked = |offset: &str, script: &str| {
        Command::new("faketime")
            .args([
                "-f",
                offset,
                BIN,
                "--key",
                &key,
                "--once-per",
                "1h",
                "-c",
                script,
            ])
            .env("PGLOCK_LEDGER", &ledger.table)
            .env_remove("PGLOCK_DATABASE_URL")
            .stdin(Stdio::null())
            .output()
            .expect("faketime is needed for this test: apt-get install faketime")
    };
    // The faked clock is visible to the command: the skew is real.
    let probe = faked("+3d", &format!("date +%s > {}/now", dir.display()));
    assert!(probe.status.success(), "{}", text(&probe.stderr));
    let skewed: i64 = read(&dir.join("now")).trim().parse().unwrap();
    let real = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(skewed - real > 2 * 86400, "faketime did not move the clock");
    // That run's time is the server's, not the host's.
    let drift: f64 = sql()
        .query_one(
            &format!(
                "SELECT abs(extract(epoch FROM now() - started_at))::float8 FROM {} WHERE key = $1",
                ledger.table
            ),
            &[&key],
        )
        .unwrap()
        .get(0);
    assert!(
        drift < 600.0,
        "started_at is {drift} s off the server's clock"
    );

    // A host 3 days ahead still sees the fresh success as within the hour.
    let never = dir.join("never");
    let ahead = faked("+3d", &format!("touch {}", never.display()));
    assert!(
        text(&ahead.stderr).contains("already succeeded"),
        "{}",
        text(&ahead.stderr)
    );
    // A host 3 days behind still sees a 2-hour-old success as outside it, and runs.
    sql()
        .execute(
            &format!(
                "UPDATE {} SET started_at = started_at - interval '2 hours', \
                 finished_at = finished_at - interval '2 hours' WHERE key = $1",
                ledger.table
            ),
            &[&key],
        )
        .unwrap();
    let behind = faked("-3d", &format!("touch {}/behind", dir.display()));
    assert!(behind.status.success(), "{}", text(&behind.stderr));
    assert!(dir.join("behind").exists());
    assert!(!never.exists());
}

#[test]
fn concurrent_inits_all_succeed_and_init_is_idempotent() {
    let ledger = Ledger::unmade();
    let children: Vec<_> = (0..6)
        .map(|_| {
            ledger
                .pglock(&["init"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<Output> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    for out in &outs {
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let created = outs
        .iter()
        .filter(|o| text(&o.stdout).starts_with("created ledger table"))
        .count();
    assert_eq!(created, 1);
    let again = ledger.pglock(&["init"]).output().unwrap();
    assert!(text(&again.stdout).contains("already exists"));
    let indexes: i64 = sql()
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = $1",
            &[&ledger.table.trim_start_matches("public.")],
        )
        .unwrap()
        .get(0);
    assert_eq!(indexes, 5, "the primary key and four indexes");
}

#[test]
fn a_missing_table_exits_78_and_the_command_does_not_run() {
    let ledger = Ledger::unmade();
    let key = unique_key("missing");
    let dir = temp_dir("missing");
    let marker = dir.join("ran");
    for args in [
        &["--record"][..],
        &["--once-per", "1h"],
        &["--record", "--scope", "xact"],
    ] {
        let out = ledger.run(&key, args, &format!("touch {}", marker.display()));
        assert_eq!(out.status.code(), Some(78), "{args:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("ledger table {} is missing", ledger.table))
                && err.contains("pglock init"),
            "{err}"
        );
        assert!(!marker.exists());
        // The lock was released on the way out.
        assert_eq!(held(&key), 0);
    }
    let history = ledger.pglock(&["history", "--all"]).output().unwrap();
    assert_eq!(history.status.code(), Some(78));
}

#[test]
fn a_least_privilege_role_works_after_init_grant() {
    let ledger = Ledger::unmade();
    let role = format!("pglock_runner_{}", std::process::id());
    let mut admin = sql();
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'pw'"
        ))
        .unwrap();
    let as_role = |args: &[&str]| {
        ledger
            .pglock(args)
            .env("PGUSER", &role)
            .env("PGPASSWORD", "pw")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // PostgreSQL 15 took CREATE on public away from everyone: the runner cannot init. Before
    // 15 anyone may create tables in public, so there is nothing to refuse.
    let version: i32 = admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    if version >= 150000 {
        let init = as_role(&["init"]);
        assert_eq!(init.status.code(), Some(78), "{}", text(&init.stderr));
        assert!(text(&init.stderr).contains("pglock init --print"));
    }

    let out = ledger.pglock(&["init", "--grant", &role]).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let key = unique_key("lp");
    let run = as_role(&["--key", &key, "--once-per", "1h", "-c", "true"]);
    assert!(run.status.success(), "{}", text(&run.stderr));
    let skip = as_role(&["--key", &key, "--once-per", "1h", "-c", "true"]);
    assert!(text(&skip.stderr).contains("already succeeded"));
    let check = as_role(&["check", "--key", &key, "--critical", "1h"]);
    assert_eq!(check.status.code(), Some(0), "{}", text(&check.stdout));
    // Not delete: pruning needs a role of its own.
    let prune = as_role(&["prune", "--older-than", "1ms"]);
    assert_eq!(prune.status.code(), Some(78), "{}", text(&prune.stderr));
    let rewrite = {
        let mut c = postgres::Config::new();
        c.host(&std::env::var("PGHOST").unwrap_or_else(|_| "localhost".into()))
            .port(
                std::env::var("PGPORT")
                    .ok()
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(5432),
            )
            .user(&role)
            .password("pw")
            .dbname(&std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()));
        let mut client = c.connect(postgres::NoTls).unwrap();
        client.batch_execute(&format!("UPDATE {} SET started_at = now()", ledger.table))
    };
    assert!(
        rewrite.is_err(),
        "the runner may not rewrite when runs started"
    );

    // Without a grant, a run says so and does not run.
    let other = Ledger::new();
    let denied = other
        .pglock(&["--key", &key, "--record", "-c", "true"])
        .env("PGUSER", &role)
        .env("PGPASSWORD", "pw")
        .output()
        .unwrap();
    assert_eq!(denied.status.code(), Some(78));
    assert!(
        text(&denied.stderr).contains("--grant ROLE"),
        "{}",
        text(&denied.stderr)
    );
    drop(other);
    drop(ledger);
    // DROP OWNED also revokes the grants that init made to the role.
    admin
        .batch_execute(&format!("DROP OWNED BY {role}; DROP ROLE {role}"))
        .unwrap();
}

#[test]
fn check_follows_the_monitoring_plugin_conventions() {
    let ledger = Ledger::new();
    let key = unique_key("check");
    let mut client = sql();
    ledger.insert(&mut client, &key, "succeeded", "2 hours");
    ledger.insert(&mut client, &key, "failed", "30 minutes");
    let check = |args: &[&str]| {
        let out = ledger
            .pglock(&["check", "--key", &key])
            .args(args)
            .output()
            .unwrap();
        let stdout = text(&out.stdout);
        assert_eq!(stdout.lines().count(), 1, "{stdout}");
        (out.status.code().unwrap(), stdout)
    };
    let (code, line) = check(&["--warning", "3h", "--critical", "4h"]);
    assert_eq!(code, 0);
    assert!(
        line.starts_with(&format!("PGLOCK OK - \"{key}\" last succeeded 2h00m ago ("))
            && line.contains(" UTC on web-9); last run failed, exit 1 29m")
            && line.contains(" ago on web-9 | 'last_success_age'=720")
            && line.ends_with("s;10800;14400;0; 'running'=0;;;0;1\n"),
        "{line}"
    );
    assert_eq!(check(&["--warning", "1h", "--critical", "4h"]).0, 1);
    let (code, line) = check(&["--critical", "1h"]);
    assert_eq!(code, 2);
    assert!(line.starts_with("PGLOCK CRITICAL - ") && line.contains("older than --critical 1h"));

    // A run in progress is mentioned.
    ledger.insert(&mut client, &key, "running", "1 minute");
    let (_, line) = check(&["--critical", "4h"]);
    assert!(line.contains("; running since "), "{line}");
    assert!(line.contains("'running'=1;"), "{line}");

    // Never succeeded: CRITICAL.
    let never = ledger
        .pglock(&["check", "--key", "no-such-key", "--critical", "1h"])
        .output()
        .unwrap();
    assert_eq!(never.status.code(), Some(2));
    assert!(
        text(&never.stdout).starts_with("PGLOCK CRITICAL - \"no-such-key\" has never succeeded")
    );

    // Usage errors are UNKNOWN (3), with the plugin line.
    for args in [
        &[][..],
        &["--critical", "soon"],
        &["--critical", "1h", "--warning", "2h"],
        &["--critical", "1h", "--bogus"],
    ] {
        let (code, line) = check(args);
        assert_eq!(code, 3, "{args:?}");
        assert!(line.starts_with("PGLOCK UNKNOWN - usage error: "), "{line}");
    }
    // No connection is CRITICAL; a missing table UNKNOWN.
    let down = ledger
        .pglock(&["check", "--key", &key, "--critical", "1h"])
        .args(["-d", "host=127.0.0.1 port=1 connect_timeout=5"])
        .output()
        .unwrap();
    assert_eq!(down.status.code(), Some(2));
    assert!(text(&down.stdout).starts_with("PGLOCK CRITICAL - cannot connect to "));
    let missing = pglock()
        .args([
            "check",
            "--key",
            &key,
            "--critical",
            "1h",
            "--ledger",
            "public.nope_nope",
        ])
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(3));
    assert!(text(&missing.stdout).starts_with("PGLOCK UNKNOWN - ledger table public.nope_nope"));
}

#[test]
fn metrics_are_accepted_by_promtool() {
    let ledger = Ledger::new();
    let plain = unique_key("metrics");
    let odd = format!("{plain}-\"quoted\" \\back\nline");
    assert!(ledger.run(&plain, &["--record"], "true").status.success());
    assert!(ledger.run(&odd, &["--record"], "exit 2").status.code() == Some(2));
    let dir = temp_dir("metrics");
    let file = dir.join("pglock.prom");
    let out = ledger
        .pglock(&["metrics", "--output", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let body = read(&file);
    assert!(
        body.contains(&format!(
            "pglock_last_run_exit_code{{key=\"{plain}-\\\"quoted\\\" \\\\back\\nline\"}} 2\n"
        )),
        "{body}"
    );
    assert!(body.contains(&format!(
        "pglock_last_success_timestamp_seconds{{key=\"{plain}\"}} 1"
    )));
    // Nothing else was left in the directory.
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
    let promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .expect("promtool is needed for this test: apt-get install prometheus");
    assert!(
        promtool.status.success(),
        "{}{}",
        text(&promtool.stdout),
        text(&promtool.stderr)
    );
}

#[test]
fn history_lists_runs_newest_first() {
    let ledger = Ledger::new();
    let key = unique_key("history");
    for script in ["exit 1", "true", "true"] {
        ledger.run(&key, &["--record"], script);
    }
    // A raw id of this test's own.
    let raw_id = format!("{},7", std::process::id());
    assert!(
        ledger
            .pglock(&["--lock-id", &raw_id, "--record", "-c", "true"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let out = ledger.pglock(&["history", "--key", &key]).output().unwrap();
    let table = text(&out.stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("STARTED (UTC)  "), "{table}");
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[1].contains(" succeeded  0 ") && rows[3].contains(" failed     1 "),
        "{table}"
    );

    let json = ledger
        .pglock(&["history", "--key", &key, "--json", "--last", "2"])
        .output()
        .unwrap();
    let runs: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert!(runs[0]["id"].as_i64() > runs[1]["id"].as_i64());
    for field in [
        "status",
        "exit_code",
        "host",
        "started_at",
        "finished_at",
        "duration_seconds",
    ] {
        assert!(runs[0].get(field).is_some(), "{field}");
    }
    assert!(runs[0]["started_at"].as_str().unwrap().ends_with('Z'));

    let raw = ledger
        .pglock(&["history", "--lock-id", &raw_id, "--json"])
        .output()
        .unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&raw.stdout).unwrap();
    assert_eq!(raw[0]["key"], format!("lock-id:{raw_id}"));
    let all = ledger
        .pglock(&["history", "--all", "--since", "1h"])
        .output()
        .unwrap();
    let all = text(&all.stdout);
    assert!(all.starts_with("KEY ") && all.lines().count() == 5, "{all}");
}

#[test]
fn prune_keeps_each_keys_newest_rows() {
    let ledger = Ledger::new();
    let (a, b) = (unique_key("prune-a"), unique_key("prune-b"));
    let mut client = sql();
    for (key, status, ago) in [
        (&a, "succeeded", "12 days"),
        (&a, "succeeded", "10 days"),
        (&a, "running", "11 days"),
        (&a, "failed", "9 days"),
        (&a, "failed", "1 hour"),
        (&b, "failed", "20 days"),
        (&b, "abandoned", "19 days"),
    ] {
        ledger.insert(&mut client, key, status, ago);
    }
    let dry = ledger
        .pglock(&["prune", "--older-than", "1d", "--dry-run"])
        .output()
        .unwrap();
    assert_eq!(
        text(&dry.stdout),
        format!(
            "would delete 3 runs older than 1d0h from {}\n",
            ledger.table
        )
    );
    assert_eq!(ledger.runs(&a).len() + ledger.runs(&b).len(), 7);
    let out = ledger
        .pglock(&["prune", "--older-than", "1d"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        format!("deleted 3 runs older than 1d0h from {}\n", ledger.table)
    );
    // a: the newest success, the run in progress, the newest finished run (1 hour old).
    assert_eq!(
        ledger.runs(&a),
        [
            ("succeeded".into(), Some(0)),
            ("running".into(), None),
            ("failed".into(), Some(1))
        ]
    );
    // b: never succeeded; its newest finished run stays.
    assert_eq!(ledger.runs(&b), [("abandoned".into(), None)]);
}

#[test]
fn once_per_needs_one_holder_at_a_time() {
    for args in [
        &["--once-per", "1h", "--shared"][..],
        &["--once-per", "1h", "--limit", "2"],
    ] {
        let out = pglock()
            .args(["--key", "k"])
            .args(args)
            .args(["--", "true"])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(text(&out.stderr).contains("pglock: usage error: "));
    }
}

#[test]
fn semaphore_runs_record_their_slot() {
    let ledger = Ledger::new();
    let key = unique_key("slots");
    let out = ledger.run(&key, &["--limit", "3", "--record"], "echo $PGLOCK_SLOT");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let slot: Option<i32> = sql()
        .query_one(
            &format!("SELECT slot FROM {} WHERE key = $1", ledger.table),
            &[&key],
        )
        .unwrap()
        .get(0);
    assert_eq!(slot, Some(text(&out.stdout).trim().parse().unwrap()));
}

#[test]
fn record_command_stores_the_command_only_when_asked() {
    let ledger = Ledger::new();
    let key = unique_key("cmdline");
    ledger.run(&key, &["--record"], "echo secret");
    ledger.run(&key, &["--record", "--record-command"], "echo shown");
    let commands: Vec<Option<String>> = sql()
        .query(
            &format!(
                "SELECT command FROM {} WHERE key = $1 ORDER BY id",
                ledger.table
            ),
            &[&key],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(commands, [None, Some("echo shown".to_string())]);
}
