//! `pglock doctor` (issue 27) against real setups: the test server, a real PgBouncer in session
//! and in transaction pooling, a role with a connection limit, a missing and an outdated ledger
//! table, a host clock an hour off (faketime), a server that never answers.

use crate::fleet::Role;
use crate::ledger::Ledger;
use crate::util::bouncer::Bouncer;
use crate::util::*;
use std::net::TcpListener;
use std::time::{Duration, Instant};

fn doctor(args: &[&str]) -> Run {
    run(pglock().arg("doctor").args(args))
}

/// The line of a check, by its level and name.
#[track_caller]
fn line(out: &Run, level: &str, check: &str) -> String {
    let stdout = out.stdout();
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("{level:<4}  {check}:")))
        .unwrap_or_else(|| panic!("no {level} {check} line in:\n{stdout}"))
        .to_string()
}

/// The server's version number (`server_version_num`).
fn server_version() -> i32 {
    let text: String = sql()
        .query_one("SELECT current_setting('server_version_num')", &[])
        .unwrap()
        .get(0);
    text.parse().unwrap()
}

#[test]
fn a_direct_connection_is_all_ok_but_a_lease_without_idle_session_timeout() {
    let out = doctor(&[]);
    line(&out, "ok", "connection");
    assert!(line(&out, "ok", "pooler").contains("keeps its server session"));
    line(&out, "ok", "clock");
    let json = run(pglock().args(["doctor", "--json"])).json();
    assert!(json["checks"].as_array().unwrap().len() >= 5);
    if server_version() >= 140_000 {
        out.assert_code(0);
        assert!(line(&out, "ok", "lease").contains("22s: idle_session_timeout"));
        assert_eq!(json["result"], "ok");
    } else {
        // PostgreSQL 12 and 13 (the version matrix): the lease is TCP's alone in session scope.
        out.assert_code(1);
        assert!(line(&out, "warn", "lease").contains("by TCP keepalives only"));
        assert_eq!(json["result"], "warn");
        let xact = doctor(&["--scope", "xact"]);
        assert!(line(&xact, "ok", "lease").contains("idle_in_transaction_session_timeout"));
    }
}

#[test]
fn transaction_pooling_fails_session_scope_and_passes_xact_scope() {
    let bouncer = Bouncer::start("transaction");
    let out = doctor(&["-d", &bouncer.conninfo()]);
    out.assert_code(2);
    assert!(line(&out, "fail", "pooler").contains("use --scope xact"));
    let out = doctor(&["-d", &bouncer.conninfo(), "--scope", "xact"]);
    assert!(line(&out, "ok", "pooler").contains("fine for --scope xact"));
}

#[test]
fn session_pooling_is_fine_for_session_scope() {
    let bouncer = Bouncer::start("session");
    let out = doctor(&["-d", &bouncer.conninfo()]);
    assert!(line(&out, "ok", "pooler").contains("keeps its server session"));
}

#[test]
fn a_fleet_larger_than_the_roles_connection_limit_is_a_warning() {
    let role = Role::create(3);
    let port = std::env::var("PGPORT").unwrap_or_else(|_| "5432".into());
    let port: u16 = port.parse().unwrap();
    let out = run(role.pglock(port).args(["doctor", "--fleet", "2"]));
    assert!(line(&out, "ok", "limits").contains("a fleet of 2 fits"));
    let out = run(role.pglock(port).args(["doctor", "--fleet", "10"]));
    out.assert_code(1);
    let warn = line(&out, "warn", "limits");
    assert!(
        warn.contains("a fleet of 10 needs 10 connections"),
        "{warn}"
    );
    assert!(warn.contains("CONNECTION LIMIT"), "{warn}");
}

#[test]
fn a_missing_ledger_table_names_the_init_to_run() {
    let ledger = Ledger::unmade();
    let out = doctor(&["--record", "--ledger", &ledger.table]);
    out.assert_code(2);
    let fail = line(&out, "fail", "ledger");
    assert!(fail.contains("does not exist"), "{fail}");
    assert!(
        fail.contains(&format!("'pglock init --ledger {}'", ledger.table)),
        "{fail}"
    );
}

#[test]
fn an_outdated_ledger_table_names_what_it_lacks_and_an_up_to_date_one_is_ok() {
    let ledger = Ledger::new();
    let out = doctor(&["--once-per", "1h", "--ledger", &ledger.table]);
    assert!(line(&out, "ok", "ledger").contains("up to date and writable"));
    // As an earlier pglock made it: without the job runner's columns.
    sql()
        .batch_execute(&format!(
            "ALTER TABLE {} DROP COLUMN waited_ms",
            ledger.table
        ))
        .unwrap();
    let out = doctor(&["--record", "--ledger", &ledger.table]);
    out.assert_code(2);
    let fail = line(&out, "fail", "ledger");
    assert!(
        fail.contains("earlier pglock (no column waited_ms)"),
        "{fail}"
    );
    assert!(fail.contains("upgrade it with 'pglock init"), "{fail}");
}

#[test]
fn a_host_clock_an_hour_off_is_a_warning() {
    need("faketime", "faketime");
    let out = run(wrapped("faketime", &["-f", "+1h"]).arg("doctor"));
    out.assert_code(1);
    let warn = line(&out, "warn", "clock");
    assert!(warn.contains("1h00m ahead of the server's"), "{warn}");
}

#[test]
fn a_server_that_never_answers_fails_the_connection_within_the_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let started = Instant::now();
    let out = run(pglock()
        .args(["doctor"])
        .env("PGHOST", "127.0.0.1")
        .env("PGPORT", &port)
        .env("PGCONNECT_TIMEOUT", "2"));
    out.assert_code(2);
    assert!(line(&out, "fail", "connection").contains("no answer within 2s"));
    assert!(started.elapsed() < Duration::from_secs(5));
}
