//! Connecting: pglock opens every connection's socket itself, one host and one address at a
//! time, and hands the connected socket to tokio-postgres for TLS, start-up and authentication.
//!
//! Each step of a connect (a host name's lookup, then each address from the TCP handshake to
//! ready-for-query) is a [`deadline`] step of its own, timed from the moment it begins. A step
//! that runs out of time, or that a terminating signal cuts, is abandoned whole: its future is
//! dropped, which closes its socket, so nothing the driver would have done next (another
//! address, a retry) outlives it, and a cut reaches no socket but the step's own.
//!
//! The same code opens a cancel request's connection, to the address the session itself used.

use super::deadline::{self, Cut, OnSignal};
use super::link::{Connection, Link, drive};
use super::session::Failed;
use crate::conninfo::keepalive::Keepalive;
use crate::step;
use crate::tls::Connector;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_postgres::config::{Host, LoadBalanceHosts, TargetSessionAttrs};
use tokio_postgres::tls::NoTls;
use tokio_postgres::{Config, SimpleQueryMessage};

/// Where a connection went: enough to open another socket to the same server.
#[derive(Clone, Debug)]
pub struct Dial {
    addr: Addr,
    /// The name TLS checks the certificate against (libpq: host, else hostaddr).
    hostname: String,
    /// Set on TCP sockets only.
    keepalive: Keepalive,
}

impl Dial {
    /// The address connected to, as `host (address)` or a socket path.
    pub fn describe(&self) -> String {
        match &self.addr {
            Addr::Tcp(a) if self.hostname != a.ip().to_string() => {
                format!("{} ({a})", self.hostname)
            }
            addr => addr.to_string(),
        }
    }

    /// A Unix socket or a loopback address: nothing crosses a network.
    pub fn is_local(&self) -> bool {
        match &self.addr {
            Addr::Tcp(a) => a.ip().is_loopback(),
            Addr::Unix(_) => true,
        }
    }
}

#[derive(Clone, Debug)]
enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// What tokio-postgres reads and writes: a TCP or a Unix socket.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + std::fmt::Debug + 'static> Io for T {}

/// One open socket, either kind, with its descriptor (for poll(2) and the deadline's cut).
type Stream = (Box<dyn Io>, RawFd);

/// A current-thread runtime: the session's statements run on the thread that asks for them,
/// as with the synchronous client, and nothing is left running between them.
pub fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

/// How long each step of one connect may take.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// Each step's own limit (the connect timeout).
    pub step: Duration,
    /// No step goes on past this (a wait's end), whatever is left of its own limit.
    pub until: Option<Instant>,
    /// What a terminating signal does to a step under way.
    pub on_signal: OnSignal,
}

impl Bound {
    fn next(&self) -> Duration {
        match self.until {
            Some(until) => self
                .step
                .min(until.saturating_duration_since(Instant::now())),
            None => self.step,
        }
    }
}

/// Opens one session to the first host of `config` that takes it, each step within `bound`.
pub fn open(
    config: &Config,
    connector: &Connector,
    keepalive: Keepalive,
    bound: Bound,
) -> Result<Link, Failed> {
    let rt = runtime().map_err(Failed::Connect)?;
    let mut last = None;
    for (host, hostaddr, port) in hosts(config) {
        let hostname = match (&host, hostaddr) {
            (Some(Host::Tcp(name)), _) => name.clone(),
            (_, Some(ip)) => ip.to_string(),
            _ => String::new(),
        };
        let addrs = match (hostaddr, host) {
            (Some(ip), _) => vec![Addr::Tcp(SocketAddr::new(ip, port))],
            (None, Some(Host::Unix(dir))) => vec![Addr::Unix(dir.join(format!(".s.PGSQL.{port}")))],
            (None, Some(Host::Tcp(name))) => {
                match bounded(&rt, &bound, resolve(&name, port, config)) {
                    Ok(addrs) => addrs,
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            (None, None) => continue,
        };
        for addr in addrs {
            let dial = Dial {
                addr,
                hostname: hostname.clone(),
                keepalive,
            };
            step!("trying {}", dial.addr);
            match bounded(&rt, &bound, start(&dial, config, connector)) {
                Ok((client, connection, fd)) => {
                    return Ok(Link::new(
                        rt,
                        client,
                        connection,
                        fd,
                        dial,
                        connector.clone(),
                    ));
                }
                Err(e) => last = Some(e),
            }
        }
    }
    Err(last.unwrap_or_else(|| {
        Failed::Connect(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no host to connect to",
        ))
    }))
}

/// Sends a cancel request for the session behind `token` over a new socket to `dial`, within
/// `limit` (a signal does not shorten it: it is part of stopping).
pub fn cancel(
    dial: &Dial,
    connector: &Connector,
    token: &tokio_postgres::CancelToken,
    limit: Duration,
) -> Result<(), Failed> {
    let rt = runtime().map_err(Failed::Connect)?;
    let request = async {
        let (stream, _) = dial_socket(dial).await?;
        match connector.for_host(&dial.hostname) {
            None => token.cancel_query_raw(stream, NoTls).await,
            Some(tls) => token.cancel_query_raw(stream, tls).await,
        }
        .map_err(Failed::Error)
    };
    let bound = Bound {
        step: limit,
        until: None,
        on_signal: OnSignal::Grace,
    };
    bounded(&rt, &bound, request)
}

/// Runs `work` as one deadline step within `bound`: Err(NoAnswer) if the step was cut first.
fn bounded<T>(
    rt: &Runtime,
    bound: &Bound,
    work: impl Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    let limit = bound.next();
    let cut = Arc::new(Notify::new());
    let step = deadline::begin_with(Some(limit), Cut::Wake(cut.clone()), bound.on_signal);
    if step.due_at_start() {
        // A signal came first: not even a TCP handshake for a step that is cut as it begins.
        return Err(Failed::NoAnswer(limit));
    }
    let outcome = rt.block_on(async {
        tokio::select! {
            biased;
            () = cut.notified() => None,
            value = work => Some(value),
        }
    });
    let expired = step.end();
    match outcome {
        Some(value) if !expired => value,
        _ => Err(Failed::NoAnswer(limit)),
    }
}

/// The hosts in the order to try them: host, hostaddr and port paired up.
fn hosts(config: &Config) -> Vec<(Option<Host>, Option<IpAddr>, u16)> {
    let names = config.get_hosts();
    let addrs = config.get_hostaddrs();
    let ports = config.get_ports();
    let n = names.len().max(addrs.len());
    let mut list: Vec<_> = (0..n)
        .map(|i| {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            (names.get(i).cloned(), addrs.get(i).copied(), port)
        })
        .collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        shuffle(&mut list);
    }
    list
}

/// A Fisher-Yates shuffle seeded by the standard library's per-process random hash keys:
/// load_balance_hosts=random needs spread, not cryptographic quality.
fn shuffle<T>(list: &mut [T]) {
    use std::hash::{BuildHasher, RandomState};
    let state = RandomState::new();
    for i in (1..list.len()).rev() {
        let j = (state.hash_one(i) % (i as u64 + 1)) as usize;
        list.swap(i, j);
    }
}

/// Looks a host name up on a thread of its own, so that the step can be abandoned when the
/// resolver hangs (getaddrinfo cannot be interrupted): the thread then finishes unobserved.
async fn resolve(name: &str, port: u16, config: &Config) -> Result<Vec<Addr>, Failed> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(vec![Addr::Tcp(SocketAddr::new(ip, port))]);
    }
    if let Some(ips) = from_hosts_file(name) {
        return Ok(ips
            .into_iter()
            .map(|ip| Addr::Tcp(SocketAddr::new(ip, port)))
            .collect());
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let owned = name.to_string();
    std::thread::Builder::new()
        .name("resolve".into())
        .spawn(move || {
            let _ = tx.send((owned.as_str(), port).to_socket_addrs());
        })
        .map_err(Failed::Connect)?;
    let found = rx
        .await
        .map_err(|_| Failed::Connect(std::io::Error::other("the name lookup failed")))?
        .map_err(Failed::Connect)?;
    let mut addrs: Vec<Addr> = found.map(Addr::Tcp).collect();
    if config.get_load_balance_hosts() == LoadBalanceHosts::Random {
        shuffle(&mut addrs);
    }
    if addrs.is_empty() {
        return Err(Failed::Connect(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("could not resolve any addresses for \"{name}\""),
        )));
    }
    Ok(addrs)
}

/// A name that /etc/hosts lists (`localhost`, above all), read from the file as NSS's `files`
/// source does, when nsswitch.conf consults files first (every distribution's default): a
/// local file needs no thread to be bounded, and a thread's start and wake-up were a tenth of a
/// local run. Anything else goes to the resolver.
fn from_hosts_file(name: &str) -> Option<Vec<IpAddr>> {
    let files_first = match std::fs::read_to_string("/etc/nsswitch.conf") {
        Ok(conf) => conf
            .lines()
            .find_map(|l| l.trim().strip_prefix("hosts:"))
            .is_some_and(|sources| sources.split_whitespace().next() == Some("files")),
        // glibc's default without the file: files, then dns.
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    };
    if !files_first {
        return None;
    }
    let hosts = std::fs::read_to_string("/etc/hosts").ok()?;
    let ips: Vec<IpAddr> = hosts
        .lines()
        .filter_map(|line| {
            let line = line.split('#').next()?;
            let mut fields = line.split_whitespace();
            let ip = fields.next()?.parse::<IpAddr>().ok()?;
            fields.any(|n| n.eq_ignore_ascii_case(name)).then_some(ip)
        })
        // hostaddr cannot carry an IPv6 scope id, and neither can these.
        .filter(|ip| !matches!(ip, IpAddr::V6(v6) if v6.is_unicast_link_local()))
        .collect();
    (!ips.is_empty()).then_some(ips)
}

/// Opens the socket to `dial` with pglock's socket settings.
async fn dial_socket(dial: &Dial) -> Result<Stream, Failed> {
    match &dial.addr {
        Addr::Tcp(addr) => {
            let stream = TcpStream::connect(addr).await.map_err(Failed::Connect)?;
            stream.set_nodelay(true).map_err(Failed::Connect)?;
            dial.keepalive
                .set_on(stream.as_fd())
                .map_err(Failed::Connect)?;
            let fd = stream.as_raw_fd();
            Ok((Box::new(stream), fd))
        }
        Addr::Unix(path) => {
            let stream = UnixStream::connect(path).await.map_err(Failed::Connect)?;
            let fd = stream.as_raw_fd();
            Ok((Box::new(stream), fd))
        }
    }
}

/// The server cannot tell a standby from a primary whose sessions are read-only by default, so
/// neither can pglock, and the user is told both.
const NO_WRITES: &str = "database does not allow writes (the server is a standby, or its \
     sessions are read-only by default: default_transaction_read_only is on for this database \
     or role, or in PGOPTIONS; pglock takes its lock only where it can write)";

type Started = (tokio_postgres::Client, Connection, RawFd);

/// One address: the socket, then TLS, start-up and authentication, then the check that the
/// server takes writes (target_session_attrs=read-write, which the driver only checks for the
/// hosts it connects itself).
async fn start(dial: &Dial, config: &Config, connector: &Connector) -> Result<Started, Failed> {
    let (stream, fd) = dial_socket(dial).await?;
    let (client, mut connection): (_, Connection) = match connector.for_host(&dial.hostname) {
        None => {
            let (client, connection) = config
                .connect_raw(stream, NoTls)
                .await
                .map_err(Failed::Error)?;
            (client, Box::new(connection))
        }
        Some(tls) => {
            let (client, connection) = config
                .connect_raw(stream, tls)
                .await
                .map_err(Failed::Error)?;
            (client, Box::new(connection))
        }
    };
    if config.get_target_session_attrs() == TargetSessionAttrs::ReadWrite {
        let mut ended = false;
        let show = client.simple_query("SHOW transaction_read_only");
        let answer = drive(&mut connection, &mut ended, &mut Vec::new(), show)
            .await
            .map_err(Failed::Error)?;
        let read_only = answer
            .iter()
            .any(|m| matches!(m, SimpleQueryMessage::Row(row) if row.get(0) == Some("on")));
        if read_only {
            return Err(Failed::Connect(std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                NO_WRITES,
            )));
        }
    }
    Ok((client, connection, fd))
}
