//! Regressions from trying pglock as a demanding user would (issue 10): process-group kills,
//! job control at a real terminal, a server that stops answering, unwritable stderr, losses
//! during --min-hold, arguments that are not UTF-8, and contradictory flags.

use crate::util::proxy::Proxy;
use crate::util::*;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(30);

fn alive(pid: i32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or("");
    !stat.is_empty() && !state.starts_with('Z')
}

fn holder_of(key: &str) -> postgres::Client {
    let mut c = sql();
    c.execute("SELECT pg_advisory_lock($1)", &[&key_id(key)])
        .unwrap();
    c
}

/// Waits for a child with a bound, so a pglock that hangs fails the test instead of the suite.
fn exit_within(child: &mut Child, limit: Duration) -> i32 {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code().unwrap_or(-1);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            panic!("pglock did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut err = String::new();
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    err
}

#[test]
fn a_process_group_sigkill_stops_the_commands_children() {
    let k = unique_key("groupkill");
    let dir = temp_dir("groupkill");
    let script = format!(
        "sleep 300 & echo $! > {d}/a; sleep 301 & echo $! > {d}/b; touch {d}/ready; wait",
        d = dir.display()
    );
    // start() puts pglock in a process group of its own, as a shell does with a job.
    let mut child = start(pglock().args(["--key", &k, "--kill-after", "1s", "-c", &script]));
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    let pids: Vec<i32> = ["a", "b"]
        .iter()
        .map(|f| read(&dir.join(f)).trim().parse().unwrap())
        .collect();
    killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL).unwrap();
    wait_until("the command's children to be stopped", LIMIT, || {
        pids.iter().all(|&p| !alive(p))
    });
    assert_eq!(exit_within(&mut child, LIMIT), -1);
    let mut probe = sql();
    wait_until("the lock to be freed", LIMIT, || {
        lock_rows(&mut probe, key_id(&k), true) == 0
    });
}

#[test]
fn a_release_to_a_silent_server_is_bounded_and_keeps_the_commands_status() {
    let k = unique_key("silentrelease");
    let dir = temp_dir("silentrelease");
    let proxy = Proxy::start();
    let script = format!("touch {}/ready; read line; exit 3", dir.display());
    let mut child = start(
        pglock()
            .args(["--key", &k, "--check-interval", "2s", "-c", &script])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    proxy.freeze();
    let frozen = Instant::now();
    drop(child.stdin.take());
    let rc = exit_within(&mut child, LIMIT);
    let took = frozen.elapsed();
    let err = stderr_of(&mut child);
    assert_eq!(rc, 3, "{err}");
    assert!(err.contains("not confirmed"), "{err}");
    eprintln!("release to a frozen server gave up after {took:?}");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[test]
fn sigterm_ends_a_release_that_gets_no_answer() {
    let k = unique_key("termrelease");
    let dir = temp_dir("termrelease");
    let proxy = Proxy::start();
    let script = format!("echo $$ > {}/pid; read line; exit 4", dir.display());
    let mut child = start(
        pglock()
            .args(["--key", &k, "--check-interval", "1h", "-c", &script])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    wait_until("the command to start", LIMIT, || {
        read(&dir.join("pid")).ends_with('\n')
    });
    let command: i32 = read(&dir.join("pid")).trim().parse().unwrap();
    proxy.freeze();
    drop(child.stdin.take());
    // Reaped means pglock has moved on to the release, which the frozen server never answers.
    wait_until("the command to be reaped", LIMIT, || {
        !std::path::Path::new(&format!("/proc/{command}")).exists()
    });
    let sent = Instant::now();
    let pid = Pid::from_raw(child.id() as i32);
    // A signal that lands between the reaping and the release is only remembered, so repeat it
    // until pglock is gone (each one in the release cuts the connection).
    let rc = loop {
        let _ = kill(pid, Signal::SIGTERM);
        if let Some(status) = child.try_wait().unwrap() {
            break status.code().unwrap_or(-1);
        }
        assert!(sent.elapsed() < LIMIT, "SIGTERM did not end the release");
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = stderr_of(&mut child);
    assert_eq!(rc, 4, "{err}");
    assert!(err.contains("not confirmed"), "{err}");
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "{:?}",
        sent.elapsed()
    );
}

#[test]
fn sigterm_ends_a_wait_whose_server_froze() {
    let k = unique_key("frozenwait");
    let _holder = holder_of(&k);
    let proxy = Proxy::start();
    let mut child = start(
        pglock()
            .args(["--key", &k, "--", "true"])
            .env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string()),
    );
    let mut probe = sql();
    wait_until("pglock to queue", LIMIT, || {
        lock_rows(&mut probe, key_id(&k), false) == 1
    });
    proxy.freeze();
    let sent = Instant::now();
    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let rc = exit_within(&mut child, LIMIT);
    let took = sent.elapsed();
    assert_eq!(rc, 128 + 15, "{}", stderr_of(&mut child));
    eprintln!("SIGTERM to a waiter behind a frozen proxy: exited after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The cut connection takes the waiter out of the server's queue.
    wait_until("the waiter to leave the queue", LIMIT, || {
        lock_rows(&mut probe, key_id(&k), false) == 0
    });
}

/// stderr is a pipe nobody reads any more.
fn closed_stderr() -> Stdio {
    let (reader, writer) = nix::unistd::pipe().unwrap();
    drop(reader);
    Stdio::from(writer)
}

#[test]
fn a_busy_lock_with_stderr_on_a_closed_pipe_still_exits_75() {
    let k = unique_key("closedpipe");
    let _holder = holder_of(&k);
    let status = pglock()
        .args(["--key", &k, "--nowait", "--", "true"])
        .stdin(Stdio::null())
        .stderr(closed_stderr())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(75));
}

#[test]
fn a_lost_lock_with_stderr_on_a_closed_pipe_still_stops_the_command() {
    let k = unique_key("closedlost");
    let dir = temp_dir("closedlost");
    let script = format!(
        "trap 'touch {0}/term; exit 9' TERM; touch {0}/ready; sleep 300 & wait",
        dir.display()
    );
    let mut child = pglock()
        .args(["--key", &k, "--check-interval", "1h", "-c", &script])
        .stdin(Stdio::null())
        .stderr(closed_stderr())
        .process_group(0)
        .spawn()
        .unwrap();
    wait_until("the command to start", LIMIT, || dir.join("ready").exists());
    let mut c = sql();
    c.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1",
        &[&format!("pglock:{k}@%")],
    )
    .unwrap();
    assert_eq!(exit_within(&mut child, LIMIT), 74);
    assert!(dir.join("term").exists(), "the command was not stopped");
}

#[test]
fn a_lock_lost_during_min_hold_ends_the_hold_with_the_commands_status() {
    let k = unique_key("minholdlost");
    let dir = temp_dir("minholdlost");
    let ran = dir.join("ran");
    let script = format!("touch {}", ran.display());
    let mut child = start(pglock().args(["--key", &k, "--min-hold", "1h", "-c", &script]));
    let pid = child.id();
    let mut probe = sql();
    // The command ran, and pglock has reaped it and its dead man's switch: the hold is on.
    wait_until("the hold to begin", LIMIT, || {
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        ran.exists() && children.trim().is_empty()
    });
    assert_eq!(lock_rows(&mut probe, key_id(&k), true), 1);
    probe
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("pglock:{k}@%")],
        )
        .unwrap();
    let rc = exit_within(&mut child, LIMIT);
    let err = stderr_of(&mut child);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("--min-hold"), "{err}");
}

#[test]
fn command_arguments_may_be_any_bytes() {
    use std::os::unix::ffi::OsStrExt;
    let k = unique_key("bytes");
    let out = pglock()
        .args(["--key", &k, "--", "printf", "%s"])
        .arg(std::ffi::OsStr::from_bytes(b"\xff\xfe"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, b"\xff\xfe");
}

#[test]
fn contradictory_flags_are_usage_errors_ending_with_a_pglock_line() {
    for args in [
        &["--key", "k", "--nowait", "--timeout", "5", "--", "true"][..],
        &["--lock-id", "5", "--key-hash", "sqlx", "--", "true"],
        &["--key", "k", "-c", ""],
        &["--key", "k", "--no-such-flag", "--", "true"],
    ] {
        let out = pglock().args(args).stdin(Stdio::null()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        let last = err.lines().last().unwrap_or_default();
        assert!(last.starts_with("pglock: usage error: "), "{args:?}: {err}");
    }
}

#[test]
fn a_wait_cancelled_by_an_administrator_is_a_documented_conflict() {
    let k = unique_key("admincancel");
    let _holder = holder_of(&k);
    let mut child = start(pglock().args(["--key", &k, "--", "true"]));
    let mut probe = sql();
    wait_until("pglock to queue", LIMIT, || {
        lock_rows(&mut probe, key_id(&k), false) == 1
    });
    probe
        .execute(
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name LIKE $1",
            &[&format!("pglock:{k}@%")],
        )
        .unwrap();
    let rc = exit_within(&mut child, LIMIT);
    let err = stderr_of(&mut child);
    assert_eq!(rc, 75, "{err}");
    assert!(err.contains("cancelled on the server"), "{err}");
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
        let output = Arc::new(Mutex::new(Vec::new()));
        let (mut reader, sink) = (master.try_clone().unwrap(), Arc::clone(&output));
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
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

    fn wait_for(&self, text: &str) {
        wait_until(&format!("{text:?} on the terminal"), LIMIT, || {
            self.screen().contains(text)
        });
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

#[test]
fn ctrl_z_suspends_the_job_and_fg_resumes_it_with_the_terminal() {
    let k = unique_key("ctrlz");
    let mut term = Terminal::start();
    term.wait_for("$ ");
    term.type_(&format!("pglock --key {k} -- sleep 300\n"));
    let mut probe = sql();
    wait_until("the lock", LIMIT, || {
        lock_rows(&mut probe, key_id(&k), true) == 1
    });
    let pglock = pglock_pid_of(&k).unwrap();
    let command = {
        let mut found = 0;
        wait_until("the command to have the terminal", LIMIT, || {
            found = term.foreground();
            found != 0 && found != pglock as i32 && found != term.shell.id() as i32
        });
        found
    };
    term.type_("\x1a");
    term.wait_for("Stopped");
    assert_eq!(
        lock_rows(&mut probe, key_id(&k), true),
        1,
        "a stopped job keeps its lock"
    );
    term.type_("fg\n");
    wait_until("the command to have the terminal again", LIMIT, || {
        term.foreground() == command
    });
    term.type_("\x03");
    term.type_("echo \"rc=$?\"\n");
    term.wait_for("rc=130");
    wait_until("the lock to be released", LIMIT, || {
        lock_rows(&mut probe, key_id(&k), true) == 0
    });
}

#[test]
fn the_larger_limit_warning_counts_only_this_databases_slots() {
    let k = unique_key("otherdb");
    let slot = |i: usize| key_id(&format!("{k}\0slot\0{i}"));
    let db = format!("pglock_{}", unique_key("db").replace('-', "_"));
    let mut admin = sql();
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .unwrap();
    // Slot 2 of the same key is taken in another database: a different lock altogether.
    let mut other = {
        let mut config = postgres::Config::new();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        config.host(var("PGHOST").as_deref().unwrap_or("/var/run/postgresql"));
        config.port(var("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432));
        config.user(var("PGUSER").as_deref().unwrap_or("postgres"));
        if let Some(pw) = var("PGPASSWORD") {
            config.password(pw);
        }
        config.dbname(&db);
        config.connect(postgres::NoTls).unwrap()
    };
    other
        .execute("SELECT pg_advisory_lock($1)", &[&slot(2)])
        .unwrap();
    // Here both slots of --limit 2 are taken, so pglock queues at the head and looks above.
    let mut here = sql();
    for i in 0..2 {
        here.execute("SELECT pg_advisory_lock($1)", &[&slot(i)])
            .unwrap();
    }
    let out = pglock()
        .args([
            "--key",
            &k,
            "--limit",
            "2",
            "--timeout",
            "1",
            "-v",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    drop(other);
    let _ = admin.batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"));
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(err.contains("at the head of the queue"), "{err}");
    assert!(!err.contains("slots above"), "{err}");
}
