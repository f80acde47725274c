//! The host list: host, hostaddr and port paired up the way libpq pairs them, each entry knowing
//! where to connect and which host name the password file matches.

use super::{Options, usage};
use anyhow::Result;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// libpq's compiled-in socket directory on Debian, which the password file calls `localhost`.
const LIBPQ_SOCKET_DIR: &str = "/var/run/postgresql";
const DEFAULT_PORT: u16 = 5432;

/// One host of the host list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    /// Where to connect.
    pub kind: Kind,
    pub addr: Option<IpAddr>,
    /// The port as written (or libpq's default), which is what the password file matches.
    pub port_text: String,
    pub port: u16,
    /// The host name the password file matches.
    pub passfile_host: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Kind {
    Tcp(String),
    Unix(PathBuf),
}

/// The comma-separated lists of host, hostaddr and port.
struct Lists {
    names: Vec<String>,
    addrs: Vec<String>,
    ports: Vec<String>,
}

/// Pairs up host, hostaddr and port lists the way libpq does.
pub(super) fn hosts(opts: &Options) -> Result<Vec<Entry>> {
    let split = |key: &str| -> Vec<String> {
        opts.get(key)
            .map(|v| v.split(',').map(str::to_string).collect())
            .unwrap_or_default()
    };
    let lists = Lists {
        names: split("host"),
        addrs: split("hostaddr"),
        ports: split("port"),
    };
    let count = host_count(&lists)?;
    let default_dir = default_socket_dir();
    (0..count)
        .map(|i| entry(opts, &lists, i, &default_dir))
        .collect()
}

/// How many hosts the lists describe; an error if they cannot be paired up.
fn host_count(lists: &Lists) -> Result<usize> {
    let (names, addrs, ports) = (&lists.names, &lists.addrs, &lists.ports);
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
            "could not match {} port numbers to {count} hosts; give one port, or one per host",
            ports.len(),
        )));
    }
    Ok(count)
}

/// The `i`th host of the lists.
fn entry(opts: &Options, lists: &Lists, i: usize, default_dir: &Path) -> Result<Entry> {
    let name = lists.names.get(i).map_or("", String::as_str);
    let addr = address(opts, lists.addrs.get(i).map_or("", String::as_str))?;
    let port_text = match lists.ports.get(i).or(lists.ports.first()) {
        None => DEFAULT_PORT.to_string(),
        Some(p) if p.is_empty() => DEFAULT_PORT.to_string(),
        Some(p) => p.clone(),
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
    let (kind, passfile_host) = destination(name, addr, default_dir);
    Ok(Entry {
        kind,
        addr,
        port_text,
        port,
        passfile_host,
    })
}

fn address(opts: &Options, text: &str) -> Result<Option<IpAddr>> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse::<IpAddr>().map(Some).map_err(|_| {
        usage(format!(
            "invalid hostaddr \"{text}\" (from {}); hostaddr takes numeric IP addresses, host \
             takes names",
            opts.source("hostaddr")
        ))
    })
}

/// Where one host entry connects, and the host name the password file matches for it.
fn destination(name: &str, addr: Option<IpAddr>, default_dir: &Path) -> (Kind, String) {
    match (name, addr) {
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
        ("", None) => (
            Kind::Unix(default_dir.to_path_buf()),
            "localhost".to_string(),
        ),
        (n, None) if n.starts_with('/') => {
            let matched = if n.trim_end_matches('/') == LIBPQ_SOCKET_DIR {
                "localhost".to_string()
            } else {
                n.to_string()
            };
            (Kind::Unix(PathBuf::from(n)), matched)
        }
        (n, None) => (Kind::Tcp(n.to_string()), n.to_string()),
    }
}

/// Without a host, libpq uses its compiled-in socket directory; Debian's is /var/run/postgresql,
/// upstream's /tmp.
pub(super) fn default_socket_dir() -> PathBuf {
    [LIBPQ_SOCKET_DIR, "/tmp"]
        .into_iter()
        .map(PathBuf::from)
        .find(|d| d.is_dir())
        .unwrap_or_else(|| PathBuf::from("/tmp"))
}

/// `host:port,.../dbname as user`, for messages.
pub(super) fn describe(entries: &[Entry], dbname: &str, user: &str) -> String {
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
