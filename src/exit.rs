//! Exit statuses: the one place where pglock decides what number it exits with.
//!
//! Code deep inside attaches a [`Failure`] to an `anyhow::Error`; `main` asks [`code_for`] which
//! number that means. Everything without a `Failure` is an ordinary failure (1).

use nix::sys::signal::Signal;
use std::fmt;
use std::process::ExitStatus;
use std::time::Duration;

/// Default status when the lock was not obtained (EX_TEMPFAIL: "try again later").
pub const CONFLICT_DEFAULT: u8 = 75;
/// Could not connect to or authenticate with PostgreSQL (EX_UNAVAILABLE).
pub const UNAVAILABLE: u8 = 69;
/// The lock was lost while the command ran (EX_IOERR).
pub const LOCK_LOST: u8 = 74;
/// The run ledger's table is missing or not writable (EX_CONFIG).
pub const CONFIG: u8 = 78;
/// pglock could not start the command for a reason of the system's (EX_OSERR): fork(2) failed,
/// or a step between fork and exec did.
pub const OSERR: u8 = 71;
/// --max-runtime stopped the command (timeout(1)'s status).
pub const TIMED_OUT: u8 = 124;
/// Usage error, as clap exits.
pub const USAGE: u8 = 2;
/// The command exists but cannot be executed (shell convention).
pub const NOT_EXECUTABLE: u8 = 126;
/// The command was not found (shell convention).
pub const NOT_FOUND: u8 = 127;
/// Any other pglock failure.
pub const FAILURE: u8 = 1;
/// `pglock status`: the lock is held (LSB status convention: "running").
pub const STATUS_HELD: u8 = 0;
/// `pglock status`: the lock is free (LSB status convention: "not running").
pub const STATUS_FREE: u8 = 3;
/// `pglock check`: the monitoring-plugin statuses.
pub const CHECK_OK: u8 = 0;
pub const CHECK_WARNING: u8 = 1;
pub const CHECK_CRITICAL: u8 = 2;
pub const CHECK_UNKNOWN: u8 = 3;

/// Why pglock is giving up, when that reason has its own exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Usage,
    Unavailable,
    NotExecutable,
    NotFound,
    /// The run ledger cannot be used: its table is missing or not writable.
    Config,
    /// The system refused to start the command (fork, or a step before exec).
    System,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            Failure::Usage => "usage error",
            Failure::Unavailable => "database unavailable",
            Failure::NotExecutable => "command not executable",
            Failure::NotFound => "command not found",
            Failure::Config => "ledger not usable",
            Failure::System => "system error",
        };
        f.write_str(text)
    }
}

impl std::error::Error for Failure {}

/// A bare failure with a message.
pub fn fail(failure: Failure, message: impl fmt::Display) -> anyhow::Error {
    anyhow::Error::new(failure).context(message.to_string())
}

/// The exit status for an error that ended pglock.
pub fn code_for(err: &anyhow::Error) -> u8 {
    match err.downcast_ref::<Failure>() {
        Some(Failure::Usage) => USAGE,
        Some(Failure::Unavailable) => UNAVAILABLE,
        Some(Failure::NotExecutable) => NOT_EXECUTABLE,
        Some(Failure::NotFound) => NOT_FOUND,
        Some(Failure::Config) => CONFIG,
        Some(Failure::System) => OSERR,
        None => FAILURE,
    }
}

/// The one-line message for an error: its context chain, without the [`Failure`] tag.
pub fn message(err: &anyhow::Error) -> String {
    err.chain()
        .filter(|e| e.downcast_ref::<Failure>().is_none())
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join(": ")
}

/// How a lock-and-run ended, before it becomes a number in [`Outcome::code`].
#[derive(Debug)]
pub enum Outcome {
    /// The command ran under the lock (or with --on-lost ignore); its status.
    Ran(ExitStatus),
    /// A signal ended pglock before the command started.
    Interrupted(Signal),
    /// The lock was not obtained: busy, --timeout, or the wait was cancelled on the server.
    /// The message is None with --quiet.
    NotObtained(Option<String>),
    /// The lock was lost while the command ran, and the command was stopped for it.
    Lost { label: String, reason: LostReason },
    /// The lock was found lost after the grant, before the command started: it was not started.
    LostBeforeStart { label: String, reason: LostReason },
    /// --once-per: the job already succeeded within the window, so the command did not run.
    /// Exits `code` (--done-exit-code); the message is None with --quiet.
    Done { code: u8, message: Option<String> },
    /// --max-runtime ran out: the command was stopped (or, between retries, not run again).
    /// The line saying so was logged when it happened.
    TimedOut,
    /// --max-attempts: the job failed too often within the window, so the command did not run.
    Exhausted(String),
}

impl Outcome {
    pub fn code(&self, conflict_code: u8) -> u8 {
        match self {
            Outcome::Ran(status) => child_code(*status),
            Outcome::Interrupted(sig) => signal_code(*sig as i32),
            Outcome::NotObtained(_) | Outcome::Exhausted(_) => conflict_code,
            Outcome::Lost { .. } | Outcome::LostBeforeStart { .. } => LOCK_LOST,
            Outcome::TimedOut => TIMED_OUT,
            Outcome::Done { code, .. } => *code,
        }
    }

    /// The `pglock:` line to print, if any.
    pub fn message(&self) -> Option<String> {
        match self {
            Outcome::NotObtained(message) | Outcome::Done { message, .. } => message.clone(),
            Outcome::Exhausted(message) => Some(message.clone()),
            Outcome::Lost { label, reason } => Some(format!(
                "lock \"{label}\" was lost while the command ran ({reason})"
            )),
            Outcome::LostBeforeStart { label, reason } => Some(format!(
                "lock \"{label}\" was lost before the command started ({reason}); the command \
                 was not started"
            )),
            Outcome::Ran(_) | Outcome::Interrupted(_) | Outcome::TimedOut => None,
        }
    }
}

/// Why a held lock counts as lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LostReason {
    /// The connection failed or the server closed it.
    Connection(String),
    /// A lock check got no answer in time; the connection was cut.
    NoAnswer(Duration),
    /// A lock check failed with an error.
    CheckFailed(String),
    /// The session is alive but no longer holds the lock.
    NotHeld,
    /// The release found the lock no longer held.
    NotHeldAtRelease,
    /// Nothing confirmed the lock for this long, longer than its lease allows (pglock or its
    /// host was frozen).
    Unconfirmed(Duration),
    /// The dead man's switch died and no other could be armed: a killed pglock would leave the
    /// command running beside the next holder.
    Unguarded(String),
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::Connection(why) => f.write_str(why),
            LostReason::NoAnswer(limit) => write!(
                f,
                "no answer to the lock check within {}",
                crate::duration::format(*limit)
            ),
            LostReason::CheckFailed(why) => write!(f, "the lock check failed: {why}"),
            LostReason::NotHeld => f.write_str(
                "this session no longer holds it (a transaction-pooling PgBouncer? use --scope xact; \
                 'pglock doctor' tells)",
            ),
            LostReason::NotHeldAtRelease => {
                f.write_str("the lock was no longer held when the command ended")
            }
            LostReason::Unconfirmed(for_) => write!(
                f,
                "nothing confirmed it for {}, so its lease may have run out (was pglock or this \
                 host frozen?)",
                crate::duration::format(*for_)
            ),
            LostReason::Unguarded(why) => write!(
                f,
                "the dead man's switch died and no other could be armed ({why})"
            ),
        }
    }
}

/// The shell's convention for "killed by signal N".
pub fn signal_code(sig: i32) -> u8 {
    (128 + sig).clamp(0, 255) as u8
}

/// The status pglock passes on for a command that ran: its exit code, or 128+N for a signal.
pub fn child_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => code as u8,
        (None, Some(sig)) => signal_code(sig),
        (None, None) => FAILURE,
    }
}

/// The table shown in --help, the README and the man page.
pub const TABLE: &str = "\
Exit status:
  the command's own  the command ran; its exit status
  128+N              the command was killed by signal N, or pglock was
                     interrupted by signal N while waiting for the lock
  75 (or -E N)       the lock was not obtained: busy with --nowait,
                     --timeout expired, or the wait was cancelled on the
                     server; or --max-attempts runs failed within --once-per
  0 (or --done-exit-code N)
                     --once-per: the job already succeeded within DURATION,
                     so the command did not run
  69                 could not connect to or authenticate with PostgreSQL
  74                 the lock was lost while the command ran, or before it
                     started (then the command was not started), or during
                     a --retries delay
  124                --max-runtime ran out: the command was stopped
  78                 the ledger table (--record, --once-per) is missing or
                     not writable: see pglock init
  2                  usage error
  126                the command is not executable
  127                the command was not found
  71                 the system would not start the command: fork failed,
                     or a step between fork and exec did
  1                  any other pglock failure";

/// The statuses of `pglock status`, for its --help, the README and the man page.
pub const STATUS_TABLE: &str = "\
Exit status of pglock status:
  0                  the lock is held
  3                  the lock is free
  69                 could not connect to or authenticate with PostgreSQL
  2                  usage error
  1                  any other failure, also output that cannot be written";

/// The statuses of `pglock init`, `history`, `metrics` and `prune`.
pub const LEDGER_TABLE: &str = "\
Exit status of pglock init, history, metrics and prune:
  0                  done
  78                 the ledger table is missing, or this role may not use
                     it (init: may not create it)
  69                 could not connect to or authenticate with PostgreSQL
  2                  usage error
  1                  any other failure, also output that cannot be written";

/// The statuses of `pglock check`: the monitoring-plugin convention (Nagios, Icinga, Sensu).
pub const CHECK_TABLE: &str = "\
Exit status of pglock check (monitoring-plugin convention):
  0                  OK: the last success is younger than --warning
  1                  WARNING: older than --warning
  2                  CRITICAL: older than --critical, never succeeded, or no
                     connection to PostgreSQL
  3                  UNKNOWN: usage error, the ledger table is missing, the
                     line cannot be written, or any other failure";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_matches_the_codes() {
        for code in [STATUS_HELD, STATUS_FREE, UNAVAILABLE, USAGE, FAILURE] {
            assert!(STATUS_TABLE.contains(&format!("\n  {code} ")), "{code}");
        }
    }

    #[test]
    fn ledger_tables_match_the_codes() {
        for code in [0, CONFIG, UNAVAILABLE, USAGE, FAILURE] {
            assert!(LEDGER_TABLE.contains(&format!("\n  {code} ")), "{code}");
        }
        for code in [CHECK_OK, CHECK_WARNING, CHECK_CRITICAL, CHECK_UNKNOWN] {
            assert!(CHECK_TABLE.contains(&format!("\n  {code} ")), "{code}");
        }
        assert!(TABLE.contains(&format!("\n  {CONFIG} ")));
        assert!(TABLE.contains(&format!("\n  {OSERR} ")));
        assert!(TABLE.contains(&format!("\n  {TIMED_OUT} ")));
    }

    #[test]
    fn failure_survives_context() {
        let err = fail(Failure::Unavailable, "down").context("outer");
        assert_eq!(code_for(&err), UNAVAILABLE);
        assert_eq!(message(&err), "outer: down");
        let plain = anyhow::anyhow!("x");
        assert_eq!(code_for(&plain), FAILURE);
    }
}
