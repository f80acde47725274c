//! `pglock metrics`: the ledger in the Prometheus text exposition format, one series per key,
//! for node_exporter's textfile collector (`--output`, written atomically) or any scraper.
//!
//! Per the Prometheus conventions for batch jobs: the key metric is the time of the last
//! success; base units (seconds); HELP and TYPE for every family; no timestamps on samples;
//! label values escaped; no instance label (a job that runs on any host is a service-level
//! one), only `key`.

use super::MetricsArgs;
use super::{connect, sql};
use crate::output;
use anyhow::{Context, Result};
use std::io::Write;
use std::path::Path;
use tokio_postgres::Row;

/// What the ledger says about one key, as Unix seconds.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyStats {
    pub key: String,
    pub last_success: Option<f64>,
    /// The newest finished run.
    pub started: Option<f64>,
    pub finished: Option<f64>,
    pub exit_code: Option<i32>,
    pub running: i64,
    /// The newest run's wait for the lock, in ms.
    pub waited_ms: Option<i64>,
}

/// The metric families: name, help, and the value of a key (None: no sample for that key).
type Family = (&'static str, &'static str, fn(&KeyStats) -> Option<f64>);

const FAMILIES: [Family; 7] = [
    (
        "pglock_last_success_timestamp_seconds",
        "Start of the key's newest succeeded run, Unix time; 0 if it never succeeded.",
        |k| Some(k.last_success.unwrap_or(0.0)),
    ),
    (
        "pglock_last_run_start_timestamp_seconds",
        "Start of the key's newest finished run, Unix time.",
        |k| k.started,
    ),
    (
        "pglock_last_run_end_timestamp_seconds",
        "End of the key's newest finished run, Unix time.",
        |k| k.finished,
    ),
    (
        "pglock_last_run_duration_seconds",
        "Duration of the key's newest finished run.",
        |k| Some(k.finished? - k.started?),
    ),
    (
        "pglock_last_run_exit_code",
        "pglock's exit status for the key's newest finished run.",
        |k| k.exit_code.map(f64::from),
    ),
    (
        "pglock_last_wait_seconds",
        "How long the key's newest run waited for its lock, connecting included.",
        |k| k.waited_ms.map(|ms| ms as f64 / 1000.0),
    ),
    (
        "pglock_running",
        "Runs of the key in progress (running rows in the ledger).",
        |k| Some(k.running as f64),
    ),
];

pub fn command(args: &MetricsArgs) -> Result<u8> {
    let table = &args.table;
    let mut session = connect(&args.database_url)?;
    let statement = sql::metrics(table);
    let rows = session
        .query_typed(&statement.text, &[], statement.types)
        .map_err(|e| super::failure(table, &e))?;
    let keys = rows.iter().map(parse).collect::<Result<Vec<_>, _>>()?;
    let text = exposition(&keys);
    match &args.output {
        Some(path) => write_output(path, &text)?,
        None => output::emit(&text)?,
    }
    Ok(0)
}

fn parse(row: &Row) -> Result<KeyStats, tokio_postgres::Error> {
    Ok(KeyStats {
        key: row.try_get("key")?,
        last_success: row.try_get("last_success")?,
        started: row.try_get("started")?,
        finished: row.try_get("finished")?,
        exit_code: row.try_get("exit_code")?,
        running: row.try_get("running")?,
        waited_ms: row.try_get("waited_ms")?,
    })
}

/// The whole text: every family with its HELP and TYPE lines, then one sample per key.
pub fn exposition(keys: &[KeyStats]) -> String {
    let mut out = String::new();
    for (name, help, value) in FAMILIES {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for k in keys {
            if let Some(v) = value(k) {
                out.push_str(&format!(
                    "{name}{{key=\"{}\"}} {}\n",
                    escape(&k.key),
                    number(v)
                ));
            }
        }
    }
    out
}

/// A label value as the format wants it: `\`, `"` and newline escaped.
pub fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// A sample value: integers without a fraction, others with millisecond precision.
fn number(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

/// `--output FILE`: a regular file (or a new one) is replaced atomically, as the textfile
/// collector needs; a symlink is followed and its target replaced the same way, so the link
/// stays a link; anything else (a FIFO, a device, `/dev/stdout`) is written in place, as a
/// shell's `>` would, since renaming over it would replace the device or FIFO with a file.
fn write_output(path: &Path, text: &str) -> Result<()> {
    let target = follow(path).with_context(|| format!("cannot write {}", path.display()))?;
    match std::fs::metadata(&target) {
        Ok(meta) if !meta.file_type().is_file() => std::fs::OpenOptions::new()
            .write(true)
            .open(&target)
            .and_then(|mut f| f.write_all(text.as_bytes()).and_then(|()| f.flush()))
            .with_context(|| format!("cannot write {}", path.display())),
        _ => write_atomically(&target, text),
    }
}

/// The path a chain of symlinks ends at (which need not exist yet), as the kernel would follow
/// it, up to its limit of 40 links.
fn follow(path: &Path) -> std::io::Result<std::path::PathBuf> {
    let mut at = path.to_path_buf();
    for _ in 0..40 {
        match std::fs::symlink_metadata(&at) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let link = std::fs::read_link(&at)?;
                at = match at.parent() {
                    Some(dir) if link.is_relative() => dir.join(link),
                    _ => link,
                };
            }
            _ => return Ok(at),
        }
    }
    Err(std::io::Error::from_raw_os_error(nix::libc::ELOOP))
}

/// Writes `text` to a temporary file next to `path`, flushes it to disk and renames it over
/// `path`, so a reader sees the old file or the new one, never half of one. The temporary name
/// does not end in `.prom`, so the textfile collector never reads it.
fn write_atomically(path: &Path, text: &str) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path.file_name().context("--output needs a file name")?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(text.as_bytes())?;
        f.sync_all()
    });
    let renamed = written.and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = renamed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot write {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_and_escaped_labels() {
        let keys = [
            KeyStats {
                key: "a\"b\\c\nd".into(),
                last_success: Some(1_764_126_001.25),
                started: Some(1_764_126_001.25),
                finished: Some(1_764_126_133.5),
                exit_code: Some(0),
                running: 0,
                waited_ms: Some(2500),
            },
            KeyStats {
                key: "never".into(),
                last_success: None,
                started: None,
                finished: None,
                exit_code: None,
                running: 1,
                waited_ms: None,
            },
        ];
        let text = exposition(&keys);
        assert!(text.starts_with(
            "# HELP pglock_last_success_timestamp_seconds Start of the key's newest succeeded \
             run, Unix time; 0 if it never succeeded.\n\
             # TYPE pglock_last_success_timestamp_seconds gauge\n\
             pglock_last_success_timestamp_seconds{key=\"a\\\"b\\\\c\\nd\"} 1764126001.250\n\
             pglock_last_success_timestamp_seconds{key=\"never\"} 0\n"
        ));
        assert!(
            text.contains("pglock_last_run_duration_seconds{key=\"a\\\"b\\\\c\\nd\"} 132.250\n")
        );
        assert!(text.contains("pglock_running{key=\"never\"} 1\n"));
        assert!(!text.contains("pglock_last_run_exit_code{key=\"never\"}"));
        assert!(text.contains("pglock_last_wait_seconds{key=\"a\\\"b\\\\c\\nd\"} 2.500\n"));
        assert!(!text.contains("pglock_last_wait_seconds{key=\"never\"}"));
        assert_eq!(text.matches("# TYPE").count(), 7);
    }

    #[test]
    fn output_replaces_the_file_whole() {
        let dir = std::env::temp_dir().join(format!("pglock-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pglock.prom");
        std::fs::write(&path, "old").unwrap();
        write_atomically(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["pglock.prom"]);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn output_follows_symlinks_and_writes_other_files_in_place() {
        let dir = std::env::temp_dir().join(format!("pglock-metrics-l-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("real")).unwrap();
        let target = dir.join("real/pglock.prom");
        std::fs::write(&target, "old").unwrap();
        let link = dir.join("link.prom");
        std::os::unix::fs::symlink("real/pglock.prom", &link).unwrap();
        write_output(&link, "new\n").unwrap();
        assert!(link.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
        let dangling = dir.join("dangling.prom");
        std::os::unix::fs::symlink("real/later.prom", &dangling).unwrap();
        write_output(&dangling, "x\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("real/later.prom")).unwrap(),
            "x\n"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
