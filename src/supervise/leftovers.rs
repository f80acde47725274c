//! Leftovers: what the command started that still runs after it exited (`cmd &` in a script, a
//! double-forked or `setsid` helper). They act under the lock as much as the command did, so by
//! default pglock stops them before it releases, as flock's lock, an open file they inherit,
//! stays held while any of them runs.
//!
//! Two kinds are found: the rest of the command's process group (signal 0 to the group), and
//! pglock's children other than its own helpers. pglock makes itself a child subreaper before
//! the spawn, so a descendant whose parent exits (a double fork, `setsid`) is re-parented to
//! pglock rather than to init, and is found among its children (`/proc/self/task/*/children`).
//! Without /proc only the group is found.

use crate::duration::after;
use crate::pg::deadline::GRACE;
use crate::{step, warn};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::wait::{Id, WaitPidFlag, waitid, waitpid};
use nix::unistd::Pid;
use std::time::{Duration, Instant};

use super::Guard;
use super::deadman::DeadMan;
use super::signals::Router;

/// `--leftovers`: what to do about them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// SIGTERM, SIGKILL after --kill-after; release once they are gone.
    Terminate,
    /// Hold the lock until they exit by themselves (flock's default).
    Wait,
    /// Release while they run (`flock -o`).
    Keep,
}

/// How often the census is taken again while waiting for them to go.
const LOOK_EVERY: Duration = Duration::from_millis(20);

/// Makes pglock a child subreaper, so that the command's orphaned descendants become its
/// children. A failure only means that a double-forked helper is not found.
pub fn adopt_orphans() {
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        step!("cannot become a child subreaper ({e}): double-forked leftovers go unseen");
    }
}

/// What [`settle`] works with.
pub struct Job<'a> {
    pub policy: Policy,
    /// The command's process group.
    pub group: Pid,
    pub kill_after: Duration,
    pub check_every: Duration,
    pub router: &'a Router,
    /// The lock, still checked while they run (a wait may last long).
    pub guard: &'a mut dyn Guard,
    /// The dead man's switch, still armed: if pglock dies now, it stops the group.
    pub switch: Option<&'a DeadMan>,
    /// The lock was lost while the command ran: nothing to hold them under, they are killed.
    pub lost: bool,
}

/// Deals with what the command left behind, by the policy, before the release. Returns once
/// none is left (or, after a terminating signal, once they were killed and given a second).
/// A lock lost meanwhile is the reason for the release's failure later; here it only means the
/// leftovers are stopped at once.
pub fn settle(job: Job) {
    let Job {
        policy,
        group,
        kill_after,
        check_every,
        router,
        guard,
        switch,
        mut lost,
    } = job;
    if policy == Policy::Keep {
        return;
    }
    let keep = switch.map(DeadMan::pid);
    let found = census(group, keep);
    if found.is_empty() {
        return;
    }
    let n = found.len();
    let them = if n == 1 { "process" } else { "processes" };
    if lost {
        warn!("the command left {n} {them} running and the lock is lost; killing them");
        signal_all(group, keep, Signal::SIGKILL);
    }
    let mut killed_at: Option<Instant> = lost.then(Instant::now);
    let mut kill_at = None;
    let mut next_check = after(Instant::now(), check_every);
    match policy {
        _ if lost => {}
        Policy::Terminate => {
            warn!("the command left {n} {them} running; terminating them (--leftovers terminate)");
            signal_all(group, keep, Signal::SIGTERM);
            kill_at = Some(after(Instant::now(), kill_after));
        }
        _ => step!("the command left {n} {them} running; holding the lock until they exit"),
    }
    loop {
        if !lost && Instant::now() >= next_check {
            match guard.check(check_every) {
                Ok(()) => {
                    if let Some(switch) = switch {
                        switch.heartbeat();
                    }
                }
                Err(why) => {
                    warn!(
                        "the lock was lost while the command's leftovers ran ({why}); killing them"
                    );
                    lost = true;
                }
            }
            next_check = after(Instant::now(), check_every);
        }
        reap(keep);
        if census(group, keep).is_empty() {
            step!("the command's leftovers are gone");
            return;
        }
        let now = Instant::now();
        if let Some(at) = killed_at {
            // SIGKILL takes effect at once, unless a process is stuck in the kernel.
            if now.duration_since(at) >= kill_after.max(Duration::from_secs(5)) {
                warn!("the command's leftovers survive SIGKILL; releasing the lock anyway");
                return;
            }
        } else if kill_at.is_some_and(|at| now >= at) || router.interrupted().is_some() || lost {
            // A terminating signal bounds pglock's exit: what is left is killed now.
            step!("sending SIGKILL to the command's leftovers");
            signal_all(group, keep, Signal::SIGKILL);
            killed_at = Some(now);
        } else if policy == Policy::Terminate {
            // New ones (a leftover that forked) get their SIGTERM too.
            signal_all(group, keep, Signal::SIGTERM);
        }
        router.pause(LOOK_EVERY);
        if killed_at.is_some_and(|at| at.elapsed() >= GRACE) && router.interrupted().is_some() {
            return;
        }
    }
}

/// Sends `sig` to the group and to every leftover child.
fn signal_all(group: Pid, keep: Option<Pid>, sig: Signal) {
    let _ = killpg(group, sig);
    for pid in children(keep) {
        let _ = kill(pid, sig);
    }
}

/// The leftovers running now: the group's members (counted from /proc where it can) and
/// pglock's children but its own helpers.
fn census(group: Pid, keep: Option<Pid>) -> Vec<Pid> {
    let mut found = children(keep);
    match killpg(group, None) {
        Err(Errno::ESRCH) => {}
        // Alive (or not ours to signal, which a re-used group id would be: then not ours).
        Ok(()) => match group_members(group) {
            Some(members) => {
                for pid in members {
                    if !found.contains(&pid) {
                        found.push(pid);
                    }
                }
            }
            // Without /proc, signal 0 is all there is: the group still has a process.
            None => found.push(group),
        },
        Err(_) => {}
    }
    found
}

/// pglock's children, the re-parented orphans among them, but its dead man's switch and its wait
/// guards (one may still be exiting).
fn children(keep: Option<Pid>) -> Vec<Pid> {
    // An orphan is re-parented to the subreaper's first live thread, the main one, which also
    // forked the command and the switch: one file, not the whole task list. The wait guards
    // are forked by a thread of their own, so they are not listed here at all.
    let me = std::process::id();
    let Ok(list) = std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")) else {
        return Vec::new();
    };
    // Still excluded by pid: a guard whose thread has gone is re-parented to the main one.
    let guards: Vec<Pid> = super::wait_guard::launched()
        .into_iter()
        .filter_map(|p| i32::try_from(p).ok().map(Pid::from_raw))
        .collect();
    list.split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .map(Pid::from_raw)
        // An exited child (a zombie) is no leftover: it is reaped next.
        .filter(|&pid| Some(pid) != keep && !guards.contains(&pid) && !zombie(pid))
        .collect()
}

/// The process's state and group, from /proc/PID/stat (after the parenthesised name).
fn stat(pid: i32) -> Option<(char, i32)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = text.rsplit_once(") ")?.1;
    let mut fields = rest.split(' ');
    let state = fields.next()?.chars().next()?;
    let pgrp = fields.nth(1)?.parse().ok()?;
    Some((state, pgrp))
}

fn zombie(pid: Pid) -> bool {
    stat(pid.as_raw()).is_some_and(|(state, _)| state == 'Z')
}

/// The live members of a process group, from /proc (None without it). Zombies are not counted:
/// they act no more, and their parents collect them.
fn group_members(group: Pid) -> Option<Vec<Pid>> {
    let dir = std::fs::read_dir("/proc").ok()?;
    let members = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            stat(pid).is_some_and(|(state, pgrp)| state != 'Z' && pgrp == group.as_raw())
        })
        .map(Pid::from_raw)
        .collect();
    Some(members)
}

/// Collects every exited child but `keep` (whose owner collects it).
fn reap(keep: Option<Pid>) {
    let peek = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    while let Ok(status) = waitid(Id::All, peek) {
        let Some(pid) = status.pid() else { return };
        if Some(pid) == keep {
            return;
        }
        let _ = waitpid(pid, Some(WaitPidFlag::WNOHANG));
    }
}
