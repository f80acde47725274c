//! libpq-compatible connection settings, resolved into a rust-postgres `Config` and a TLS policy.
//!
//! rust-postgres parses only part of libpq's connection strings and reads no environment, password
//! file or service file, so pglock reads them itself, with libpq's precedence: the connection
//! string (URL or key=value), then the service file, then the PG* environment variables, then the
//! defaults. (libpq fills in service-file values before it consults the environment, so a
//! service's `dbname` beats PGDATABASE; psql behaves the same way.) The password file is consulted
//! last, per host, when no password was given. Everything that can be wrong with these settings
//! is a usage error, raised before any connection is attempted, and no message ever contains a
//! password.
//!
//! The parts: [`syntax`] reads the string, [`files`] the service and password files, [`known`]
//! is the table of libpq's keys, [`hosts`] pairs up the host list, [`build`] makes the `Config`,
//! [`tls_policy`] the TLS policy, and [`keepalive`] derives the socket settings that
//! `--check-interval` imposes.

mod build;
mod files;
mod hosts;
pub mod keepalive;
pub mod known;
mod syntax;
mod tls_policy;

use crate::exit::{Failure, fail};
use crate::tls::Verify;
use anyhow::Result;
use files::apply_service;
use known::KNOWN;
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::path::PathBuf;
use tokio_postgres::Config;

/// Everything needed to open the lock connection.
pub struct Target {
    pub config: Config,
    pub verify: Verify,
    /// `host:port/dbname as user` (never a password), for messages and -v.
    pub describe: String,
    /// The password came from the command line, where `ps` shows it to every local user.
    pub password_on_command_line: bool,
}

/// Source of environment variables, so that tests can resolve without touching the process.
/// Values are the bytes the environment holds: a variable that is not UTF-8 must not vanish.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<OsString>;

/// The process's environment; an empty variable counts as unset, as in libpq.
pub fn process_env(name: &str) -> Option<OsString> {
    std::env::var_os(name).filter(|v| !v.is_empty())
}

/// A variable that holds a setting: text, or a usage error that names it. Dropping it instead
/// would connect somewhere else (PGHOST) or as someone else (PGUSER) without a word.
fn text_var(env: Env, name: &str) -> Result<Option<String>> {
    match env(name) {
        None => Ok(None),
        Some(value) => value.into_string().map(Some).map_err(|_| {
            usage(format!(
                "environment variable {name} is not valid UTF-8, and pglock will not guess what \
                 it means; fix it or unset it"
            ))
        }),
    }
}

/// A variable that holds a path: any bytes will do.
fn path_var(env: Env, name: &str) -> Option<PathBuf> {
    env(name).map(PathBuf::from)
}

/// Where a setting came from, for messages that say what to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    String,
    Service(PathBuf),
    Env(&'static str),
}

impl Source {
    fn describe(&self, key: &str) -> String {
        match self {
            Source::String => format!("{key} in the connection string"),
            Source::Service(file) => format!("{key} in service file {}", file.display()),
            Source::Env(var) => (*var).to_string(),
        }
    }
}

/// Settings by libpq keyword. Later sources only fill in what earlier ones left unset.
#[derive(Debug, Default)]
struct Options(BTreeMap<&'static str, (String, Source)>);

impl Options {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .map(|(v, _)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    fn source(&self, key: &str) -> String {
        match self.0.get(key) {
            Some((_, source)) => source.describe(key),
            None => key.to_string(),
        }
    }

    fn fill(&mut self, key: &'static str, value: String, source: Source) {
        self.0.entry(key).or_insert((value, source));
    }
}

fn usage(message: impl std::fmt::Display) -> anyhow::Error {
    fail(Failure::Usage, message)
}

fn invalid(opts: &Options, key: &str, value: &str, expected: &str) -> anyhow::Error {
    usage(format!(
        "invalid value \"{value}\" for {}; use {expected}",
        opts.source(key)
    ))
}

pub fn resolve(conninfo: Option<&str>, env: Env) -> Result<Target> {
    let conninfo = conninfo.filter(|c| !c.trim().is_empty());
    let mut opts = match conninfo {
        Some(text) => syntax::parse(text)?,
        None => Options::default(),
    };
    // PGLOCK_DATABASE_URL is as private as PGPASSWORD; only -d puts the string in `ps`.
    let password_on_command_line = opts.get("password").is_some()
        && conninfo.is_some()
        && env("PGLOCK_DATABASE_URL").as_deref() != conninfo.map(OsStr::new);
    let home = home_dir(env);
    let service = match opts.get("service") {
        Some(name) => Some(name.to_string()),
        None => text_var(env, "PGSERVICE")?,
    };
    if let Some(name) = service {
        apply_service(&mut opts, &name, env, home.as_deref())?;
    }
    fill_from_environment(&mut opts, env)?;
    known::check_supported(&opts)?;
    build::build(&opts, home.as_deref(), password_on_command_line)
}

/// The PG* variables of every key the string and the service left unset. A variable that would
/// not be used is not read, so it cannot be wrong.
fn fill_from_environment(opts: &mut Options, env: Env) -> Result<()> {
    for k in KNOWN {
        if let Some(var) = k.env
            && !opts.0.contains_key(k.key)
            && let Some(value) = text_var(env, var)?
        {
            opts.fill(k.key, value, Source::Env(var));
        }
    }
    Ok(())
}

/// $HOME, else the passwd entry, as libpq looks for ~/.pgpass and ~/.postgresql.
fn home_dir(env: Env) -> Option<PathBuf> {
    path_var(env, "HOME").or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
    })
}

#[cfg(test)]
mod tests;
