//! Issue 23, items 8 and 9: durations longer than the clocks, or the server's settings, can
//! hold. Each is refused up front with a `pglock:` line and a documented status, never a panic
//! (101) or a failure of every run (1).

use crate::util::*;

/// Twenty digits: more seconds than a `Duration` times two, or an `Instant` plus it, can hold.
const HUGE: &str = "9999999999999999999";

#[track_caller]
fn refused(out: &Run, code: i32, text: &str) {
    assert_ne!(out.code(), Some(101), "a panic: {out:?}");
    out.assert_code(code).assert_stderr_contains(text);
    let last = out.stderr().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("pglock: "),
        "ends with a pglock: line: {out:?}"
    );
}

#[test]
fn huge_durations_are_usage_errors_not_panics() {
    let env = TestEnv::new("huge");
    for flag in [
        "--check-interval",
        "--min-hold",
        "--retry-connect",
        "--connect-timeout",
        "--kill-after",
        "--lease",
        "--timeout",
        "--once-per",
    ] {
        let out = run(pglock().args(["--key", env.key(), flag, HUGE, "-c", "true"]));
        refused(
            &out,
            2,
            &format!("pglock: usage error: invalid value '{HUGE}' for '{flag}"),
        );
        out.assert_stderr_contains("at most 3650d");
    }
    for args in [
        &["history", "--all", "--since", HUGE][..],
        &["prune", "--older-than", HUGE],
    ] {
        refused(&run(pglock().args(args)), 2, "at most 3650d");
    }
    // A monitoring plugin's usage error is UNKNOWN.
    refused(
        &run(pglock().args(["check", "--key", env.key(), "--critical", HUGE])),
        3,
        "at most 3650d",
    );
    let i64_max = "9223372036854775807";
    for (conninfo, named) in [
        (format!("connect_timeout={i64_max}"), "connect_timeout"),
        (
            format!("postgresql:///?connect_timeout={i64_max}"),
            "connect_timeout",
        ),
    ] {
        let out = run(pglock().args(["-d", &conninfo, "--key", env.key(), "-c", "true"]));
        refused(
            &out,
            2,
            &format!("pglock: invalid value \"{i64_max}\" for {named}"),
        );
        out.assert_one_pglock_line();
    }
    for args in [
        &["--key", env.key(), "-c", "true"][..],
        &["status", "--key", env.key()],
    ] {
        let out = run(pglock().env("PGCONNECT_TIMEOUT", i64_max).args(args));
        refused(
            &out,
            2,
            "for PGCONNECT_TIMEOUT; use at most 315360000 seconds",
        );
        out.assert_one_pglock_line();
    }
    // The longest accepted duration works where it is harmless.
    run(pglock().args(["--key", env.key(), "--retry-connect", "3650d", "-c", "true"]))
        .assert_success();
}
