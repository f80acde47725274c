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

mod files;
mod syntax;

use crate::exit::{Failure, fail};
use crate::step;
use crate::tls::{self, Check, Roots, SslMode, Verify};
use anyhow::Result;
use files::{apply_service, password_from_file};
use postgres::Config;
use postgres::config::{
    ChannelBinding, LoadBalanceHosts, SslMode as PgSslMode, TargetSessionAttrs,
};
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use syntax::parse;

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
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// libpq's compiled-in socket directory on Debian, which the password file calls `localhost`.
const LIBPQ_SOCKET_DIR: &str = "/var/run/postgresql";
/// Debian's libpq looks for the system-wide pg_service.conf here when PGSYSCONFDIR is unset.
const SYSCONFDIR: &str = "/etc/postgresql-common";
const DEFAULT_PORT: u16 = 5432;

/// How pglock treats one of libpq's connection options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Use {
    Honoured,
    /// Accepted because it changes neither the server, the user nor the security of the
    /// connection (application_name: pglock names its session itself).
    Ignored,
    /// A security setting pglock cannot implement: refusing it beats silently weakening it.
    Unsupported,
}

struct Known {
    key: &'static str,
    env: Option<&'static str>,
    how: Use,
}

const fn known(key: &'static str, env: Option<&'static str>, how: Use) -> Known {
    Known { key, env, how }
}

/// libpq's connection options (as of PostgreSQL 17) and their environment variables.
const KNOWN: &[Known] = &[
    known("host", Some("PGHOST"), Use::Honoured),
    known("hostaddr", Some("PGHOSTADDR"), Use::Honoured),
    known("port", Some("PGPORT"), Use::Honoured),
    known("dbname", Some("PGDATABASE"), Use::Honoured),
    known("user", Some("PGUSER"), Use::Honoured),
    known("password", Some("PGPASSWORD"), Use::Honoured),
    known("passfile", Some("PGPASSFILE"), Use::Honoured),
    known("service", Some("PGSERVICE"), Use::Honoured),
    known("options", Some("PGOPTIONS"), Use::Honoured),
    known("connect_timeout", Some("PGCONNECT_TIMEOUT"), Use::Honoured),
    known("keepalives", None, Use::Honoured),
    known("keepalives_idle", None, Use::Honoured),
    known("keepalives_interval", None, Use::Honoured),
    known("keepalives_count", None, Use::Honoured),
    known("tcp_user_timeout", None, Use::Honoured),
    known(
        "target_session_attrs",
        Some("PGTARGETSESSIONATTRS"),
        Use::Honoured,
    ),
    known(
        "load_balance_hosts",
        Some("PGLOADBALANCEHOSTS"),
        Use::Honoured,
    ),
    known("channel_binding", Some("PGCHANNELBINDING"), Use::Honoured),
    known("sslmode", Some("PGSSLMODE"), Use::Honoured),
    known("sslrootcert", Some("PGSSLROOTCERT"), Use::Honoured),
    known("sslcert", Some("PGSSLCERT"), Use::Honoured),
    known("sslkey", Some("PGSSLKEY"), Use::Honoured),
    known("sslcertmode", Some("PGSSLCERTMODE"), Use::Honoured),
    known(
        "ssl_min_protocol_version",
        Some("PGSSLMINPROTOCOLVERSION"),
        Use::Honoured,
    ),
    known(
        "ssl_max_protocol_version",
        Some("PGSSLMAXPROTOCOLVERSION"),
        Use::Honoured,
    ),
    known("gssencmode", Some("PGGSSENCMODE"), Use::Honoured),
    known("sslnegotiation", Some("PGSSLNEGOTIATION"), Use::Honoured),
    known("application_name", Some("PGAPPNAME"), Use::Ignored),
    known("fallback_application_name", None, Use::Ignored),
    known("client_encoding", Some("PGCLIENTENCODING"), Use::Ignored),
    known("sslsni", Some("PGSSLSNI"), Use::Ignored),
    known("sslcompression", Some("PGSSLCOMPRESSION"), Use::Ignored),
    known("sslpassword", None, Use::Ignored),
    known("krbsrvname", Some("PGKRBSRVNAME"), Use::Ignored),
    known("gsslib", Some("PGGSSLIB"), Use::Ignored),
    known("gssdelegation", Some("PGGSSDELEGATION"), Use::Ignored),
    known("sslcrl", Some("PGSSLCRL"), Use::Unsupported),
    known("sslcrldir", Some("PGSSLCRLDIR"), Use::Unsupported),
    known("requirepeer", Some("PGREQUIREPEER"), Use::Unsupported),
    known("require_auth", Some("PGREQUIREAUTH"), Use::Unsupported),
    known("replication", None, Use::Unsupported),
];

fn lookup(key: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.key == key)
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

pub fn resolve(conninfo: Option<&str>, env: Env) -> Result<Target> {
    let conninfo = conninfo.filter(|c| !c.trim().is_empty());
    let mut opts = match conninfo {
        Some(text) => parse(text)?,
        None => Options::default(),
    };
    // PGLOCK_DATABASE_URL is as private as PGPASSWORD; only -d puts the string in `ps`.
    let password_on_command_line = opts.get("password").is_some()
        && conninfo.is_some()
        && env("PGLOCK_DATABASE_URL").as_deref() != conninfo;
    let home = home_dir(env);
    let service = opts
        .get("service")
        .map(str::to_string)
        .or_else(|| env("PGSERVICE"));
    if let Some(name) = service {
        apply_service(&mut opts, &name, env, home.as_deref())?;
    }
    for k in KNOWN {
        if let Some(var) = k.env
            && let Some(value) = env(var)
        {
            opts.fill(k.key, value, Source::Env(var));
        }
    }
    check_supported(&opts)?;
    build(&opts, home.as_deref(), password_on_command_line)
}

/// Refuses settings that would make pglock weaker than psql under the same configuration.
fn check_supported(opts: &Options) -> Result<()> {
    for (key, (value, source)) in &opts.0 {
        let how = lookup(key).map_or(Use::Unsupported, |k| k.how);
        let refused = match (*key, value.as_str()) {
            (_, "") => false,
            (_, _) if how == Use::Unsupported => true,
            ("gssencmode", v) => !matches!(v, "disable" | "allow" | "prefer"),
            ("sslcertmode", v) => !matches!(v, "disable" | "allow"),
            ("sslnegotiation", v) => v != "postgres",
            _ => false,
        };
        if refused {
            return Err(usage(format!(
                "pglock does not support {key}={value} (set by {}): it cannot give the \
                 protection this asks for, and will not connect without it; remove the setting",
                source.describe(key)
            )));
        }
    }
    Ok(())
}

/// One host of the host list.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    /// Where to connect.
    kind: Kind,
    addr: Option<IpAddr>,
    /// The port as written (or libpq's default), which is what the password file matches.
    port_text: String,
    port: u16,
    /// The host name the password file matches.
    passfile_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Tcp(String),
    Unix(PathBuf),
}

fn build(opts: &Options, home: Option<&Path>, on_cmdline: bool) -> Result<Target> {
    let entries = hosts(opts)?;
    let mut config = Config::new();
    let with_addr = entries.iter().filter(|e| e.addr.is_some()).count();
    if with_addr != 0 && with_addr != entries.len() {
        return Err(usage(
            "give a hostaddr for every host in the list or for none: pglock cannot mix them",
        ));
    }
    for e in &entries {
        match &e.kind {
            Kind::Tcp(name) => config.host(name),
            Kind::Unix(dir) => config.host_path(dir),
        };
        if let Some(addr) = e.addr {
            config.hostaddr(addr);
        }
        config.port(e.port);
    }

    let user = opts.get("user").map_or_else(os_user, str::to_string);
    let dbname = opts.get("dbname").unwrap_or(&user).to_string();
    config.user(&user);
    config.dbname(&dbname);
    if let Some(options) = opts.get("options") {
        config.options(options);
    }

    match opts.get("password") {
        Some(pw) => {
            config.password(pw);
        }
        None => {
            let file = match opts.get("passfile") {
                Some(f) => Some(PathBuf::from(f)),
                None => home.map(|h| h.join(".pgpass")),
            };
            if let Some(file) = file
                && let Some(pw) = password_from_file(&file, &entries, &dbname, &user)?
            {
                step!("using the password for {user} from {}", file.display());
                config.password(pw);
            }
        }
    }

    if let Some(t) = int(opts, "connect_timeout")?
        && t > 0
    {
        // libpq's minimum: a 1-second timeout would fail on any slow handshake.
        config.connect_timeout(Duration::from_secs(t.max(2) as u64));
    }
    if let Some(on) = int(opts, "keepalives")? {
        config.keepalives(on != 0);
    }
    if let Some(s) = int(opts, "keepalives_idle")?.filter(|&s| s > 0) {
        config.keepalives_idle(Duration::from_secs(s as u64));
    }
    if let Some(s) = int(opts, "keepalives_interval")?.filter(|&s| s > 0) {
        config.keepalives_interval(Duration::from_secs(s as u64));
    }
    if let Some(n) = int(opts, "keepalives_count")?.filter(|&n| n > 0) {
        config.keepalives_retries(n.min(u32::MAX as i64) as u32);
    }
    if let Some(ms) = int(opts, "tcp_user_timeout")?.filter(|&ms| ms > 0) {
        config.tcp_user_timeout(Duration::from_millis(ms as u64));
    }

    // pglock's one departure from libpq's defaults: an advisory lock taken on a standby (or any
    // read-only session) excludes nobody, so with an HA pair the lock must land on the primary.
    let attrs = match opts.get("target_session_attrs").unwrap_or("read-write") {
        "read-write" | "primary" => TargetSessionAttrs::ReadWrite,
        "any" => TargetSessionAttrs::Any,
        v @ ("read-only" | "standby" | "prefer-standby") => {
            return Err(usage(format!(
                "{}={v} would take the lock on a standby, where advisory locks protect nothing; \
                 use read-write (the default) or any",
                opts.source("target_session_attrs")
            )));
        }
        v => {
            return Err(invalid(
                opts,
                "target_session_attrs",
                v,
                "read-write, primary or any",
            ));
        }
    };
    config.target_session_attrs(attrs);
    match opts.get("load_balance_hosts") {
        None | Some("disable") => {}
        Some("random") => {
            config.load_balance_hosts(LoadBalanceHosts::Random);
        }
        Some(v) => return Err(invalid(opts, "load_balance_hosts", v, "disable or random")),
    }
    match opts.get("channel_binding") {
        None | Some("prefer") => {}
        Some("disable") => {
            config.channel_binding(ChannelBinding::Disable);
        }
        Some("require") => {
            config.channel_binding(ChannelBinding::Require);
        }
        Some(v) => {
            return Err(invalid(
                opts,
                "channel_binding",
                v,
                "disable, prefer or require",
            ));
        }
    }

    let only_sockets = entries.iter().all(|e| matches!(e.kind, Kind::Unix(_)));
    let verify = tls_policy(opts, home, only_sockets)?;
    config.ssl_mode(match (verify.check, opts.get("sslmode")) {
        (Check::Disabled, _) => PgSslMode::Disable,
        (Check::Nothing, None | Some("prefer" | "allow")) => PgSslMode::Prefer,
        _ => PgSslMode::Require,
    });

    let describe = describe(&entries, &dbname, &user);
    Ok(Target {
        config,
        verify,
        describe,
        password_on_command_line: on_cmdline,
    })
}

fn invalid(opts: &Options, key: &str, value: &str, expected: &str) -> anyhow::Error {
    usage(format!(
        "invalid value \"{value}\" for {}; use {expected}",
        opts.source(key)
    ))
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

/// Pairs up host, hostaddr and port lists the way libpq does.
fn hosts(opts: &Options) -> Result<Vec<Entry>> {
    let split = |key: &str| -> Vec<String> {
        opts.get(key)
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let names = split("host");
    let addrs = split("hostaddr");
    let ports = split("port");
    let count = if !addrs.is_empty() {
        if !names.is_empty() && names.len() != addrs.len() {
            return Err(usage(format!(
                "could not match {} host names to {} hostaddr values; give one hostaddr per host",
                names.len(),
                addrs.len()
            )));
        }
        addrs.len()
    } else {
        names.len().max(1)
    };
    if ports.len() > 1 && ports.len() != count {
        return Err(usage(format!(
            "could not match {} port numbers to {} hosts; give one port, or one per host",
            ports.len(),
            count
        )));
    }
    let default_dir = default_socket_dir();
    let mut entries = Vec::with_capacity(count);
    for i in 0..count {
        let name = names.get(i).map_or("", String::as_str);
        let addr = match addrs.get(i).map_or("", String::as_str) {
            "" => None,
            a => Some(a.parse::<IpAddr>().map_err(|_| {
                usage(format!(
                    "invalid hostaddr \"{a}\" (from {}); hostaddr takes numeric IP addresses, \
                     host takes names",
                    opts.source("hostaddr")
                ))
            })?),
        };
        let port_text = match ports.get(i).or(ports.first()).map_or("", String::as_str) {
            "" => DEFAULT_PORT.to_string(),
            p => p.to_string(),
        };
        let port = port_text
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| {
                usage(format!(
                    "invalid port number \"{port_text}\" (from {})",
                    opts.source("port")
                ))
            })?;
        let (kind, passfile_host) = match (name, addr) {
            (n, Some(a)) => {
                let shown = if n.is_empty() || n.starts_with('/') {
                    a.to_string()
                } else {
                    n.to_string()
                };
                let matched = if n.is_empty() {
                    a.to_string()
                } else {
                    n.to_string()
                };
                (Kind::Tcp(shown), matched)
            }
            ("", None) => (Kind::Unix(default_dir.clone()), "localhost".to_string()),
            (n, None) if n.starts_with('/') => {
                let matched = if n.trim_end_matches('/') == LIBPQ_SOCKET_DIR {
                    "localhost".to_string()
                } else {
                    n.to_string()
                };
                (Kind::Unix(PathBuf::from(n)), matched)
            }
            (n, None) => (Kind::Tcp(n.to_string()), n.to_string()),
        };
        entries.push(Entry {
            kind,
            addr,
            port_text,
            port,
            passfile_host,
        });
    }
    Ok(entries)
}

/// Without a host, libpq uses its compiled-in socket directory; Debian's is /var/run/postgresql,
/// upstream's /tmp.
fn default_socket_dir() -> PathBuf {
    [LIBPQ_SOCKET_DIR, "/tmp"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

fn describe(entries: &[Entry], dbname: &str, user: &str) -> String {
    let hosts: Vec<String> = entries
        .iter()
        .map(|e| match &e.kind {
            Kind::Tcp(h) if h.contains(':') => format!("[{h}]:{}", e.port),
            Kind::Tcp(h) => format!("{h}:{}", e.port),
            Kind::Unix(dir) => format!("{}/.s.PGSQL.{}", dir.display(), e.port),
        })
        .collect();
    format!("{}/{dbname} as {user}", hosts.join(","))
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::geteuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}

/// $HOME, else the passwd entry, as libpq looks for ~/.pgpass and ~/.postgresql.
fn home_dir(env: Env) -> Option<PathBuf> {
    env("HOME").map(PathBuf::from).or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
    })
}

// ---------------------------------------------------------------------------------------------
// TLS

fn tls_policy(opts: &Options, home: Option<&Path>, only_sockets: bool) -> Result<Verify> {
    let root_setting = opts.get("sslrootcert");
    let system = root_setting == Some("system");
    let mode = match opts.get("sslmode") {
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
        Some(v) => SslMode::parse(v).ok_or_else(|| {
            invalid(
                opts,
                "sslmode",
                v,
                "disable, allow, prefer, require, verify-ca or verify-full",
            )
        })?,
    };
    if system && mode != SslMode::VerifyFull {
        return Err(usage(format!(
            "sslrootcert=system needs sslmode=verify-full, not {} (from {})",
            opts.get("sslmode").unwrap_or(""),
            opts.source("sslmode")
        )));
    }
    let min_protocol = protocol(opts, "ssl_min_protocol_version")?;
    let max_protocol = protocol(opts, "ssl_max_protocol_version")?;
    // PostgreSQL never offers TLS on a Unix socket, and libpq ignores sslmode there.
    if mode == SslMode::Disable || only_sockets {
        return Ok(Verify::disabled());
    }

    let default_file = |name: &str| home.map(|h| h.join(".postgresql").join(name));
    let roots = if system {
        Some(Roots::System)
    } else {
        let file = root_setting
            .map(PathBuf::from)
            .or_else(|| default_file("root.crt"));
        match file {
            Some(f) if f.exists() => {
                // prefer never verifies (the choice); don't pay for reading roots.
                if matches!(mode, SslMode::Allow | SslMode::Prefer) {
                    None
                } else {
                    Some(Roots::File(tls::load_roots(&f)?))
                }
            }
            missing if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                let shown =
                    missing.map_or("~/.postgresql/root.crt".into(), |f| f.display().to_string());
                return Err(usage(format!(
                    "sslmode={} needs a root certificate, and \"{shown}\" does not exist; set \
                     sslrootcert to your CA's certificate, use sslrootcert=system for the \
                     operating system's trust store, or choose sslmode=require",
                    opts.get("sslmode").unwrap_or("verify-full")
                )));
            }
            _ => None,
        }
    };
    let check = match (mode, &roots) {
        (SslMode::Disable, _) => Check::Disabled,
        (SslMode::Allow | SslMode::Prefer, _) => Check::Nothing,
        // libpq: "if a root CA file exists, require behaves like verify-ca".
        (SslMode::Require, Some(_)) => Check::Chain,
        (SslMode::Require, None) => Check::Nothing,
        (SslMode::VerifyCa, _) => Check::Chain,
        (SslMode::VerifyFull, _) => Check::Full,
    };

    let mut identity = None;
    if opts.get("sslcertmode") != Some("disable") {
        let cert = opts
            .get("sslcert")
            .map(PathBuf::from)
            .or_else(|| default_file("postgresql.crt"));
        // libpq sends no certificate when the file is missing, even a named one.
        if let Some(cert) = cert.filter(|c| c.exists()) {
            let key = opts
                .get("sslkey")
                .map(PathBuf::from)
                .or_else(|| default_file("postgresql.key"))
                .unwrap_or_else(|| PathBuf::from("postgresql.key"));
            identity = Some(tls::load_identity(&cert, &key)?);
        }
    }
    Ok(Verify {
        check,
        roots: roots.unwrap_or(Roots::System),
        identity,
        min_protocol,
        max_protocol,
    })
}

fn protocol(opts: &Options, key: &str) -> Result<Option<native_tls::Protocol>> {
    match opts.get(key) {
        None if key == "ssl_min_protocol_version" => Ok(Some(native_tls::Protocol::Tlsv12)),
        None => Ok(None),
        Some(v) => tls::parse_protocol(v)
            .ok_or_else(|| invalid(opts, key, v, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned().filter(|v| !v.is_empty())
    }

    /// An environment with no PG* variables and a home without libpq files.
    fn bare() -> Vec<(&'static str, &'static str)> {
        vec![
            ("HOME", "/nonexistent-home"),
            ("PGSYSCONFDIR", "/nonexistent-sysconf"),
        ]
    }

    fn resolve_with(conninfo: Option<&str>, vars: &[(&str, &str)]) -> Result<Target> {
        let env = env_of(vars);
        resolve(conninfo, &env)
    }

    fn message(err: anyhow::Error) -> (u8, String) {
        (crate::exit::code_for(&err), crate::exit::message(&err))
    }

    fn usage_error(conninfo: Option<&str>, vars: &[(&str, &str)]) -> String {
        match resolve_with(conninfo, vars) {
            Ok(t) => panic!("expected a usage error, got {}", t.describe),
            Err(e) => {
                let (code, msg) = message(e);
                assert_eq!(code, crate::exit::USAGE, "{msg}");
                assert!(!msg.starts_with("pglock:"), "{msg}");
                assert!(!msg.contains('\n'), "{msg}");
                msg
            }
        }
    }

    fn tcp(config: &Config) -> Vec<(String, u16)> {
        config
            .get_hosts()
            .iter()
            .zip(config.get_ports())
            .map(|(h, p)| match h {
                postgres::config::Host::Tcp(h) => (h.clone(), *p),
                postgres::config::Host::Unix(d) => (d.display().to_string(), *p),
            })
            .collect()
    }

    #[test]
    fn bad_strings_are_usage_errors_without_secrets() {
        for (text, expect) in [
            (
                "host=db1 colour=blue",
                "unknown connection option \"colour\"",
            ),
            (
                "postgresql://h/db?colour=blue",
                "unknown parameter \"colour\"",
            ),
            (
                "postgresql://h/db?sslmode",
                "query parameter 1 has no \"=\"",
            ),
            ("postgresql://[::1/db", "no closing \"]\""),
            ("host='db1", "no closing quote"),
            ("justaword", "postgresql:// URL or key=value"),
            (
                "postgresql://u:s3cr%zzX9q@h/db",
                "percent-encoding in the password",
            ),
            ("postgresql://u:s3cr@X9q@h/db", "percent-encode \"@\""),
            ("postgresql://u:12/s3crX9q@h/db", "percent-encode \"/\""),
            (
                "password=s3cr X9q host=h",
                "missing \"=\" after the word at character",
            ),
            (
                "password=s3cr X9q=x host=h",
                "unknown option after the password",
            ),
            ("host=h port=54x", "invalid port number \"54x\""),
            (
                "host=a,b,c port=1,2",
                "could not match 2 port numbers to 3 hosts",
            ),
            ("hostaddr=db1", "invalid hostaddr \"db1\""),
            (
                "host=a connect_timeout=soon",
                "connect_timeout in the connection string",
            ),
            (
                "host=a sslmode=verify",
                "invalid value \"verify\" for sslmode",
            ),
            ("host=a sslcrl=/x.crl", "does not support sslcrl"),
            (
                "host=a gssencmode=require",
                "does not support gssencmode=require",
            ),
            ("host=a target_session_attrs=standby", "protect nothing"),
            (
                "host=a sslrootcert=system sslmode=require",
                "needs sslmode=verify-full",
            ),
            ("host=a sslmode=verify-ca", "does not exist"),
            ("host=a service=nosuch", "unknown service \"nosuch\""),
        ] {
            let msg = usage_error(Some(text), &bare());
            assert!(msg.contains(expect), "{text}: {msg}");
            assert!(!msg.contains("s3cr"), "{text}: {msg}");
            assert!(!msg.contains("X9q"), "{text}: {msg}");
        }
        let msg = usage_error(None, &[("PGSSLCRL", "/x.crl"), ("HOME", "/nonexistent")]);
        assert!(msg.contains("set by PGSSLCRL"), "{msg}");
    }

    #[test]
    fn defaults() {
        let t = resolve_with(None, &bare()).unwrap();
        let me = os_user();
        assert_eq!(t.config.get_user(), Some(me.as_str()));
        assert_eq!(t.config.get_dbname(), Some(me.as_str()));
        assert_eq!(t.config.get_ports(), &[5432]);
        assert!(matches!(
            t.config.get_hosts()[0],
            postgres::config::Host::Unix(_)
        ));
        assert_eq!(
            t.config.get_target_session_attrs(),
            TargetSessionAttrs::ReadWrite
        );
        // Sockets never use TLS, so no TLS context is built.
        assert_eq!(t.verify.check, Check::Disabled);
        assert_eq!(t.config.get_ssl_mode(), PgSslMode::Disable);
        assert!(!t.password_on_command_line);
        assert!(t.describe.ends_with(&format!(".s.PGSQL.5432/{me} as {me}")));
    }

    #[test]
    fn string_beats_environment_and_environment_beats_defaults() {
        let mut vars = bare();
        vars.extend([
            ("PGHOST", "envhost"),
            ("PGPORT", "6001"),
            ("PGUSER", "envuser"),
            ("PGDATABASE", "envdb"),
            ("PGPASSWORD", "envpw"),
            ("PGSSLMODE", "require"),
            ("PGCONNECT_TIMEOUT", "1"),
            ("PGTARGETSESSIONATTRS", "any"),
        ]);
        let t = resolve_with(Some("host=strhost user=struser"), &vars).unwrap();
        assert_eq!(tcp(&t.config), vec![("strhost".into(), 6001)]);
        assert_eq!(t.config.get_user(), Some("struser"));
        assert_eq!(t.config.get_dbname(), Some("envdb"));
        assert_eq!(t.config.get_password(), Some(&b"envpw"[..]));
        assert_eq!(t.config.get_ssl_mode(), PgSslMode::Require);
        assert_eq!(t.verify.check, Check::Nothing);
        assert_eq!(
            t.config.get_connect_timeout(),
            Some(&Duration::from_secs(2))
        );
        assert_eq!(t.config.get_target_session_attrs(), TargetSessionAttrs::Any);
        assert_eq!(t.describe, "strhost:6001/envdb as struser");
        // The environment's password is not on the command line.
        assert!(!t.password_on_command_line);
    }

    #[test]
    fn password_on_command_line_only_for_dash_d() {
        let url = "postgresql://u:pw@h/db";
        let t = resolve_with(Some(url), &bare()).unwrap();
        assert!(t.password_on_command_line);
        assert!(!t.describe.contains("pw"), "{}", t.describe);
        let mut vars = bare();
        vars.push(("PGLOCK_DATABASE_URL", url));
        let t = resolve_with(Some(url), &vars).unwrap();
        assert!(!t.password_on_command_line);
        let t = resolve_with(Some("host=h user=u"), &bare()).unwrap();
        assert!(!t.password_on_command_line);
    }

    #[test]
    fn hosts_ports_and_sockets() {
        let t = resolve_with(Some("host=a,/run/pg,,b port=1,2,3,4"), &bare()).unwrap();
        let hosts = tcp(&t.config);
        assert_eq!(hosts[0], ("a".into(), 1));
        assert_eq!(hosts[1], ("/run/pg".into(), 2));
        assert_eq!(hosts[2], (default_socket_dir().display().to_string(), 3));
        assert_eq!(hosts[3], ("b".into(), 4));
        // One port applies to every host.
        let t = resolve_with(Some("host=a,b port=7"), &bare()).unwrap();
        assert_eq!(t.config.get_ports(), &[7, 7]);
        // hostaddr: connect to the address, keep the name for TLS and the password file.
        let t = resolve_with(Some("host=db1 hostaddr=10.1.2.3"), &bare()).unwrap();
        assert_eq!(tcp(&t.config), vec![("db1".into(), 5432)]);
        assert_eq!(
            t.config.get_hostaddrs(),
            &["10.1.2.3".parse::<IpAddr>().unwrap()]
        );
        let t = resolve_with(Some("hostaddr=::1"), &bare()).unwrap();
        assert_eq!(t.describe, format!("[::1]:5432/{0} as {0}", os_user()));
        let t = resolve_with(Some("host=a,b load_balance_hosts=random"), &bare()).unwrap();
        assert_eq!(t.config.get_load_balance_hosts(), LoadBalanceHosts::Random);
        let t = resolve_with(
            Some("host=a keepalives=0 keepalives_idle=30 tcp_user_timeout=500"),
            &bare(),
        )
        .unwrap();
        assert!(!t.config.get_keepalives());
        assert_eq!(t.config.get_keepalives_idle(), Duration::from_secs(30));
        assert_eq!(
            t.config.get_tcp_user_timeout(),
            Some(&Duration::from_millis(500))
        );
    }

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("pglock-unit-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn password_file_rules() {
        let text = "\
# comment
db1:5432:app:alice:first
db1:5432:app:alice:second
db\\:x:*:*:bob:esc\\:aped\\\\pw:trailing
localhost:5433:*:carol:viasocket
*:*:*:dave:wild
";
        let dir = temp("pgpass");
        let file = write(&dir, "pgpass", text, 0o600);
        let file = file.to_str().unwrap();
        // The default socket directory counts as localhost; the port is the one written.
        let vars = [("HOME", "/nonexistent"), ("PGPASSFILE", file)];
        let t = resolve_with(Some("host=/var/run/postgresql port=5433 user=carol"), &vars).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"viasocket"[..]));
        let t = resolve_with(Some("host=/elsewhere port=5433 user=carol"), &vars).unwrap();
        assert_eq!(t.config.get_password(), None);
        // passfile= in the string beats PGPASSFILE.
        let other = write(&dir, "other", "*:*:*:carol:fromother\n", 0o600);
        let s = format!("host=h user=carol passfile={}", other.display());
        let t = resolve_with(Some(&s), &vars).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"fromother"[..]));
        // An explicit password wins over the file.
        let t = resolve_with(Some("host=h user=dave password=given"), &vars).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"given"[..]));
        // ~/.pgpass by default.
        write(&dir, ".pgpass", "*:*:*:erin:home\n", 0o600);
        let home = [("HOME", dir.to_str().unwrap())];
        let t = resolve_with(Some("host=h user=erin"), &home).unwrap();
        assert_eq!(t.config.get_password(), Some(&b"home"[..]));
        // Group-readable: ignored.
        write(&dir, ".pgpass", "*:*:*:erin:home\n", 0o640);
        let t = resolve_with(Some("host=h user=erin"), &home).unwrap();
        assert_eq!(t.config.get_password(), None);
        // Different passwords for the hosts of one list cannot be sent.
        let split = write(&dir, "split", "a:*:*:*:Qa1\nb:*:*:*:Qb2\n", 0o600);
        let s = format!("host=a,b passfile={}", split.display());
        let msg = usage_error(Some(&s), &bare());
        assert!(msg.contains("different passwords"), "{msg}");
        assert!(!msg.contains("Qa1") && !msg.contains("Qb2"), "{msg}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn service_files() {
        let dir = temp("service");
        let user_file = write(
            &dir,
            "user.conf",
            "# mine\n[other]\nport=1\n[app]\n  host=svchost  \nport=6000\ndbname=svcdb\n[later]\nport=2\n",
            0o644,
        );
        std::fs::create_dir_all(dir.join("sys")).unwrap();
        write(
            &dir.join("sys"),
            "pg_service.conf",
            "[sys]\nhost=syshost\nuser=sysuser\n",
            0o644,
        );
        let uf = user_file.to_str().unwrap();
        let sys = dir.join("sys");
        let sys = sys.to_str().unwrap();
        let base = [
            ("HOME", "/nonexistent"),
            ("PGSERVICEFILE", uf),
            ("PGSYSCONFDIR", sys),
            ("PGDATABASE", "envdb"),
            ("PGPORT", "7000"),
        ];
        // The service beats the environment, the string beats the service.
        let t = resolve_with(Some("service=app port=6500"), &base).unwrap();
        assert_eq!(tcp(&t.config), vec![("svchost".into(), 6500)]);
        assert_eq!(t.config.get_dbname(), Some("svcdb"));
        // PGSERVICE selects it too.
        let mut vars = base.to_vec();
        vars.push(("PGSERVICE", "app"));
        let t = resolve_with(None, &vars).unwrap();
        assert_eq!(tcp(&t.config), vec![("svchost".into(), 6000)]);
        // Not in the user file: the system file.
        let t = resolve_with(Some("service=sys"), &base).unwrap();
        assert_eq!(tcp(&t.config), vec![("syshost".into(), 7000)]);
        assert_eq!(t.config.get_user(), Some("sysuser"));
        assert_eq!(t.config.get_dbname(), Some("envdb"));
        // ~/.pg_service.conf without PGSERVICEFILE.
        write(&dir, ".pg_service.conf", "[home]\nhost=homehost\n", 0o644);
        let t = resolve_with(
            Some("service=home"),
            &[("HOME", dir.to_str().unwrap()), ("PGSYSCONFDIR", sys)],
        )
        .unwrap();
        assert_eq!(tcp(&t.config)[0].0, "homehost");

        let msg = usage_error(Some("service=nosuch"), &base);
        assert!(msg.contains(uf) && msg.contains(sys), "{msg}");
        let bad = write(&dir, "bad.conf", "[s]\nhost = x\n", 0o644);
        let msg = usage_error(
            Some("service=s"),
            &[
                ("PGSERVICEFILE", bad.to_str().unwrap()),
                ("HOME", "/nonexistent"),
            ],
        );
        assert!(
            msg.contains("unknown option \"host \"") && msg.contains("line 2"),
            "{msg}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn tls_modes() {
        let dir = temp("tls");
        let ca = dir.join("missing-ca.crt");
        let home = [("HOME", dir.to_str().unwrap())];
        let check = |s: &str| {
            resolve_with(Some(s), &home).map(|t| (t.verify.check, t.config.get_ssl_mode()))
        };
        assert_eq!(
            check("host=h").unwrap(),
            (Check::Nothing, PgSslMode::Prefer)
        );
        assert_eq!(
            check("host=h sslmode=allow").unwrap(),
            (Check::Nothing, PgSslMode::Prefer)
        );
        assert_eq!(
            check("host=h sslmode=disable").unwrap(),
            (Check::Disabled, PgSslMode::Disable)
        );
        assert_eq!(
            check("host=h sslmode=require").unwrap(),
            (Check::Nothing, PgSslMode::Require)
        );
        assert_eq!(
            check("host=h sslrootcert=system").unwrap(),
            (Check::Full, PgSslMode::Require)
        );
        // sslmode is ignored on sockets, as libpq does.
        assert_eq!(
            check("host=/tmp sslmode=verify-full").unwrap(),
            (Check::Disabled, PgSslMode::Disable)
        );
        let s = format!("host=h sslmode=verify-ca sslrootcert={}", ca.display());
        let err = message(check(&s).unwrap_err());
        assert_eq!(err.0, crate::exit::USAGE);
        assert!(
            err.1.contains("missing-ca.crt\" does not exist"),
            "{}",
            err.1
        );
        assert!(err.1.contains("sslrootcert=system"), "{}", err.1);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
