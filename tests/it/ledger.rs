//! The run ledger (issue 12) against a real server: --record, --once-per and --max-attempts with
//! real contending processes, a pglock killed mid-run, xact scope through a real
//! transaction-pooling PgBouncer, a host clock days off (faketime), init, a least-privilege
//! role, and the history, check, metrics (parsed by promtool) and prune commands.
//!
//! Each test has its own table (`Ledger::new`), so they run in parallel with each other and with
//! the rest of the suite.

use crate::util::bouncer::Bouncer;
use crate::util::*;
use nix::sys::signal::Signal;
use postgres::Client;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

/// One test's ledger table, created with `pglock init` and dropped at the end (also for the job
/// runner's tests).
pub struct Ledger {
    pub table: String,
}

impl Ledger {
    pub fn new() -> Ledger {
        let ledger = Ledger::unmade();
        run(ledger.pglock(&["init"])).assert_success();
        ledger
    }

    /// A name no other test uses; nothing created.
    pub fn unmade() -> Ledger {
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
    pub fn pglock(&self, args: &[&str]) -> Command {
        let mut cmd = pglock();
        cmd.env("PGLOCK_LEDGER", &self.table).args(args);
        cmd
    }

    /// A lock-and-run of `script` under `key` with `args`.
    pub fn run(&self, key: &str, args: &[&str], script: &str) -> Run {
        run(self.pglock(&["--key", key]).args(args).args(["-c", script]))
    }

    /// The key's runs, oldest first: (status, exit_code).
    pub fn runs(&self, key: &str) -> Vec<(String, Option<i32>)> {
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
                    "INSERT INTO {} (key, lock_id, host, pid, backend_pid, db_user, started_at, \
                     finished_at, status, exit_code) VALUES ($1, $3, 'web-9', 1, 1, 'app', \
                     now() - interval '{ago}', {finished}, $2, {code})",
                    self.table
                ),
                &[&key, &status, &key_id(key).to_string()],
            )
            .unwrap();
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        let _ = sql().batch_execute(&format!("DROP TABLE IF EXISTS {}", self.table));
    }
}

/// A command that records that it ran and then waits for `go` to exist.
fn ran_then_wait(dir: &Path) -> String {
    format!(
        "echo \"$PGLOCK_RUN_ID\" >> {d}/ran; while [ ! -e {d}/go ]; do sleep 0.01; done",
        d = dir.display()
    )
}

/// How many runs `ran_then_wait` recorded.
fn ran(env: &TestEnv) -> usize {
    read(&env.path("ran")).lines().count()
}

#[test]
fn once_per_among_five_contenders_runs_exactly_once() {
    let ledger = Ledger::new();
    let env = TestEnv::new("once5");
    let key = env.key();
    let script = ran_then_wait(env.dir());
    let children: Vec<Started> = (0..5)
        .map(|_| {
            start(
                ledger
                    .pglock(&["--key", key, "--once-per", "1h"])
                    .args(["-c", &script]),
            )
        })
        .collect();
    // One runs, the four others queue behind it: real contention, observed on the server.
    wait_until("one run and four waiters", || {
        ran(&env) == 1 && env.waiting() == 4
    });
    std::fs::write(env.path("go"), "").unwrap();
    let results: Vec<Run> = children.into_iter().map(Started::finish).collect();
    assert_eq!(ran(&env), 1);
    let skips = results
        .iter()
        .filter(|r| r.stderr().contains("already succeeded"))
        .count();
    assert_eq!(skips, 4, "{results:?}");
    for result in &results {
        result.assert_code(0);
    }
    assert_eq!(ledger.runs(key), [("succeeded".into(), Some(0))]);
}

#[test]
fn a_failed_run_fails_over_to_the_next_waiter_then_later_runs_skip() {
    let ledger = Ledger::new();
    let env = TestEnv::new("failover");
    let key = env.key();
    // Host A fails while host B waits; B then runs the job itself.
    let a = start(
        ledger
            .pglock(&["--key", key, "--once-per", "1h"])
            .args(["-c", &format!("{}; exit 1", ran_then_wait(env.dir()))]),
    );
    wait_until("A running", || ran(&env) == 1);
    let b = start(ledger.pglock(&["--key", key, "--once-per", "1h"]).args([
        "-c",
        &format!(
            "echo \"[$PGLOCK_LAST_SUCCESS]\" > {}/b",
            env.dir().display()
        ),
    ]));
    wait_until("B waiting", || env.waiting() == 1);
    std::fs::write(env.path("go"), "").unwrap();
    a.finish().assert_code(1);
    b.finish().assert_code(0);
    // No earlier success: the variable is there and empty.
    assert_eq!(read(&env.path("b")), "[]\n");
    assert_eq!(
        ledger.runs(key),
        [("failed".into(), Some(1)), ("succeeded".into(), Some(0))]
    );

    // Now it is done: a skip says when and where, exits 0, runs nothing and records nothing.
    let never = env.path("never");
    let skip = ledger.run(
        key,
        &["--once-per", "1h"],
        &format!("touch {}", never.display()),
    );
    skip.assert_code(0)
        .assert_one_pglock_line()
        .assert_stderr_starts_with(&format!("pglock: \"{key}\" already succeeded "))
        .assert_stderr_contains(" UTC on ");
    assert!(!never.exists());
    assert!(skip.stderr().ends_with("(--once-per 1h00m)\n"), "{skip}");
    ledger
        .run(
            key,
            &["--once-per", "1h", "-q", "--done-exit-code", "9"],
            "true",
        )
        .assert_code(9)
        .assert_stderr("");
    assert_eq!(ledger.runs(key).len(), 2);

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
    let out = ledger
        .run(
            key,
            &["--record"],
            "echo $PGLOCK_RUN_ID $PGLOCK_LAST_SUCCESS",
        )
        .stdout();
    let (id, last) = out.trim().split_once(' ').unwrap();
    assert_eq!(last, at);
    assert!(id.parse::<i64>().unwrap() > 0);
}

#[test]
fn max_attempts_stops_replaying_a_deterministic_failure() {
    let ledger = Ledger::new();
    let env = TestEnv::new("attempts");
    let key = env.key();
    let script = format!("echo x >> {}/ran; exit 3", env.dir().display());
    for _ in 0..2 {
        ledger
            .run(key, &["--once-per", "1h", "--max-attempts", "2"], &script)
            .assert_code(3);
    }
    ledger
        .run(key, &["--once-per", "1h", "--max-attempts", "2"], &script)
        .assert_code(75)
        .assert_one_pglock_line()
        .assert_stderr_contains("failed 2 times within --once-per 1h00m (--max-attempts 2)");
    ledger
        .run(
            key,
            &["--once-per", "1h", "--max-attempts", "2", "-E", "9"],
            &script,
        )
        .assert_code(9);
    // The default is 3: one more try is allowed.
    ledger
        .run(key, &["--once-per", "1h"], &script)
        .assert_code(3);
    assert_eq!(ran(&env), 3);
    assert_eq!(ledger.runs(key).len(), 3);
}

#[test]
fn a_sigkilled_pglock_leaves_a_running_row_that_the_next_holder_abandons() {
    let ledger = Ledger::new();
    let env = TestEnv::new("killed");
    let key = env.key();
    // Short settings: the next holder takes the lock-delay they make (4 s).
    let child = start(
        ledger
            .pglock(&["--key", key, "--record", "--check-interval", "500ms"])
            .args(["--kill-after", "1s", "-c", &ran_then_wait(env.dir())]),
    );
    wait_until("the command running", || ran(&env) == 1);
    assert_eq!(ledger.runs(key), [("running".into(), None)]);
    child.kill(Signal::SIGKILL);
    child.finish().assert_signal(Signal::SIGKILL);
    wait_until("the lock freed", || env.granted() == 0);
    assert_eq!(ledger.runs(key), [("running".into(), None)]);

    ledger.run(key, &["--record"], "true").assert_success();
    assert_eq!(
        ledger.runs(key),
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
    let env = TestEnv::new("shared");
    let key = env.key();
    let first = start(
        ledger
            .pglock(&["--key", key, "--shared", "--record"])
            .args(["-c", &ran_then_wait(env.dir())]),
    );
    wait_until("the first running", || ran(&env) == 1);
    ledger
        .run(key, &["--shared", "--record"], "true")
        .assert_success();
    std::fs::write(env.path("go"), "").unwrap();
    first.finish().assert_code(0);
    assert_eq!(
        ledger.runs(key),
        [("succeeded".into(), Some(0)), ("succeeded".into(), Some(0))]
    );
}

#[test]
fn xact_scope_through_a_transaction_pooling_pgbouncer_records_success_and_failure() {
    let bouncer = Bouncer::start("transaction");
    let ledger = Ledger::new();
    let env = TestEnv::new("bounce");
    let key = env.key();
    let url = bouncer.conninfo();
    let args = ["--scope", "xact", "-d", &url, "--once-per", "1h"];
    // The run is written when it ends, in the lock's transaction: nothing shows while it runs.
    let running = start(
        ledger
            .pglock(&["--key", key])
            .args(args)
            .args(["-c", &format!("{}; exit 4", ran_then_wait(env.dir()))]),
    );
    wait_until("the command running", || ran(&env) == 1);
    assert_eq!(ledger.runs(key), []);
    std::fs::write(env.path("go"), "").unwrap();
    running.finish().assert_code(4);
    ledger.run(key, &args, "true").assert_success();
    let never = env.path("never");
    ledger
        .run(key, &args, &format!("touch {}", never.display()))
        .assert_stderr_contains("already succeeded");
    assert!(!never.exists());
    assert_eq!(
        ledger.runs(key),
        [("failed".into(), Some(4)), ("succeeded".into(), Some(0))]
    );
    // Reading through the pooler works too.
    let history = run(ledger.pglock(&["history", "--key", key, "-d", &url]));
    history.assert_success();
    assert_eq!(history.stdout().lines().count(), 3);
}

#[test]
fn xact_scope_records_a_lost_lock() {
    let ledger = Ledger::new();
    let env = TestEnv::new("xlost");
    let key = env.key();
    let child = start(
        ledger
            .pglock(&["--key", key, "--scope", "xact", "--record"])
            .args(["--check-interval", "200ms", "-c", &ran_then_wait(env.dir())]),
    );
    wait_until("the command running", || ran(&env) == 1);
    assert_eq!(env.terminate_holder(), 1, "no backend holds the lock");
    child.finish().assert_code(74);
    assert_eq!(ledger.runs(key), [("lost".into(), Some(74))]);
}

#[test]
fn a_host_clock_days_off_still_decides_by_the_server_clock() {
    need("faketime", "faketime");
    let ledger = Ledger::new();
    let env = TestEnv::new("skew");
    let faked = |offset: &str, script: &str| {
        run(wrapped("faketime", &["-f", offset])
            .args(["--key", env.key(), "--once-per", "1h", "-c", script])
            .env("PGLOCK_LEDGER", &ledger.table))
    };
    // The faked clock is visible to the command: the skew is real.
    faked("+3d", &format!("date +%s > {}/now", env.dir().display())).assert_success();
    let skewed: i64 = read(&env.path("now")).trim().parse().unwrap();
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
            &[&env.key()],
        )
        .unwrap()
        .get(0);
    assert!(
        drift < 600.0,
        "started_at is {drift} s off the server's clock"
    );

    // A host 3 days ahead still sees the fresh success as within the hour.
    let never = env.path("never");
    faked("+3d", &format!("touch {}", never.display())).assert_stderr_contains("already succeeded");
    // A host 3 days behind still sees a 2-hour-old success as outside it, and runs.
    sql()
        .execute(
            &format!(
                "UPDATE {} SET started_at = started_at - interval '2 hours', \
                 finished_at = finished_at - interval '2 hours' WHERE key = $1",
                ledger.table
            ),
            &[&env.key()],
        )
        .unwrap();
    faked("-3d", &format!("touch {}/behind", env.dir().display())).assert_success();
    assert!(env.exists("behind"));
    assert!(!never.exists());
}

#[test]
fn concurrent_inits_all_succeed_and_init_is_idempotent() {
    let ledger = Ledger::unmade();
    let outs: Vec<Run> = std::thread::scope(|s| {
        let inits: Vec<_> = (0..6)
            .map(|_| s.spawn(|| run(ledger.pglock(&["init"]))))
            .collect();
        inits.into_iter().map(|t| t.join().unwrap()).collect()
    });
    for out in &outs {
        out.assert_success();
    }
    let created = outs
        .iter()
        .filter(|o| o.stdout().starts_with("created ledger table"))
        .count();
    assert_eq!(created, 1, "{outs:?}");
    run(ledger.pglock(&["init"])).assert_stdout_contains("already exists");
    let indexes: i64 = sql()
        .query_one(
            "SELECT count(*) FROM pg_indexes WHERE tablename = $1",
            &[&ledger.table.trim_start_matches("public.")],
        )
        .unwrap()
        .get(0);
    assert_eq!(indexes, 6, "the primary key and five indexes");
}

#[test]
fn a_missing_table_exits_78_and_the_command_does_not_run() {
    let ledger = Ledger::unmade();
    let env = TestEnv::new("missing");
    let marker = env.path("ran");
    for args in [
        &["--record"][..],
        &["--once-per", "1h"],
        &["--record", "--scope", "xact"],
    ] {
        ledger
            .run(env.key(), args, &format!("touch {}", marker.display()))
            .assert_code(78)
            .assert_one_pglock_line()
            .assert_stderr_contains(&format!("ledger table {} is missing", ledger.table))
            .assert_stderr_contains("pglock init");
        assert!(!marker.exists());
        // The lock was released on the way out.
        assert_eq!(env.granted(), 0);
    }
    run(ledger.pglock(&["history", "--all"])).assert_code(78);
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
    let as_role = |ledger: &Ledger, args: &[&str]| {
        run(ledger
            .pglock(args)
            .env("PGUSER", &role)
            .env("PGPASSWORD", "pw"))
    };
    // PostgreSQL 15 took CREATE on public away from everyone: the runner cannot init. Before
    // 15 anyone may create tables in public, so there is nothing to refuse.
    let version: i32 = admin
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .unwrap()
        .get(0);
    if version >= 150000 {
        as_role(&ledger, &["init"])
            .assert_code(78)
            .assert_stderr_contains("pglock init --print");
    }

    run(ledger.pglock(&["init", "--grant", &role])).assert_success();
    let env = TestEnv::new("lp");
    let key = env.key();
    as_role(&ledger, &["--key", key, "--once-per", "1h", "-c", "true"]).assert_success();
    as_role(&ledger, &["--key", key, "--once-per", "1h", "-c", "true"])
        .assert_stderr_contains("already succeeded");
    as_role(&ledger, &["check", "--key", key, "--critical", "1h"]).assert_code(0);
    // Not delete: pruning needs a role of its own.
    as_role(&ledger, &["prune", "--older-than", "1ms"]).assert_code(78);
    let rewrite = sql_config()
        .user(&role)
        .password("pw")
        .connect(postgres::NoTls)
        .unwrap()
        .batch_execute(&format!("UPDATE {} SET started_at = now()", ledger.table));
    assert!(
        rewrite.is_err(),
        "the runner may not rewrite when runs started"
    );

    // Without a grant, a run says so and does not run.
    let other = Ledger::new();
    as_role(&other, &["--key", key, "--record", "-c", "true"])
        .assert_code(78)
        .assert_stderr_contains("--grant ROLE");
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
    let env = TestEnv::new("check");
    let key = env.key();
    let mut client = sql();
    ledger.insert(&mut client, key, "succeeded", "2 hours");
    ledger.insert(&mut client, key, "failed", "30 minutes");
    // The plugin line and the plugin status.
    let check = |args: &[&str]| {
        let out = run(ledger.pglock(&["check", "--key", key]).args(args));
        assert_eq!(out.stdout().lines().count(), 1, "{out}");
        (out.code().unwrap(), out.stdout())
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
    ledger.insert(&mut client, key, "running", "1 minute");
    let (_, line) = check(&["--critical", "4h"]);
    assert!(line.contains("; running since "), "{line}");
    assert!(line.contains("'running'=1;"), "{line}");

    // Never succeeded: CRITICAL.
    let never = run(ledger.pglock(&["check", "--key", "no-such-key", "--critical", "1h"]));
    never.assert_code(2);
    assert!(
        never
            .stdout()
            .starts_with("PGLOCK CRITICAL - \"no-such-key\" has never succeeded"),
        "{never}"
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
    let down = run(ledger
        .pglock(&["check", "--key", key, "--critical", "1h"])
        .args(["-d", "host=127.0.0.1 port=1 connect_timeout=5"]));
    down.assert_code(2);
    assert!(
        down.stdout()
            .starts_with("PGLOCK CRITICAL - cannot connect to "),
        "{down}"
    );
    let missing = run(pglock().args([
        "check",
        "--key",
        key,
        "--critical",
        "1h",
        "--ledger",
        "public.nope_nope",
    ]));
    missing.assert_code(3);
    assert!(
        missing
            .stdout()
            .starts_with("PGLOCK UNKNOWN - ledger table public.nope_nope"),
        "{missing}"
    );
}

#[test]
fn metrics_are_accepted_by_promtool() {
    need("promtool", "prometheus");
    let ledger = Ledger::new();
    let env = TestEnv::new("metrics");
    let plain = env.key();
    let odd = format!("{plain}-\"quoted\" \\back\nline");
    ledger.run(plain, &["--record"], "true").assert_success();
    ledger.run(&odd, &["--record"], "exit 2").assert_code(2);
    let file = env.path("pglock.prom");
    run(ledger.pglock(&["metrics", "--output", file.to_str().unwrap()])).assert_success();
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
    assert_eq!(std::fs::read_dir(env.dir()).unwrap().count(), 1);
    run(Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap()))
    .assert_success();
}

#[test]
fn history_lists_runs_newest_first() {
    let ledger = Ledger::new();
    let env = TestEnv::new("history");
    let key = env.key();
    for script in ["exit 1", "true", "true"] {
        ledger.run(key, &["--record"], script);
    }
    // A raw id of this test's own.
    let (a, b) = unique_pair();
    let raw_id = format!("{a},{b}");
    run(ledger.pglock(&["--lock-id", &raw_id, "--record", "-c", "true"])).assert_success();
    let table = run(ledger.pglock(&["history", "--key", key])).stdout();
    let rows: Vec<&str> = table.lines().collect();
    assert!(rows[0].starts_with("STARTED (UTC)  "), "{table}");
    assert_eq!(rows.len(), 4, "{table}");
    assert!(
        rows[1].contains(" succeeded  0 ") && rows[3].contains(" failed     1 "),
        "{table}"
    );

    let runs = run(ledger.pglock(&["history", "--key", key, "--json", "--last", "2"])).json();
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

    let raw = run(ledger.pglock(&["history", "--lock-id", &raw_id, "--json"])).json();
    assert_eq!(raw[0]["key"], format!("lock-id:{raw_id}"));
    let all = run(ledger.pglock(&["history", "--all", "--since", "1h"])).stdout();
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
    run(ledger.pglock(&["prune", "--older-than", "1d", "--dry-run"])).assert_stdout(&format!(
        "would delete 3 runs older than 1d0h from {}\n",
        ledger.table
    ));
    assert_eq!(ledger.runs(&a).len() + ledger.runs(&b).len(), 7);
    run(ledger.pglock(&["prune", "--older-than", "1d"]))
        .assert_success()
        .assert_stdout(&format!(
            "deleted 3 runs older than 1d0h from {}\n",
            ledger.table
        ));
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

/// Issue 23, item 12: prune kept each key text's newest success, but `--once-per` decides by
/// lock. `--key K` and `--key K --key-hash sqlx` are two locks of one key text: a newer success
/// of the second made prune delete the first's, and its `--once-per` ran the job again.
#[test]
fn prune_keeps_each_locks_newest_success_for_once_per() {
    let ledger = Ledger::new();
    let env = TestEnv::new("prunelock");
    let key = env.key();
    let mut client = sql();
    let age = |client: &mut Client| {
        client
            .execute(
                &format!(
                    "UPDATE {} SET started_at = started_at - interval '2 hours', \
                     finished_at = finished_at - interval '2 hours' WHERE key = $1",
                    ledger.table
                ),
                &[&key],
            )
            .unwrap();
    };
    // Two successes of the sha256 lock, 4 and 2 hours ago; one of the sqlx lock, now.
    ledger.run(key, &["--record"], "true").assert_success();
    age(&mut client);
    ledger.run(key, &["--record"], "true").assert_success();
    age(&mut client);
    ledger
        .run(key, &["--key-hash", "sqlx", "--record"], "true")
        .assert_success();
    // Only the older success of the sha256 lock is superseded within its lock.
    run(ledger.pglock(&["prune", "--older-than", "1h"]))
        .assert_success()
        .assert_stdout(&format!(
            "deleted 1 runs older than 1h00m from {}\n",
            ledger.table
        ));
    assert_eq!(ledger.runs(key).len(), 2);
    // The sha256 lock's success 2 hours ago still counts for its --once-per.
    let marker = env.path("ran");
    ledger
        .run(
            key,
            &["--once-per", "1d"],
            &format!("touch {}", marker.display()),
        )
        .assert_success()
        .assert_stderr_contains("already succeeded");
    assert!(!marker.exists(), "--once-per ran the job again");
}

#[test]
fn once_per_needs_one_holder_at_a_time() {
    for args in [
        &["--once-per", "1h", "--shared"][..],
        &["--once-per", "1h", "--limit", "2"],
    ] {
        run(pglock()
            .args(["--key", "k"])
            .args(args)
            .args(["--", "true"]))
        .assert_code(2)
        .assert_stderr_contains("pglock: usage error: ");
    }
}

#[test]
fn semaphore_runs_record_their_slot() {
    let ledger = Ledger::new();
    let env = TestEnv::new("slots");
    let out = ledger.run(
        env.key(),
        &["--limit", "3", "--record"],
        "echo $PGLOCK_SLOT",
    );
    out.assert_success();
    let slot: Option<i32> = sql()
        .query_one(
            &format!("SELECT slot FROM {} WHERE key = $1", ledger.table),
            &[&env.key()],
        )
        .unwrap()
        .get(0);
    assert_eq!(slot, Some(out.stdout().trim().parse().unwrap()));
}

#[test]
fn record_command_stores_the_command_only_when_asked() {
    let ledger = Ledger::new();
    let env = TestEnv::new("cmdline");
    let key = env.key();
    ledger.run(key, &["--record"], "echo secret");
    ledger.run(key, &["--record", "--record-command"], "echo shown");
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

/// Issue 18, item 11: through a transaction-pooling PgBouncer whose pool the waiters fill, the
/// holder's ledger must not need a pool connection the waiters took: its writes go over the
/// lock's own (pinned) connection, so the job still runs exactly once.
#[test]
fn once_per_in_xact_scope_holds_when_waiters_fill_the_pool() {
    let bouncer = Bouncer::start_with("transaction", &[("default_pool_size", "5")]);
    let ledger = Ledger::new();
    let env = TestEnv::new("xpool");
    let key = env.key();
    let url = bouncer.conninfo();
    let script = ran_then_wait(env.dir());
    let children: Vec<Started> = (0..6)
        .map(|_| {
            start(
                ledger
                    .pglock(&[
                        "--key",
                        key,
                        "--scope",
                        "xact",
                        "-d",
                        &url,
                        "--once-per",
                        "1h",
                    ])
                    .args(["-c", &script]),
            )
        })
        .collect();
    // One runs; four wait on the server, filling the pool of five; the sixth queues in
    // PgBouncer for a server connection.
    wait_until("one run and four waiters", || {
        ran(&env) == 1 && env.waiting() == 4
    });
    std::fs::write(env.path("go"), "").unwrap();
    let results: Vec<Run> = children.into_iter().map(Started::finish).collect();
    assert_eq!(ran(&env), 1, "{results:?}");
    for result in &results {
        result.assert_code(0);
    }
    let skips = results
        .iter()
        .filter(|r| r.stderr().contains("already succeeded"))
        .count();
    assert_eq!(skips, 5, "{results:?}");
    assert_eq!(ledger.runs(key), [("succeeded".into(), Some(0))]);
}

/// Issue 18, item 12: runs are keyed by the lock, not by the key's text. `--key K` and
/// `--key K --key-hash sqlx` are two locks that run at once: neither may call the other's run
/// abandoned.
#[test]
fn two_locks_of_one_key_text_keep_their_runs_apart() {
    let ledger = Ledger::new();
    let env = TestEnv::new("bylock");
    let key = env.key();
    let first = start(
        ledger
            .pglock(&["--key", key, "--record"])
            .args(["-c", &ran_then_wait(env.dir())]),
    );
    wait_until("the first running", || ran(&env) == 1);
    ledger
        .run(key, &["--key-hash", "sqlx", "--record"], "true")
        .assert_success();
    std::fs::write(env.path("go"), "").unwrap();
    first.finish().assert_code(0);
    assert_eq!(
        ledger.runs(key),
        [("succeeded".into(), Some(0)), ("succeeded".into(), Some(0))]
    );
}

/// Issue 18, item 12: `--lock-id ID` and `--key lock-id:ID` are two locks, so they share no
/// `--once-per` state; the same lock under another name does.
#[test]
fn once_per_follows_the_lock_not_the_name() {
    let ledger = Ledger::new();
    let env = TestEnv::new("bylockid");
    let id = key_id(env.key()).to_string();
    let as_key = format!("lock-id:{id}");
    let once = ["--once-per", "1h", "-c", "true"];
    run(ledger.pglock(&["--lock-id", &id]).args(once)).assert_success();
    let other = run(ledger.pglock(&["--key", &as_key]).args(once));
    other.assert_success();
    assert!(!other.stderr().contains("already succeeded"), "{other:?}");
    // `--key K` is lock id sha256(K): the same lock as `--lock-id` of that id.
    run(ledger
        .pglock(&["--lock-id", &key_id(env.key()).to_string()])
        .args(once))
    .assert_stderr_contains("already succeeded");
    run(ledger.pglock(&["--key", env.key()]).args(once))
        .assert_stderr_contains("already succeeded");
}

/// Issue 18, item 12: a table made by an earlier pglock (no lock_id column) is refused with
/// what to do, and `pglock init` upgrades it so that its old successes still count.
#[test]
fn init_upgrades_a_table_of_an_earlier_pglock() {
    let ledger = Ledger::unmade();
    let env = TestEnv::new("upgrade");
    let key = env.key();
    let t = &ledger.table;
    let mut client = sql();
    client
        .batch_execute(&format!(
            "CREATE TABLE {t} (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
             key text NOT NULL, slot integer, host text NOT NULL, pid integer NOT NULL, \
             backend_pid integer NOT NULL, db_user text NOT NULL, started_at timestamptz NOT NULL, \
             finished_at timestamptz, status text NOT NULL, exit_code integer, command text)"
        ))
        .unwrap();
    client
        .execute(
            &format!(
                "INSERT INTO {t} (key, slot, host, pid, backend_pid, db_user, started_at, \
                 finished_at, status, exit_code) VALUES ($1, NULL, 'h', 1, 1, 'u', now(), now(), \
                 'succeeded', 0), ($2, NULL, 'h', 1, 1, 'u', now(), now(), 'succeeded', 0), \
                 ($1, 0, 'h', 1, 1, 'u', now(), now(), 'succeeded', 0)"
            ),
            &[&key, &"lock-id:1,2"],
        )
        .unwrap();
    let never = env.path("never");
    let touch = format!("touch {}", never.display());
    let refused = ledger.run(key, &["--once-per", "1h"], &touch);
    refused.assert_code(78);
    refused.assert_stderr_contains("pglock init");
    assert!(!never.exists());

    run(ledger.pglock(&["init"])).assert_success();
    let ids: Vec<String> = client
        .query(&format!("SELECT lock_id FROM {t} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let gate = {
        use sha2::{Digest, Sha256};
        let d = Sha256::digest(format!("{key}\0gate").as_bytes());
        i64::from_be_bytes(d[..8].try_into().unwrap()).to_string()
    };
    assert_eq!(ids, [key_id(key).to_string(), "1,2".into(), gate]);
    ledger
        .run(key, &["--once-per", "1h"], &touch)
        .assert_stderr_contains("already succeeded");
    assert!(!never.exists());
    // Once upgraded, init leaves it as it is.
    run(ledger.pglock(&["init"])).assert_stdout_contains("already exists");
}

/// Issue 23, item 5: a waiter granted the lock after the holder committed its success must see
/// it, whatever isolation level the database or role makes the default. The lock's transaction
/// used to take its snapshot with its first statement, before the wait, under repeatable read
/// and serializable, and the waiter ran the job again.
#[test]
fn once_per_in_xact_scope_sees_the_last_success_whatever_the_default_isolation() {
    let ledger = Ledger::new();
    for level in ["serializable", "repeatable\\ read"] {
        let env = TestEnv::new("xactiso");
        let key = env.key();
        let options = format!("-c default_transaction_isolation={level}");
        let contender = || {
            let mut cmd = ledger.pglock(&["--key", key, "--scope", "xact", "--once-per", "1h"]);
            cmd.env("PGOPTIONS", &options)
                .args(["-c", &ran_then_wait(env.dir())]);
            start(cmd)
        };
        let a = contender();
        wait_until("A running", || ran(&env) == 1);
        let b = contender();
        wait_until("B waiting", || env.waiting() == 1);
        std::fs::write(env.path("go"), "").unwrap();
        a.finish().assert_success();
        b.finish()
            .assert_success()
            .assert_stderr_contains("already succeeded");
        assert_eq!(ran(&env), 1, "{level}");
        assert_eq!(ledger.runs(key), [("succeeded".into(), Some(0))], "{level}");
    }
}

/// Issue 23, item 5: sessions that are read-only by default (default_transaction_read_only, as
/// a database's or role's setting, or in PGOPTIONS) are refused as a standby is, saying why;
/// with target_session_attrs=any pglock's own transactions are read write, so the run is
/// recorded (xact scope used to warn that it could not record it, and run the job unrecorded).
#[test]
fn sessions_read_only_by_default_are_refused_clearly_or_written_explicitly() {
    let ledger = Ledger::new();
    let env = TestEnv::new("rodefault");
    let key = env.key();
    let read_only = "-c default_transaction_read_only=on";
    for scope in ["session", "xact"] {
        let out = run(ledger
            .pglock(&["--key", key, "--scope", scope, "--once-per", "1h"])
            .env("PGOPTIONS", read_only)
            .args(["-c", &format!("touch {}/ran", env.dir().display())]));
        out.assert_code(69)
            .assert_one_pglock_line()
            .assert_stderr_contains("default_transaction_read_only is on");
        assert!(!env.exists("ran"));
    }
    let any = |scope: &str| {
        let mut cmd = ledger.pglock(&["--key", key, "--scope", scope, "--record"]);
        cmd.env("PGOPTIONS", read_only)
            .env("PGTARGETSESSIONATTRS", "any")
            .args(["--", "true"]);
        run(cmd)
    };
    any("xact").assert_success().assert_stderr("");
    any("session").assert_success().assert_stderr("");
    assert_eq!(
        ledger.runs(key),
        vec![("succeeded".to_string(), Some(0)); 2]
    );
}

/// Issue 23, item 6: a signal the command survived (a daemon that reloads on SIGHUP) cuts
/// nothing short when the command ends normally well after it. The ledger's end and the release
/// used to get 250 ms however long ago the signal came: an end that waited longer (here for a
/// row lock, as for a slow commit) was cut, the row stayed `running`, and `--once-per` ran the
/// job again.
#[test]
fn a_signal_the_command_survived_does_not_cut_the_ledgers_end_short() {
    let ledger = Ledger::new();
    let env = TestEnv::new("hupsurvived");
    let key = env.key();
    // It reloads on SIGHUP, and ends 1.5 s later: after pglock's grace of a second.
    let script = format!(
        "trap 'touch {d}/hup' HUP; touch {d}/ready; \
         while [ ! -e {d}/hup ]; do sleep 0.01 & wait; done; sleep 1.5",
        d = env.dir().display()
    );
    let child = start(ledger.pglock(&["--key", key, "--once-per", "1h", "-c", &script]));
    env.wait_for_file("ready");
    let backend = env.backend_pid();
    // The run's row, share-locked: its end waits for this transaction.
    let mut blocker = sql();
    let mut tx = blocker.transaction().unwrap();
    let locked = tx
        .query(
            &format!(
                "SELECT 1 FROM {} WHERE key = $1 AND status = 'running' FOR SHARE",
                ledger.table
            ),
            &[&key],
        )
        .unwrap();
    assert_eq!(locked.len(), 1);
    child.kill(Signal::SIGHUP);
    env.wait_for_file("hup");
    wait_until(
        "the end to wait a second for the row, or its connection to be cut",
        || {
            let row = env
                .probe()
                .query_one(
                    "SELECT count(*) FILTER (WHERE wait_event_type = 'Lock' \
                 AND query_start < clock_timestamp() - interval '1 second'), count(*) \
                 FROM pg_stat_activity WHERE pid = $1",
                    &[&backend],
                )
                .unwrap();
            let (waited, exists): (i64, i64) = (row.get(0), row.get(1));
            waited == 1 || exists == 0
        },
    );
    tx.commit().unwrap();
    child.finish().assert_success().assert_stderr("");
    assert_eq!(ledger.runs(key), [("succeeded".into(), Some(0))]);
    let never = env.path("never");
    ledger
        .run(
            key,
            &["--once-per", "1h"],
            &format!("touch {}", never.display()),
        )
        .assert_success()
        .assert_stderr_contains("already succeeded");
    assert!(!never.exists());
}

/// Issue 18, item 13: in session scope, a lock lost while the command runs is recorded `lost`
/// at once, over a connection of the ledger's own (the lock's is gone), not left `running`.
#[test]
fn session_scope_records_a_lost_lock() {
    let ledger = Ledger::new();
    let env = TestEnv::new("slost");
    let key = env.key();
    let child = start(ledger.pglock(&["--key", key, "--record"]).args([
        "--check-interval",
        "200ms",
        "-c",
        &ran_then_wait(env.dir()),
    ]));
    wait_until("the command running", || ran(&env) == 1);
    assert_eq!(env.terminate_holder(), 1, "no backend holds the lock");
    child.finish().assert_code(74);
    assert_eq!(ledger.runs(key), [("lost".into(), Some(74))]);
}

/// Issue 18, item 14: two long table names in one schema that share their first 50 bytes each
/// get all their indexes (index names used to be cut to fit, so the second table's clashed with
/// the first's and IF NOT EXISTS silently skipped them).
#[test]
fn long_table_names_in_one_schema_each_get_their_indexes() {
    let stem = format!("ledger_long_{}_{}", std::process::id(), "x".repeat(60));
    let names: Vec<String> = ["a", "b"]
        .iter()
        .map(|end| format!("{}{end}", &stem[..62]))
        .collect();
    for name in &names {
        run(pglock().args(["init", "--ledger", name])).assert_success();
    }
    let mut client = sql();
    for name in &names {
        let indexes: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_indexes WHERE tablename = $1",
                &[name],
            )
            .unwrap()
            .get(0);
        let _ = client.batch_execute(&format!("DROP TABLE IF EXISTS public.{name}"));
        assert_eq!(indexes, 6, "{name}: the primary key and five indexes");
    }
}

/// Nanoseconds since the epoch, as a command wrote them with `date +%s%N`.
pub fn nanos(path: &Path) -> u128 {
    let text = read(path);
    text.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {text:?}: {e}", path.display()))
}

/// Issue 24, item 4: the server ends the holder's session and frees its lock at once, while the
/// old command still handles its SIGTERM. With the ledger, the next holder finds the old run
/// still `running` and waits (the lock-delay) until that command must have stopped: 2 x its
/// --check-interval + its --kill-after + 2 s. Without it, B started about 3 s before A's command
/// ended.
#[test]
fn after_a_server_side_loss_the_next_holder_waits_for_the_old_command_to_stop() {
    let ledger = Ledger::new();
    let env = TestEnv::new("ldelay");
    let key = env.key();
    let (a_started, a_last, b_first) = (env.path("a"), env.path("a_last"), env.path("b_first"));
    // A needs 3 s to stop after SIGTERM; its last instruction writes the time.
    let a_script = until_sigterm(
        &format!("touch {}", a_started.display()),
        &format!("sleep 3; date +%s%N > {}; exit 143", a_last.display()),
    );
    let a = start(
        ledger
            .pglock(&["--key", key, "--record", "--check-interval", "500ms"])
            .args(["--kill-after", "6s", "-c", &a_script]),
    );
    wait_until("A's command running", || a_started.exists());
    let b = start(
        ledger
            .pglock(&["--key", key, "--record", "-v"])
            .args(["-c", &format!("date +%s%N > {}", b_first.display())]),
    );
    wait_until("B waiting", || env.waiting() == 1);
    assert_eq!(env.terminate_holder(), 1, "no backend holds the lock");
    let b = b.finish();
    a.finish().assert_code(74);
    let (a_end, b_start) = (nanos(&a_last), nanos(&b_first));
    assert!(
        b_start > a_end,
        "B's command started {} ms before A's command's last instruction\n{b}",
        (a_end - b_start) / 1_000_000
    );
    b.assert_success();
    b.assert_stderr_contains("lock-delay: an earlier run of");
    b.assert_stderr_contains("waiting 9s");
    b.assert_stderr_contains("lock-delay over; starting the command");
    // B found A's run still running and marked it abandoned; A's late `lost` found it so.
    assert_eq!(
        ledger.runs(key),
        [("abandoned".into(), None), ("succeeded".into(), Some(0))]
    );
}

/// The lock-delay is only for an unclean end: after a clean run the next holder starts at once
/// (no line about it in -v), and the runs record their settings for the next holder.
#[test]
fn after_a_clean_run_the_next_holder_takes_no_lock_delay() {
    let ledger = Ledger::new();
    let env = TestEnv::new("nodelay");
    let key = env.key();
    let a = start(
        ledger
            .pglock(&["--key", key, "--record", "--kill-after", "7s"])
            .args(["-c", &ran_then_wait(env.dir())]),
    );
    wait_until("A's command running", || ran(&env) == 1);
    let b = start(
        ledger
            .pglock(&["--key", key, "--record", "-v", "--on-lost", "ignore"])
            .args(["-c", "true"]),
    );
    wait_until("B waiting", || env.waiting() == 1);
    std::fs::write(env.path("go"), "").unwrap();
    a.finish().assert_success();
    let b = b.finish();
    b.assert_success();
    b.assert_stderr_contains("recorded run");
    b.assert_stderr_lacks("lock-delay");
    b.assert_stderr_lacks("abandoned");
    let settings: Vec<(Option<i64>, Option<i64>)> = sql()
        .query(
            &format!(
                "SELECT kill_after_ms, check_interval_ms FROM {} ORDER BY id",
                ledger.table
            ),
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    // --on-lost ignore lets the command run on after a loss: nothing bounds it.
    assert_eq!(settings, [(Some(7000), Some(5000)), (None, Some(5000))]);
}

/// A terminating signal ends the lock-delay: the command does not start, and pglock exits at
/// once with 128+N.
#[test]
fn a_signal_ends_the_lock_delay_and_the_command_never_starts() {
    let ledger = Ledger::new();
    let env = TestEnv::new("delaysig");
    let key = env.key();
    let mut client = sql();
    // A run whose holder vanished, recorded with a long --kill-after.
    client
        .execute(
            &format!(
                "INSERT INTO {} (key, lock_id, host, pid, backend_pid, db_user, started_at, \
                 status, kill_after_ms, check_interval_ms) VALUES ($1, $2, 'web-9', 1, 1, 'app', \
                 now(), 'running', 600000, 1000)",
                ledger.table
            ),
            &[&key, &key_id(key).to_string()],
        )
        .unwrap();
    let never = env.path("never");
    let b = start(
        ledger
            .pglock(&["--key", key, "--record", "-v"])
            .args(["-c", &format!("touch {}", never.display())]),
    );
    wait_until("B in its lock-delay", || {
        b.stderr_so_far().contains("lock-delay: ")
    });
    let signalled = std::time::Instant::now();
    b.kill(Signal::SIGTERM);
    let b = b.finish();
    assert!(
        signalled.elapsed() < std::time::Duration::from_secs(3),
        "{b}"
    );
    b.assert_code(143);
    assert!(!never.exists());
    assert_eq!(
        ledger.runs(key),
        [("abandoned".into(), None), ("failed".into(), Some(143))]
    );
}

/// A table of the previous pglock has no kill_after_ms: a run says to run `pglock init`, which
/// adds the columns in place, and the lock-delay then works.
#[test]
fn init_adds_the_lock_delay_columns_in_place() {
    let ledger = Ledger::new();
    let env = TestEnv::new("delaycols");
    let key = env.key();
    let t = &ledger.table;
    let mut client = sql();
    client
        .batch_execute(&format!(
            "ALTER TABLE {t} DROP COLUMN kill_after_ms, DROP COLUMN check_interval_ms"
        ))
        .unwrap();
    ledger.insert(&mut client, key, "succeeded", "1 hour");
    let refused = ledger.run(key, &["--record"], "true");
    refused.assert_code(78);
    refused.assert_stderr_contains("pglock init");
    run(ledger.pglock(&["init"])).assert_stdout_contains("already exists");
    ledger.run(key, &["--record"], "true").assert_success();
    let recorded: Vec<Option<i64>> = client
        .query(&format!("SELECT kill_after_ms FROM {t} ORDER BY id"), &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(recorded, [None, Some(10_000)]);
    // Idempotent: once the columns exist, init changes nothing.
    run(ledger.pglock(&["init"])).assert_success();
}
