//! The program's view of the command line: [`RunOptions::from_cli`] turns clap's parse into
//! typed parts (which lock, how long to wait, what to do when it is lost, what to run), so that
//! nothing past this module knows clap, and every rule that combines flags lives here once.

use crate::appname::Label;
use crate::cli::{self, Cli};
use crate::key::{KeyHash, LockId};
use crate::ledger::table::Table;
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
                base: Label::Key(key.to_string()).base(),
            },
            (None, Some(id)) => Target {
                label: id.to_string(),
                key: None,
                id,
                base: Label::LockId(id).base(),
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

/// The run ledger: --record, or --once-per, which implies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub table: Table,
    /// --once-per: skip the command when a run succeeded within this window.
    pub once_per: Option<Duration>,
    /// --max-attempts: with --once-per, failures within the window that stop further runs.
    pub max_attempts: u32,
    /// --done-exit-code: the status of a skip.
    pub done_exit_code: u8,
    /// --record-command: the command line as the ledger stores it.
    pub command: Option<String>,
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
    /// `--fencing-token`: read one with the grant and give it to the command.
    pub fencing_token: bool,
    pub fencing: Fencing,
    pub job: Job,
    pub min_hold: Option<Duration>,
    /// Some with --record or --once-per.
    pub record: Option<Record>,
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
            fencing_token: cli.fencing_token,
            fencing,
            job: job(cli),
            min_hold: cli.min_hold,
            record: record(cli),
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

fn record(cli: &Cli) -> Option<Record> {
    let r = &cli.record;
    (r.record || r.once_per.is_some()).then(|| Record {
        table: r.ledger.clone(),
        once_per: r.once_per,
        max_attempts: r.max_attempts,
        done_exit_code: r.done_exit_code,
        command: r.record_command.then(|| command_line(cli)),
    })
}

/// The command as a shell would show it: `-c`'s script as given, or the words after `--`, each
/// quoted when it needs it. Bytes that are not UTF-8 are replaced.
fn command_line(cli: &Cli) -> String {
    if let Some(script) = &cli.command {
        return script.to_string_lossy().into_owned();
    }
    let quote = |word: &OsString| {
        let w = word.to_string_lossy();
        let plain = !w.is_empty()
            && w.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
        if plain {
            w.into_owned()
        } else {
            format!("'{}'", w.replace('\'', "'\\''"))
        }
    };
    cli.args.iter().map(quote).collect::<Vec<_>>().join(" ")
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
    fn record_options() {
        assert_eq!(parse(&["pglock", "-k", "a", "--", "x"]).record, None);
        let once = parse(&["pglock", "-k", "a", "--once-per", "20h", "--", "x"])
            .record
            .unwrap();
        assert_eq!(once.once_per, Some(Duration::from_secs(72_000)));
        assert_eq!((once.max_attempts, once.done_exit_code), (3, 0));
        assert_eq!(once.table.to_string(), "public.pglock_runs");
        assert_eq!(once.command, None);
        let words = parse(&[
            "pglock",
            "-k",
            "a",
            "--record",
            "--record-command",
            "--ledger",
            "Ops.Runs",
            "--",
            "echo",
            "it's",
            "a b",
            "ok",
        ])
        .record
        .unwrap();
        assert_eq!(words.once_per, None);
        assert_eq!(words.table.to_string(), "ops.runs");
        assert_eq!(words.command.as_deref(), Some("echo 'it'\\''s' 'a b' ok"));
        let script = parse(&[
            "pglock",
            "-k",
            "a",
            "--record-command",
            "--once-per",
            "1h",
            "-c",
            "a | b",
        ]);
        assert_eq!(script.record.unwrap().command.as_deref(), Some("a | b"));
    }

    #[test]
    fn ledger_contradictions_are_usage_errors() {
        for args in [
            &[
                "pglock",
                "-k",
                "a",
                "--once-per",
                "1h",
                "--shared",
                "--",
                "x",
            ][..],
            &["pglock", "-k", "a", "--max-attempts", "2", "--", "x"],
            &["pglock", "-k", "a", "--done-exit-code", "2", "--", "x"],
            &["pglock", "-k", "a", "--record-command", "--", "x"],
            &["pglock", "-k", "a", "--once-per", "0", "--", "x"],
            &[
                "pglock", "-k", "a", "--record", "--ledger", "a;b", "--", "x",
            ],
            &[
                "pglock",
                "-k",
                "a",
                "--once-per",
                "1h",
                "--max-attempts",
                "0",
                "--",
                "x",
            ],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
        let once_per_with_limit = |limit: &str| {
            let args = [
                "pglock",
                "-k",
                "a",
                "--once-per",
                "1h",
                "--limit",
                limit,
                "--",
                "x",
            ];
            cli::check_combinations(&Cli::try_parse_from(args).unwrap())
        };
        assert!(once_per_with_limit("2").is_err());
        assert!(once_per_with_limit("1").is_ok());
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
