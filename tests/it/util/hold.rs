//! A pglock holding its lock until the test lets it go. Its command says `ready` on stdout as
//! soon as it runs, so the test knows the lock is held without polling or sleeping, and then
//! waits for its stdin to close.

use super::{LIMIT, Run, Started, start};
use nix::sys::signal::Signal;
use std::borrow::BorrowMut;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};

/// The command under a holding pglock: it reports, with the `--limit` slot if there is one, and
/// waits for end of file on stdin.
const HOLD: &str = "echo \"ready ${PGLOCK_SLOT-}\"; exec cat >/dev/null";

/// A pglock started around [`HOLD`].
pub struct Holder {
    started: Started,
    ready: Receiver<Option<String>>,
    line: String,
}

/// Starts `cmd` (pglock with its lock and connection arguments) around the holding command,
/// without waiting for the lock: for a holder that queues.
pub fn holder(mut cmd: impl BorrowMut<Command>) -> Holder {
    let mut started = start(cmd.borrow_mut().args(["-c", HOLD]).stdout(Stdio::piped()));
    let stdout = started.take_stdout().unwrap();
    let (tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let ran = stdout.read_line(&mut line).is_ok() && line.starts_with("ready");
        let _ = tx.send(ran.then_some(line));
        // The pipe stays open, and read, for as long as the command runs.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    Holder {
        started,
        ready,
        line: String::new(),
    }
}

/// pglock as `cmd` says, once it holds the lock; or, if it ended instead, how it ended.
#[track_caller]
pub fn try_hold(cmd: impl BorrowMut<Command>) -> Result<Holder, Run> {
    holder(cmd).held()
}

impl Holder {
    /// Waits until the command runs: the lock is held. Err: pglock ended without running it.
    #[track_caller]
    pub fn held(mut self) -> Result<Holder, Run> {
        match self.ready.recv_timeout(LIMIT) {
            Ok(Some(line)) => {
                self.line = line;
                Ok(self)
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => Err(self.started.finish()),
            Err(RecvTimeoutError::Timeout) => {
                panic!("a holder neither held nor ended within {LIMIT:?}")
            }
        }
    }

    /// The `--limit` slot the holder got (`$PGLOCK_SLOT`).
    #[track_caller]
    pub fn slot(&self) -> usize {
        let slot = self.line.trim().strip_prefix("ready ");
        slot.and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no slot: {:?}", self.line))
    }

    /// pglock's pid.
    pub fn id(&self) -> u32 {
        self.started.id()
    }

    pub fn kill(&self, signal: Signal) {
        self.started.kill(signal);
    }

    /// Lets the command end, without waiting for it: to let several holders go at once.
    pub fn let_go(&mut self) {
        self.started.close_stdin();
    }

    /// Lets the command end and returns how pglock ended.
    #[track_caller]
    pub fn release(self) -> Run {
        self.started.finish()
    }
}
