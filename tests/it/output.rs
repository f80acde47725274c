//! Issue 18, items 15 and 16: where the report commands' output goes, and what happens when it
//! cannot be written.

use crate::util::*;
use std::os::unix::fs::FileTypeExt;
use std::process::Stdio;

/// Every report command, with what it needs; a fresh ledger table for those that read one.
fn reports(table: &str) -> Vec<Vec<String>> {
    let with = |args: &[&str]| args.iter().map(|a| a.to_string()).collect::<Vec<_>>();
    vec![
        with(&["key", "k"]),
        with(&["status", "--key", "k"]),
        with(&["list"]),
        with(&["list", "--json"]),
        with(&["init", "--print"]),
        with(&["init", "--ledger", table]),
        with(&["history", "--all", "--ledger", table]),
        with(&["metrics", "--ledger", table]),
        with(&["prune", "--older-than", "1d", "--ledger", table]),
        with(&["check", "--key", "k", "--critical", "1h", "--ledger", table]),
    ]
}

fn table() -> String {
    format!("public.output_test_{}", std::process::id())
}

/// `pglock metrics > /dev/full` used to exit 0, and `pglock list --json >&-` too.
#[test]
fn report_commands_fail_when_their_output_cannot_be_written() {
    let table = table();
    run(pglock().args(["init", "--ledger", &table])).assert_success();
    for args in reports(&table) {
        // `status` exits 3 for a free lock and `check` 2 for no success: with their output
        // written, these are the codes to tell apart from a failed write.
        let written = run(pglock().args(&args).stdout(Stdio::null()));
        let full = run(pglock().args(&args).stdout(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        ));
        let want = if args[0] == "check" { 3 } else { 1 };
        full.assert_code(want)
            .assert_stderr_contains("pglock: cannot write the report to standard output: ");
        assert_ne!(written.code(), Some(want), "{args:?}: {written:?}");
        let closed = run(std::process::Command::new("sh")
            .args(["-c", "exec \"$0\" \"$@\" >&-", BIN])
            .args(&args));
        closed.assert_code(want).assert_stderr_contains(
            "pglock: cannot write the report to standard output: it is closed",
        );
    }
    let _ = sql().batch_execute(&format!("DROP TABLE IF EXISTS {table}"));
}

/// `metrics --output` through a symlink replaces the target and keeps the link; into a FIFO it
/// writes to the FIFO's reader and leaves the FIFO a FIFO (both used to become plain files).
#[test]
fn metrics_output_follows_symlinks_and_writes_fifos_in_place() {
    let table = format!("{}_m", table());
    run(pglock().args(["init", "--ledger", &table])).assert_success();
    let env = TestEnv::new("metrics-out");
    std::fs::create_dir(env.path("real")).unwrap();
    let target = env.path("real/pglock.prom");
    std::fs::write(&target, "old").unwrap();
    let link = env.path("pglock.prom");
    std::os::unix::fs::symlink("real/pglock.prom", &link).unwrap();
    run(pglock()
        .args(["metrics", "--ledger", &table, "--output"])
        .arg(&link))
    .assert_success();
    assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
    assert!(read(&target).contains("# TYPE pglock_running gauge"));

    let fifo = env.path("fifo.prom");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read_to_string(fifo).unwrap())
    };
    run(pglock()
        .args(["metrics", "--ledger", &table, "--output"])
        .arg(&fifo))
    .assert_success();
    assert!(
        reader
            .join()
            .unwrap()
            .contains("# TYPE pglock_running gauge")
    );
    assert!(fifo.symlink_metadata().unwrap().file_type().is_fifo());
    let _ = sql().batch_execute(&format!("DROP TABLE IF EXISTS {table}"));
}
