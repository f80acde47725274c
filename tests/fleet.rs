//! Large fleets: waiters inside the caps that PostgreSQL and PgBouncer put on connections (a
//! role's CONNECTION LIMIT, a session pool with query_wait_timeout), a herd that loses its
//! connections all at once, and failures that must end a wait at once instead of being retried
//! for ever (issue 10, defect 2).

mod common;

use common::bouncer::Bouncer;
use common::proxy::Proxy;
use common::*;
use postgres::Client;
use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(60);

/// A login role with a CONNECTION LIMIT, dropped (with its sessions) at the end of the test.
struct Role {
    name: String,
}

impl Role {
    fn create(limit: u32) -> Role {
        let name = unique_key("role").replace('-', "_");
        sql()
            .batch_execute(&format!(
                "CREATE ROLE {name} LOGIN PASSWORD 'pw' CONNECTION LIMIT {limit}"
            ))
            .unwrap();
        Role { name }
    }

    /// pglock as this role, over TCP to `port` on 127.0.0.1 (the server, or a proxy).
    fn pglock(&self, port: u16) -> Command {
        let mut cmd = pglock();
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", port.to_string())
            .env("PGUSER", &self.name)
            .env("PGPASSWORD", "pw");
        cmd
    }

    /// A plain session as this role, which takes one of its connection slots.
    fn session(&self) -> Client {
        let mut config = postgres::Config::new();
        config
            .host("127.0.0.1")
            .port(server_port())
            .user(&self.name)
            .password("pw")
            .dbname(&std::env::var("PGDATABASE").unwrap_or_else(|_| "postgres".into()));
        config.connect(postgres::NoTls).unwrap()
    }
}

impl Drop for Role {
    fn drop(&mut self) {
        let mut admin = sql();
        let _ = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
            &[&self.name],
        );
        let _ = admin.batch_execute(&format!("DROP ROLE {}", self.name));
    }
}

fn server_port() -> u16 {
    std::env::var("PGPORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5432)
}

/// The lock on `key`, held by a plain session of the test's own (outside any role's limit).
struct Held {
    client: Client,
    id: i64,
}

impl Held {
    fn take(key: &str) -> Held {
        let id = key_id(key);
        let mut client = sql();
        client
            .execute("SELECT pg_advisory_lock($1)", &[&id])
            .unwrap();
        Held { client, id }
    }

    fn waiting(&mut self) -> i64 {
        lock_rows(&mut self.client, self.id, false)
    }

    fn release(mut self) {
        self.client
            .execute("SELECT pg_advisory_unlock($1)", &[&self.id])
            .unwrap();
    }
}

/// Waiters that each append a line to `runs` in their directory under the lock. A failed test
/// kills those still running.
struct Herd(Vec<Child>);

impl Herd {
    fn start(n: usize, dir: &std::path::Path, mut make: impl FnMut() -> Command) -> Herd {
        Herd(
            (0..n)
                .map(|_| start(make().current_dir(dir).args(["-c", "echo ran >> runs"])))
                .collect(),
        )
    }

    /// Fails at once, with its message, if any waiter has already exited.
    fn alive(&mut self) -> bool {
        for w in self.0.iter_mut() {
            if let Some(status) = w.try_wait().unwrap() {
                let mut err = String::new();
                w.stderr.take().unwrap().read_to_string(&mut err).unwrap();
                panic!("a waiter gave up ({status}): {err}");
            }
        }
        true
    }

    /// Waits for every waiter; each must have run its command.
    fn all_ran(mut self, dir: &std::path::Path) {
        let n = self.0.len();
        for w in self.0.drain(..) {
            let (rc, err) = finish(w);
            assert_eq!(rc, 0, "{err}");
        }
        assert_eq!(read(&dir.join("runs")).lines().count(), n);
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

#[test]
fn waiters_beyond_a_role_connection_limit_wait_for_a_slot_and_all_run() {
    let role = Role::create(4);
    let key = unique_key("role-limit");
    let mut held = Held::take(&key);
    // The proxy only counts connection attempts.
    let proxy = Proxy::start();
    let dir = temp_dir("role-limit");
    let mut waiters = Herd::start(12, &dir, || {
        let mut cmd = role.pglock(proxy.port);
        cmd.args(["--key", &key]);
        cmd
    });
    wait_until("4 waiters in the lock's queue", LIMIT, || {
        waiters.alive() && held.waiting() == 4
    });
    // 12 first attempts, 4 of them let in: 8 more attempts are retries after "too many
    // connections for role".
    wait_until("the other 8 to try again", LIMIT, || {
        waiters.alive() && proxy.accepted() >= 20
    });
    held.release();
    waiters.all_ran(&dir);
}

#[test]
fn waiters_queued_in_a_session_pool_outlast_query_wait_timeout() {
    let bouncer = Bouncer::start_with(
        "session",
        &[("default_pool_size", "3"), ("query_wait_timeout", "1")],
    );
    let key = unique_key("pool");
    let mut held = Held::take(&key);
    let dir = temp_dir("pool");
    let conninfo = bouncer.conninfo();
    let mut waiters = Herd::start(6, &dir, || {
        let mut cmd = pglock();
        cmd.args(["--key", &key, "-d", &conninfo]);
        cmd
    });
    wait_until("3 waiters in the lock's queue", LIMIT, || {
        waiters.alive() && held.waiting() == 3
    });
    // The other 3 wait in PgBouncer's queue for a server connection, longer than it lets them.
    wait_until("PgBouncer to turn waiters away twice", LIMIT, || {
        waiters.alive() && bouncer.log().matches("query_wait_timeout").count() >= 2
    });
    held.release();
    waiters.all_ran(&dir);
}

#[test]
fn a_herd_whose_connections_are_cut_comes_back_spread_out() {
    const HERD: usize = 16;
    let key = unique_key("herd");
    let mut held = Held::take(&key);
    let proxy = Proxy::start();
    let dir = temp_dir("herd");
    let mut waiters = Herd::start(HERD, &dir, || {
        let mut cmd = pglock();
        cmd.env("PGHOST", "127.0.0.1")
            .env("PGPORT", proxy.port.to_string())
            .args(["--key", &key]);
        cmd
    });
    wait_until("the herd in the lock's queue", LIMIT, || {
        waiters.alive() && held.waiting() == HERD as i64
    });
    assert_eq!(proxy.arrivals().len(), HERD);
    proxy.cut_all();
    wait_until("every waiter to reconnect", LIMIT, || {
        waiters.alive() && proxy.arrivals().len() >= 2 * HERD
    });
    let back: Vec<Duration> = {
        let arrivals = proxy.arrivals();
        let first = arrivals[HERD];
        arrivals[HERD..2 * HERD]
            .iter()
            .map(|t| t.duration_since(first))
            .collect()
    };
    // The first reconnects are drawn from 0-100 ms; in lockstep they would all come at 100 ms,
    // give or take the scheduler.
    let spread = *back.last().unwrap();
    let crowd = back
        .iter()
        .map(|&t| {
            back.iter()
                .filter(|&&u| u >= t && u < t + Duration::from_millis(10))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        spread >= Duration::from_millis(40) && crowd <= HERD / 2,
        "reconnections in lockstep: {back:?}"
    );
    held.release();
    waiters.all_ran(&dir);
}

#[test]
fn a_full_role_makes_nowait_exit_69_and_a_timeout_exit_75() {
    let role = Role::create(1);
    let key = unique_key("full");
    let slot = role.session();
    let out = role
        .pglock(server_port())
        .args(["--key", &key, "--nowait", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{err}");
    assert!(err.contains("too many connections for role"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");

    let started = Instant::now();
    let out = role
        .pglock(server_port())
        .args(["--key", &key, "--timeout", "1", "--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(75), "{err}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(err.starts_with("pglock: timed out after 1s"), "{err}");
    assert!(err.contains("no free connection slot"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    drop(slot);
}

#[test]
fn the_terminal_line_says_it_waits_for_a_connection_slot() {
    let role = Role::create(1);
    let key = unique_key("slot-line");
    let slot = role.session();
    let size = nix::pty::Winsize {
        ws_row: 24,
        ws_col: 200,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    let pty = nix::pty::openpty(&size, None).unwrap();
    let mut cmd = role.pglock(server_port());
    cmd.args(["--key", &key, "--", "true"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(pty.slave));
    let mut waiter = cmd.spawn().unwrap();
    drop(cmd); // our copy of the slave must go, or the reader never sees the end
    let seen = collect(pty.master);
    let text = || String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    wait_until("the slot line", LIMIT, || {
        text().contains(&format!("for a connection slot for lock \"{key}\""))
    });
    let t = text();
    assert!(t.starts_with("\r\x1b[2Kpglock: waiting "), "{t:?}");
    assert!(t.contains("too many connections for role"), "{t:?}");
    drop(slot);
    assert!(waiter.wait().unwrap().success());
    wait_until("the terminal to close", LIMIT, || {
        Arc::strong_count(&seen) == 1
    });
    let t = text();
    assert!(t.ends_with("\r\x1b[2K"), "the line must be erased: {t:?}");
    assert!(!t.contains('\n'), "a status line, not log lines: {t:?}");
}

/// Reads a pty master until every slave is closed, collecting what was written.
fn collect(master: std::os::fd::OwnedFd) -> Arc<Mutex<Vec<u8>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&seen);
    std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut buf = [0u8; 4096];
        // EIO once the last slave is closed ends the loop.
        while let Ok(n @ 1..) = file.read(&mut buf) {
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    seen
}

/// Issue 10, defect 2: through a statement-pooling PgBouncer, `--scope xact` cannot work (the
/// pooler closes the connection when the transaction stays open). It used to count as a broken
/// connection: `--nowait` and a plain wait reconnected for ever, `--timeout 2` exited 75 as if
/// the lock were busy. It is a configuration error: one line, exit 1 (or 69), at once.
#[test]
fn xact_scope_through_statement_pooling_fails_at_once() {
    let bouncer = Bouncer::start("statement");
    let key = unique_key("statement");
    let conninfo = bouncer.conninfo();
    for extra in [&["--nowait"][..], &["--timeout", "2"], &[]] {
        let started = Instant::now();
        let mut cmd = pglock();
        cmd.args(["--key", &key, "--scope", "xact", "-d", &conninfo])
            .args(extra)
            .args(["--", "true"]);
        let (rc, err) = finish_within(start(&mut cmd), Duration::from_secs(20));
        assert!(rc == 1 || rc == 69, "{extra:?}: exit {rc}: {err}");
        assert_eq!(err.lines().count(), 1, "{extra:?}: {err}");
        assert!(err.starts_with("pglock: "), "{extra:?}: {err}");
        assert!(err.contains("statement pooling"), "{extra:?}: {err}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{extra:?}: took {:?}",
            started.elapsed()
        );
    }
}

/// `finish`, but a pglock still running after `limit` is killed and fails the test.
fn finish_within(mut child: Child, limit: Duration) -> (i32, String) {
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > limit {
            let _ = child.kill();
            let (_, err) = finish(child);
            panic!("still running after {limit:?}: {err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    finish(child)
}
