//! Generated documentation: the man page and the shell completions, all derived from the clap
//! definition in cli.rs that also drives --help, so they cannot drift from the code.
//!
//! The generator is a hidden subcommand of pglock itself, `pglock generate-docs [DIR]`, rather
//! than an xtask: pglock is a binary crate with no library an xtask could import the definition
//! from, and this way what is generated is exactly what the binary parses. The subcommand is
//! attached only when parsing (see [`command`]), not in the definition the generators read, so it
//! appears in neither --help nor the completions nor the man page. Without DIR it writes into the
//! source tree pglock was built from (so `cargo run -- generate-docs` works from any directory,
//! and never litters the current one); packagers give a DIR to an installed pglock.
//!
//! The man page's list of variables comes from the table of libpq's keys in
//! [`conninfo::known`](crate::conninfo::known), like the behaviour it describes.

use crate::cli::Cli;
use crate::conninfo::known::{FILE_VARIABLES, KNOWN, Use};
use crate::exit::{self, Failure, fail};
use anyhow::{Context, Result};
use clap::{Arg, ArgMatches, Command, CommandFactory};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Roff, bold, italic, roman};
use std::path::PathBuf;

/// The hidden subcommand's name.
pub const GENERATE: &str = "generate-docs";

/// The definition used for parsing: the public one plus the hidden generator.
pub fn command() -> Command {
    Cli::command().subcommand(
        Command::new(GENERATE)
            .hide(true)
            .about(
                "Write man/pglock.1 and completions/* under DIR (default: the source tree \
                 pglock was built from)",
            )
            .arg(
                Arg::new("dir")
                    .value_name("DIR")
                    .value_parser(clap::value_parser!(PathBuf)),
            ),
    )
}

/// `pglock generate-docs [DIR]`: writes the files that changed, and lists every file.
pub fn run(matches: &ArgMatches) -> Result<u8> {
    let dir = match matches.get_one::<PathBuf>("dir") {
        Some(dir) => dir.clone(),
        None => source_tree()?,
    };
    for (path, content) in files()? {
        let path = dir.join(path);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        // Unchanged files keep their time stamps.
        if std::fs::read(&path).ok().as_ref() != Some(&content) {
            std::fs::write(&path, content)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        println!("{}", path.display());
    }
    Ok(0)
}

/// The directory of pglock's Cargo.toml at build time, if it still holds it.
fn source_tree() -> Result<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    if dir.join("Cargo.toml").is_file() {
        return Ok(dir);
    }
    Err(fail(
        Failure::Usage,
        format!(
            "{GENERATE} writes into the source tree pglock was built from, and {} is gone; give \
             the directory to write into: pglock {GENERATE} DIR",
            dir.display()
        ),
    ))
}

/// Every generated file, by its path in the repository.
pub fn files() -> Result<Vec<(&'static str, Vec<u8>)>> {
    let mut out = vec![("man/pglock.1", man_page()?)];
    for (path, shell) in [
        ("completions/pglock.bash", Shell::Bash),
        ("completions/_pglock", Shell::Zsh),
        ("completions/pglock.fish", Shell::Fish),
        ("completions/pglock.elv", Shell::Elvish),
        ("completions/_pglock.ps1", Shell::PowerShell),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut Cli::command(), "pglock", &mut buf);
        out.push((path, buf));
    }
    Ok(out)
}

/// The man page: clap_mangen's sections for what the definition knows (synopsis, description,
/// options), and sections of our own for what it doesn't.
pub fn man_page() -> Result<Vec<u8>> {
    let cmd = Cli::command();
    let man = Man::new(cmd.clone());
    // Written by hand: clap_mangen drops an empty date argument, which shifts the others. No
    // date at all keeps the output reproducible.
    let mut out = format!(
        ".TH PGLOCK 1 \"\" \"pglock {}\" \"User Commands\"\n",
        env!("CARGO_PKG_VERSION")
    )
    .into_bytes();
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    description_tail().to_writer(&mut out)?;
    man.render_options_section(&mut out)?;
    subcommands(&cmd, &mut out)?;
    exit_status().to_writer(&mut out)?;
    environment().to_writer(&mut out)?;
    examples().to_writer(&mut out)?;
    see_also().to_writer(&mut out)?;
    // Every piece written above starts with roff's apostrophe preamble; keep only the first.
    let text = String::from_utf8(out)?;
    Ok(format!("{ROFF_PREAMBLE}{}", text.replace(ROFF_PREAMBLE, "")).into_bytes())
}

/// What `Roff::to_writer` puts before every piece: it defines the apostrophe string.
const ROFF_PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

fn description_tail() -> Roff {
    let mut r = Roff::new();
    r.control("PP", []);
    r.text([roman(
        "The lock is a PostgreSQL advisory lock, so every host that reaches the same database \
         shares it. If pglock dies, the server drops its connection and the lock with it. The \
         command runs with pglock's standard input, output and error; pglock forwards the \
         signals it receives to the command's process group and never exits before the command \
         has exited.",
    )]);
    r.control("PP", []);
    r.text([
        roman("When the lock is busy with "),
        bold("--nowait"),
        roman(", or "),
        bold("--timeout"),
        roman(
            " expires, pglock prints one line naming the holder: its application_name, backend \
             pid, client address and since when it holds the lock. While it waits on a terminal \
             it shows a status line with the holder and its place in the queue; with ",
        ),
        bold("-v"),
        roman(" it logs the holder when the wait starts and every minute."),
    ]);
    r.control("PP", []);
    r.text([
        roman("A "),
        italic("KEY"),
        roman(
            " becomes the lock id given to pg_advisory_lock(bigint): the first 8 bytes of the \
             SHA-256 digest of its UTF-8 bytes, read as a big-endian signed 64-bit integer.",
        ),
    ]);
    r.control("PP", []);
    r.text([
        roman("A "),
        italic("DURATION"),
        roman(format!(
            " is seconds with fractions (30, 0.5) or units (500ms, 30s, 10m, 1h, 1d, 1h30m), \
             largest unit first and each at most once, and at most {}; a longer one is a usage \
             error.",
            crate::duration::MAX_TEXT
        )),
    ]);
    r
}

/// One subsection per subcommand, with its usage and options as clap_mangen renders them.
fn subcommands(cmd: &Command, out: &mut Vec<u8>) -> Result<()> {
    let mut head = Roff::new();
    head.control("SH", ["COMMANDS"]);
    head.text([roman(
        "Instead of running a command, pglock can report on locks (status, list, key) and \
         create, read and prune the run ledger that --record and --once-per write (init, \
         history, check, metrics, prune). These forms take none of the options above except \
         their own.",
    )]);
    head.to_writer(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("pglock {}", sub.get_name());
        let mut r = Roff::new();
        r.control("SS", [name.as_str()]);
        if let Some(about) = sub.get_about() {
            r.text([roman(about.to_string())]);
        }
        r.to_writer(out)?;
        let mut options = Vec::new();
        Man::new(sub.clone()).render_options_section(&mut options)?;
        // Rendered under the subsection, not as a second OPTIONS section.
        let text = String::from_utf8_lossy(&options).replacen(".SH OPTIONS\n", "", 1);
        out.extend_from_slice(text.as_bytes());
    }
    Ok(())
}

/// Renders one of exit.rs's plain-text tables (a title line, then `  CODE  meaning` entries whose
/// continuation lines are indented further) as a tagged list, so the man page shows the same
/// table as --help. The title is left out where the section heading already says it.
fn table(r: &mut Roff, text: &str, with_title: bool) {
    let mut lines = text.lines();
    let title = lines.next().unwrap_or_default();
    if with_title {
        r.control("PP", []);
        r.text([roman(title)]);
    }
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in lines {
        let body = line.trim_start();
        if line.len() - body.len() == 2 {
            let (code, meaning) = body.split_once("  ").unwrap_or((body, ""));
            entries.push((code.trim().into(), meaning.trim().into()));
        } else if let Some(last) = entries.last_mut() {
            last.1.push(' ');
            last.1.push_str(body.trim());
        }
    }
    for (code, meaning) in entries {
        r.control("TP", ["20"]);
        r.text([bold(code)]);
        r.text([roman(meaning)]);
    }
}

fn exit_status() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXIT STATUS"]);
    table(&mut r, exit::TABLE, false);
    table(&mut r, exit::STATUS_TABLE, true);
    table(&mut r, exit::LEDGER_TABLE, true);
    table(&mut r, exit::CHECK_TABLE, true);
    r
}

/// One tagged entry of a list.
fn item(r: &mut Roff, name: &str, what: &str) {
    r.control("TP", []);
    r.text([bold(name)]);
    r.text([roman(what)]);
}

/// The variables of the keys that `how` describes, as a comma-separated list.
fn variables(how: Use) -> String {
    let names: Vec<&str> = KNOWN
        .iter()
        .filter(|k| k.how == how)
        .filter_map(|k| k.env)
        .collect();
    names.join(", ")
}

fn environment() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["ENVIRONMENT"]);
    r.text([roman("pglock reads:")]);
    item(
        &mut r,
        "PGLOCK_DATABASE_URL",
        "a libpq connection string, URL or key=value, as --database-url; it wins over the PG* \
         variables",
    );
    item(
        &mut r,
        "PGLOCK_LEDGER",
        "the run ledger table, as --ledger (default public.pglock_runs)",
    );
    for k in KNOWN.iter().filter(|k| k.how == Use::Honoured) {
        let Some(name) = k.env else { continue };
        item(&mut r, name, k.about);
        if name == "PGSERVICE" {
            for (name, what) in FILE_VARIABLES {
                item(&mut r, name, what);
            }
        }
    }
    r.control("PP", []);
    r.text([roman(format!(
        "Accepted and ignored, because they change neither the server, the user nor the \
         protection of the connection: {}; pglock names its session pglock:KEY@HOST:PID \
         itself. Refused with exit status 2, because pglock cannot give the protection they ask \
         for: {}. A variable of a setting that is not valid UTF-8 is refused with exit status 2 \
         too; PGSERVICEFILE, PGSYSCONFDIR and HOME are paths and may hold any bytes.",
        variables(Use::Ignored),
        variables(Use::Unsupported)
    ))]);
    r.control("PP", []);
    r.text([roman("The command runs with pglock's environment plus:")]);
    let set: &[(&str, &str)] = &[
        ("PGLOCK_KEY", "the key, or the id as given to --lock-id"),
        ("PGLOCK_LOCK_ID", "the numeric lock id, or A,B"),
        ("PGLOCK_SCOPE", "session or xact"),
        (
            "PGLOCK_SLOT",
            "with --limit above 1, the semaphore slot held, 0 to N-1",
        ),
        (
            "PGLOCK_FENCING_TOKEN",
            "with --fencing-token, 50 decimal digits that grow from each holder of the lock (of \
             the slot) to the next, also across server crashes and failovers",
        ),
        (
            "PGLOCK_RUN_ID",
            "with --record or --once-per, the run's id in the ledger table (empty in xact scope)",
        ),
        (
            "PGLOCK_LAST_SUCCESS",
            "with --record or --once-per, the start of the lock's latest succeeded run as RFC \
             3339 UTC (2026-11-26T03:00:01.250000Z), empty if none",
        ),
    ];
    for (name, what) in set {
        item(&mut r, name, what);
    }
    r
}

fn example(r: &mut Roff, what: &str, lines: &[&str]) {
    r.control("PP", []);
    r.text([roman(what)]);
    r.control("PP", []);
    r.control("RS", ["4"]);
    r.control("nf", []);
    for line in lines {
        r.text([roman(*line)]);
    }
    r.control("fi", []);
    r.control("RE", []);
}

fn examples() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["EXAMPLES"]);
    example(
        &mut r,
        "A nightly job in the crontab of every host: one host runs it, the others skip quietly \
         (exit 75, no output, so cron sends no mail).",
        &["0 3 * * * pglock --key nightly-report --nowait --quiet -- /opt/app/nightly-report"],
    );
    example(
        &mut r,
        "The same job in the crontab of every host, run once a day across the fleet: the first \
         host to get the lock runs it; the others wait, see the success in the ledger and skip. \
         If the run fails, the next waiting host runs it (at most three failures a day). Create \
         the ledger once with pglock init.",
        &[
            "0 3 * * * pglock --key nightly-report --once-per 20h --timeout 2h -- /opt/app/nightly-report",
        ],
    );
    example(
        &mut r,
        "Alert when it has not succeeded for 26 hours (Nagios, Icinga), or export it to \
         Prometheus:",
        &[
            "pglock check --key nightly-report --warning 25h --critical 26h",
            "pglock metrics --output /var/lib/node_exporter/pglock.prom",
        ],
    );
    example(
        &mut r,
        "A CI deploy job: pipelines of the same service deploy one at a time, waiting up to 30 \
         minutes for the one before.",
        &["pglock --key deploy-prod --timeout 30m -- ./deploy.sh"],
    );
    example(
        &mut r,
        "A systemd service started by a timer on several hosts:",
        &[
            "[Service]",
            "Type=oneshot",
            "Environment=PGLOCK_DATABASE_URL=postgresql://locks@db.internal/locks",
            "ExecStart=/usr/local/bin/pglock --key nightly-report --nowait -- /opt/app/nightly-report",
            "SuccessExitStatus=75",
        ],
    );
    example(
        &mut r,
        "A shared lock: readers run side by side, a writer waits for them and excludes them.",
        &[
            "pglock --key catalog --shared -- ./read-catalog.sh",
            "pglock --key catalog -- ./rebuild-catalog.sh",
        ],
    );
    example(
        &mut r,
        "A shell command; termination reaches every process of the pipeline:",
        &["pglock --key backup -c 'pg_dump app | gzip > /backup/app.sql.gz'"],
    );
    example(
        &mut r,
        "Who holds a lock and who waits for it:",
        &["pglock status --key nightly-report", "pglock list --json"],
    );
    r
}

fn see_also() -> Roff {
    let mut r = Roff::new();
    r.control("SH", ["SEE ALSO"]);
    r.text([
        bold("flock"),
        roman("(1), "),
        bold("psql"),
        roman("(1), the PostgreSQL documentation on advisory locks and pg_locks."),
    ]);
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_table_becomes_a_tagged_list() {
        let mut r = Roff::new();
        table(&mut r, exit::TABLE, false);
        let text = r.to_roff();
        assert!(text.contains("128+N"), "{text}");
        assert!(text.contains("interrupted by signal N while waiting for the lock"));
        // One tag for each status the table lists.
        let statuses = exit::TABLE
            .lines()
            .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
            .count();
        assert_eq!(text.matches(".TP").count(), statuses, "{text}");
    }

    #[test]
    fn the_environment_section_lists_every_variable_of_the_table() {
        let text = environment().to_roff();
        for k in KNOWN {
            if let Some(name) = k.env {
                assert!(text.contains(name), "{name} missing from\n{text}");
            }
        }
        for (name, _) in FILE_VARIABLES {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
