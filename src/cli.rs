//! The command line: every flag is defined once here, and this definition drives --help, the man
//! page and the shell completions.

use crate::{duration, exit, key};
use clap::builder::{OsStringValueParser, TypedValueParser};
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use std::ffi::OsString;
use std::time::Duration;

mod doctor;
mod ledger;
pub use doctor::DoctorArgs;
pub use ledger::{LedgerSub, RecordArgs, check_combinations};

const EXAMPLES: &str = "\
Examples:
  # Nightly job in every host's crontab: it runs once, and another host retries if it fails
  pglock --key nightly-report --once-per 20h --timeout 2h -- ./job.sh

  # Only one at a time; the others skip quietly
  pglock --key nightly-report --nowait --quiet -- ./job.sh

  # Wait up to ten minutes for another deploy to finish
  pglock --key deploy-prod --timeout 10m -- ./deploy.sh

  # A shell pipeline under the lock
  pglock --key backup -c 'pg_dump app | gzip > /backup/app.sql.gz'

  # Readers share, writers exclude
  pglock --key catalog --shared -- ./read-catalog.sh

  # Who holds it, who waits; every advisory lock; where a key shows up in pg_locks
  pglock status --key nightly-report
  pglock list --json
  pglock key nightly-report

  # Did it succeed recently? (Nagios/Icinga plugin; see also pglock history and metrics)
  pglock check --key nightly-report --warning 25h --critical 49h";

/// The forms of the command line. Subcommands come first and a command to run always follows
/// `--` or `-c`, so `pglock --key k -- status` runs a program called status.
const USAGE: &str = "\
pglock [OPTIONS] (--key KEY | --lock-id ID) -- COMMAND [ARGS]...
       pglock [OPTIONS] (--key KEY | --lock-id ID) --command STRING
       pglock status (--key KEY | --lock-id ID) [--limit N] [--json]
       pglock list [--json]
       pglock key (KEY | --lock-id ID) [--limit N]
       pglock init [--print] [--grant ROLE]
       pglock history (--key KEY | --lock-id ID | --all) [--since DURATION] [--last N] [--json]
       pglock check (--key KEY | --lock-id ID) --critical DURATION [--warning DURATION]
       pglock metrics [--output FILE]
       pglock prune --older-than DURATION [--dry-run]
       pglock doctor [--key KEY] [--scope SCOPE] [--record] [--fleet N] [--json]";

#[derive(Debug, Parser)]
#[command(
    name = "pglock",
    version,
    about = "Run a command while holding a PostgreSQL advisory lock",
    long_about = "Run a command while holding a PostgreSQL advisory lock: flock(1) for a whole \
                  fleet. pglock opens one dedicated connection, takes the lock, runs the command, \
                  forwards signals to it and releases the lock when it exits.",
    override_usage = USAGE,
    after_help = format!("{EXAMPLES}\n\n{}", exit::TABLE),
    // A subcommand replaces the lock-and-run form entirely: none of its options apply, and its
    // required ones are not required.
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    subcommand_value_name = "SUBCOMMAND",
    disable_help_subcommand = true,
    group(ArgGroup::new("lock").required(true).args(["key", "lock_id"])),
    group(ArgGroup::new("what").required(true).args(["command", "args"])),
)]
pub struct Cli {
    /// Name of the lock; any UTF-8 string of 1 to 1024 bytes.
    ///
    /// Its lock id is the first 8 bytes of SHA-256(KEY), big-endian, as a signed 64-bit integer.
    #[arg(short, long, value_name = "KEY", value_parser = key::check_key)]
    pub key: Option<String>,

    /// A raw lock id instead of a key: one signed 64-bit integer, or A,B (two signed 32-bit).
    #[arg(long, value_name = "ID", value_parser = key::LockId::parse, allow_hyphen_values = true)]
    pub lock_id: Option<key::LockId>,

    /// Run STRING with /bin/sh -c instead of a COMMAND after --.
    #[arg(short = 'c', long, value_name = "STRING", value_parser = non_empty_command())]
    pub command: Option<OsString>,

    /// Do not wait: if the lock is busy, exit with the conflict status at once.
    #[arg(short, long, conflicts_with = "timeout")]
    pub nowait: bool,

    /// Wait at most this long for the lock (30, 0.5, 500ms, 10m, 1h30m); 0 means --nowait.
    #[arg(short = 'w', long, value_name = "DURATION", value_parser = parse_timeout)]
    pub timeout: Option<Duration>,

    /// Exit status when the lock was not obtained.
    #[arg(short = 'E', long, value_name = "N", default_value_t = exit::CONFLICT_DEFAULT)]
    pub conflict_exit_code: u8,

    /// Take a shared lock: shared holders coexist, an exclusive holder excludes them all.
    #[arg(short, long)]
    pub shared: bool,

    /// Only the newest waits: a newer --supersede (or --replace) run of the lock makes this one
    /// stop waiting and exit with the conflict status, and this one does the same to older ones.
    /// Newer means it began waiting later, by the server's clock.
    #[arg(long, conflicts_with_all = ["nowait", "shared"], help_heading = "Deploys")]
    pub supersede: bool,

    /// The newest wins outright (implies --supersede): also stop the running command of a holder
    /// that was itself started with --replace (SIGTERM, SIGKILL after its --kill-after); this run
    /// starts once that command has exited.
    #[arg(long, conflicts_with_all = ["nowait", "shared"], help_heading = "Deploys")]
    pub replace: bool,

    /// At most N holders at once (a counting semaphore of N slots); every user of a key must
    /// pass the same N. The command gets its slot in PGLOCK_SLOT.
    #[arg(long, value_name = "N", default_value_t = 1, conflicts_with = "shared",
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub limit: u16,

    /// How --key becomes a lock id: pglock's own SHA-256 formula, or the one sqlx or Python's
    /// postgres-lock uses, to share a lock with an application built on them.
    #[arg(long, value_enum, value_name = "SCHEME", default_value_t = key::KeyHash::Sha256,
          conflicts_with = "lock_id")]
    pub key_hash: key::KeyHash,

    /// Stop the command when it has run this long, counted from its first start, retries and
    /// their delays included: SIGTERM to its process group, SIGKILL after --kill-after; pglock
    /// exits 124 once it has exited, and only then releases the lock.
    #[arg(long, value_name = "DURATION", value_parser = parse_positive, help_heading = "Job runner")]
    pub max_runtime: Option<Duration>,

    /// When the command exits non-zero by itself, run it again, still holding the lock, up to N
    /// more times (0 to 100). The command gets PGLOCK_ATTEMPT (1, 2, ...); pglock exits with
    /// the last attempt's status.
    #[arg(long, value_name = "N", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=100), help_heading = "Job runner")]
    pub retries: u8,

    /// The pause before the first retry; it doubles for each next one, with up to 20% random
    /// jitter either way. The lock stays held and checked meanwhile.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse, help_heading = "Job runner")]
    pub retry_delay: Duration,

    /// Before connecting, wait a random time between 0 and DURATION, so that a fleet started
    /// by the same clock does not reach the server in the same millisecond.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, help_heading = "Job runner")]
    pub splay: Option<Duration>,

    /// Keep the lock at least this long after it was acquired, even if the command ends sooner,
    /// so hosts whose clocks differ a little do not run the same job twice.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse)]
    pub min_hold: Option<Duration>,

    /// Lock scope: a session-level lock, or a transaction-level lock inside BEGIN ... COMMIT.
    #[arg(long, value_enum, value_name = "SCOPE", default_value_t = Scope::Session)]
    pub scope: Scope,

    /// Give the command PGLOCK_FENCING_TOKEN: a number that grows from each holder of the lock
    /// (of each slot, with --limit) to the next, also across crashes and failovers of the
    /// server, so that storage can reject the writes of a holder that lost the lock.
    ///
    /// 50 decimal digits (the timeline, the checkpoint LSN and a transaction id, zero-padded):
    /// compare it as a number or as a string. Needs a primary server.
    #[arg(long)]
    pub fencing_token: bool,

    #[command(flatten)]
    pub record: RecordArgs,

    #[command(flatten)]
    pub server: Server,

    /// How often to ask the server whether the lock is still held while the command runs.
    ///
    /// A check that gets no answer within the interval counts as a lost lock; TCP keepalives and
    /// tcp_user_timeout are derived from it too. Minimum 100ms.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_check_interval, help_heading = "When the lock is lost")]
    pub check_interval: Duration,

    /// What to do when the lock is lost while the command runs.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = OnLost::Terminate, help_heading = "When the lock is lost")]
    pub on_lost: OnLost,

    /// What to do with processes the command leaves running when it exits (`cmd &`, a
    /// double-forked helper): stop them before the release, wait for them, or release anyway.
    #[arg(long, value_enum, value_name = "ACTION", default_value_t = Leftovers::Terminate, help_heading = "When the lock is lost")]
    pub leftovers: Leftovers,

    /// After terminating the command (lost lock), send SIGKILL if it is still running this long.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration::parse, help_heading = "When the lock is lost")]
    pub kill_after: Duration,

    /// How long the server keeps the lock of a holder that went silent (a lost host, a pulled
    /// cable) [default: 2 x --check-interval + --kill-after + 2s; 0: none].
    ///
    /// The server ends the holder's session when it has not heard from it for this long, so the
    /// lock is not held for hours by a host that is gone. It must be longer than
    /// 2 x --check-interval + --kill-after (+ 1s), the time a cut-off pglock needs to notice and
    /// stop its command, so that the next holder never runs alongside it. At most
    /// 24d20h31m23.647s: the server counts it in milliseconds in 32 bits. A default lease longer
    /// than that (a --check-interval or --kill-after of days) is refused too: give --lease 0.
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, help_heading = "When the lock is lost")]
    pub lease: Option<Duration>,

    /// Bound on each connection attempt [default: 10s, or connect_timeout / PGCONNECT_TIMEOUT].
    #[arg(long, value_name = "DURATION", value_parser = duration::parse, help_heading = "Connecting")]
    pub connect_timeout: Option<Duration>,

    /// Keep retrying the first connection, with backoff, for up to this long before giving up.
    #[arg(long, value_name = "DURATION", default_value = "0", value_parser = duration::parse, help_heading = "Connecting")]
    pub retry_connect: Duration,

    /// Report the run to a monitor that speaks healthchecks.io's ping protocol: URL/start when
    /// the command starts, URL/STATUS with pglock's exit status when the run ends.
    ///
    /// Only a host that ran the command reports: not one that skipped (--once-per), found the
    /// lock busy or never got it. With --capture the end's body is the output's last 10 KiB.
    /// The URL is a credential: pglock never prints it (messages name its host), and the
    /// variable keeps it out of ps. A monitor never changes the exit status.
    #[arg(
        long,
        value_name = "URL",
        env = "PGLOCK_PING_URL",
        hide_env_values = true,
        help_heading = "Job runner"
    )]
    pub ping: Option<String>,

    /// How long the end ping may take in all, retries included (1s after a terminating signal).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_ping_timeout, help_heading = "Job runner")]
    pub ping_timeout: Duration,

    /// Pass the command's stdout and stderr through pglock, keeping their last 10 KiB for the
    /// --ping report. The command's output is then a pipe, not a terminal.
    #[arg(long, help_heading = "Job runner")]
    pub capture: bool,

    /// Print the command's output only if the run fails (any non-zero exit status of pglock),
    /// as chronic does: for cron, which mails whatever a job prints. Implies --capture; the
    /// output waits in an unlinked temporary file.
    #[arg(long, help_heading = "Job runner")]
    pub quiet_on_success: bool,

    /// Log each step to stderr with a timestamp.
    // Global, so that every subcommand takes it too (see hoist).
    #[arg(short, long, global = true)]
    pub verbose: bool,

    /// Print nothing when the lock is busy.
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// The command to run while holding the lock, after --. Any bytes, as the OS passes them.
    #[arg(last = true, value_name = "COMMAND", num_args = 1..,
          value_parser = clap::value_parser!(OsString))]
    pub args: Vec<OsString>,

    #[command(subcommand)]
    pub sub: Option<Commands>,
}

/// Every subcommand: the reports on locks, and the run ledger's.
#[derive(Debug, Subcommand)]
pub enum Commands {
    #[command(flatten)]
    Report(Sub),
    #[command(flatten)]
    Ledger(LedgerSub),
    /// Check that this host's setup is safe for the runs you describe: the connection, a
    /// pooler in the path, the lease, connection limits, the ledger, the clock. Takes no lock
    /// and writes nothing; exit 0 if all is well, 1 for a warning, 2 for a failure.
    Doctor(DoctorArgs),
}

/// Looking at locks instead of taking one.
#[derive(Debug, Subcommand)]
pub enum Sub {
    /// Show who holds a lock and who waits for it; exit 0 if held, 3 if free.
    #[command(after_help = exit::STATUS_TABLE)]
    Status(StatusArgs),
    /// List every advisory lock in the current database, holders and waiters.
    List(ListArgs),
    /// Print a key's lock id, where pg_locks shows it, and a SQL query that finds it. Needs no
    /// server.
    Key(KeyArgs),
}

/// Which lock, as in the main command.
#[derive(Debug, Args)]
#[group(id = "which", required = true, multiple = false)]
pub struct Which {
    /// Name of the lock, as given to pglock --key.
    #[arg(short, long, value_name = "KEY", value_parser = key::check_key)]
    pub key: Option<String>,

    /// A raw lock id: one signed 64-bit integer, or A,B (two signed 32-bit).
    #[arg(long, value_name = "ID", value_parser = key::LockId::parse, allow_hyphen_values = true)]
    pub lock_id: Option<key::LockId>,
}

impl Which {
    /// The label used in messages and application_name, and the id.
    pub fn resolve(&self, hash: key::KeyHash) -> (String, key::LockId) {
        match (&self.key, self.lock_id) {
            (Some(k), _) => (k.clone(), hash.id(k)),
            (None, Some(id)) => (id.to_string(), id),
            (None, None) => unreachable!("clap requires --key or --lock-id"),
        }
    }
}

/// How a key becomes a lock id, for the subcommands that take a key.
#[derive(Debug, Args)]
pub struct Hash {
    /// How KEY becomes a lock id, as in the main command.
    #[arg(long, value_enum, value_name = "SCHEME", default_value_t = key::KeyHash::Sha256)]
    pub key_hash: key::KeyHash,
}

/// Where to look: the same connection settings as the main command.
#[derive(Debug, Args)]
pub struct Server {
    /// PostgreSQL connection string (URL or key=value); otherwise the PG* variables, as psql.
    #[arg(
        short,
        long,
        value_name = "CONNINFO",
        env = "PGLOCK_DATABASE_URL",
        hide_env_values = true
    )]
    pub database_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub which: Which,

    #[command(flatten)]
    pub hash: Hash,

    /// The --limit its users pass, for a semaphore: count its N slots. Without it every slot
    /// that can exist is read, and N comes from the holders' application_names.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub limit: Option<u16>,

    /// Print one JSON object instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub server: Server,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Print a JSON array with one object per pg_locks row instead of a table.
    #[arg(long)]
    pub json: bool,

    #[command(flatten)]
    pub server: Server,
}

#[derive(Debug, Args)]
#[group(id = "key_or_id", required = true, multiple = false, args = ["key", "lock_id"])]
pub struct KeyArgs {
    /// The key, as given to pglock --key.
    #[arg(value_name = "KEY", value_parser = key::check_key)]
    pub key: Option<String>,

    /// A raw lock id instead: one signed 64-bit integer, or A,B (two signed 32-bit).
    #[arg(long, value_name = "ID", value_parser = key::LockId::parse, allow_hyphen_values = true)]
    pub lock_id: Option<key::LockId>,

    #[command(flatten)]
    pub hash: Hash,

    /// Also print the ids of the N slots and the queue that --limit N uses.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub limit: Option<u16>,
}

/// Moves options written before a subcommand's name after it, when the subcommand takes every
/// one of them: `pglock -v -d URL status --key k` is read as `pglock status -v -d URL --key k`.
/// clap cannot do this itself: the lock-and-run form's options conflict with subcommands (so
/// that `pglock --key k -- status` runs a program called status), and so `-v` before `status`
/// would be "unexpected argument 'status'". Anything else is left for clap to judge.
pub fn hoist(args: Vec<OsString>) -> Vec<OsString> {
    let mut cmd = <Cli as clap::CommandFactory>::command();
    cmd.build();
    let mut lead = Vec::new();
    let mut at = 1;
    while let Some(arg) = args.get(at) {
        let text = arg.to_string_lossy();
        if text == "--" || !text.starts_with('-') || text == "-" {
            break;
        }
        let Some(option) = find(&cmd, &text) else {
            return args;
        };
        let inline = text.contains('=') || (!text.starts_with("--") && text.len() > 2);
        let takes = option.get_action().takes_values();
        let width = if takes && !inline { 2 } else { 1 };
        lead.push((option.get_long(), option.get_short()));
        at += width;
    }
    let Some(sub) = args.get(at).and_then(|a| cmd.find_subcommand(a)) else {
        return args;
    };
    // The same flag, by its names: `--ledger` is a field of another name in each struct.
    let takes = |&(long, short): &(Option<&str>, Option<char>)| {
        sub.get_arguments()
            .any(|a| a.get_long() == long && a.get_short() == short)
    };
    if lead.is_empty() || !lead.iter().all(takes) {
        return args;
    }
    let mut hoisted = vec![args[0].clone(), args[at].clone()];
    hoisted.extend_from_slice(&args[1..at]);
    hoisted.extend_from_slice(&args[at + 1..]);
    hoisted
}

/// The top-level option that `text` (`-v`, `-dURL`, `--ledger`, `--ledger=t`) names.
fn find<'a>(cmd: &'a clap::Command, text: &str) -> Option<&'a clap::Arg> {
    if let Some(long) = text.strip_prefix("--") {
        let name = long.split('=').next().unwrap_or(long);
        return cmd.get_arguments().find(|a| a.get_long() == Some(name));
    }
    let short = text.chars().nth(1)?;
    cmd.get_arguments().find(|a| a.get_short() == Some(short))
}

/// The name of the subcommand the command line invokes, if any (after [`hoist`], its first
/// word): for telling a monitoring plugin's usage errors from the others'.
pub fn invoked(args: &[OsString]) -> Option<String> {
    let word = args.get(1)?.to_str()?;
    <Cli as clap::CommandFactory>::command()
        .find_subcommand(word)
        .map(|s| s.get_name().to_string())
}

/// clap's error as one line: its first paragraph, so that `the following required arguments
/// were not provided:` keeps the names listed under it.
pub fn one_line(text: &str) -> String {
    let paragraph: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = paragraph.join(" ");
    line.strip_prefix("error: ").unwrap_or(&line).to_string()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scope {
    /// pg_advisory_lock, released with pg_advisory_unlock.
    Session,
    /// pg_advisory_xact_lock inside a transaction, released by COMMIT or ROLLBACK.
    Xact,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Leftovers {
    /// SIGTERM them, SIGKILL after --kill-after, warn once; release when they are gone.
    Terminate,
    /// Hold the lock until they exit by themselves, as flock(1) does.
    Wait,
    /// Release the lock while they run, as `flock -o` (a job that starts a daemon on purpose).
    Keep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLost {
    /// Log, SIGTERM the command's process group, SIGKILL after --kill-after, exit 74.
    Terminate,
    /// Log a warning and let the command finish; exit with its status.
    Ignore,
}

fn parse_check_interval(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d < Duration::from_millis(100) {
        return Err(format!("'{text}' is below the minimum of 100ms"));
    }
    Ok(d)
}

/// A limit that must be above zero: `--max-runtime 0` would stop every command at once.
fn parse_positive(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d.is_zero() {
        return Err(format!("'{text}' is zero: give a duration above 0"));
    }
    Ok(d)
}

/// lock_timeout is an int of milliseconds on the server.
fn parse_timeout(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d.as_millis() > i32::MAX as u128 {
        return Err(format!(
            "'{text}' is longer than the server allows (about 24 days)"
        ));
    }
    Ok(d)
}

/// --ping-timeout 0 would never report an end.
fn parse_ping_timeout(text: &str) -> Result<Duration, String> {
    let d = duration::parse(text)?;
    if d.is_zero() {
        return Err("the ping timeout must be longer than 0".into());
    }
    Ok(d)
}

/// A --ping URL must be an http(s) URL. Checked here rather than by a value parser: clap's own
/// error would quote the value, and the URL is a credential.
pub fn check_ping(cli: &Cli) -> Result<(), clap::Error> {
    let Some(url) = &cli.ping else {
        return Ok(());
    };
    crate::ping::Target::parse(url)
        .map(|_| ())
        .map_err(|message| {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            cmd.error(clap::error::ErrorKind::ValueValidation, message)
        })
}

/// `-c STRING`: an empty script would run nothing under the lock, which is never meant.
fn non_empty_command() -> impl TypedValueParser<Value = OsString> {
    OsStringValueParser::new().try_map(|s| {
        if s.is_empty() {
            Err("the command string is empty: give -c the shell command to run")
        } else {
            Ok(s)
        }
    })
}

/// A `--lease` must end after a cut-off pglock has stopped its command (see [`crate::lease`]),
/// and the server must be able to store it: a lease, given or derived, longer than
/// [`crate::lease::MAX`] would fail every run's first statement.
/// `--supersede` and `--replace` need one newest waiter and one holder: not with `--limit`
/// above 1 (clap refuses `--nowait` and `--shared` itself), nor `--timeout 0`, which is
/// `--nowait`.
pub fn check_deploy(cli: &Cli) -> Result<(), clap::Error> {
    let flag = match (cli.supersede, cli.replace) {
        (_, true) => "--replace",
        (true, false) => "--supersede",
        (false, false) => return Ok(()),
    };
    let why = if cli.limit > 1 {
        "--limit above 1: a semaphore has no single newest waiter"
    } else if cli.timeout == Some(Duration::ZERO) {
        "--timeout 0, which does not wait"
    } else {
        return Ok(());
    };
    let mut cmd = <Cli as clap::CommandFactory>::command();
    Err(cmd.error(
        clap::error::ErrorKind::ArgumentConflict,
        format!("{flag} cannot be used with {why}"),
    ))
}

pub fn check_lease(cli: &Cli) -> Result<(), clap::Error> {
    let error = |message: String| {
        let mut cmd = <Cli as clap::CommandFactory>::command();
        Err(cmd.error(clap::error::ErrorKind::ValueValidation, message))
    };
    let (max, max_text) = (crate::lease::MAX, crate::lease::MAX_TEXT);
    let Some(length) = cli.lease else {
        let derived = crate::lease::new(cli.check_interval, cli.kill_after, None).length;
        if derived <= max {
            return Ok(());
        }
        return error(format!(
            "--check-interval {} and --kill-after {} make a lease (2 x --check-interval + \
             --kill-after + 2s) of {}, longer than PostgreSQL can enforce: at most {max_text}; \
             use a shorter --check-interval or --kill-after, or --lease 0 for no lease",
            duration::format(cli.check_interval),
            duration::format(cli.kill_after),
            duration::format(derived),
        ));
    };
    if length.is_zero() {
        return Ok(());
    }
    if length > max {
        return error(format!(
            "--lease {} is longer than PostgreSQL can enforce: at most {max_text}; use a \
             shorter one, or --lease 0 for no lease",
            duration::format(length),
        ));
    }
    let least = crate::lease::minimum(cli.check_interval, cli.kill_after);
    if length >= least {
        return Ok(());
    }
    error(format!(
        "--lease {} is too short: a pglock cut off from the server needs 2 x --check-interval \
         + --kill-after to stop its command, so the next holder could run alongside it; use at \
         least {} (or a shorter --check-interval or --kill-after)",
        duration::format(length),
        duration::format(least)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    fn words(line: &str) -> Vec<OsString> {
        line.split(' ').map(OsString::from).collect()
    }

    #[test]
    fn options_before_a_subcommand_move_after_it() {
        for (given, read) in [
            ("pglock -v status --key k", "pglock status -v --key k"),
            (
                "pglock -v -d url check --key k",
                "pglock check -v -d url --key k",
            ),
            (
                "pglock --database-url=u --ledger t history --all",
                "pglock history --database-url=u --ledger t --all",
            ),
            ("pglock -dURL list", "pglock list -dURL"),
        ] {
            assert_eq!(hoist(words(given)), words(read), "{given}");
        }
        // Options a subcommand does not take, and the lock-and-run form, are clap's to judge.
        for same in [
            "pglock --nowait status --key k",
            "pglock -v --key k -- status",
            "pglock -v -c status",
            "pglock -v",
            "pglock status -v --key k",
        ] {
            assert_eq!(hoist(words(same)), words(same), "{same}");
        }
        assert_eq!(
            invoked(&hoist(words("pglock -v check --key k"))).as_deref(),
            Some("check")
        );
        assert_eq!(invoked(&words("pglock -v -k check -- x")), None);
    }

    #[test]
    fn usage_errors_keep_what_is_missing() {
        let err = Cli::try_parse_from(["pglock", "check", "--key", "k"]).unwrap_err();
        assert_eq!(
            one_line(&err.to_string()),
            "the following required arguments were not provided: --critical <DURATION>"
        );
    }
}
