//! Resolved [`Options`] into a rust-postgres `Config`: hosts, user and database, password,
//! timeouts, session attributes and TLS, each checked with a message that names where the bad
//! value came from.

use super::files::password_from_file;
use super::hosts::{Entry, Kind, describe, hosts};
use super::keepalive::MAX_USER_TIMEOUT_MS;
use super::tls_policy::tls_policy;
use super::{Options, Target, invalid, usage};
use crate::tls::Check;
use crate::{duration, step};
use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_postgres::Config;
use tokio_postgres::config::{
    ChannelBinding, LoadBalanceHosts, SslMode as PgSslMode, TargetSessionAttrs,
};

pub(super) fn build(opts: &Options, home: Option<&Path>, on_cmdline: bool) -> Result<Target> {
    let entries = hosts(opts)?;
    let mut config = Config::new();
    addresses(&mut config, &entries)?;
    let (user, dbname) = login(&mut config, opts);
    password(&mut config, opts, home, &entries, &dbname, &user)?;
    timeouts(&mut config, opts)?;
    session_attrs(&mut config, opts)?;
    let only_sockets = entries.iter().all(|e| matches!(e.kind, Kind::Unix(_)));
    let verify = tls_policy(opts, home, only_sockets)?;
    config.ssl_mode(match (verify.check, opts.get("sslmode")) {
        (Check::Disabled, _) => PgSslMode::Disable,
        (Check::Nothing, None | Some("prefer" | "allow")) => PgSslMode::Prefer,
        _ => PgSslMode::Require,
    });
    Ok(Target {
        config,
        verify,
        describe: describe(&entries, &dbname, &user),
        password_on_command_line: on_cmdline,
    })
}

fn addresses(config: &mut Config, entries: &[Entry]) -> Result<()> {
    let with_addr = entries.iter().filter(|e| e.addr.is_some()).count();
    if with_addr != 0 && with_addr != entries.len() {
        return Err(usage(
            "give a hostaddr for every host in the list or for none: pglock cannot mix them",
        ));
    }
    for e in entries {
        match &e.kind {
            Kind::Tcp(name) => config.host(name),
            Kind::Unix(dir) => config.host_path(dir),
        };
        if let Some(addr) = e.addr {
            config.hostaddr(addr);
        }
        config.port(e.port);
    }
    Ok(())
}

/// User, database and server options; returns the user and the database.
fn login(config: &mut Config, opts: &Options) -> (String, String) {
    let user = opts.get("user").map_or_else(os_user, str::to_string);
    let dbname = opts.get("dbname").unwrap_or(&user).to_string();
    config.user(&user);
    config.dbname(&dbname);
    if let Some(options) = opts.get("options") {
        config.options(options);
    }
    (user, dbname)
}

/// The password given, else the password file's for these hosts.
fn password(
    config: &mut Config,
    opts: &Options,
    home: Option<&Path>,
    entries: &[Entry],
    dbname: &str,
    user: &str,
) -> Result<()> {
    if let Some(pw) = opts.get("password") {
        config.password(pw);
        return Ok(());
    }
    let file = match opts.get("passfile") {
        Some(f) => Some(PathBuf::from(f)),
        None => home.map(|h| h.join(".pgpass")),
    };
    if let Some(file) = file
        && let Some(pw) = password_from_file(&file, entries, dbname, user)?
    {
        step!("using the password for {user} from {}", file.display());
        config.password(pw);
    }
    Ok(())
}

/// connect_timeout and tcp_user_timeout. The keepalive settings are only checked: pglock
/// derives its own from --check-interval (see [`super::keepalive`]).
fn timeouts(config: &mut Config, opts: &Options) -> Result<()> {
    if let Some(t) = int(opts, "connect_timeout")?
        && t > 0
    {
        // The bound of every duration pglock takes: far longer would overflow the deadlines.
        let max = duration::MAX.as_secs();
        if t as u64 > max {
            let expected = format!("at most {max} seconds, {}", duration::MAX_TEXT);
            return Err(invalid(opts, "connect_timeout", &t.to_string(), &expected));
        }
        // libpq's minimum: a 1-second timeout would fail on any slow handshake.
        config.connect_timeout(Duration::from_secs(t.max(2) as u64));
    }
    for key in [
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
    ] {
        int(opts, key)?;
    }
    if let Some(ms) = int(opts, "tcp_user_timeout")?.filter(|&ms| ms > 0) {
        if ms > MAX_USER_TIMEOUT_MS {
            let expected = format!("at most {MAX_USER_TIMEOUT_MS} milliseconds");
            return Err(invalid(
                opts,
                "tcp_user_timeout",
                &ms.to_string(),
                &expected,
            ));
        }
        config.tcp_user_timeout(Duration::from_millis(ms as u64));
    }
    Ok(())
}

/// target_session_attrs, load_balance_hosts and channel_binding.
fn session_attrs(config: &mut Config, opts: &Options) -> Result<()> {
    config.target_session_attrs(target_session_attrs(opts)?);
    match opts.get("load_balance_hosts") {
        None | Some("disable") => {}
        Some("random") => {
            config.load_balance_hosts(LoadBalanceHosts::Random);
        }
        Some(v) => return Err(invalid(opts, "load_balance_hosts", v, "disable or random")),
    }
    let binding = match opts.get("channel_binding") {
        None | Some("prefer") => return Ok(()),
        Some("disable") => ChannelBinding::Disable,
        Some("require") => ChannelBinding::Require,
        Some(v) => {
            let expected = "disable, prefer or require";
            return Err(invalid(opts, "channel_binding", v, expected));
        }
    };
    config.channel_binding(binding);
    Ok(())
}

/// pglock's one departure from libpq's defaults: an advisory lock taken on a standby (or any
/// read-only session) excludes nobody, so with an HA pair the lock must land on the primary.
fn target_session_attrs(opts: &Options) -> Result<TargetSessionAttrs> {
    match opts.get("target_session_attrs").unwrap_or("read-write") {
        "read-write" | "primary" => Ok(TargetSessionAttrs::ReadWrite),
        "any" => Ok(TargetSessionAttrs::Any),
        v @ ("read-only" | "standby" | "prefer-standby") => Err(usage(format!(
            "target_session_attrs={v} (from {}) would take the lock on a standby, where advisory \
             locks protect nothing; use read-write (the default) or any",
            opts.source("target_session_attrs")
        ))),
        v => Err(invalid(
            opts,
            "target_session_attrs",
            v,
            "read-write, primary or any",
        )),
    }
}

/// libpq's integer options: decimal, surrounding whitespace allowed.
fn int(opts: &Options, key: &str) -> Result<Option<i64>> {
    match opts.get(key) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<i64>()
            .map(Some)
            .map_err(|_| invalid(opts, key, v, "a whole number")),
    }
}

pub(super) fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}
