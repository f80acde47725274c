//! A torture run: many pglock processes on one key for a few seconds, mixing --nowait, --timeout
//! and shared locks, while a chaos thread sends SIGTERM to random pglock processes and terminates
//! random lock backends. Afterwards nothing may be left behind, and exclusive critical sections
//! may overlap only within the short window between a backend's termination and its command's
//! end.

use crate::util::*;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

struct Rng(u64);

impl Rng {
    fn next(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Child helper: a critical section of PGLOCK_TEST_SECTION="MODE MILLIS LOG", recorded as enter
/// and leave lines with nanosecond timestamps; SIGTERM ends it early (exit 143), still recorded.
#[test]
fn helper_critical_section() {
    let Ok(spec) = std::env::var("PGLOCK_TEST_SECTION") else {
        return;
    };
    let mut parts = spec.splitn(3, ' ');
    let (mode, ms, log) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let term = Arc::new(std::sync::atomic::AtomicBool::new(false));
    signal_hook::flag::register(signal_hook::consts::SIGTERM, term.clone()).unwrap();
    let stamp = |what: &str| {
        use std::io::Write;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(log)
            .unwrap();
        // One write(2) per line: O_APPEND keeps concurrent lines whole.
        let line = format!("{mode} {what} {} {}\n", now.as_nanos(), std::process::id());
        f.write_all(line.as_bytes()).unwrap();
    };
    stamp("enter");
    let until = Instant::now() + Duration::from_millis(ms.parse().unwrap());
    while Instant::now() < until && !term.load(std::sync::atomic::Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(1));
    }
    stamp("leave");
    std::process::exit(if term.load(std::sync::atomic::Ordering::SeqCst) {
        143
    } else {
        0
    });
}

#[test]
fn torture() {
    // Alone: its load would skew other tests' timing bounds, and theirs its overlap bound.
    let env = TestEnv::alone("torture");
    let k = env.key().to_string();
    let log = env.path("log");
    let run_for = Duration::from_secs(15);
    let began = Instant::now();
    let live: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let seed = std::process::id() as u64 * 2_654_435_761 + 1;

    let workers: Vec<_> = (0..6)
        .map(|w| {
            let (k, log, live) = (k.clone(), log.clone(), live.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(seed + w);
                let mut codes = BTreeMap::<i32, usize>::new();
                while began.elapsed() < run_for {
                    let mut cmd = pglock();
                    cmd.args([
                        "--key",
                        &k,
                        "--kill-after",
                        "5s",
                        "--check-interval",
                        "1s",
                        "-q",
                    ]);
                    let mode = match rng.next(3) {
                        0 => {
                            cmd.args(["--timeout", "2s"]);
                            "X"
                        }
                        1 => {
                            cmd.arg("--nowait");
                            "X"
                        }
                        _ => {
                            cmd.args(["--shared", "--timeout", "2s"]);
                            "S"
                        }
                    };
                    let child = start(
                        cmd.arg("--")
                            .args(helper(concat!(module_path!(), "::helper_critical_section")))
                            .env(
                                "PGLOCK_TEST_SECTION",
                                format!("{mode} {} {}", 10 + rng.next(80), log.display()),
                            )
                            .stdout(std::process::Stdio::null()),
                    );
                    let pid = child.id();
                    live.lock().unwrap().insert(pid);
                    let status = child.finish();
                    live.lock().unwrap().remove(&pid);
                    *codes.entry(status.code().unwrap_or(-1)).or_default() += 1;
                }
                codes
            })
        })
        .collect();

    let chaos = {
        let (k, live) = (k.clone(), live.clone());
        std::thread::spawn(move || {
            let mut rng = Rng(seed ^ 0xdead_beef);
            let mut client = sql();
            let (mut sigterms, mut terminations) = (0, 0);
            while began.elapsed() < run_for {
                std::thread::sleep(Duration::from_millis(100 + rng.next(300)));
                if rng.next(2) == 0 {
                    let pids: Vec<u32> = live.lock().unwrap().iter().copied().collect();
                    if !pids.is_empty() {
                        let pid = pids[rng.next(pids.len() as u64) as usize];
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                        sigterms += 1;
                    }
                } else {
                    let n: i64 = client
                        .query_one(
                            "SELECT count(pg_terminate_backend(pid)) FROM (SELECT pid FROM pg_stat_activity \
                             WHERE application_name LIKE $1 ORDER BY random() LIMIT 1) s",
                            &[&format!("pglock:{k}@%")],
                        )
                        .unwrap()
                        .get(0);
                    terminations += n;
                }
            }
            (sigterms, terminations)
        })
    };

    let mut codes = BTreeMap::<i32, usize>::new();
    for w in workers {
        for (code, n) in w.join().unwrap() {
            *codes.entry(code).or_default() += n;
        }
    }
    let (sigterms, terminations) = chaos.join().unwrap();

    // Nothing left waiting or holding on the server.
    wait_within(
        "the server to drop every pglock session",
        Duration::from_secs(10),
        || env.granted() + env.waiting() == 0,
    );

    // Every command that entered also left, and none of them is still running.
    let text = read(&log);
    let mut open: BTreeMap<String, (String, u128)> = BTreeMap::new();
    let mut sections = Vec::new();
    for line in text.lines() {
        let f: Vec<_> = line.split(' ').collect();
        let (mode, what, at, pid) = (f[0], f[1], f[2].parse::<u128>().unwrap(), f[3]);
        match what {
            "enter" => {
                open.insert(pid.to_string(), (mode.to_string(), at));
            }
            _ => {
                let (mode, from) = open.remove(pid).expect("leave without enter");
                sections.push((mode, from, at));
            }
        }
    }
    assert!(open.is_empty(), "commands that never left: {open:?}");
    let orphans: Vec<_> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            // Only this run's sections: their environment names this run's log.
            std::fs::read(format!("/proc/{pid}/environ"))
                .map(|c| String::from_utf8_lossy(&c).contains(&log.display().to_string()))
                .unwrap_or(false)
        })
        .collect();
    assert!(orphans.is_empty(), "processes left behind: {orphans:?}");

    // Exclusive sections overlap nothing, except briefly after a lost lock.
    sections.sort_by_key(|s| s.1);
    let mut worst = 0u128;
    for (i, (mode, _, to)) in sections.iter().enumerate() {
        for (other_mode, other_from, other_to) in &sections[i + 1..] {
            if other_from >= to {
                break;
            }
            if mode == "X" || other_mode == "X" {
                worst = worst.max(to.min(other_to) - other_from);
            }
        }
    }
    let worst = Duration::from_nanos(worst as u64);
    eprintln!(
        "torture: {} critical sections, exit codes {codes:?}, {sigterms} SIGTERMs, \
         {terminations} backend terminations, worst exclusive overlap {worst:?}",
        sections.len()
    );
    assert!(sections.len() > 20, "too little happened: {codes:?}");
    assert!(
        worst < Duration::from_secs(1),
        "exclusive sections overlapped by {worst:?}"
    );
    if terminations == 0 {
        assert_eq!(worst, Duration::ZERO, "overlap without any lost lock");
    }
}
