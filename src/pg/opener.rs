//! Opening connections: the settings of one run (application_name, connect timeout, keepalives
//! derived from --check-interval) applied to the resolved target, and the host lookup done the
//! way libpq does it.

use super::connect;
use super::deadline::OnSignal;
use super::session::{Failed, Session};
use crate::conninfo::Target;
use crate::conninfo::keepalive::{self, Keepalive};
use crate::exit::{Failure, fail};
use crate::tls::Connector;
use crate::{duration, step};
use anyhow::Result;
use std::time::{Duration, Instant};
use tokio_postgres::Config;

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens connections to one target; pglock may need several when the server goes away while it
/// waits, and the observer opens its own from a clone with another name.
#[derive(Clone)]
pub struct Opener {
    config: Config,
    connector: Connector,
    keepalive: Keepalive,
    /// A connect has nothing to finish, so a signal cuts it at once, unless the connection is
    /// part of stopping (the ledger's record of the end).
    on_signal: OnSignal,
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
        let keepalive = keepalive::for_connection(&config, check_interval);
        Ok(Opener {
            config,
            connector,
            keepalive,
            on_signal: OnSignal::Cut,
            describe: target.describe.clone(),
        })
    }

    /// The same target under another application_name, for a connection that holds nothing
    /// (the observer, the ledger's spare): nothing is resolved or loaded again. A signal gives
    /// its connects the grace that statements get, since the ledger's spare records a run's end.
    pub fn renamed(&self, app_name: &str, connect_timeout: Duration) -> Opener {
        let mut other = self.clone();
        other.config.application_name(app_name);
        other.config.connect_timeout(connect_timeout);
        other.on_signal = OnSignal::Grace;
        other
    }

    /// The application_name every connection of this opener carries.
    pub fn application_name(&self) -> &str {
        self.config.get_application_name().unwrap_or_default()
    }

    /// Opens one dedicated connection. The connect timeout bounds each step of it on its own
    /// (a host name's lookup; each address from TCP to authentication), as libpq's does.
    pub fn open(&self) -> Result<Session, Failed> {
        self.open_until(None)
    }

    /// As [`Opener::open`], with no step going on past `until` (the end of a wait).
    pub fn open_until(&self, until: Option<Instant>) -> Result<Session, Failed> {
        step!("connecting to {}", self.describe);
        let started = Instant::now();
        let bound = connect::Bound {
            step: self.connect_timeout(),
            until,
            on_signal: self.on_signal,
        };
        let link = connect::open(&self.config, &self.connector, self.keepalive, bound)?;
        step!(
            "connected in {} (socket {})",
            duration::format(started.elapsed()),
            link.socket()
        );
        Ok(Session::new(link))
    }

    /// How long one connect may take: --connect-timeout, the conninfo's, or the default.
    pub fn connect_timeout(&self) -> Duration {
        self.config
            .get_connect_timeout()
            .copied()
            .unwrap_or(DEFAULT_CONNECT_TIMEOUT)
    }

    /// The error pglock exits 69 with.
    pub fn failure(&self, e: &Failed) -> anyhow::Error {
        fail(
            Failure::Unavailable,
            format!("cannot connect to {}: {e}", self.describe),
        )
    }
}
