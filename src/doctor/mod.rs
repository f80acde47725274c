//! `pglock doctor`: is this host's setup safe for the runs described? Each check is one line,
//! ok, warn or fail, and a warning or failure says what to do. It takes no lock and writes
//! nothing; every connection and statement is bounded as a report's are.

mod checks;

use crate::conninfo;
use crate::lease::{self, Lease};
use crate::ledger::table::Table;
use crate::output;
use crate::pg::sql::Scope;
use anyhow::Result;
use std::fmt::Write as _;
use std::time::Duration;

/// What the doctor is asked to judge.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The lock, for the report's heading.
    pub label: Option<String>,
    pub scope: Scope,
    /// The ledger table, when the runs record themselves.
    pub ledger: Option<Table>,
    pub limit: u16,
    /// The lease the runs' flags produce (None: `--lease 0`).
    pub lease: Option<Lease>,
    pub fleet: Option<u32>,
    pub json: bool,
    pub database_url: Option<String>,
}

impl Request {
    /// The lease of the runs' flags, as the run computes it.
    pub fn lease_of(
        check_interval: Duration,
        kill_after: Duration,
        given: Option<Duration>,
    ) -> Option<Lease> {
        match given {
            Some(Duration::ZERO) => None,
            length => Some(lease::new(check_interval, kill_after, length)),
        }
    }
}

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    fn word(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warn => "warn",
            Level::Fail => "fail",
        }
    }
}

/// One check's finding.
#[derive(Debug, Clone)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
    /// What to do, for a warning or a failure.
    pub fix: Option<String>,
}

impl Finding {
    fn ok(check: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            check,
            level: Level::Ok,
            message: message.into(),
            fix: None,
        }
    }

    fn warn(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            level: Level::Warn,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }

    fn fail(check: &'static str, message: impl Into<String>, fix: impl Into<String>) -> Finding {
        Finding {
            check,
            level: Level::Fail,
            message: message.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Runs the checks and prints them; the exit status is 0 (all ok), 1 (a warning) or 2 (a
/// failure).
pub fn command(request: &Request) -> Result<u8> {
    let target = conninfo::resolve(request.database_url.as_deref(), &conninfo::process_env)?;
    let findings = checks::run(request, &target);
    let worst = findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    let text = if request.json {
        json(&findings, worst)
    } else {
        lines(&findings)
    };
    output::emit(&text)?;
    Ok(match worst {
        Level::Ok => 0,
        Level::Warn => 1,
        Level::Fail => 2,
    })
}

fn lines(findings: &[Finding]) -> String {
    let mut text = String::new();
    for f in findings {
        let _ = write!(text, "{:<4}  {}: {}", f.level.word(), f.check, f.message);
        if let Some(fix) = &f.fix {
            let _ = write!(text, "; {fix}");
        }
        text.push('\n');
    }
    text
}

fn json(findings: &[Finding], worst: Level) -> String {
    let checks: Vec<serde_json::Value> = findings
        .iter()
        .map(|f| {
            serde_json::json!({
                "check": f.check,
                "level": f.level.word(),
                "message": f.message,
                "fix": f.fix,
            })
        })
        .collect();
    let value = serde_json::json!({ "result": worst.word(), "checks": checks });
    format!("{value}\n")
}
