//! Issue 18, item 17: options written before a subcommand, and usage errors' one-line summary.

use crate::util::*;

#[test]
fn options_before_a_subcommand_apply_to_it() {
    let env = TestEnv::new("hoist");
    // `status` of a free lock exits 3 (LSB), with -v's steps on stderr.
    run(pglock().args(["-v", "status", "--key", env.key()]))
        .assert_code(3)
        .assert_stderr_contains("connecting to");
    run(pglock().args(["-v", "key", env.key()])).assert_success();
    // A flag the subcommand does not take stays an error, named as clap names it.
    run(pglock().args(["--nowait", "status", "--key", env.key()]))
        .assert_code(2)
        .assert_stderr_contains("pglock: usage error: unexpected argument 'status'");
}

#[test]
fn check_usage_errors_are_unknown_and_name_what_is_missing() {
    for args in [
        &["check", "--key", "k"][..],
        &["-v", "check", "--key", "k"],
        &["-v", "-d", "host=nowhere.invalid", "check", "--key", "k"],
    ] {
        let out = run(pglock().args(args));
        out.assert_code(3).assert_stderr_contains(
            "pglock: usage error: the following required arguments were not provided: \
             --critical <DURATION>; see 'pglock --help'",
        );
        assert!(
            out.stdout().starts_with("PGLOCK UNKNOWN - usage error: "),
            "{args:?}: {out:?}"
        );
    }
    // The lock-and-run form's usage line names what is missing too.
    run(pglock().args(["--", "true"]))
        .assert_code(2)
        .assert_stderr_contains("not provided: <--key <KEY>|--lock-id <ID>>");
}
