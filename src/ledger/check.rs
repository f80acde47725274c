//! `pglock check`: a monitoring plugin (Nagios, Icinga, Sensu) on a key's last success.
//!
//! The conventions, exactly: one line on stdout, `PGLOCK OK|WARNING|CRITICAL|UNKNOWN - <text> |
//! <perfdata>`; exit 0, 1, 2 or 3. The age of the last success is compared with --warning and
//! --critical; no success ever is CRITICAL, and so is no connection (as check_pgsql does);
//! usage errors and everything else that keeps the check from answering are UNKNOWN. A `|` in
//! the text (from a key or a host name) would start the perfdata, so it is replaced.

use super::CheckArgs;
use super::{connect, display_secs, display_time, sql};
use crate::exit::{self, CHECK_CRITICAL, CHECK_OK, CHECK_UNKNOWN, CHECK_WARNING, Failure};
use crate::{output, warn};
use std::time::Duration;
use tokio_postgres::Row;

/// What the ledger says about one key.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Facts {
    /// The last success: when (RFC 3339), where, how many seconds ago.
    pub success: Option<(String, String, f64)>,
    /// The newest finished run: status, exit code, host, seconds since it ended.
    pub last: Option<(String, Option<i32>, String, f64)>,
    /// A run in progress: since when, where, for how many seconds.
    pub running: Option<(String, String, f64)>,
}

/// The thresholds, in seconds.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    pub warning: Option<f64>,
    pub critical: f64,
}

/// A usage error of `pglock check`: UNKNOWN, as the plugin conventions say.
pub fn usage(message: &str) -> u8 {
    // UNKNOWN either way.
    let _ = say(&format!("PGLOCK UNKNOWN - usage error: {}", clean(message)));
    CHECK_UNKNOWN
}

/// The plugin's one line on stdout. A line that cannot be written leaves the monitoring system
/// nothing to read: UNKNOWN, with the reason in a `pglock:` line on stderr.
fn say(line: &str) -> Option<u8> {
    match output::emit(&format!("{line}\n")) {
        Ok(()) => None,
        Err(e) => {
            warn!("{}", exit::message(&e));
            Some(CHECK_UNKNOWN)
        }
    }
}

/// Runs the check; the plugin's exit status. Prints its one line whatever happens.
pub fn command(args: &CheckArgs) -> u8 {
    let limits = Thresholds {
        warning: args.warning.map(|d| d.as_secs_f64()),
        critical: args.critical.as_secs_f64(),
    };
    if limits.warning.is_some_and(|w| w >= limits.critical) {
        return usage("--warning must be below --critical");
    }
    let target = &args.target;
    let facts = connect(&args.database_url).and_then(|mut session| {
        let statement = sql::check(&args.table);
        let rows = session
            .query_typed(&statement.text, &[&target.base], statement.types)
            .map_err(|e| super::failure(&args.table, &e))?;
        match rows.first() {
            Some(row) => Ok(parse(row)?),
            None => Ok(Facts::default()),
        }
    });
    let (code, text, perfdata) = match facts {
        Ok(facts) => {
            let (code, text) = verdict(&target.label, &facts, limits);
            (code, text, Some(perfdata(&facts, limits)))
        }
        Err(e) => {
            let code = match e.downcast_ref::<Failure>() {
                Some(Failure::Unavailable) => CHECK_CRITICAL,
                _ => CHECK_UNKNOWN,
            };
            (code, exit::message(&e), None)
        }
    };
    say(&plugin_line(code, &text, perfdata.as_deref())).unwrap_or(code)
}

fn parse(row: &Row) -> Result<Facts, tokio_postgres::Error> {
    let success = match row.try_get::<_, Option<String>>("success_at")? {
        Some(at) => Some((
            at,
            row.try_get("success_host")?,
            row.try_get("success_age")?,
        )),
        None => None,
    };
    let last = match row.try_get::<_, Option<String>>("last_status")? {
        Some(status) => Some((
            status,
            row.try_get("last_exit")?,
            row.try_get("last_host")?,
            row.try_get("last_age")?,
        )),
        None => None,
    };
    let running = match row.try_get::<_, Option<String>>("running_at")? {
        Some(at) => Some((
            at,
            row.try_get("running_host")?,
            row.try_get("running_age")?,
        )),
        None => None,
    };
    Ok(Facts {
        success,
        last,
        running,
    })
}

/// The status and the text for what the ledger says.
pub fn verdict(label: &str, facts: &Facts, limits: Thresholds) -> (u8, String) {
    let (code, mut text) = match &facts.success {
        None => (CHECK_CRITICAL, format!("\"{label}\" has never succeeded")),
        Some((at, host, age)) => {
            let code = if *age > limits.critical {
                CHECK_CRITICAL
            } else if limits.warning.is_some_and(|w| *age > w) {
                CHECK_WARNING
            } else {
                CHECK_OK
            };
            let over = match code {
                CHECK_CRITICAL => format!(", older than --critical {}", secs(limits.critical)),
                CHECK_WARNING => {
                    format!(
                        ", older than --warning {}",
                        secs(limits.warning.unwrap_or(0.0))
                    )
                }
                _ => String::new(),
            };
            let when = display_time(at);
            let ago = display_secs(*age);
            (
                code,
                format!("\"{label}\" last succeeded {ago} ago ({when} on {host}){over}"),
            )
        }
    };
    if let Some((status, exit_code, host, age)) = &facts.last {
        if status != "succeeded" {
            let exit_code = exit_code.map_or(String::new(), |c| format!(", exit {c}"));
            // A run stopped by --max-runtime: say so in words, not only by its status.
            let status = match status.as_str() {
                "timeout" => "timed out (--max-runtime)",
                other => other,
            };
            let ago = display_secs(*age);
            text.push_str(&format!(
                "; last run {status}{exit_code} {ago} ago on {host}"
            ));
        }
    } else if facts.success.is_none() && facts.running.is_none() {
        text.push_str(" (no runs recorded)");
    }
    if let Some((at, host, age)) = &facts.running {
        let ago = display_secs(*age);
        text.push_str(&format!(
            "; running since {} ({ago}) on {host}",
            display_time(at)
        ));
    }
    (code, text)
}

/// `'last_success_age'=<s>s;<warn>;<crit>;0;` (U when there is none) and whether a run is in
/// progress.
pub fn perfdata(facts: &Facts, limits: Thresholds) -> String {
    let age = facts
        .success
        .as_ref()
        .map_or("U".to_string(), |(_, _, a)| format!("{}s", a.floor()));
    let warn = limits.warning.map_or(String::new(), |w| format!("{w}"));
    format!(
        "'last_success_age'={age};{warn};{};0; 'running'={};;;0;1",
        limits.critical,
        u8::from(facts.running.is_some())
    )
}

/// `PGLOCK <STATUS> - <text> | <perfdata>`.
fn plugin_line(code: u8, text: &str, perfdata: Option<&str>) -> String {
    let status = match code {
        CHECK_OK => "OK",
        CHECK_WARNING => "WARNING",
        CHECK_CRITICAL => "CRITICAL",
        _ => "UNKNOWN",
    };
    match perfdata {
        Some(p) => format!("PGLOCK {status} - {} | {p}", clean(text)),
        None => format!("PGLOCK {status} - {}", clean(text)),
    }
}

/// One line without a `|`, which would start the perfdata.
fn clean(text: &str) -> String {
    text.replace('|', "/").replace(['\n', '\r'], " ")
}

fn secs(s: f64) -> String {
    crate::duration::format(Duration::from_secs_f64(s.max(0.0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: f64 = 86400.0;

    fn limits() -> Thresholds {
        Thresholds {
            warning: Some(DAY),
            critical: 2.0 * DAY,
        }
    }

    fn succeeded(age: f64) -> Facts {
        Facts {
            success: Some(("2026-11-26T03:00:01.250000Z".into(), "web-3".into(), age)),
            last: Some(("succeeded".into(), Some(0), "web-3".into(), age - 60.0)),
            running: None,
        }
    }

    #[test]
    fn ok_warning_critical_by_age() {
        let (code, text) = verdict("nightly", &succeeded(3600.0), limits());
        assert_eq!(code, 0);
        assert_eq!(
            plugin_line(code, &text, Some(&perfdata(&succeeded(3600.4), limits()))),
            "PGLOCK OK - \"nightly\" last succeeded 1h00m ago (2026-11-26 03:00:01 UTC on web-3) \
             | 'last_success_age'=3600s;86400;172800;0; 'running'=0;;;0;1"
        );
        assert_eq!(verdict("nightly", &succeeded(1.5 * DAY), limits()).0, 1);
        let (code, line) = verdict("nightly", &succeeded(3.0 * DAY), limits());
        assert_eq!(code, 2);
        assert!(line.contains("older than --critical 2d0h"), "{line}");
    }

    #[test]
    fn never_succeeded_is_critical_and_mentions_runs() {
        let facts = Facts {
            success: None,
            last: Some(("failed".into(), Some(1), "web|5".into(), 120.0)),
            running: Some(("2026-11-27T03:00:00.000000Z".into(), "web-4".into(), 30.0)),
        };
        let (code, text) = verdict("a|b", &facts, limits());
        assert_eq!(code, 2);
        assert_eq!(
            plugin_line(code, &text, Some(&perfdata(&facts, limits()))),
            "PGLOCK CRITICAL - \"a/b\" has never succeeded; last run failed, exit 1 2m ago on \
             web/5; running since 2026-11-27 03:00:00 UTC (30s) on web-4 | \
             'last_success_age'=U;86400;172800;0; 'running'=1;;;0;1"
        );
        let (code, text) = verdict("k", &Facts::default(), limits());
        assert_eq!(code, 2);
        assert_eq!(text, "\"k\" has never succeeded (no runs recorded)");
    }

    #[test]
    fn a_run_that_timed_out_is_a_failure_and_says_so() {
        let facts = Facts {
            success: None,
            last: Some(("timeout".into(), Some(124), "web-5".into(), 60.0)),
            running: None,
        };
        let (code, text) = verdict("k", &facts, limits());
        assert_eq!(code, 2);
        assert_eq!(
            text,
            "\"k\" has never succeeded; last run timed out (--max-runtime), exit 124 1m ago on \
             web-5"
        );
    }

    #[test]
    fn lines_follow_the_plugin_format() {
        assert_eq!(
            plugin_line(3, "cannot connect | really", None),
            "PGLOCK UNKNOWN - cannot connect / really"
        );
        assert_eq!(
            plugin_line(2, "down\nnow", None),
            "PGLOCK CRITICAL - down now"
        );
    }
}
