//! TLS for the lock connection, with libpq's meaning for each sslmode: what the server's
//! certificate must prove, which roots it is checked against, and the client certificate.
//!
//! [`conninfo`](crate::conninfo) reads the settings and decides the policy ([`Verify`]); this
//! module turns it into an OpenSSL context and hands rust-postgres a connector built on it
//! ([`stream`]). With sslmode=disable, or when every host is a Unix socket (where PostgreSQL never
//! speaks TLS), no TLS context is built at all.
//!
//! pglock drives OpenSSL itself rather than through native-tls, for one reason: native-tls loads
//! the operating system's CA bundle into every context, twice, and OpenSSL 3 takes about 30 ms
//! to parse it each time, most of a pglock run with sslmode=prefer. Here the bundle is loaded
//! only when the policy trusts it (sslrootcert=system); the unchecked modes need no roots and an
//! sslrootcert file replaces the store. Nothing touches the process environment, so a connector
//! can be built on any thread at any time.

mod files;
mod stream;

pub use files::{load_identity, load_roots, parse_protocol};

use anyhow::{Context, Result};
use openssl::error::ErrorStack;
use openssl::pkey::{PKey, Private};
use openssl::ssl::{
    SslContext, SslContextBuilder, SslMethod, SslMode as OpensslMode, SslOptions, SslVerifyMode,
    SslVersion,
};
use openssl::x509::X509;
use postgres::tls::NoTls;
use postgres::{CancelToken, Client, Config};
use stream::MakeTls;

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
    File(Vec<X509>),
    /// The operating system's trust store (sslrootcert=system), found the way libpq finds it:
    /// OpenSSL's default paths, which SSL_CERT_FILE and SSL_CERT_DIR override.
    System,
}

/// A client certificate chain (leaf first) and its private key, as [`load_identity`] read them.
#[derive(Clone)]
pub struct Identity {
    pub chain: Vec<X509>,
    pub key: PKey<Private>,
}

/// Everything the connector needs, resolved from sslmode, sslrootcert, sslcert, sslkey and the
/// protocol bounds.
#[derive(Clone)]
pub struct Verify {
    pub check: Check,
    /// Unused unless `check` is Chain or Full.
    pub roots: Roots,
    pub identity: Option<Identity>,
    pub min_protocol: Option<SslVersion>,
    pub max_protocol: Option<SslVersion>,
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
}

/// A connector for the lock connection and for cancel requests on it.
#[derive(Clone)]
pub enum Connector {
    Plain,
    Tls(MakeTls),
}

impl Connector {
    pub fn new(verify: &Verify) -> Result<Connector> {
        if verify.check == Check::Disabled {
            return Ok(Connector::Plain);
        }
        let context = context(verify).context("cannot set up TLS")?;
        Ok(Connector::Tls(MakeTls::new(
            context,
            verify.check == Check::Full,
        )))
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

/// The ciphers OpenSSL's own client defaults allow, minus the weak and the unauthenticated ones
/// (the list native-tls and the openssl crate's connector use).
const CIPHERS: &str = "DEFAULT:!aNULL:!eNULL:!MD5:!3DES:!DES:!RC4:!IDEA:!SEED:!aDSS:!SRP:!PSK";

/// The shared part of every connection's TLS setup: protocol bounds, what is verified against
/// which roots, and the client certificate. The host name is checked per connection.
fn context(verify: &Verify) -> Result<SslContext, ErrorStack> {
    let mut ctx = SslContextBuilder::new(SslMethod::tls_client())?;
    let options = (SslOptions::ALL & !SslOptions::DONT_INSERT_EMPTY_FRAGMENTS)
        | SslOptions::NO_COMPRESSION
        | SslOptions::NO_SSLV2
        | SslOptions::NO_SSLV3;
    ctx.set_options(options);
    ctx.set_mode(
        OpensslMode::AUTO_RETRY
            | OpensslMode::ACCEPT_MOVING_WRITE_BUFFER
            | OpensslMode::ENABLE_PARTIAL_WRITE
            | OpensslMode::RELEASE_BUFFERS,
    );
    ctx.set_cipher_list(CIPHERS)?;
    ctx.set_min_proto_version(verify.min_protocol)?;
    ctx.set_max_proto_version(verify.max_protocol)?;
    if verify.check == Check::Nothing {
        ctx.set_verify(SslVerifyMode::NONE);
    } else {
        ctx.set_verify(SslVerifyMode::PEER);
        // A new context trusts nothing until told: only the roots the policy names go in.
        match &verify.roots {
            Roots::System => ctx.set_default_verify_paths()?,
            Roots::File(certs) => {
                for cert in certs {
                    ctx.cert_store_mut().add_cert(cert.clone())?;
                }
            }
        }
    }
    if let Some(identity) = &verify.identity {
        let (leaf, intermediates) = identity
            .chain
            .split_first()
            .expect("load_identity returns at least one certificate");
        ctx.set_certificate(leaf)?;
        ctx.set_private_key(&identity.key)?;
        for cert in intermediates {
            ctx.add_extra_chain_cert(cert.clone())?;
        }
    }
    Ok(ctx.build())
}
