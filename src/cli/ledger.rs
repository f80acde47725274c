//! The run ledger's part of the command line: the flags that record a run or run it once per
//! period, and the subcommands that create, read and prune the ledger.

use super::{Server, Which};
use crate::ledger::table::{self, Table};
use crate::{duration, exit, key};
use clap::{ArgGroup, Args, Subcommand};
use std::path::PathBuf;
use std::time::Duration;

const LEDGER_HELP: &str = "The ledger table, [SCHEMA.]TABLE; a name without a schema is in public";

/// Where the main command's ledger flags show in --help.
const HEADING: &str = "Run ledger (see pglock init)";

/// --ledger, on every subcommand that uses the ledger.
#[derive(Debug, Clone, Args)]
pub struct LedgerTable {
    #[arg(long = "ledger", value_name = "TABLE", env = "PGLOCK_LEDGER", hide_env_values = true,
          default_value = table::DEFAULT, value_parser = Table::parse, help = LEDGER_HELP)]
    pub table: Table,
}

/// The flags of a recorded run, in the main command. Each carries its help heading itself: a
/// struct-wide next_help_heading would also move every option defined after it.
#[derive(Debug, Args)]
#[command(group(ArgGroup::new("recording").multiple(true).args(["record", "once_per"])))]
pub struct RecordArgs {
    /// Record the run in the ledger table: a row before the command starts, its end before the
    /// lock is released. The command gets PGLOCK_RUN_ID and PGLOCK_LAST_SUCCESS. A run that
    /// finds an earlier one still running (the server ended its holder's session) first waits
    /// until that command must have stopped: the lock-delay.
    #[arg(long, help_heading = HEADING)]
    pub record: bool,

    /// Store the command line in the ledger's command column too (it may carry secrets).
    #[arg(long, requires = "recording", help_heading = HEADING)]
    pub record_command: bool,

    /// Run at most once per DURATION across every host: once the lock is granted, skip the
    /// command if a run of this lock succeeded within DURATION, by the server's clock. Implies
    /// --record.
    #[arg(long, value_name = "DURATION", value_parser = parse_window,
          conflicts_with = "shared", help_heading = HEADING)]
    pub once_per: Option<Duration>,

    /// With --once-per: when N runs failed within DURATION, do not run again; exit with the
    /// conflict status.
    #[arg(long, value_name = "N", default_value_t = 3, requires = "once_per",
          value_parser = clap::value_parser!(u32).range(1..), help_heading = HEADING)]
    pub max_attempts: u32,

    /// With --once-per: the exit status when the job already succeeded within DURATION.
    #[arg(long, value_name = "N", default_value_t = 0, requires = "once_per",
          help_heading = HEADING)]
    pub done_exit_code: u8,

    #[arg(long = "ledger", value_name = "TABLE", env = "PGLOCK_LEDGER", hide_env_values = true,
          default_value = table::DEFAULT, value_parser = Table::parse, help = LEDGER_HELP,
          help_heading = HEADING)]
    pub ledger: Table,
}

/// The ledger's subcommands.
#[derive(Debug, Subcommand)]
pub enum LedgerSub {
    /// Create the run ledger table (for --record and --once-per) and its indexes. Safe to run
    /// again, and from several hosts at once.
    #[command(after_help = exit::LEDGER_TABLE)]
    Init(InitArgs),
    /// Show recorded runs, newest first.
    #[command(after_help = exit::LEDGER_TABLE)]
    History(HistoryArgs),
    /// A monitoring plugin (Nagios, Icinga, Sensu): is a key's last success recent enough?
    #[command(after_help = exit::CHECK_TABLE)]
    Check(CheckArgs),
    /// Print the Prometheus text format for every key in the ledger.
    #[command(after_help = exit::LEDGER_TABLE)]
    Metrics(MetricsArgs),
    /// Delete old runs in batches, keeping each key's and each lock's newest run and newest
    /// success.
    #[command(after_help = exit::LEDGER_TABLE)]
    Prune(PruneArgs),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Only print the SQL, for a DBA to apply; connect to nothing.
    #[arg(long)]
    pub print: bool,

    /// Grant ROLE what a runner needs: SELECT, INSERT and UPDATE of the end columns (no
    /// DELETE), and USAGE on the schema. ROLE is taken literally, case and all. Repeatable.
    #[arg(long, value_name = "ROLE", value_parser = table::quote_ident)]
    pub grant: Vec<String>,

    #[command(flatten)]
    pub ledger: LedgerTable,

    #[command(flatten)]
    pub server: Server,
}

/// Which runs: one key, one raw id, or all.
#[derive(Debug, Args)]
#[group(id = "runs", required = true, multiple = false)]
pub struct Runs {
    /// The runs of this key.
    #[arg(short, long, value_name = "KEY", value_parser = key::check_key)]
    pub key: Option<String>,

    /// The runs of this raw lock id (recorded as lock-id:ID).
    #[arg(long, value_name = "ID", value_parser = key::LockId::parse, allow_hyphen_values = true)]
    pub lock_id: Option<key::LockId>,

    /// The runs of every key.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    #[command(flatten)]
    pub runs: Runs,

    /// Only runs started within DURATION, by the server's clock.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub since: Option<Duration>,

    /// At most N runs [default: 20, or all with --since].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub last: Option<u32>,

    /// Print a JSON array instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub ledger: LedgerTable,

    #[command(flatten)]
    pub server: Server,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub which: Which,

    /// CRITICAL when the last success is older than this (or there is none).
    #[arg(long, value_name = "DURATION", value_parser = parse_window)]
    pub critical: Duration,

    /// WARNING when the last success is older than this; below --critical.
    #[arg(long, value_name = "DURATION", value_parser = parse_window)]
    pub warning: Option<Duration>,

    #[command(flatten)]
    pub ledger: LedgerTable,

    #[command(flatten)]
    pub server: Server,
}

#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Write to FILE instead of standard output: atomically (a temporary file, then rename)
    /// for node_exporter's textfile collector, to a symlink's target if FILE is one; a FIFO or
    /// a device is written in place.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,

    #[command(flatten)]
    pub ledger: LedgerTable,

    #[command(flatten)]
    pub server: Server,
}

#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete runs that started longer ago than DURATION.
    #[arg(long, value_name = "DURATION", value_parser = parse_window)]
    pub older_than: Duration,

    /// Only count what would be deleted.
    #[arg(long)]
    pub dry_run: bool,

    #[command(flatten)]
    pub ledger: LedgerTable,

    #[command(flatten)]
    pub server: Server,
}

/// A window or threshold: a duration above zero.
fn parse_window(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d.is_zero() {
        return Err(format!("'{text}' is zero: give a duration above 0"));
    }
    Ok(d)
}

/// A rule clap cannot state: a run once per period needs one holder at a time, so --once-per
/// excludes --limit above 1 (and --shared, which clap checks).
pub fn check_combinations(cli: &super::Cli) -> Result<(), clap::Error> {
    if cli.record.once_per.is_some() && cli.limit > 1 {
        let mut cmd = <super::Cli as clap::CommandFactory>::command();
        return Err(cmd.error(
            clap::error::ErrorKind::ArgumentConflict,
            "--once-per cannot be used with --limit above 1: once per period means one holder \
             at a time",
        ));
    }
    Ok(())
}
