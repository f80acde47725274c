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

/// Item 8: a lease longer than the server's idle timeouts hold (an int of milliseconds) failed
/// every run with exit 1. It is a usage error naming the flags it came from, and what the server
/// does take still runs.
#[test]
fn a_lease_the_server_cannot_take_is_a_usage_error_naming_the_flag() {
    let env = TestEnv::new("longlease");
    let ran = env.path("ran");
    let script = format!("echo ran >> {}", ran.display());
    for (args, named) in [
        (
            &["--lease", "25d"][..],
            "--lease 25d0h is longer than PostgreSQL can enforce",
        ),
        (
            &["--kill-after", "25d"],
            "--check-interval 5s and --kill-after 25d0h make a lease",
        ),
        (&["--check-interval", "13d"], "--check-interval 13d0h and"),
    ] {
        let out = run(pglock()
            .args(["--key", env.key()])
            .args(args)
            .args(["-c", &script]));
        refused(&out, 2, named);
        out.assert_stderr_contains("at most 24d20h31m23.647s (2147483647 ms)")
            .assert_stderr_contains("--lease 0");
    }
    // The order still holds below the bound.
    refused(
        &run(pglock().args(["--key", env.key(), "--lease", "1s", "-c", &script])),
        2,
        "--lease 1s is too short",
    );
    assert!(!ran.exists());
    // The longest lease the server takes, a check interval of days, and no lease at all.
    for args in [
        &["--lease", "24d20h31m23.647s"][..],
        &["--check-interval", "12d", "--kill-after", "1s"],
        &["--kill-after", "25d", "--lease", "0"],
        &["--check-interval", "3650d", "--lease", "0"],
    ] {
        run(pglock()
            .args(["--key", env.key()])
            .args(args)
            .args(["-c", &script]))
        .assert_success();
    }
    assert_eq!(read(&ran).lines().count(), 4);
}
