//! Exclusion as strong as flock's (issue 24): the lock outlives everything that can still act
//! under it. A SIGKILLed pglock's command, which takes seconds to stop, must have ended before
//! the next holder's command starts; the dead man's switch is not taken down by a kill by name,
//! and one that dies is replaced. Real processes, real signals; the order is read from
//! timestamps the commands write themselves.

use crate::util::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::time::Duration;

/// Nanoseconds since the epoch that a command wrote to `name` in the test's directory.
fn stamp(env: &TestEnv, name: &str) -> u128 {
    let text = read(&env.path(name));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name} holds no timestamp: {text:?}"))
}

/// A holder whose command says it runs, then needs 3 s to stop after SIGTERM and writes when it
/// has (its last instruction).
fn slow_stopper(env: &TestEnv, args: &[&str], tag: &str) -> Started {
    let dir = env.dir().display().to_string();
    let script = until_sigterm(
        &format!("touch {dir}/{tag}-ready"),
        &format!("sleep 3; date +%s%N > {dir}/{tag}-end; exit 0"),
    );
    let child = start(env.pglock(args).args(["-c", &script]));
    env.wait_for_file(&format!("{tag}-ready"));
    child
}

/// A waiter whose command writes when it starts.
fn next_holder(env: &TestEnv, args: &[&str]) -> Started {
    let dir = env.dir().display().to_string();
    start(
        env.pglock(args)
            .args(["-c", &format!("date +%s%N > {dir}/next-start")]),
    )
}

/// Waits for `next` to run and end, then compares its command's first write with the old
/// command's last one: the lock must not have changed hands before the old command ended.
fn next_runs_after_the_old_command(env: &TestEnv, mut next: Started) {
    wait_within("the next holder to run", Duration::from_secs(30), || {
        next.exited().is_some()
    });
    next.finish().assert_success();
    env.wait_for_file("old-end");
    let (ended, started) = (stamp(env, "old-end"), stamp(env, "next-start"));
    assert!(
        started >= ended,
        "the next command started {} ms before the killed holder's command ended",
        (ended - started) / 1_000_000
    );
}

/// Sessions of the test's key that wait for a lock, semaphore slots included.
fn lock_waiters(env: &TestEnv) -> i64 {
    let pattern = format!("pglock:{}@%", env.key());
    env.probe()
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND application_name LIKE $1",
            &[&pattern],
        )
        .unwrap()
        .get(0)
}

/// kill -9 of the pglock of a slow stopper while `next` waits: the next command starts only
/// after the old one's last instruction.
fn killed_holder_hands_over_after_its_command(name: &str, args: &[&str], others: usize) {
    let env = TestEnv::new(name);
    let old = slow_stopper(&env, args, "old");
    // With --limit 2, the other slot is taken too, so the waiter needs the killed one's.
    let mut rest: Vec<Started> = (0..others)
        .map(|i| slow_stopper(&env, args, &format!("other{i}")))
        .collect();
    let next = next_holder(&env, args);
    wait_until("the next holder to queue", || {
        lock_waiters(&env) >= 1 || env.exists("next-start")
    });
    assert!(!env.exists("next-start"), "the next holder did not wait");
    kill(Pid::from_raw(old.id() as i32), Signal::SIGKILL).unwrap();
    next_runs_after_the_old_command(&env, next);
    old.finish();
    for other in rest.drain(..) {
        other.kill(Signal::SIGTERM);
        other.finish();
    }
}

#[test]
fn a_sigkilled_holder_keeps_the_lock_until_its_command_has_stopped() {
    killed_holder_hands_over_after_its_command("killedsession", &[], 0);
}

#[test]
fn a_sigkilled_holder_keeps_the_lock_until_its_command_has_stopped_in_xact_scope() {
    killed_holder_hands_over_after_its_command("killedxact", &["--scope", "xact"], 0);
}

#[test]
fn a_sigkilled_holder_keeps_its_slot_until_its_command_has_stopped() {
    killed_holder_hands_over_after_its_command("killedlimit", &["--limit", "2"], 1);
}

/// A file under /proc, or nothing if the process is gone.
fn proc(path: String) -> String {
    read(std::path::Path::new(&path))
}

/// The name (comm) of a process.
fn name_of(pid: i32) -> String {
    proc(format!("/proc/{pid}/comm")).trim().to_string()
}

/// The children of a process.
fn children(pid: i32) -> Vec<i32> {
    proc(format!("/proc/{pid}/task/{pid}/children"))
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn a_kill_by_exact_name_leaves_the_switch_to_stop_the_command() {
    let env = TestEnv::new("killbyname");
    let old = slow_stopper(&env, &[], "old");
    let next = next_holder(&env, &[]);
    wait_until("the next holder to queue", || env.waiting() == 1);
    // What `killall -9 pglock` and `pkill -9 -x pglock` do, for this test's holder only: it
    // and its children whose name is exactly "pglock" (the switch was one, before).
    let holder = old.id() as i32;
    let kids = children(holder);
    assert!(
        kids.iter().any(|&c| name_of(c) == "pglock-switch"),
        "the holder has no child named pglock-switch: {:?}",
        kids.iter().map(|&c| name_of(c)).collect::<Vec<_>>()
    );
    for pid in std::iter::once(holder).chain(kids) {
        if name_of(pid) == "pglock" {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
    // The old command is stopped (by its switch, which outlived the kill) and the next holder
    // runs after it.
    next_runs_after_the_old_command(&env, next);
    old.finish();
}

#[test]
fn a_switch_that_dies_is_replaced_at_once() {
    let env = TestEnv::new("switchdies");
    let old = start(env.pglock(&[
        "-c",
        &until_sigterm(&format!("touch {}/ready", env.dir().display()), "exit 0"),
    ]));
    env.wait_for_file("ready");
    let first = switch_of(old.id()).expect("no switch");
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    wait_within("another switch", Duration::from_secs(5), || {
        switch_of(old.id()).is_some_and(|s| s != first)
    });
    let second = switch_of(old.id()).unwrap();
    // The new switch knows the command: pglock killed now, the command is stopped.
    kill(Pid::from_raw(old.id() as i32), Signal::SIGKILL).unwrap();
    wait_within("the command to be stopped", Duration::from_secs(10), || {
        env.waiting() == 0 && env.granted() == 0
    });
    let out = old.finish();
    out.assert_stderr_contains(&format!(
        "the dead man's switch (pid {first}) died; armed another (pid {second})"
    ));
}

/// The dead man's switch of the pglock with this pid.
fn switch_of(pid: u32) -> Option<i32> {
    children(pid as i32)
        .into_iter()
        .find(|&c| name_of(c) == "pglock-switch")
}

/// Whether a process runs (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    let stat = proc(format!("/proc/{pid}/stat"));
    let state = stat.rsplit_once(") ").and_then(|(_, r)| r.chars().next());
    state.is_some_and(|s| s != 'Z')
}

/// The pid a command wrote to `name`.
fn pid_in(env: &TestEnv, name: &str) -> i32 {
    env.wait_for_file(name);
    let text = read(&env.path(name));
    text.trim()
        .parse()
        .unwrap_or_else(|_| panic!("{name}: {text:?}"))
}

#[test]
fn a_background_job_left_behind_is_terminated_before_the_release() {
    let env = TestEnv::new("leftbg");
    let dir = env.dir().display().to_string();
    let out = env.run_script(&[], &format!("sleep 30 & echo $! > {dir}/bg; exit 3"));
    let bg = pid_in(&env, "bg");
    // The command's status, one warning, and nothing left running once pglock is gone.
    out.assert_code(3)
        .assert_stderr_contains("the command left 1 process running; terminating them")
        .assert_one_pglock_line();
    assert!(!alive(bg), "the background job outlived pglock");
}

#[test]
fn a_double_forked_setsid_helper_is_found_and_terminated() {
    let env = TestEnv::new("leftsetsid");
    let dir = env.dir().display().to_string();
    // The subshell exits at once, so the helper is an orphan in a session of its own; the
    // command waits until the helper has said who it is.
    let script = format!(
        "(setsid sh -c 'echo $$ > {dir}/helper; exec sleep 30' &); \
         until [ -s {dir}/helper ]; do sleep 0.01; done; exit 0"
    );
    let out = env.run_script(&[], &script);
    let helper = pid_in(&env, "helper");
    out.assert_success()
        .assert_stderr_contains("terminating them");
    assert!(!alive(helper), "the setsid helper outlived pglock");
}

#[test]
fn leftovers_wait_holds_the_lock_until_they_exit_by_themselves() {
    let env = TestEnv::new("leftwait");
    let dir = env.dir().display().to_string();
    let first = start(env.pglock(&["--leftovers", "wait"]).args([
        "-c",
        &format!("(sleep 2; date +%s%N > {dir}/bg-end) & touch {dir}/ready; exit 0"),
    ]));
    env.wait_for_file("ready");
    let mut next = next_holder(&env, &[]);
    wait_within("the next holder to run", Duration::from_secs(30), || {
        next.exited().is_some()
    });
    next.finish().assert_success();
    first
        .finish()
        .assert_success()
        .assert_stderr_lacks("pglock:");
    // Not signalled: it finished its own work, and the next command came after it.
    assert!(stamp(&env, "next-start") >= stamp(&env, "bg-end"));
}

#[test]
fn leftovers_keep_releases_while_they_run() {
    let env = TestEnv::new("leftkeep");
    let dir = env.dir().display().to_string();
    let out = env.run_script(
        &["--leftovers", "keep"],
        &format!("(sleep 2; touch {dir}/bg-end) > /dev/null 2>&1 & exit 0"),
    );
    out.assert_success().assert_stderr_lacks("pglock:");
    // Released while the helper runs: the next holder does not wait for it.
    run(env.pglock(&["--nowait", "--", "true"])).assert_success();
    assert!(!env.exists("bg-end"));
    env.wait_for_file("bg-end");
}

#[test]
fn a_replaced_switch_still_stops_the_command_of_a_stopped_pglock() {
    let env = TestEnv::new("switchthenstop");
    let dir = env.dir().display().to_string();
    let fast = ["--check-interval", "200ms", "--kill-after", "500ms"];
    let old = start(env.pglock(&fast).args([
        "-c",
        &until_sigterm(
            &format!("touch {dir}/ready"),
            &format!("touch {dir}/stopped; exit 0"),
        ),
    ]));
    env.wait_for_file("ready");
    let first = switch_of(old.id()).expect("no switch");
    kill(Pid::from_raw(first), Signal::SIGKILL).unwrap();
    wait_within("another switch", Duration::from_secs(5), || {
        switch_of(old.id()).is_some_and(|s| s != first)
    });
    // pglock stopped alone: only the new switch's countdown can stop the command now, before
    // the lease lets the next holder in.
    kill(Pid::from_raw(old.id() as i32), Signal::SIGSTOP).unwrap();
    wait_within("the command to be stopped", Duration::from_secs(10), || {
        env.exists("stopped")
    });
    kill(Pid::from_raw(old.id() as i32), Signal::SIGCONT).unwrap();
    let out = old.finish();
    out.assert_code(74);
}
