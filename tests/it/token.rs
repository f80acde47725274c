//! `--fencing-token`: PGLOCK_FENCING_TOKEN grows from each holder to the next, in both scopes
//! and per semaphore slot, and keeps growing across a server crash and across the promotion of a
//! standby that missed the last tokens. The crash and the failover happen to clusters of the
//! tests' own; each test also checks that the scenario would defeat a simpler token (a bare
//! transaction id, the checkpoint LSN, the postmaster's start time), so it fails if the design
//! regresses to one.

use crate::util::cluster::Cluster;
use crate::util::*;
use std::process::Command;

/// A token's parts, read back from its fixed-width digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Token {
    timeline: u32,
    checkpoint_lsn: u64,
    xid: u64,
}

impl Token {
    #[track_caller]
    fn parse(text: &str) -> Token {
        assert!(
            text.len() == 50 && text.bytes().all(|b| b.is_ascii_digit()),
            "not a 50-digit token: {text:?}"
        );
        Token {
            timeline: text[..10].parse().unwrap(),
            checkpoint_lsn: text[10..30].parse().unwrap(),
            xid: text[30..].parse().unwrap(),
        }
    }
}

/// Strictly increasing, as tuples and as the strings the command sees.
#[track_caller]
fn assert_increasing(what: &str, tokens: &[String]) {
    for pair in tokens.windows(2) {
        assert!(
            Token::parse(&pair[0]) < Token::parse(&pair[1]) && pair[0] < pair[1],
            "{what}: tokens do not increase: {tokens:#?}"
        );
    }
}

/// The token a pglock with `args` gives its command, which must run.
#[track_caller]
fn token(mut cmd: Command) -> String {
    let out = run(cmd.args([
        "--fencing-token",
        "-c",
        "printf %s \"$PGLOCK_FENCING_TOKEN\"",
    ]));
    out.assert_success();
    out.stdout()
}

/// `n` pglocks with `args`, started at once, each appending its slot and token to a log while it
/// holds the lock and then staying `hold` seconds: one holder after another (per slot), in the
/// log's order. Returns (slot, token) in that order.
fn contend(env: &TestEnv, args: &[&str], n: usize, hold: &str) -> Vec<(usize, String)> {
    let script = format!(
        "echo \"${{PGLOCK_SLOT:-0}} $PGLOCK_FENCING_TOKEN\" >> {}/log; sleep {hold}",
        env.dir().display()
    );
    let started: Vec<_> = (0..n)
        .map(|_| {
            let mut cmd = env.pglock(args);
            cmd.args(["--fencing-token", "-c", &script]);
            start(cmd)
        })
        .collect();
    for s in started {
        s.finish().assert_success();
    }
    read(&env.path("log"))
        .lines()
        .map(|line| {
            let (slot, token) = line.split_once(' ').unwrap();
            (slot.parse().unwrap(), token.to_string())
        })
        .collect()
}

#[test]
fn tokens_increase_from_holder_to_holder() {
    for (args, hold) in [
        (&[][..], "0.05"),
        (&["--scope", "xact"][..], "0.05"),
        (&["--shared"][..], "0.05"),
        // Long enough for all three slots to be taken at once.
        (&["--limit", "3"][..], "0.3"),
        (&["--limit", "3", "--scope", "xact"][..], "0.3"),
    ] {
        let env = TestEnv::new("token-order");
        let log = contend(&env, args, 10, hold);
        assert_eq!(log.len(), 10, "{args:?}");
        let slots: std::collections::BTreeSet<usize> = log.iter().map(|(s, _)| *s).collect();
        if args.contains(&"--limit") {
            assert!(slots.len() > 1, "{args:?}: only slots {slots:?} were used");
        }
        // Shared holders run side by side: theirs are only distinct.
        if args == ["--shared"] {
            let mut all: Vec<&String> = log.iter().map(|(_, t)| t).collect();
            all.sort();
            all.dedup();
            assert_eq!(all.len(), 10);
            continue;
        }
        for slot in slots {
            let tokens: Vec<String> = log
                .iter()
                .filter(|(s, _)| *s == slot)
                .map(|(_, t)| t.clone())
                .collect();
            assert_increasing(&format!("{args:?}, slot {slot}"), &tokens);
        }
    }
}

#[test]
fn no_token_without_the_flag() {
    let env = TestEnv::new("token-absent");
    for args in [&[][..], &["--limit", "2"], &["--scope", "xact"]] {
        env.run_script(args, "printf %s \"${PGLOCK_FENCING_TOKEN-absent}\"")
            .assert_success()
            .assert_stdout("absent");
    }
    // A lock not obtained runs nothing, token or not.
    let holder = env.hold(&[]);
    env.run_script(&["--fencing-token", "--nowait"], "touch ran")
        .assert_code(75);
    assert!(!env.exists("ran"));
    holder.release().assert_success();
}

/// Session scope commits the transaction that drew the token with the grant; xact scope cannot
/// (the lock is that transaction), so its holder keeps an xid, and with it VACUUM's horizon, until
/// the command ends. What the README says it costs.
#[test]
fn only_xact_scope_keeps_the_tokens_xid() {
    let env = TestEnv::new("token-xid");
    let xid_of_holder = |env: &TestEnv| -> Option<String> {
        let pid = env.backend_pid();
        env.probe()
            .query_one(
                "SELECT backend_xid::text FROM pg_stat_activity WHERE pid = $1",
                &[&pid],
            )
            .unwrap()
            .get(0)
    };
    let holder = env.hold(&["--fencing-token"]);
    assert_eq!(xid_of_holder(&env), None);
    holder.release().assert_success();
    let holder = env.hold(&["--fencing-token", "--scope", "xact"]);
    assert!(xid_of_holder(&env).is_some());
    holder.release().assert_success();
    let holder = env.hold(&["--scope", "xact"]);
    assert_eq!(xid_of_holder(&env), None, "without the flag, no xid");
    holder.release().assert_success();
}

const HBA: &str = "\
local all all scram-sha-256
host all all 127.0.0.1/32 scram-sha-256
host all all ::1/128 scram-sha-256
";

/// pglock on `cluster`'s key `env.key()`, with `args`.
fn on(cluster: &Cluster, env: &TestEnv, args: &[&str]) -> Command {
    let mut cmd = env.pglock(args);
    cmd.envs(cluster.pg_env());
    cmd
}

/// One token of each kind: session, xact, a semaphore slot.
fn one_of_each(cluster: &Cluster, env: &TestEnv) -> Vec<String> {
    [&[][..], &["--scope", "xact"], &["--limit", "2"]]
        .iter()
        .map(|args| token(on(cluster, env, args)))
        .collect()
}

#[test]
fn tokens_increase_across_a_crash() {
    // A transaction that wrote nothing commits asynchronously: the WAL writer flushes its commit
    // record within wal_writer_delay (200 ms by default), and a crash before that makes the
    // server hand its id out again. The longest delay makes that window cover the whole test,
    // so the crash always shows it.
    let conf = ["wal_writer_delay=10s".to_string()];
    let cluster = Cluster::start("token_crash", &conf, HBA, |_| {});
    let env = TestEnv::new("token-crash");
    let before = one_of_each(&cluster, &env);
    cluster.crash();
    cluster.start_again();
    let after = one_of_each(&cluster, &env);
    eprintln!("before the crash: {before:?}\nafter: {after:?}");
    let all: Vec<String> = before.iter().chain(&after).cloned().collect();
    assert_increasing("across the crash", &all);
    let (last, first) = (Token::parse(&before[2]), Token::parse(&after[0]));
    // Why the checkpoint LSN is there: the commits of the tokens' transaction ids never reached
    // the disk, and the restarted server hands them out again.
    assert!(
        first.xid <= last.xid,
        "the crash did not reissue transaction ids ({} after {}): the test shows nothing",
        first.xid,
        last.xid
    );
    assert!(first.checkpoint_lsn > last.checkpoint_lsn);
}

#[test]
fn a_promoted_standby_outbids_the_old_primary() {
    let replication = format!("{HBA}host replication postgres 127.0.0.1/32 scram-sha-256\n");
    let primary = Cluster::start("token_failover", &[], &replication, |_| {});
    // The primary restarts after the standby started: the standby has been running longer.
    let standby = primary.standby(HBA);
    let started = |c: &Cluster| -> std::time::SystemTime {
        c.client()
            .query_one("SELECT pg_postmaster_start_time()", &[])
            .unwrap()
            .get(0)
    };
    assert!(started(&standby) < started(&primary));
    let env = TestEnv::new("token-failover");
    let mut old = one_of_each(&primary, &env);
    let mut p = primary.client();
    let lsn = p
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .unwrap()
        .get::<_, String>(0);
    let mut s = standby.client();
    wait_until("the standby to replay what the primary wrote", || {
        s.query_one(
            "SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn",
            &[&lsn],
        )
        .unwrap()
        .get(0)
    });
    // A standby has no tokens to give, even when pglock is told to take any server.
    let mut anywhere = on(&standby, &env, &["--fencing-token", "-c", "touch ran"]);
    anywhere.env("PGTARGETSESSIONATTRS", "any");
    let refused = run(anywhere);
    eprintln!("on the standby: {}", refused.stderr());
    refused
        .assert_code(1)
        .assert_stderr_contains("recovery is in progress");
    assert!(!env.exists("ran"));
    // Cut the standby off, and let the primary go on: tokens, writes, a checkpoint it misses.
    primary.set_hba(HBA);
    p.batch_execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'walsender'",
    )
    .unwrap();
    old.extend(one_of_each(&primary, &env));
    p.batch_execute("CREATE TABLE filler AS SELECT generate_series(1, 20000) AS n; CHECKPOINT")
        .unwrap();
    old.extend(one_of_each(&primary, &env));
    drop(p);
    primary.crash();
    standby.promote();
    let new = one_of_each(&standby, &env);
    eprintln!("old primary: {old:?}\npromoted standby: {new:?}");
    let all: Vec<String> = old.iter().chain(&new).cloned().collect();
    assert_increasing("across the failover", &all);
    // Why the timeline comes first: the standby's checkpoint and ids are behind the old
    // primary's, and it started earlier.
    let (last, first) = (Token::parse(old.last().unwrap()), Token::parse(&new[0]));
    assert!(first.timeline > last.timeline);
    assert!(
        first.checkpoint_lsn < last.checkpoint_lsn && first.xid <= last.xid,
        "the standby missed nothing ({first:?} after {last:?}): the test shows nothing"
    );
}
