//! TLS for the lock connection: turns the resolved sslmode into a connector.
//!
//! libpq's `prefer` and `require` encrypt without checking the server's certificate (Debian's
//! default clusters serve a self-signed one), so those modes use a connector that accepts any
//! certificate. With sslmode=disable no TLS context is built at all.

use anyhow::{Context, Result};
use postgres::tls::NoTls;
use postgres::{CancelToken, Client, Config};
use postgres_native_tls::MakeTlsConnector;

/// What the server's certificate must prove.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verify {
    /// No TLS at all.
    Disabled,
    /// Encrypt, check nothing.
    Nothing,
}

/// A connector for the lock connection and for cancel requests on it.
#[derive(Clone)]
pub enum Connector {
    Plain,
    Tls(MakeTlsConnector),
}

impl Connector {
    pub fn new(verify: &Verify) -> Result<Connector> {
        match verify {
            Verify::Disabled => Ok(Connector::Plain),
            Verify::Nothing => {
                let tls = native_tls::TlsConnector::builder()
                    .danger_accept_invalid_certs(true)
                    .danger_accept_invalid_hostnames(true)
                    .build()
                    .context("cannot set up TLS")?;
                Ok(Connector::Tls(MakeTlsConnector::new(tls)))
            }
        }
    }

    pub fn connect(&self, config: &Config) -> Result<Client, postgres::Error> {
        match self {
            Connector::Plain => config.connect(NoTls),
            Connector::Tls(tls) => config.connect(tls.clone()),
        }
    }

    pub fn cancel(&self, token: &CancelToken) -> Result<(), postgres::Error> {
        match self {
            Connector::Plain => token.cancel_query(NoTls),
            Connector::Tls(tls) => token.cancel_query(tls.clone()),
        }
    }
}
