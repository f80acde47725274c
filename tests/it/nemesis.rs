//! The nemesis suite (issue 17): leases against real silences. Each test silences one
//! connection with iptables, by its client port, in a private network namespace, and stops
//! processes with SIGSTOP; commands write their start and end to a shared event log, and the
//! checks are over that log: the next holder never starts before the silenced holder's command
//! has ended, and the lock comes free within the bounds the README promises.
//!
//! They need root and a network namespace of their own, so they are ignored by a plain
//! `cargo test`: `.ci/nemesis` runs them inside `unshare -n` with a server of their own.

use crate::util::bouncer::Bouncer;
use crate::util::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::Command;
use std::time::{Duration, Instant};

/// The short settings of the done-when criteria: a lease of 2 x 1s + 2s + 2s = 6s.
const FAST: [&str; 4] = ["--check-interval", "1s", "--kill-after", "2s"];

/// Drops every packet to or from one local TCP port until dropped.
struct Silenced(u16);

impl Silenced {
    fn port(port: u16) -> Silenced {
        iptables("-I", port);
        Silenced(port)
    }

    /// The connection of the backend `pid`, as the server sees its client.
    fn backend(pid: i32) -> Silenced {
        Silenced::port(client_port(pid))
    }
}

impl Drop for Silenced {
    fn drop(&mut self) {
        iptables("-D", self.0);
    }
}

fn iptables(op: &str, port: u16) {
    for dir in ["--sport", "--dport"] {
        let p = port.to_string();
        let out = Command::new("iptables")
            .args([op, "INPUT", "-p", "tcp", dir, &p, "-j", "DROP"])
            .output()
            .expect("iptables");
        assert!(out.status.success(), "iptables {op}: {out:?}");
    }
}

fn client_port(pid: i32) -> u16 {
    let row = sql()
        .query_one(
            "SELECT client_port FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .unwrap();
    let port: Option<i32> = row.get(0);
    port.expect("a TCP connection") as u16
}

/// Stops processes with SIGSTOP, and continues them when dropped (pass or fail).
struct Stopped(Vec<i32>);

impl Stopped {
    fn all(pids: Vec<i32>) -> Stopped {
        for &pid in &pids {
            let _ = kill(Pid::from_raw(pid), Signal::SIGSTOP);
        }
        Stopped(pids)
    }

    fn resume(mut self) {
        self.cont();
    }

    fn cont(&mut self) {
        for pid in self.0.drain(..) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGCONT);
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        self.cont();
    }
}

/// A shared event log: each command appends `WHO start|end UNIX_NS`.
struct Events {
    path: std::path::PathBuf,
}

impl Events {
    fn new(env: &TestEnv) -> Events {
        Events {
            path: env.path("events"),
        }
    }

    /// A command that logs its start, and its end on SIGTERM, as `who`.
    fn script(&self, who: &str) -> String {
        format!(
            "log() {{ echo \"{who} $1 $(date +%s%N)\" >> {p}; }}; trap 'log end; exit 0' TERM; \
             log start; sleep 300 & wait",
            p = self.path.display()
        )
    }

    fn at(&self, who: &str, what: &str) -> Option<u128> {
        let text = std::fs::read_to_string(&self.path).unwrap_or_default();
        text.lines().find_map(|line| {
            let mut parts = line.split_whitespace();
            (parts.next() == Some(who) && parts.next() == Some(what))
                .then(|| parts.next()?.parse().ok())
                .flatten()
        })
    }

    #[track_caller]
    fn wait_for(&self, who: &str, what: &str, limit: Duration) -> u128 {
        let mut at = None;
        wait_within(&format!("{who} {what}"), limit, || {
            at = self.at(who, what);
            at.is_some()
        });
        at.unwrap()
    }
}

fn unix_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A pglock over TCP (so that its connection has a port to silence) running `script`.
fn over_tcp(env: &TestEnv, args: &[&str], script: &str) -> Started {
    start(
        env.pglock(args)
            .args(["-c", script])
            .env("PGHOST", "127.0.0.1"),
    )
}

/// pglock's process and its descendants, for freezing a whole "host".
fn tree(root: i32) -> Vec<i32> {
    let mut all = vec![root];
    let mut i = 0;
    while i < all.len() {
        let pid = all[i];
        let children =
            std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
        all.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<i32>().ok()),
        );
        i += 1;
    }
    all
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn a_silent_holder_frees_the_lock_within_the_lease_after_its_command_ended() {
    let env = TestEnv::new("nemsilent");
    let events = Events::new(&env);
    let holder = over_tcp(&env, &FAST, &events.script("a"));
    events.wait_for("a", "start", LIMIT);
    let silenced_at = unix_ns();
    let _silence = Silenced::backend(env.backend_pid());
    let next = over_tcp(&env, &FAST, &events.script("b"));
    let b_start = events.wait_for("b", "start", Duration::from_secs(20));
    let a_end = events
        .at("a", "end")
        .expect("the silent holder's command was not stopped");
    assert!(
        a_end < b_start,
        "the next holder started before the silent one ended"
    );
    let free_after = Duration::from_nanos((b_start - silenced_at) as u64);
    eprintln!("silent holder: the next host ran {free_after:?} after the silence began");
    assert!(free_after < Duration::from_secs(15), "{free_after:?}");
    holder.finish().assert_code(74);
    next.kill(Signal::SIGTERM);
    next.finish();
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn a_vanished_host_frees_the_lock_within_the_lease() {
    let env = TestEnv::new("nemvanish");
    let events = Events::new(&env);
    let holder = over_tcp(&env, &FAST, &events.script("a"));
    events.wait_for("a", "start", LIMIT);
    let silence = Silenced::backend(env.backend_pid());
    let host = Stopped::all(tree(holder.id() as i32));
    let vanished = Instant::now();
    wait_within("the lock to be free", Duration::from_secs(15), || {
        env.granted() == 0
    });
    eprintln!("vanished host: lock free after {:?}", vanished.elapsed());
    for pid in tree(holder.id() as i32) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    drop(host);
    drop(silence);
    holder.finish();
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn a_vanished_host_behind_a_session_pooler_frees_the_lock_within_the_lease() {
    let bouncer = Bouncer::start("session");
    let env = TestEnv::new("nembouncer");
    let events = Events::new(&env);
    let script = events.script("a");
    let mut args = FAST.to_vec();
    let conninfo = bouncer.conninfo();
    args.extend(["-d", &conninfo, "-c", &script]);
    let holder = start(env.pglock(&args));
    events.wait_for("a", "start", LIMIT);
    // pglock's connection is to PgBouncer; its port there is the one to silence.
    let port = pglock_port(holder.id() as i32, bouncer.port);
    let silence = Silenced::port(port);
    let host = Stopped::all(tree(holder.id() as i32));
    let vanished = Instant::now();
    wait_within("the lock to be free", Duration::from_secs(15), || {
        env.granted() == 0
    });
    eprintln!(
        "vanished host behind PgBouncer: lock free after {:?}",
        vanished.elapsed()
    );
    for pid in tree(holder.id() as i32) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    drop(host);
    drop(silence);
    holder.finish();
}

/// The local port of `pid`'s TCP connection to `remote_port` (`ss` knows).
fn pglock_port(pid: i32, remote_port: u16) -> u16 {
    let out = Command::new("ss").args(["-Htnp"]).output().expect("ss");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .find_map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            let (local, peer) = (cols.get(3)?, cols.get(4)?);
            peer.ends_with(&format!(":{remote_port}"))
                .then(|| local.rsplit(':').next()?.parse().ok())
                .flatten()
        })
        .unwrap_or_else(|| panic!("no connection of {pid} to port {remote_port}:\n{text}"))
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn a_silent_waiter_that_is_granted_the_lock_frees_it_within_the_lease() {
    let env = TestEnv::new("nemgranted");
    let mut blocker = env.lock().take_in_sql();
    let waiter = over_tcp(&env, &FAST, "sleep 300");
    wait_until("the waiter to queue", || env.waiting() == 1);
    let waiting = lock_pids(&mut env.probe(), env.lock(), false)[0];
    let silence = Silenced::backend(waiting);
    env.lock().unlock_in_sql(&mut blocker);
    let granted = Instant::now();
    // The server grants the silent waiter's backend; nobody will ever hear of it.
    wait_within(
        "the silent waiter's backend to let go",
        Duration::from_secs(15),
        || !lock_pids(&mut env.probe(), env.lock(), true).contains(&waiting),
    );
    eprintln!(
        "silent waiter granted: backend gone after {:?}",
        granted.elapsed()
    );
    drop(silence);
    waiter.kill(Signal::SIGTERM);
    waiter.finish();
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn a_reconnecting_waiter_never_queues_behind_its_own_old_session() {
    let env = TestEnv::new("nemstranded");
    let mut blocker = env.lock().take_in_sql();
    // No lease: only ending the old backend can get this waiter the lock.
    let ran = env.path("ran");
    let script = format!("touch {}", ran.display());
    let waiter = over_tcp(&env, &["--check-interval", "1s", "--lease", "0"], &script);
    wait_until("the waiter to queue", || env.waiting() == 1);
    let old = lock_pids(&mut env.probe(), env.lock(), false)[0];
    let silence = Silenced::backend(old);
    // The old backend is granted the lock while its client hears nothing.
    env.lock().unlock_in_sql(&mut blocker);
    wait_until("the old backend to be granted", || {
        lock_pids(&mut env.probe(), env.lock(), true).contains(&old)
    });
    // The client gives up on its silent connection (tcp_user_timeout: 2 x 1s + 5s), connects
    // again on a new port, and must end its old backend rather than queue behind it.
    let out = waiter.finish();
    drop(silence);
    out.assert_success();
    assert!(ran.exists());
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn pglock_stopped_alone_never_lets_its_command_overlap_the_next_holder() {
    let env = TestEnv::new("nemstopped");
    let events = Events::new(&env);
    let holder = over_tcp(&env, &FAST, &events.script("a"));
    events.wait_for("a", "start", LIMIT);
    // pglock alone: its command and its switch run on.
    let frozen = Stopped::all(vec![holder.id() as i32]);
    let next = over_tcp(&env, &FAST, &events.script("b"));
    let b_start = events.wait_for("b", "start", Duration::from_secs(20));
    let a_end = events
        .at("a", "end")
        .expect("the stopped pglock's command was not stopped");
    assert!(
        a_end < b_start,
        "the command ran on alongside the next holder"
    );
    frozen.resume();
    holder.finish();
    next.kill(Signal::SIGTERM);
    next.finish();
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn a_host_resumed_after_its_lease_ended_stops_its_command_at_once() {
    let env = TestEnv::new("nemresumed");
    let events = Events::new(&env);
    let holder = over_tcp(&env, &FAST, &events.script("a"));
    events.wait_for("a", "start", LIMIT);
    let silence = Silenced::backend(env.backend_pid());
    let host = Stopped::all(tree(holder.id() as i32));
    let next = over_tcp(&env, &FAST, &events.script("b"));
    events.wait_for("b", "start", Duration::from_secs(20));
    // The host comes back, network and all, after its lease ended.
    drop(silence);
    let resumed = unix_ns();
    host.resume();
    let a_end = events.wait_for("a", "end", Duration::from_secs(10));
    let took = Duration::from_nanos((a_end - resumed) as u64);
    eprintln!("resumed host: its command stopped {took:?} after the resume");
    assert!(took < Duration::from_secs(2), "{took:?}");
    holder.finish().assert_code(74);
    next.kill(Signal::SIGTERM);
    next.finish();
}

#[test]
#[ignore = "needs a private network namespace: run .ci/nemesis"]
fn with_the_defaults_a_vanished_hosts_lock_is_free_within_a_minute() {
    let env = TestEnv::new("nemdefault");
    let events = Events::new(&env);
    let holder = over_tcp(&env, &[], &events.script("a"));
    events.wait_for("a", "start", LIMIT);
    let silence = Silenced::backend(env.backend_pid());
    let host = Stopped::all(tree(holder.id() as i32));
    let vanished = Instant::now();
    wait_within("the lock to be free", Duration::from_secs(60), || {
        env.granted() == 0
    });
    eprintln!(
        "vanished host, defaults: lock free after {:?}",
        vanished.elapsed()
    );
    for pid in tree(holder.id() as i32) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    drop(host);
    drop(silence);
    holder.finish();
}
