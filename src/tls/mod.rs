//! TLS for the lock connection, with libpq's meaning for each sslmode: what the server's
//! certificate must prove, which roots it is checked against, and the client certificate.
//!
//! [`conninfo`](crate::conninfo) reads the settings and decides the policy ([`Verify`]); this
//! module turns it into a native-tls connector, which postgres-native-tls hands to tokio-postgres
//! (with channel binding, tls-server-end-point) for each host. With sslmode=disable, or when every host is a
//! Unix socket (where PostgreSQL never speaks TLS), no TLS context is built at all: loading
//! OpenSSL's trust store costs more than the rest of connecting to a local server, which is also
//! why [`trust_store`] keeps it out of the connectors that do not use it.

mod files;
mod trust_store;

pub use files::{ClientCert, load_identity, load_roots, parse_protocol};

use crate::exit::{Failure, fail};
use crate::{duration, step};
use anyhow::{Result, anyhow};
use native_tls::{Certificate, Protocol, TlsConnector, TlsConnectorBuilder};
use std::time::Instant;

/// libpq's sslmode values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// libpq tries plaintext first and TLS second; pglock behaves like `prefer`.
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Option<SslMode> {
        Some(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// What the server's certificate must prove.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// No TLS at all.
    Disabled,
    /// Encrypt, check nothing (prefer, allow, require without a root certificate).
    Nothing,
    /// The chain leads to a trusted root; any host name (verify-ca, require with a root file).
    Chain,
    /// The chain and the host name (verify-full).
    Full,
}

/// Which roots a verifying check trusts.
#[derive(Clone)]
pub enum Roots {
    /// Only the certificates of the sslrootcert file, as libpq does.
    File(Vec<Certificate>),
    /// The operating system's trust store (sslrootcert=system): OpenSSL's default locations,
    /// which SSL_CERT_FILE and SSL_CERT_DIR override, as in libpq.
    System,
}

/// Everything the connector needs, resolved from sslmode, sslrootcert, sslcert, sslkey and the
/// protocol bounds.
#[derive(Clone)]
pub struct Verify {
    pub check: Check,
    /// Unused unless `check` is Chain or Full.
    pub roots: Roots,
    pub identity: Option<ClientCert>,
    pub min_protocol: Option<Protocol>,
    pub max_protocol: Option<Protocol>,
}

impl Verify {
    /// Plaintext only.
    pub fn disabled() -> Verify {
        Verify {
            check: Check::Disabled,
            roots: Roots::System,
            identity: None,
            min_protocol: None,
            max_protocol: None,
        }
    }

    /// Whether the connector must trust the operating system's store: otherwise the checks
    /// either trust nothing or only the sslrootcert file, which replaces the store.
    fn needs_system_roots(&self) -> bool {
        matches!(self.roots, Roots::System) && matches!(self.check, Check::Chain | Check::Full)
    }
}

/// A connector for the lock connection and for cancel requests on it.
#[derive(Clone)]
pub enum Connector {
    Plain,
    Tls(TlsConnector),
}

impl Connector {
    /// The connector for `verify`. Cheap when the process has a single thread and the policy
    /// does not trust the system store; see [`trust_store`].
    pub fn new(verify: &Verify) -> Result<Connector> {
        if verify.check == Check::Disabled {
            return Ok(Connector::Plain);
        }
        let started = Instant::now();
        let builder = builder(verify);
        let (built, store) = if verify.needs_system_roots() {
            (builder.build(), "loaded")
        } else {
            match trust_store::without(|| builder.build()) {
                Some(built) => (built, "skipped"),
                // Another thread exists: the environment must stay as it is.
                None => (builder.build(), "loaded, unused"),
            }
        };
        let tls = built.map_err(|e| build_error(verify, e))?;
        step!(
            "TLS context ready in {} (system trust store {store})",
            duration::format(started.elapsed())
        );
        Ok(Connector::Tls(tls))
    }

    /// What the TLS handshake with `hostname` needs: None for plaintext.
    pub fn for_host(&self, hostname: &str) -> Option<postgres_native_tls::TlsConnector> {
        match self {
            Connector::Plain => None,
            Connector::Tls(tls) => Some(postgres_native_tls::TlsConnector::new(
                tls.clone(),
                hostname,
            )),
        }
    }
}

/// The native-tls settings for a policy other than Disabled.
fn builder(verify: &Verify) -> TlsConnectorBuilder {
    let mut builder = TlsConnector::builder();
    builder
        .min_protocol_version(verify.min_protocol)
        .max_protocol_version(verify.max_protocol);
    match verify.check {
        Check::Disabled | Check::Nothing => {
            builder.danger_accept_invalid_certs(true);
        }
        Check::Chain | Check::Full => {
            if let Roots::File(certs) = &verify.roots {
                builder.disable_built_in_roots(true);
                for cert in certs {
                    builder.add_root_certificate(cert.clone());
                }
            }
            builder.danger_accept_invalid_hostnames(verify.check == Check::Chain);
        }
    }
    if let Some(client) = &verify.identity {
        builder.identity(client.identity.clone());
    }
    builder
}

/// Why no connector could be built. OpenSSL checks that the client key belongs to its
/// certificate only here, when both go into the context: that is a usage error like any other
/// unusable TLS file.
fn build_error(verify: &Verify, e: native_tls::Error) -> anyhow::Error {
    match &verify.identity {
        Some(client) if e.to_string().contains("key values mismatch") => fail(
            Failure::Usage,
            format!(
                "private key file \"{}\" does not belong to client certificate \"{}\"; set \
                 sslkey to the certificate's key",
                client.key.display(),
                client.cert.display()
            ),
        ),
        Some(client) => fail(
            Failure::Usage,
            format!(
                "cannot use client certificate \"{}\" with key \"{}\": {e}",
                client.cert.display(),
                client.key.display()
            ),
        ),
        None => anyhow!("cannot set up TLS: {e}"),
    }
}
