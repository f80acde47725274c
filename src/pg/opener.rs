//! Opening connections: the settings of one run (application_name, connect timeout, keepalives
//! derived from --check-interval) applied to the resolved target, and the host lookup done the
//! way libpq does it.

use super::session::{Failed, Session};
use super::socket::{self, Connected};
use crate::conninfo::{Target, keepalive};
use crate::exit::{Failure, fail};
use crate::tls::Connector;
use crate::{duration, step};
use anyhow::Result;
use postgres::{Client, Config};
use std::time::{Duration, Instant};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens connections to one target; pglock may need several when the server goes away while it
/// waits, and the observer opens its own from a clone with another name.
#[derive(Clone)]
pub struct Opener {
    config: Config,
    connector: Connector,
    describe: String,
}

impl Opener {
    /// Prepares connections to `target`. `check_interval` drives TCP keepalives and
    /// tcp_user_timeout, so a silent network partition is noticed within 2 x interval + 5s.
    pub fn new(
        target: &Target,
        app_name: &str,
        connect_timeout: Option<Duration>,
        check_interval: Duration,
    ) -> Result<Opener> {
        let connector = Connector::new(&target.verify)?;
        let mut config = target.config.clone();
        config.application_name(app_name);
        match connect_timeout {
            Some(t) => {
                config.connect_timeout(t);
            }
            None if config.get_connect_timeout().is_none() => {
                config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
            }
            None => {}
        }
        keepalive::apply(&mut config, check_interval);
        Ok(Opener {
            config,
            connector,
            describe: target.describe.clone(),
        })
    }

    /// The same target under another application_name, for a connection that holds nothing
    /// (the observer): nothing is resolved or loaded again.
    pub fn renamed(&self, app_name: &str, connect_timeout: Duration) -> Opener {
        let mut other = self.clone();
        other.config.application_name(app_name);
        other.config.connect_timeout(connect_timeout);
        other
    }

    /// The application_name every connection of this opener carries.
    pub fn application_name(&self) -> &str {
        self.config.get_application_name().unwrap_or_default()
    }

    /// Opens one dedicated connection. The connect timeout bounds all of it (TCP, TLS, start-up
    /// and authentication), once for each host in the connection settings.
    pub fn open(&self) -> Result<Session, Failed> {
        step!("connecting to {}", self.describe);
        let started = Instant::now();
        let limit = self.connect_timeout().saturating_mul(self.attempts());
        match socket::identify(limit, || connect(&self.connector, &self.config)) {
            Connected::On(client, socket) => {
                step!(
                    "connected in {} (socket {socket})",
                    duration::format(started.elapsed())
                );
                Ok(Session::new(client, self.connector.clone(), socket))
            }
            Connected::Failed(e) => Err(Failed::Error(e)),
            Connected::NoAnswer => Err(Failed::NoAnswer(limit)),
            Connected::Unknown(client) => {
                drop(client);
                Err(Failed::Unwatched)
            }
        }
    }

    /// How long one connect may take: --connect-timeout, the conninfo's, or the default.
    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// How many hosts one connect may try, each within the connect timeout.
    fn attempts(&self) -> u32 {
        let hosts = self
            .config
            .get_hosts()
            .len()
            .max(self.config.get_hostaddrs().len());
        u32::try_from(hosts.max(1)).unwrap_or(u32::MAX)
    }

    /// The error pglock exits 69 with.
    pub fn failure(&self, e: &Failed) -> anyhow::Error {
        fail(
            Failure::Unavailable,
            format!("cannot connect to {}: {e}", self.describe),
        )
    }
}

/// Connects as `connector.connect(config)` would, but looks the host name up on this thread.
///
/// rust-postgres looks a name up on a blocking-pool thread that its runtime starts for the
/// purpose and joins when the connection closes: over loopback that thread was about 1 ms of a
/// 7 ms pglock run. For the usual single host, this looks the name up here instead, as libpq
/// does, and tries its addresses in order, handing rust-postgres one at a time as hostaddr (which
/// it uses as is; the name still serves TLS). Looked up at each connect, so that a reconnect
/// follows a DNS change. Anything else (several hosts, load balancing, a failed lookup) is left
/// to rust-postgres.
fn connect(connector: &Connector, config: &Config) -> Result<Client, postgres::Error> {
    let Some(addrs) = addresses(config) else {
        return connector.connect(config);
    };
    let mut last = None;
    for addr in addrs {
        let mut one = config.clone();
        one.hostaddr(addr.ip());
        match connector.connect(&one) {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e),
        // Nothing to try: rust-postgres looks again and reports the failure its usual way.
        None => connector.connect(config),
    }
}

/// The addresses of a config's single TCP host name, or None when rust-postgres should decide.
fn addresses(config: &Config) -> Option<Vec<std::net::SocketAddr>> {
    use postgres::config::{Host, LoadBalanceHosts};
    use std::net::{SocketAddr, ToSocketAddrs};
    let name = match (config.get_hosts(), config.get_hostaddrs()) {
        ([Host::Tcp(name)], [])
            if config.get_load_balance_hosts() == LoadBalanceHosts::Disable
                && name.parse::<std::net::IpAddr>().is_err() =>
        {
            name
        }
        _ => return None,
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addrs = match (name.as_str(), port).to_socket_addrs() {
        // hostaddr cannot carry an IPv6 scope id.
        Ok(addrs) => addrs
            .filter(|a| !matches!(a, SocketAddr::V6(v6) if v6.scope_id() != 0))
            .collect(),
        Err(_) => Vec::new(),
    };
    Some(addrs)
}
