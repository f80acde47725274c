//! The program's view of the command line: [`RunOptions::from_cli`] turns clap's parse into
//! typed parts (which lock, how long to wait, what to do when it is lost, what to run), so that
//! nothing past this module knows clap, and every rule that combines flags lives here once.

use crate::cli::{self, Cli};
use crate::key::{KeyHash, LockId};
use crate::lock::Wait;
use crate::pg::sql::Scope;
use std::ffi::OsString;
use std::time::Duration;

/// Which lock, and how it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The key, or the raw id as text: what messages and application_name show.
    pub label: String,
    /// Some for --key, None for --lock-id.
    pub key: Option<String>,
    pub id: LockId,
    /// What semaphore slot ids derive from: the key, or `lock-id:ID`.
    pub base: String,
}

impl Target {
    /// `--key` (hashed with `hash`) or `--lock-id`; clap guarantees exactly one.
    pub fn new(key: Option<&str>, lock_id: Option<LockId>, hash: KeyHash) -> Target {
        match (key, lock_id) {
            (Some(key), _) => Target {
                label: key.to_string(),
                key: Some(key.to_string()),
                id: hash.id(key),
                base: key.to_string(),
            },
            (None, Some(id)) => Target {
                label: id.to_string(),
                key: None,
                id,
                base: format!("lock-id:{id}"),
            },
            // clap's required group rules this out; a zero id keeps it total without a panic.
            (None, None) => Target::new(None, Some(LockId::Big(0)), hash),
        }
    }
}

/// What happens to the command when the lock is lost while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fencing {
    /// SIGTERM its process group, SIGKILL after `kill_after`, exit 74.
    Terminate { kill_after: Duration },
    /// Warn and let it finish.
    Ignore,
}

/// The command to run: any bytes, as the OS passes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub program: OsString,
    pub args: Vec<OsString>,
}

/// Everything a lock-and-run needs.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub target: Target,
    pub wait: Wait,
    pub scope: Scope,
    pub shared: bool,
    /// `--limit`: 1 for a plain lock.
    pub limit: u16,
    pub fencing: Fencing,
    pub job: Job,
    pub min_hold: Option<Duration>,
    pub check_interval: Duration,
    pub connect_timeout: Option<Duration>,
    pub retry_connect: Duration,
    pub database_url: Option<String>,
    pub verbose: bool,
    pub quiet: bool,
    /// --kill-after also bounds how long a stopped-on-death command may linger.
    pub kill_after: Duration,
}

impl RunOptions {
    pub fn from_cli(cli: &Cli) -> RunOptions {
        let wait = match (cli.nowait, cli.timeout) {
            (true, _) | (false, Some(Duration::ZERO)) => Wait::Try,
            (false, Some(t)) => Wait::For(t),
            (false, None) => Wait::Forever,
        };
        let fencing = match cli.on_lost {
            cli::OnLost::Terminate => Fencing::Terminate {
                kill_after: cli.kill_after,
            },
            cli::OnLost::Ignore => Fencing::Ignore,
        };
        let scope = match cli.scope {
            cli::Scope::Session => Scope::Session,
            cli::Scope::Xact => Scope::Xact,
        };
        RunOptions {
            target: Target::new(cli.key.as_deref(), cli.lock_id, cli.key_hash),
            wait,
            scope,
            shared: cli.shared,
            limit: cli.limit,
            fencing,
            job: job(cli),
            min_hold: cli.min_hold,
            check_interval: cli.check_interval,
            connect_timeout: cli.connect_timeout,
            retry_connect: cli.retry_connect,
            database_url: cli.server.database_url.clone(),
            verbose: cli.verbose,
            quiet: cli.quiet,
            kill_after: cli.kill_after,
        }
    }
}

/// `-c STRING` runs through /bin/sh; otherwise the words after `--`.
fn job(cli: &Cli) -> Job {
    match &cli.command {
        Some(script) => Job {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.clone()],
        },
        None => {
            let mut words = cli.args.iter().cloned();
            Job {
                program: words.next().unwrap_or_default(),
                args: words.collect(),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> RunOptions {
        RunOptions::from_cli(&Cli::try_parse_from(args).unwrap())
    }

    #[test]
    fn wait_policy() {
        assert_eq!(parse(&["pglock", "-k", "a", "--", "x"]).wait, Wait::Forever);
        assert_eq!(
            parse(&["pglock", "-k", "a", "-n", "--", "x"]).wait,
            Wait::Try
        );
        assert_eq!(
            parse(&["pglock", "-k", "a", "-w", "0", "--", "x"]).wait,
            Wait::Try
        );
        assert_eq!(
            parse(&["pglock", "-k", "a", "-w", "2", "--", "x"]).wait,
            Wait::For(Duration::from_secs(2))
        );
    }

    #[test]
    fn targets() {
        let key = parse(&["pglock", "-k", "a", "--", "x"]).target;
        assert_eq!(key.label, "a");
        assert_eq!(key.base, "a");
        assert_eq!(key.id, LockId::from_key("a"));
        let raw = parse(&["pglock", "--lock-id", "1,2", "--", "x"]).target;
        assert_eq!(raw.key, None);
        assert_eq!(raw.base, "lock-id:1,2");
    }

    #[test]
    fn jobs() {
        let script = parse(&["pglock", "-k", "a", "-c", "echo hi"]).job;
        assert_eq!(script.program, "/bin/sh");
        assert_eq!(script.args, ["-c", "echo hi"]);
        let words = parse(&["pglock", "-k", "a", "--", "printf", "%s", "x"]).job;
        assert_eq!(words.program, "printf");
        assert_eq!(words.args, ["%s", "x"]);
    }

    #[test]
    fn contradictions_are_usage_errors() {
        for args in [
            &["pglock", "-k", "a", "--nowait", "--timeout", "5", "--", "x"][..],
            &["pglock", "--lock-id", "5", "--key-hash", "sqlx", "--", "x"],
            &["pglock", "-k", "a", "-c", ""],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
