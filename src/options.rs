//! The program's view of the command line: [`RunOptions::from_cli`] turns clap's parse into
//! typed parts (which lock, how long to wait, what to do when it is lost, what to run), so that
//! nothing past this module knows clap, and every rule that combines flags lives here once.

use crate::cli::{self, Cli};
use crate::key::KeyHash;
pub use crate::key::Target;
use crate::lease::{self, Lease};
pub use crate::ledger::record::Record;
use crate::lock::{Deploy, Wait};
use crate::pg::sql::Scope;
pub use crate::supervise::Fencing;
pub use crate::supervise::child::Job;
use crate::supervise::leftovers;
use crate::{capture, doctor, ledger, ping, report};
use std::ffi::OsString;
use std::time::Duration;

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
    /// `--leftovers`.
    pub leftovers: leftovers::Policy,
    pub job: Job,
    pub min_hold: Option<Duration>,
    /// `--max-runtime`: the command's run, from its first start, retries included.
    pub max_runtime: Option<Duration>,
    /// `--retries` and `--retry-delay`.
    pub retries: u32,
    pub retry_delay: Duration,
    /// `--splay`: the longest random pause before connecting.
    pub splay: Option<Duration>,
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
    /// The lease on the lock's session; None with `--lease 0`.
    pub lease: Option<Lease>,
    /// `-E`: what a run that did not get the lock exits with (the monitor's end reports it).
    pub conflict_exit_code: u8,
    /// `--ping` (checked by `cli::check_ping`), and `--ping-timeout`.
    pub ping: Option<ping::Target>,
    pub ping_timeout: Duration,
    /// `--capture`, `--quiet-on-success`.
    pub capture: capture::Mode,
    /// `--supersede`, `--replace`.
    pub deploy: Deploy,
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
            leftovers: match cli.leftovers {
                cli::Leftovers::Terminate => leftovers::Policy::Terminate,
                cli::Leftovers::Wait => leftovers::Policy::Wait,
                cli::Leftovers::Keep => leftovers::Policy::Keep,
            },
            job: job(cli),
            min_hold: cli.min_hold,
            max_runtime: cli.max_runtime,
            retries: cli.retries.into(),
            retry_delay: cli.retry_delay,
            splay: cli.splay,
            record: record(cli),
            check_interval: cli.check_interval,
            connect_timeout: cli.connect_timeout,
            retry_connect: cli.retry_connect,
            database_url: cli.server.database_url.clone(),
            verbose: cli.verbose,
            quiet: cli.quiet,
            kill_after: cli.kill_after,
            lease: match cli.lease {
                Some(Duration::ZERO) => None,
                length => Some(lease::new(cli.check_interval, cli.kill_after, length)),
            },
            conflict_exit_code: cli.conflict_exit_code,
            ping: cli
                .ping
                .as_deref()
                .and_then(|url| ping::Target::parse(url).ok()),
            ping_timeout: cli.ping_timeout,
            capture: match (cli.quiet_on_success, cli.capture) {
                (true, _) => capture::Mode::Quiet,
                (false, true) => capture::Mode::Pass,
                (false, false) => capture::Mode::Off,
            },
            deploy: match (cli.supersede, cli.replace) {
                (_, true) => Deploy::Replace,
                (true, false) => Deploy::Supersede,
                (false, false) => Deploy::Plain,
            },
        }
    }
}

/// A subcommand, as the layers below take it.
#[derive(Debug, Clone, PartialEq)]
pub enum Subcommand {
    Report(report::Request),
    Ledger(ledger::Request),
    Doctor(doctor::Request),
}

impl Subcommand {
    pub fn from_cli(sub: &cli::Commands) -> Subcommand {
        match sub {
            cli::Commands::Report(sub) => Subcommand::Report(report_request(sub)),
            cli::Commands::Ledger(sub) => Subcommand::Ledger(ledger_request(sub)),
            cli::Commands::Doctor(a) => Subcommand::Doctor(doctor_request(a)),
        }
    }
}

/// The doctor judges the runs its flags describe, with the run's own arithmetic.
fn doctor_request(a: &cli::DoctorArgs) -> doctor::Request {
    let label = match (&a.key, a.lock_id) {
        (Some(key), _) => Some(key.clone()),
        (None, Some(id)) => Some(id.to_string()),
        (None, None) => None,
    };
    doctor::Request {
        label,
        scope: match a.scope {
            cli::Scope::Session => Scope::Session,
            cli::Scope::Xact => Scope::Xact,
        },
        ledger: (a.record || a.once_per.is_some()).then(|| a.ledger.clone()),
        limit: a.limit,
        lease: doctor::Request::lease_of(a.check_interval, a.kill_after, a.lease),
        fleet: a.fleet,
        json: a.json,
        database_url: a.server.database_url.clone(),
    }
}

fn report_request(sub: &cli::Sub) -> report::Request {
    match sub {
        cli::Sub::Status(a) => report::Request::Status(report::StatusArgs {
            key: a.which.key.clone(),
            id: a.which.resolve(a.hash.key_hash).1,
            limit: a.limit,
            json: a.json,
            database_url: a.server.database_url.clone(),
        }),
        cli::Sub::List(a) => report::Request::List(report::ListArgs {
            json: a.json,
            database_url: a.server.database_url.clone(),
        }),
        cli::Sub::Key(a) => report::Request::Key(report::KeyArgs {
            key: a.key.clone(),
            id: Target::new(a.key.as_deref(), a.lock_id, a.hash.key_hash).id,
            limit: a.limit,
        }),
    }
}

/// The ledger's subcommands select runs by the `key` column, whose ids come from the default
/// hash (they take no --key-hash).
fn ledger_request(sub: &cli::LedgerSub) -> ledger::Request {
    let url = |server: &cli::Server| server.database_url.clone();
    match sub {
        cli::LedgerSub::Init(a) => ledger::Request::Init(ledger::InitArgs {
            print: a.print,
            grant: a.grant.clone(),
            table: a.ledger.table.clone(),
            database_url: url(&a.server),
        }),
        cli::LedgerSub::History(a) => ledger::Request::History(ledger::HistoryArgs {
            key: (!a.runs.all)
                .then(|| Target::new(a.runs.key.as_deref(), a.runs.lock_id, KeyHash::Sha256).base),
            since: a.since,
            last: a.last,
            json: a.json,
            table: a.ledger.table.clone(),
            database_url: url(&a.server),
        }),
        cli::LedgerSub::Check(a) => ledger::Request::Check(ledger::CheckArgs {
            target: Target::new(a.which.key.as_deref(), a.which.lock_id, KeyHash::Sha256),
            critical: a.critical,
            warning: a.warning,
            table: a.ledger.table.clone(),
            database_url: url(&a.server),
        }),
        cli::LedgerSub::Metrics(a) => ledger::Request::Metrics(ledger::MetricsArgs {
            output: a.output.clone(),
            table: a.ledger.table.clone(),
            database_url: url(&a.server),
        }),
        cli::LedgerSub::Prune(a) => ledger::Request::Prune(ledger::PruneArgs {
            older_than: a.older_than,
            dry_run: a.dry_run,
            table: a.ledger.table.clone(),
            database_url: url(&a.server),
        }),
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
    use crate::key::LockId;
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
