//! Regressions from trying pglock as a demanding user would (issue 10): process-group kills,
//! job control at a real terminal, a server that stops answering, unwritable stderr, losses
//! during --min-hold, arguments that are not UTF-8, and contradictory flags.

use crate::util::proxy::Proxy;
use crate::util::*;
use nix::sys::signal::Signal;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// `sh -c` with two background sleeps that outlive it unless something stops its group.
fn two_background_sleeps(env: &TestEnv) -> String {
    format!(
        "sleep 300 & echo $! > {d}/a; sleep 301 & echo $! > {d}/b; touch {d}/ready; wait",
        d = env.dir().display()
    )
}

/// Kills `child`'s process group (pglock's, or its wrapper's) once the script of
/// [`two_background_sleeps`] is ready; both sleeps must then be stopped and the lock freed.
fn kill_the_group_and_expect_no_leftovers(env: &TestEnv, mut child: Started) {
    env.wait_for_file("ready");
    let pids: Vec<i32> = ["a", "b"]
        .iter()
        .map(|f| read(&env.path(f)).trim().parse().unwrap())
        .collect();
    child.kill_group(Signal::SIGKILL);
    wait_until("pglock to be killed", || child.exited().is_some());
    wait_until("the command's children to be stopped", || {
        pids.iter().all(|&p| !alive(p))
    });
    // Only now: the children hold pglock's stderr open.
    child.finish().assert_signal(Signal::SIGKILL);
    wait_until("the lock to be freed", || env.granted() == 0);
}

#[test]
fn a_process_group_sigkill_stops_the_commands_children() {
    let env = TestEnv::new("groupkill");
    // start() puts pglock in a process group of its own, as a shell does with a job.
    let child = env.start_script(&["--kill-after", "1s"], &two_background_sleeps(&env));
    kill_the_group_and_expect_no_leftovers(&env, child);
}

/// The same kill while the dead man's switch is slow to leave pglock's process group (strace
/// holds every setsid(2) and setpgid(2) for half a second): the switch must be in a group of
/// its own before the command starts, or the group kill takes it too.
#[test]
fn a_process_group_sigkill_during_a_slow_start_stops_the_commands_children() {
    let env = TestEnv::new("groupkillslow");
    let strace = [
        "-f",
        "-o",
        "/dev/null",
        "-e",
        "trace=setsid,setpgid",
        "-e",
        "inject=setsid,setpgid:delay_enter=500000",
    ];
    let mut cmd = wrapped("strace", &strace);
    let script = two_background_sleeps(&env);
    cmd.args(["--key", env.key(), "--kill-after", "1s", "-c", &script]);
    // strace leads the process group and pglock is in it, as with any wrapper.
    kill_the_group_and_expect_no_leftovers(&env, start(cmd));
}

#[test]
fn a_release_to_a_silent_server_is_bounded_and_keeps_the_commands_status() {
    let env = TestEnv::new("silentrelease");
    let proxy = Proxy::start();
    let script = format!("touch {}/ready; read line; exit 3", env.dir().display());
    let child = start(
        env.pglock(&["--check-interval", "2s", "-c", &script])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    env.wait_for_file("ready");
    proxy.freeze();
    let frozen = Instant::now();
    // Closing stdin ends the command; pglock then releases through the frozen proxy.
    let out = child.finish();
    let took = frozen.elapsed();
    out.assert_code(3).assert_stderr_contains("not confirmed");
    eprintln!("release to a frozen server gave up after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn sigterm_ends_a_release_that_gets_no_answer() {
    let env = TestEnv::new("termrelease");
    let proxy = Proxy::start();
    let script = format!("echo $$ > {}/pid; read line; exit 4", env.dir().display());
    let mut child = start(
        env.pglock(&["--check-interval", "1h", "-c", &script])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    wait_until("the command to start", || {
        read(&env.path("pid")).ends_with('\n')
    });
    let command: i32 = read(&env.path("pid")).trim().parse().unwrap();
    proxy.freeze();
    child.close_stdin();
    // Reaped means pglock has moved on to the release, which the frozen server never answers.
    wait_until("the command to be reaped", || {
        !std::path::Path::new(&format!("/proc/{command}")).exists()
    });
    let sent = Instant::now();
    // A signal that lands between the reaping and the release is only remembered, so repeat it
    // until pglock is gone (each one in the release cuts the connection).
    loop {
        child.kill(Signal::SIGTERM);
        if child.exited().is_some() {
            break;
        }
        assert!(sent.elapsed() < LIMIT, "SIGTERM did not end the release");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
        .finish()
        .assert_code(4)
        .assert_stderr_contains("not confirmed");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn sigterm_ends_a_wait_whose_server_froze() {
    let env = TestEnv::new("frozenwait");
    let _holder = env.lock().take_in_sql();
    let proxy = Proxy::start();
    let child = start(
        env.pglock(&["--", "true"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    wait_until("pglock to queue", || env.waiting() == 1);
    proxy.freeze();
    let sent = Instant::now();
    child.kill(Signal::SIGTERM);
    let out = child.finish();
    let took = sent.elapsed();
    out.assert_code(128 + 15);
    eprintln!("SIGTERM to a waiter behind a frozen proxy: exited after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The cut connection takes the waiter out of the server's queue.
    wait_until("the waiter to leave the queue", || env.waiting() == 0);
}

/// stderr is a pipe nobody reads any more.
fn closed_stderr() -> Stdio {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn a_busy_lock_with_stderr_on_a_closed_pipe_still_exits_75() {
    let env = TestEnv::new("closedpipe");
    let _holder = env.lock().take_in_sql();
    run(env
        .pglock(&["--nowait", "--", "true"])
        .stderr(closed_stderr()))
    .assert_code(75);
}

#[test]
fn a_lost_lock_with_stderr_on_a_closed_pipe_still_stops_the_command() {
    let env = TestEnv::new("closedlost");
    let d = env.dir().display();
    let script = until_sigterm(
        &format!("touch {d}/ready"),
        &format!("touch {d}/term; exit 9"),
    );
    let child = start_keeping_stderr(
        env.pglock(&["--check-interval", "1h", "-c", &script])
            .stderr(closed_stderr()),
    );
    env.wait_for_file("ready");
    assert_eq!(env.terminate_holder(), 1, "no backend holds the lock");
    child.finish().assert_code(74);
    assert!(env.exists("term"), "the command was not stopped");
}

#[test]
fn a_lock_lost_during_min_hold_ends_the_hold_with_the_commands_status() {
    let env = TestEnv::new("minholdlost");
    let script = format!("touch {}/ran", env.dir().display());
    let child = env.start_script(&["--min-hold", "1h"], &script);
    let pid = child.id();
    // The command ran, and pglock has reaped it and its dead man's switch: the hold is on.
    wait_until("the hold to begin", || {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        env.exists("ran") && children.trim().is_empty()
    });
    assert_eq!(env.granted(), 1);
    assert_eq!(env.terminate_holder(), 1);
    child
        .finish()
        .assert_code(0)
        .assert_stderr_contains("--min-hold");
}

#[test]
fn command_arguments_may_be_any_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let env = TestEnv::new("bytes");
    let out = run(env
        .pglock(&["--", "printf", "%s"])
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe")));
    out.assert_code(0);
    assert_eq!(out.stdout_bytes(), b"\xff\xfe");
}

#[test]
fn contradictory_flags_are_usage_errors_ending_with_a_pglock_line() {
    for args in [
        &["--key", "k", "--nowait", "--timeout", "5", "--", "true"][..],
        &["--lock-id", "5", "--key-hash", "sqlx", "--", "true"],
        &["--key", "k", "-c", ""],
        &["--key", "k", "--no-such-flag", "--", "true"],
    ] {
        let out = run(pglock().args(args));
        out.assert_code(2);
        let last = out.stderr().lines().last().unwrap_or_default();
        assert!(last.starts_with("pglock: usage error: "), "{out}");
    }
}

#[test]
fn a_wait_cancelled_by_an_administrator_is_a_documented_conflict() {
    let env = TestEnv::new("admincancel");
    let _holder = env.lock().take_in_sql();
    let child = start(env.pglock(&["--", "true"]));
    wait_until("pglock to queue", || env.waiting() == 1);
    let waiter = lock_pids(&mut env.probe(), env.lock(), false);
    assert_eq!(waiter.len(), 1);
    env.probe()
        .execute("SELECT pg_cancel_backend($1)", &[&waiter[0]])
        .unwrap();
    child
        .finish()
        .assert_code(75)
        .assert_stderr_contains("cancelled on the server");
}

/// A real terminal: bash as an interactive shell on a pseudo-terminal, driven by keystrokes.
struct Terminal {
    master: std::fs::File,
    output: Arc<Mutex<Vec<u8>>>,
    shell: Child,
}

impl Terminal {
    fn start() -> Terminal {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave = std::fs::File::from(pty.slave);
        let master = std::fs::File::from(pty.master);
        let bin_dir = std::path::Path::new(BIN).parent().unwrap().to_path_buf();
        let path = format!(
            "{}:{}",
            bin_dir.display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let mut cmd = std::process::Command::new("bash");
        cmd.args(["--norc", "--noprofile", "-i"])
            .env("PATH", path)
            .env("PS1", "$ ")
            .env("TERM", "dumb")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave);
        // SAFETY: setsid and the TIOCSCTTY ioctl are async-signal-safe system calls that make
        // the pseudo-terminal (already on fd 0) the new session's controlling terminal.
        unsafe {
            cmd.pre_exec(|| {
                nix::unistd::setsid()?;
                if nix::libc::ioctl(0, nix::libc::TIOCSCTTY, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let shell = cmd.spawn().unwrap();
        let output = terminal_output(master.try_clone().unwrap().into());
        Terminal {
            master,
            output,
            shell,
        }
    }

    fn type_(&mut self, keys: &str) {
        self.master.write_all(keys.as_bytes()).unwrap();
    }

    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// On a timeout the panic shows the screen: what pglock and the shell said instead.
    #[track_caller]
    fn wait_for(&self, text: &str) {
        wait_showing(
            &format!("{text:?} on the terminal"),
            LIMIT,
            || self.screen().contains(text),
            || format!("; it shows:\n{}", self.screen()),
        );
    }

    fn foreground(&self) -> i32 {
        nix::unistd::tcgetpgrp(&self.master).map_or(0, |p| p.as_raw())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.shell.kill();
        let _ = self.shell.wait();
    }
}

fn pglock_pid_of(key: &str) -> Option<u32> {
    let mut c = sql();
    let row = c
        .query_opt(
            "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("pglock:{key}@%")],
        )
        .ok()??;
    let name: String = row.get(0);
    name.rsplit_once(':')?.1.parse().ok()
}

/// `pglock --key KEY ARGS -- sleep 300` typed at a terminal's shell, once the command has the
/// terminal; with the command's process group.
fn job_at_a_terminal(env: &TestEnv, args: &str) -> (Terminal, i32) {
    let k = env.key();
    let mut term = Terminal::start();
    term.wait_for("$ ");
    term.type_(&format!("pglock --key {k} {args} -- sleep 300\n"));
    wait_until("the lock", || env.granted() == 1);
    let pglock = pglock_pid_of(k).unwrap();
    let mut command = 0;
    wait_until("the command to have the terminal", || {
        command = term.foreground();
        command != 0 && command != pglock as i32 && command != term.shell.id() as i32
    });
    (term, command)
}

#[test]
fn ctrl_z_suspends_the_job_and_fg_resumes_it_with_the_terminal() {
    let env = TestEnv::new("ctrlz");
    let (mut term, command) = job_at_a_terminal(&env, "");
    term.type_("\x1a");
    term.wait_for("Stopped");
    assert_eq!(env.granted(), 1, "a stopped job keeps its lock");
    term.type_("fg\n");
    wait_until("the command to have the terminal again", || {
        term.foreground() == command
    });
    term.type_("\x03");
    term.type_("echo \"rc=$?\"\n");
    term.wait_for("rc=130");
    wait_until("the lock to be released", || env.granted() == 0);
}

#[test]
fn the_larger_limit_warning_counts_only_this_databases_slots() {
    let env = TestEnv::new("otherdb");
    let slot = |i: usize| Lock::slot(env.key(), i).id();
    let db = format!("pglock_{}", unique_key("db").replace('-', "_"));
    let mut admin = sql();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    // Slot 2 of the same key is taken in another database: a different lock altogether.
    let mut other = sql_config().dbname(&db).connect(postgres::NoTls).unwrap();
    other
        .execute("SELECT pg_advisory_lock($1)", &[&slot(2)])
        .unwrap();
    // Here both slots of --limit 2 are taken, so pglock queues at the head and looks above.
    let mut here = sql();
    for i in 0..2 {
        here.execute("SELECT pg_advisory_lock($1)", &[&slot(i)])
            .unwrap();
    }
    let out = run(env.pglock(&["--limit", "2", "--timeout", "1", "-v", "--", "true"]));
    drop(other);
    let _ = admin.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"));
    out.assert_code(75)
        .assert_stderr_contains("at the head of the queue")
        .assert_stderr_lacks("slots above");
}

#[test]
fn ctrl_z_for_longer_than_the_lease_keeps_the_lock() {
    let env = TestEnv::new("ctrlzlease");
    // A lease of 2 x 1s + 1s + 2s = 5s.
    let (mut term, command) = job_at_a_terminal(&env, "--check-interval 1s --kill-after 1s");
    term.type_("\x1a");
    term.wait_for("Stopped");
    // Longer than the lease, and longer than the dead man's switch waits for a heartbeat.
    throughout(
        "the stopped job to keep its lock",
        Duration::from_secs(8),
        || env.granted() == 1,
    );
    term.type_("fg\n");
    wait_until("the command to have the terminal again", || {
        term.foreground() == command
    });
    term.type_("\x03");
    term.type_("echo \"rc=$?\"\n");
    term.wait_for("rc=130");
    wait_until("the lock to be released", || env.granted() == 0);
}

#[test]
fn fg_checks_the_lock_before_the_command_goes_on() {
    let env = TestEnv::new("fgcheck");
    let proxy = Proxy::start();
    let ticks = env.path("ticks");
    let mut term = Terminal::start();
    term.wait_for("$ ");
    // bash, not pglock -c's /bin/sh: dash starts programs with vfork(2) and blocks every
    // signal meanwhile, so a Ctrl-Z that stops the new process before its exec hangs the job
    // for good, with or without pglock (2 of 300 Ctrl-Z at a plain bash prompt, under load).
    term.type_(&format!(
        "PGHOST=127.0.0.1 PGPORT={} pglock --key {} --check-interval 2s -- bash -c \
         'trap \"exit 7\" TERM; while :; do date +%s%N >> {}; sleep 0.1; done'\n",
        proxy.port,
        env.key(),
        ticks.display()
    ));
    wait_until("the command to tick", || ticks.exists());
    term.type_("\x1a");
    term.wait_for("Stopped");
    // The lock is lost while the job is stopped, in a way only a check can tell.
    proxy.freeze();
    let resumed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    term.type_("fg\n");
    term.type_("echo \"rc=$?\"\n");
    term.wait_for("rc=74");
    let after: usize = read(&ticks)
        .lines()
        .filter_map(|l| l.trim().parse::<u128>().ok())
        .filter(|&t| t > resumed)
        .count();
    assert_eq!(after, 0, "the command went on before the lock was checked");
}
