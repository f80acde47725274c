//! The wait, made visible: while the lock connection is blocked in pg_advisory_lock, an observer
//! thread with a connection of its own finds out who holds the lock and where we are in its
//! queue.
//!
//! - stderr on a terminal, without -v or -q: one status line, redrawn in place every second and
//!   erased when the wait ends.
//! - -v: the holder line when the wait starts and again every minute, as log lines.
//! - otherwise (cron, CI, pipes): no observer, no thread, no extra connection, no query.
//!
//! For a `--limit` semaphore the observer watches its slots, whose holders keep us out, and its
//! queue: the queue lock's holder is first in line, its waiters come after it.
//!
//! The observer never delays the main flow: stopping it only flips a flag and erases the line,
//! under the lock that every draw takes, so a draw can't land after the erase. A query still in
//! flight just finishes in the background and its connection closes with the thread.

use super::model::{self, Row};
use super::render;
use super::sql::Locks;
use crate::appname::{self, AppName};
use crate::key::LockId;
use crate::lock::Semaphore;
use crate::pg::{Opener, Session};
use crate::step;
use nix::unistd::isatty;
use std::io::Write;
use std::os::fd::BorrowedFd;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A wait granted this quickly shows nothing and queries nothing.
const TTY_GRACE: Duration = Duration::from_millis(300);
/// How often the line is redrawn (the elapsed time) and the server asked again.
const TTY_REDRAW: Duration = Duration::from_secs(1);
const TTY_REFRESH: Duration = Duration::from_secs(2);
/// With -v: a first look soon after the wait starts, retried until our queued request shows up
/// in pg_locks, then one report a minute.
const LOG_FIRST: Duration = Duration::from_millis(100);
const LOG_RETRY: Duration = Duration::from_millis(500);
const LOG_TRIES: u32 = 10;
const LOG_EVERY: Duration = Duration::from_secs(60);
/// The observer is an extra; it must not hang on an unreachable server for long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Line,
    Log,
}

/// What the observer needs to know about the wait.
pub struct Wait<'a> {
    /// The lock connection's opener: the observer connects the same way under its own name.
    pub opener: &'a Opener,
    pub id: LockId,
    /// With `--limit`: watch its slots and queue instead of `id`.
    pub semaphore: Option<&'a Semaphore>,
    pub label: &'a str,
    pub shared: bool,
    pub verbose: bool,
    pub quiet: bool,
}

struct Screen {
    stopped: bool,
    /// A status line is on the terminal and must be erased.
    drawn: bool,
}

/// A running observer; dropping it ends the display.
pub struct Watch {
    screen: Arc<Mutex<Screen>>,
    _stop: Sender<()>,
}

fn stderr_is_tty() -> bool {
    // SAFETY: fd 2 stays open for the life of the process.
    isatty(unsafe { BorrowedFd::borrow_raw(2) }).unwrap_or(false)
}

impl Watch {
    /// Starts an observer if anyone will see its output, else returns None having done nothing.
    pub fn start(wait: &Wait) -> Option<Watch> {
        let mode = if wait.verbose {
            Mode::Log
        } else if !wait.quiet && stderr_is_tty() {
            Mode::Line
        } else {
            return None;
        };
        let screen = Arc::new(Mutex::new(Screen {
            stopped: false,
            drawn: false,
        }));
        let (stop, stopped) = mpsc::channel();
        let (ids, gate) = match wait.semaphore {
            Some(sem) => {
                let mut ids = sem.slots.clone();
                ids.push(sem.gate);
                (ids, Some(sem.gate))
            }
            None => (vec![wait.id], None),
        };
        let mut observer = Observer {
            mode,
            opener: observer_opener(wait.opener),
            ids,
            gate,
            label: wait.label.to_string(),
            shared: wait.shared,
            app_name: wait.opener.application_name().to_string(),
            screen: Arc::clone(&screen),
            session: None,
            started: Instant::now(),
        };
        std::thread::Builder::new()
            .name("observer".into())
            .spawn(move || observer.run(stopped))
            .ok()?;
        Some(Watch {
            screen,
            _stop: stop,
        })
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // Dropping the sender wakes the thread; the flag keeps a draw already under way off the
        // screen.
        let mut screen = lock(&self.screen);
        screen.stopped = true;
        if screen.drawn {
            let _ = std::io::stderr().write_all(b"\r\x1b[2K");
            screen.drawn = false;
        }
    }
}

/// A status line for a wait that has no connection to look from (no free connection slot yet):
/// drawn once, erased when dropped. Only on a terminal, and not with -v, which logs instead.
pub struct Note;

impl Note {
    pub fn show(text: &str) -> Option<Note> {
        if crate::log::verbose() || !stderr_is_tty() {
            return None;
        }
        let cut: String = text
            .chars()
            .take(terminal_width().saturating_sub(1))
            .collect();
        let _ = write!(std::io::stderr().lock(), "\r\x1b[2K{cut}");
        Some(Note)
    }
}

impl Drop for Note {
    fn drop(&mut self) {
        let _ = std::io::stderr().write_all(b"\r\x1b[2K");
    }
}

fn lock(screen: &Mutex<Screen>) -> std::sync::MutexGuard<'_, Screen> {
    screen.lock().unwrap_or_else(|p| p.into_inner())
}

struct Observer {
    mode: Mode,
    opener: Opener,
    /// The locks to look at.
    ids: Vec<LockId>,
    /// A semaphore's queue lock, among `ids`.
    gate: Option<LockId>,
    label: String,
    shared: bool,
    app_name: String,
    screen: Arc<Mutex<Screen>>,
    session: Option<Session>,
    started: Instant,
}

/// The lock's opener under the observer's name, `pglock-watch@host:pid`: not `pglock:`, since
/// it holds nothing. Same target, settings and TLS connector: nothing is resolved again.
fn observer_opener(lock: &Opener) -> Opener {
    let watch = appname::Observer::Watch;
    let name = AppName::parse(lock.application_name())
        .map_or_else(|| AppName::observer(watch), |ours| ours.as_observer(watch));
    lock.renamed(&name.encoded(), CONNECT_TIMEOUT)
}

/// What one look at the server found.
struct Seen {
    /// The rows of the locks whose holders keep us out.
    rows: Vec<Row>,
    /// Our queued request: its position in line.
    position: Option<i64>,
    waiters: usize,
    at: Instant,
}

impl Seen {
    /// The rows as they would read now: the redraw is every second, the look every two, and a
    /// holder's age must not stand still while our own wait time runs.
    fn rows_now(&self) -> Vec<Row> {
        let later = self.at.elapsed().as_secs() as i64;
        let mut rows = self.rows.clone();
        for r in &mut rows {
            r.age_secs = r.age_secs.map(|a| a + later);
        }
        rows
    }
}

impl Observer {
    fn run(&mut self, stop: Receiver<()>) {
        // True when the wait is over.
        let sleep = |d: Duration| !matches!(stop.recv_timeout(d), Err(RecvTimeoutError::Timeout));
        match self.mode {
            Mode::Line => self.run_line(&sleep),
            Mode::Log => self.run_log(&sleep),
        }
    }

    /// The status line: redrawn every second, the server asked every two.
    fn run_line(&mut self, sleep: &dyn Fn(Duration) -> bool) {
        if sleep(TTY_GRACE) {
            return;
        }
        let mut seen = None;
        let mut asked: Option<Instant> = None;
        loop {
            if asked.is_none_or(|t| t.elapsed() >= TTY_REFRESH) {
                asked = Some(Instant::now());
                // Keep the last answer if this look fails: a stale holder beats none.
                if let Some(now) = self.look() {
                    seen = Some(now);
                }
            }
            self.draw(&self.line(seen.as_ref()));
            if sleep(TTY_REDRAW) {
                return;
            }
        }
    }

    /// -v: a holder line when the wait starts, then one a minute.
    fn run_log(&mut self, sleep: &dyn Fn(Duration) -> bool) {
        if sleep(LOG_FIRST) {
            return;
        }
        let mut tries = 0;
        loop {
            tries += 1;
            let next = match self.look() {
                // Our request may not be queued yet; look again soon, but not forever
                // (a pooler may hide our application_name).
                Some(seen) if seen.position.is_none() && tries < LOG_TRIES => LOG_RETRY,
                Some(seen) => {
                    self.log(&seen);
                    LOG_EVERY
                }
                // The server did not answer: don't hammer it.
                None => LOG_EVERY,
            };
            if sleep(next) {
                return;
            }
        }
    }

    /// Asks the server about the lock, connecting first if needed. A failure drops the connection
    /// so the next look reconnects.
    fn look(&mut self) -> Option<Seen> {
        if self.session.is_none() {
            step!(
                "observer: opening a second connection to see who holds lock \"{}\"",
                self.label
            );
            match self.opener.open() {
                Ok(s) => self.session = Some(s),
                Err(e) => {
                    step!("observer: {e}");
                    return None;
                }
            }
        }
        let session = self.session.as_mut()?;
        match model::query(session, Locks::These(&self.ids), false) {
            Ok(rows) => Some(self.seen(rows)),
            Err(e) => {
                step!("observer: {}", crate::pg::describe_error(&e));
                self.session = None;
                None
            }
        }
    }

    /// Where we are in line. A semaphore's line is its queue lock: the holder first, then the
    /// waiters; a plain lock's line is its waiters.
    fn seen(&self, rows: Vec<Row>) -> Seen {
        let ours = |r: &&Row| r.application_name.as_deref() == Some(self.app_name.as_str());
        let (line, rows): (Vec<Row>, Vec<Row>) = match self.gate {
            Some(gate) => rows.into_iter().partition(|r| r.id == gate),
            None => (rows.iter().filter(|r| !r.granted).cloned().collect(), rows),
        };
        let head = line.iter().find(|r| r.granted);
        let position = if head.is_some_and(|r| ours(&r)) {
            Some(1)
        } else {
            line.iter()
                .filter(|r| !r.granted)
                .find(ours)
                .and_then(|r| r.position)
                .map(|p| p + i64::from(head.is_some()))
        };
        Seen {
            position,
            waiters: line.len(),
            rows,
            at: Instant::now(),
        }
    }

    /// The status line: `pglock: waiting 12s for lock "k" (1st of 2 in line); held by ...`.
    fn line(&self, seen: Option<&Seen>) -> String {
        let mut text = format!(
            "pglock: waiting {} for lock \"{}\"",
            render::age_text(self.started.elapsed().as_secs() as i64),
            self.label
        );
        // Most useful first: a narrow terminal cuts the end.
        if let Some(seen) = seen {
            if let Some(pos) = seen.position {
                text.push_str(&format!(" ({} of {} in line)", ordinal(pos), seen.waiters));
            }
            if let Some(phrase) = render::holder_phrase(&seen.rows_now(), self.shared) {
                text.push_str("; ");
                text.push_str(&phrase);
            }
        }
        text
    }

    fn draw(&self, text: &str) {
        let width = terminal_width().saturating_sub(1).max(10);
        // A line wider than the terminal wraps, and \r then redraws only its last part.
        let cut: String = text.chars().take(width).collect();
        let mut screen = lock(&self.screen);
        if screen.stopped {
            return;
        }
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{cut}");
        let _ = err.flush();
        screen.drawn = true;
    }

    fn log(&self, seen: &Seen) {
        let screen = lock(&self.screen);
        if screen.stopped {
            return;
        }
        let mut text = match render::holder_phrase(&seen.rows, self.shared) {
            Some(phrase) => format!("lock \"{}\" is {phrase}", self.label),
            None => format!("lock \"{}\" is busy", self.label),
        };
        if let Some(pos) = seen.position {
            text.push_str(&format!(
                "; waiting {}, {} of {} in line",
                render::age_text(self.started.elapsed().as_secs() as i64),
                ordinal(pos),
                seen.waiters
            ));
        }
        step!("{text}");
        drop(screen);
    }
}

fn ordinal(n: i64) -> String {
    let suffix = match (n % 10, n % 100) {
        (_, 11..=13) => "th",
        (1, _) => "st",
        (2, _) => "nd",
        (3, _) => "rd",
        _ => "th",
    };
    format!("{n}{suffix}")
}

fn terminal_width() -> usize {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize into the struct we pass.
    let ok = unsafe { nix::libc::ioctl(2, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    if ok && ws.ws_col > 0 {
        usize::from(ws.ws_col)
    } else {
        80
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn ordinals() {
        let got: Vec<String> = [1, 2, 3, 4, 11, 12, 13, 21, 22, 101, 111]
            .into_iter()
            .map(super::ordinal)
            .collect();
        assert_eq!(
            got,
            [
                "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd", "101st",
                "111th"
            ]
        );
    }
}
