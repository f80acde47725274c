//! libpq-compatible connection settings: the connection string, then the PG* environment
//! variables, then libpq's defaults, resolved into a rust-postgres `Config`.

use crate::exit::{Failure, fail};
use crate::tls::Verify;
use anyhow::Result;
use postgres::Config;
use postgres::config::{Host, SslMode};
use std::str::FromStr;
use std::time::Duration;

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

pub fn resolve(conninfo: Option<&str>, env: Env) -> Result<Target> {
    let mut config = match conninfo {
        Some(text) => Config::from_str(text)
            .map_err(|e| fail(Failure::Usage, format!("invalid connection string: {e}")))?,
        None => Config::new(),
    };
    let password_on_command_line = config.get_password().is_some();
    if config.get_hosts().is_empty() {
        match env("PGHOST") {
            Some(h) => {
                config.host(&h);
            }
            None => {
                let dir = ["/var/run/postgresql", "/tmp"]
                    .into_iter()
                    .find(|d| std::path::Path::new(d).is_dir())
                    .unwrap_or("/tmp");
                config.host_path(dir);
            }
        }
    }
    if config.get_ports().is_empty() {
        let port = env("PGPORT").and_then(|p| p.parse().ok()).unwrap_or(5432);
        config.port(port);
    }
    if config.get_user().is_none() {
        let user = env("PGUSER").unwrap_or_else(os_user);
        config.user(&user);
    }
    if config.get_dbname().is_none() {
        let db = env("PGDATABASE").unwrap_or_else(|| config.get_user().unwrap_or("").to_string());
        config.dbname(&db);
    }
    if config.get_password().is_none() {
        if let Some(pw) = env("PGPASSWORD") {
            config.password(pw);
        }
    }
    if config.get_connect_timeout().is_none() {
        if let Some(t) = env("PGCONNECT_TIMEOUT").and_then(|t| t.parse::<u64>().ok()) {
            if t > 0 {
                config.connect_timeout(Duration::from_secs(t.max(2)));
            }
        }
    }
    if let Some(mode) = env("PGSSLMODE") {
        if conninfo.is_none_or(|c| !c.contains("sslmode")) {
            config.ssl_mode(match mode.as_str() {
                "disable" => SslMode::Disable,
                "require" => SslMode::Require,
                _ => SslMode::Prefer,
            });
        }
    }
    let verify = match config.get_ssl_mode() {
        SslMode::Disable => Verify::Disabled,
        _ => Verify::Nothing,
    };
    let describe = describe(&config);
    Ok(Target {
        config,
        verify,
        describe,
        password_on_command_line,
    })
}

fn os_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::getuid())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into())
}

fn describe(config: &Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let host = match config.get_hosts().first() {
        Some(Host::Tcp(h)) => format!("{h}:{port}"),
        Some(Host::Unix(p)) => format!("{}/.s.PGSQL.{port}", p.display()),
        None => format!("?:{port}"),
    };
    format!(
        "{host}/{} as {}",
        config.get_dbname().unwrap_or(""),
        config.get_user().unwrap_or("")
    )
}
