//! Processes (issue 18, B): nohup, a dead man's switch without close_range(2), pglock as PID 1
//! and under a subreaper, a switch that died during the wait, and spawn failures that are no
//! fault of the command. Real faults: strace's fault injection, `unshare -p`, SIGKILL.

use crate::util::*;
use nix::sys::signal::Signal;

/// `trap '' SIG; exec pglock ARGS` as nohup(1) or a shell's background job starts it.
fn under_ignored(env: &TestEnv, signal: &str, script: &str) -> Started {
    let bin = BIN;
    let line = format!(
        "trap '' {signal}; exec {bin} --key {} -c '{script}'",
        env.key()
    );
    start(wrapped("sh", &["-c", &line, "sh"]).env_remove("PGLOCK_KEY"))
}

#[test]
fn a_signal_ignored_at_start_stays_ignored_for_pglock_and_the_command() {
    let env = TestEnv::new("nohup");
    for signal in ["HUP", "INT", "QUIT"] {
        let script = format!(
            "touch {d}/ready-{signal}; while [ ! -e {d}/go-{signal} ]; do sleep 0.05; done",
            d = env.dir().display()
        );
        let child = under_ignored(&env, signal, &script);
        env.wait_for_file(&format!("ready-{signal}"));
        let sig = match signal {
            "HUP" => Signal::SIGHUP,
            "INT" => Signal::SIGINT,
            _ => Signal::SIGQUIT,
        };
        // To pglock and to the command's group, as a hangup or a terminal would.
        child.kill(sig);
        let command = child_of(child.id());
        let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(command), sig);
        std::fs::write(env.path(&format!("go-{signal}")), "").unwrap();
        child.finish().assert_success();
    }
}

/// pglock under strace, with every `syscall` (of pglock and its children) failing with `errno`.
fn failing(syscall: &str, errno: &str) -> std::process::Command {
    need("strace", "strace");
    let inject = format!("inject={syscall}:error={errno}");
    let trace = format!("trace={syscall}");
    wrapped(
        "strace",
        &["-f", "-o", "/dev/null", "-e", &trace, "-e", &inject],
    )
}

#[test]
fn the_switch_works_without_close_range() {
    let env = TestEnv::new("noclosrange");
    let script = format!(
        "sleep 300 & echo $! > {d}/a; touch {d}/ready; wait",
        d = env.dir().display()
    );
    let mut cmd = failing("close_range", "ENOSYS");
    cmd.args(["--key", env.key(), "--kill-after", "1s", "-c", &script]);
    let mut child = start(cmd);
    env.wait_for_file("ready");
    let sleep: i32 = read(&env.path("a")).trim().parse().unwrap();
    // pglock is strace's child.
    let pglock = children_of(child.id() as i32)[0];
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pglock), Signal::SIGKILL).unwrap();
    wait_until("the command's child to be stopped", || !alive(sleep));
    wait_until("the lock to be freed", || env.granted() == 0);
    wait_until("strace to end", || child.exited().is_some());
}

#[test]
fn pglock_as_pid_1_reaps_orphans() {
    need("unshare", "util-linux");
    let env = TestEnv::new("pidone");
    // Five grandchildren orphaned at once; once they exit, count the zombies in the namespace.
    let script = format!(
        "for i in 1 2 3 4 5; do (sleep 0.1 &); done; sleep 1; \
         grep -l '^State:.*Z' /proc/[0-9]*/status 2>/dev/null | wc -l > {}/zombies",
        env.dir().display()
    );
    let mut cmd = wrapped("unshare", &["-p", "-f", "--mount-proc"]);
    cmd.args(["--key", env.key(), "-c", &script]);
    run(cmd).assert_success();
    assert_eq!(read(&env.path("zombies")).trim(), "0");
}

#[test]
fn pglock_leaves_no_zombie_switch_to_a_subreaper() {
    let env = TestEnv::new("subreaper");
    // A parent that adopts orphans but reaps only its own children, as many job runners do.
    let program = format!(
        r#"
import ctypes, os, subprocess, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
for _ in range(3):
    subprocess.run([{bin:?}, "--key", {key:?}, "--", "true"], check=True)
me = str(os.getpid())
zombies = 0
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stat = open(f"/proc/{{pid}}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        continue
    if stat[0] == "Z" and stat[1] == me:
        zombies += 1
print(zombies)
"#,
        bin = BIN,
        key = env.key()
    );
    let out = run(wrapped("python3", &["-c", &program]).env_remove("PGLOCK_KEY"));
    out.assert_success();
    assert_eq!(out.stdout().trim(), "0", "{out}");
}

#[test]
fn a_switch_killed_during_the_wait_is_replaced_and_the_command_runs() {
    let env = TestEnv::new("deadswitch");
    let mut holder = env.lock().take_in_sql();
    let child = start(env.pglock(&["-v", "-c", "exit 0"]));
    wait_until("pglock to queue", || env.waiting() == 1);
    // The switch is forked during the wait: pglock's child other than the wait guard. Wait for
    // the guard to have exec'd (before that, its command line is pglock's own).
    let pglock = child.id() as i32;
    let mut switch = 0;
    wait_until("the switch and the wait guard to exist", || {
        let children = children_of(pglock);
        let guards = children
            .iter()
            .filter(|&&pid| cmdline(pid).contains("__wait-guard"));
        switch = children
            .iter()
            .copied()
            .find(|&pid| !cmdline(pid).contains("__wait-guard"))
            .unwrap_or(0);
        guards.count() == 1 && switch != 0
    });
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(switch), Signal::SIGKILL).unwrap();
    // kill(2) only queues the signal: on a busy machine the switch can still be running when
    // pglock gets the lock a moment later, and rightly keeps it.
    wait_until("the switch to die", || !alive(switch));
    env.lock().unlock_in_sql(&mut holder);
    child
        .finish()
        .assert_success()
        .assert_stderr_contains("the dead man's switch is gone");
}

#[test]
fn a_failing_step_before_exec_is_a_system_error() {
    let env = TestEnv::new("prctlfail");
    let mut cmd = failing("prctl", "EPERM");
    cmd.args(["--key", env.key(), "--", "true"]);
    let out = run(cmd);
    out.assert_code(71)
        .assert_stderr_contains("cannot run 'true'")
        .assert_one_pglock_line();
    assert_eq!(env.granted(), 0);
}

/// The children of every thread of `pid` (the wait guard is started by a thread of its own).
fn children_of(pid: i32) -> Vec<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten();
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("children")).ok())
        .flat_map(|c| {
            c.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn cmdline(pid: i32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

/// Issue 23, item 15: a lock lost after the grant and before the spawn is reported as that, and
/// the command is not started. strace holds pglock for 3 s in the setpgid(2) that follows the
/// fork of its dead man's switch, between the grant and the spawn; meanwhile the holder's
/// backend is terminated. pglock used to start the command anyway and say it was terminating
/// it because the lock "was lost while the command ran".
#[test]
fn a_lock_lost_before_the_command_starts_is_said_so_and_the_command_never_runs() {
    need("strace", "strace");
    let env = TestEnv::new("lostbeforestart");
    let strace = [
        "-f",
        "-o",
        "/dev/null",
        "-e",
        "trace=setpgid",
        "-e",
        "inject=setpgid:delay_enter=3000000",
    ];
    let mut cmd = wrapped("strace", &strace);
    let script = format!("touch {}/ran", env.dir().display());
    cmd.args(["--key", env.key(), "-c", &script]);
    let child = start(cmd);
    wait_until("pglock to hold the lock", || env.granted() == 1);
    assert_eq!(env.terminate_holder(), 1);
    let out = child.finish();
    // strace may add a line of its own (two delayed setpgid at once): pglock's are one.
    let ours: Vec<&str> = out
        .stderr()
        .lines()
        .filter(|l| !l.starts_with("strace: "))
        .collect();
    assert_eq!(ours.len(), 1, "{out}");
    out.assert_code(74)
        .assert_stderr_contains("was lost before the command started")
        .assert_stderr_contains("; the command was not started")
        .assert_stderr_lacks("terminating the command")
        .assert_stderr_lacks("while the command ran");
    assert!(!env.exists("ran"), "{out}");
}

/// Issue 23, defect 4: a stall between the grant and the command's exec longer than the lease
/// must not start the command beside the next holder. The first pglock queues behind a holder
/// (its dead man's switch is armed during that wait), and a second queues behind it. When the
/// holder lets go, strace holds the first one's command for 4 s in the setpgid(2) it makes after
/// the fork, before its exec and its word to the switch (pglock, waiting for that exec, cannot
/// look at the lock meanwhile). The lease of 1.5 s ends the silent session on the server, and
/// the second pglock gets the lock and runs. pglock used to start its command 4 s after the
/// grant anyway, beside the second holder (then stopped it at once, the server's goodbye being
/// on the socket by then; with a silent network, not before its next check).
#[test]
fn a_stall_before_the_exec_longer_than_the_lease_never_starts_the_command() {
    need("strace", "strace");
    let env = TestEnv::new("stallexec");
    let dir = env.dir().display().to_string();
    let holder = env.hold(&[]);
    let strace = [
        "-f",
        "-o",
        "/dev/null",
        "-e",
        "trace=setpgid",
        "-e",
        "inject=setpgid:delay_enter=4000000",
    ];
    let mut cmd = wrapped("strace", &strace);
    // xact scope: idle_in_transaction_session_timeout enforces the lease on every version (in
    // session scope PostgreSQL 12 and 13 have only TCP keepalives, which a live host answers).
    cmd.args(["--key", env.key(), "--scope", "xact"])
        .args([
            "--check-interval",
            "100ms",
            "--kill-after",
            "100ms",
            "--lease",
            "1500ms",
        ])
        .args(["-c", &format!("touch {dir}/first")]);
    let first = start(cmd);
    wait_until("the first pglock to queue", || env.waiting() == 1);
    let second = env.start_script(&[], &format!("touch {dir}/second"));
    wait_until("the second pglock to queue", || env.waiting() == 2);
    holder.release().assert_success();
    second.finish().assert_success();
    let out = first.finish();
    // strace may add lines of its own (two delayed setpgid at once): pglock's are one.
    let ours: Vec<&str> = out
        .stderr()
        .lines()
        .filter(|l| !l.starts_with("strace: "))
        .collect();
    assert_eq!(ours.len(), 1, "{out}");
    out.assert_code(74)
        .assert_stderr_contains("was lost before the command started")
        .assert_stderr_contains("; the command was not started")
        // The command's exec alone is too late, even one stopped before it does a thing.
        .assert_stderr_lacks("terminating the command");
    assert!(env.exists("second"), "{out}");
    assert!(!env.exists("first"), "{out}");
}

/// The other side of the test above: a stall between the grant and the spawn that the lease
/// survives costs one check, and the command runs. strace holds pglock for 2 s in its third
/// socketpair(2), its dead man's switch's, armed after a grant that did not wait (the first
/// two are made at start-up, the fourth by the spawn). A plain run asks nothing between its
/// grant and its command.
#[test]
fn a_stall_before_the_spawn_within_the_lease_is_checked_and_the_command_runs() {
    need("strace", "strace");
    let env = TestEnv::new("stallspawn");
    let checked = "checking it before the command starts";
    let plain = env.run_script(&["-v"], "true");
    plain.assert_success().assert_stderr_lacks(checked);
    let strace = [
        "-f",
        "-o",
        "/dev/null",
        "-e",
        "trace=socketpair",
        "-e",
        "inject=socketpair:delay_enter=2000000:when=3",
    ];
    let mut cmd = wrapped("strace", &strace);
    let dir = env.dir().display().to_string();
    cmd.args(["--key", env.key(), "-v", "--check-interval", "1s"])
        .args(["-c", &format!("touch {dir}/ran")]);
    let out = run(cmd);
    out.assert_success().assert_stderr_contains(checked);
    assert!(env.exists("ran"), "{out}");
}
