//! TLS for the lock connection, with libpq's meaning for each sslmode: what the server's
//! certificate must prove, which roots it is checked against, and the client certificate.
//!
//! [`conninfo`](crate::conninfo) reads the files and decides the policy ([`Verify`]); this module
//! turns it into a native-tls connector. With sslmode=disable, or when every host is a Unix socket
//! (where PostgreSQL never speaks TLS), no TLS context is built at all: loading OpenSSL's trust
//! store costs more than the rest of connecting to a local server.

use crate::exit::{Failure, fail};
use anyhow::{Context, Result};
use native_tls::{Certificate, Identity, Protocol, TlsConnector};
use postgres::tls::NoTls;
use postgres::{CancelToken, Client, Config};
use postgres_native_tls::MakeTlsConnector;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

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
    /// The operating system's trust store (sslrootcert=system).
    System,
}

/// Everything the connector needs, resolved from sslmode, sslrootcert, sslcert, sslkey and the
/// protocol bounds.
#[derive(Clone)]
pub struct Verify {
    pub check: Check,
    /// Unused unless `check` is Chain or Full.
    pub roots: Roots,
    /// The client certificate chain and its PKCS#8 key, both PEM, already checked by
    /// [`load_identity`]. Kept as bytes because native-tls identities cannot be cloned.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
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
}

/// A connector for the lock connection and for cancel requests on it.
#[derive(Clone)]
pub enum Connector {
    Plain,
    Tls(MakeTlsConnector),
}

impl Connector {
    pub fn new(verify: &Verify) -> Result<Connector> {
        if verify.check == Check::Disabled {
            return Ok(Connector::Plain);
        }
        let mut builder = TlsConnector::builder();
        builder
            .min_protocol_version(verify.min_protocol)
            .max_protocol_version(verify.max_protocol);
        match verify.check {
            Check::Disabled => unreachable!("handled above"),
            Check::Nothing => {
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
        if let Some((cert, key)) = &verify.identity {
            builder.identity(
                Identity::from_pkcs8(cert, key).context("cannot use the client certificate")?,
            );
        }
        let needs_system_roots =
            matches!(verify.roots, Roots::System) && verify.check != Check::Nothing;
        // Only the process's first connector takes the shortcut: it is built before pglock starts
        // any thread that reads the environment (resolver threads of a connection, the observer
        // that opens a second connection); later ones pay for the trust store.
        let first = !BUILT_ONE.swap(true, Ordering::SeqCst);
        let tls = if first && !needs_system_roots {
            without_system_roots(|| builder.build())
        } else {
            builder.build()
        }
        .context("cannot set up TLS")?;
        Ok(Connector::Tls(MakeTlsConnector::new(tls)))
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

static BUILT_ONE: AtomicBool = AtomicBool::new(false);

/// Builds a connector that will never consult the operating system's trust store.
///
/// native-tls always loads OpenSSL's default CA bundle, twice (once through OpenSSL's default
/// paths, once through openssl-probe's), and OpenSSL 3 takes about 30 ms to parse it each time:
/// most of a pglock run with sslmode=prefer. Neither the unchecked modes nor a sslrootcert file
/// use it (a file replaces the store), so for the duration of the build SSL_CERT_FILE points
/// at an empty file; the variable is restored before anything else can see it, so the command
/// pglock runs inherits the environment it was given.
fn without_system_roots<T>(build: impl FnOnce() -> T) -> T {
    const VAR: &str = "SSL_CERT_FILE";
    let saved = std::env::var_os(VAR);
    // SAFETY: set_var races only with threads that read the environment at the same moment.
    // This runs only for the first connector (see Connector::new): the only other thread by
    // then is the signal router, which never reads the environment, and no connection, whose
    // DNS lookups would read it on resolver threads, exists yet.
    unsafe { std::env::set_var(VAR, "/dev/null") };
    let built = build();
    match saved {
        Some(v) => unsafe { std::env::set_var(VAR, v) },
        None => unsafe { std::env::remove_var(VAR) },
    }
    built
}

/// A usage error (exit 2): the TLS files are part of the configuration, not of the server.
fn usage(message: String) -> anyhow::Error {
    fail(Failure::Usage, message)
}

/// The certificates of an sslrootcert file.
pub fn load_roots(path: &Path) -> Result<Vec<Certificate>> {
    let pem = std::fs::read(path).map_err(|e| {
        usage(format!(
            "cannot read root certificate file \"{}\" (sslrootcert): {e}",
            path.display()
        ))
    })?;
    match Certificate::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(usage(format!(
            "root certificate file \"{}\" (sslrootcert) holds no PEM certificate; give a file \
             with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        ))),
    }
}

/// Reads and checks a client certificate and its private key (sslcert, sslkey).
///
/// Like libpq, the key must not be readable by others: 0600 or less, or 0640 or less when root
/// owns it. native-tls takes only unencrypted PKCS#8 keys; other formats get a message that says
/// how to convert them.
pub fn load_identity(cert_path: &Path, key_path: &Path) -> Result<(Vec<u8>, Vec<u8>)> {
    let cert = std::fs::read(cert_path).map_err(|e| {
        usage(format!(
            "cannot read client certificate file \"{}\" (sslcert): {e}",
            cert_path.display()
        ))
    })?;
    let key_name = key_path.display();
    let meta = std::fs::metadata(key_path).map_err(|e| {
        usage(format!(
            "certificate \"{}\" is present, but its private key file \"{key_name}\" cannot be \
             read: {e}; set sslkey to the key's path",
            cert_path.display()
        ))
    })?;
    {
        use std::os::unix::fs::MetadataExt;
        let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
        if meta.mode() & 0o777 & !allowed != 0 {
            return Err(usage(format!(
                "private key file \"{key_name}\" has group or world access; run chmod 0600 \
                 \"{key_name}\""
            )));
        }
    }
    let raw = std::fs::read(key_path)
        .map_err(|e| usage(format!("cannot read private key file \"{key_name}\": {e}")))?;
    // Tools such as `openssl pkcs12` put "Bag Attributes" text before the PEM block.
    let key = match find(&raw, b"-----BEGIN ") {
        Some(start) => raw[start..].to_vec(),
        None => {
            return Err(usage(format!(
                "private key file \"{key_name}\" is not PEM; convert it with: openssl pkcs8 \
                 -topk8 -nocrypt -in \"{key_name}\" -out key.pk8"
            )));
        }
    };
    if key.starts_with(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || find(&key, b"Proc-Type: 4,ENCRYPTED").is_some()
    {
        return Err(usage(format!(
            "private key file \"{key_name}\" is encrypted, and pglock cannot ask for its \
             passphrase; write a decrypted PKCS#8 copy (mode 0600) with: openssl pkcs8 -topk8 \
             -nocrypt -in \"{key_name}\" -out key.pk8"
        )));
    }
    if !key.starts_with(b"-----BEGIN PRIVATE KEY-----") {
        return Err(usage(format!(
            "private key file \"{key_name}\" is not in PKCS#8 format, the only one native-tls \
             reads; convert it with: openssl pkcs8 -topk8 -nocrypt -in \"{key_name}\" -out \
             key.pk8 (then chmod 0600 key.pk8 and set sslkey to it)"
        )));
    }
    Identity::from_pkcs8(&cert, &key).map_err(|e| {
        usage(format!(
            "cannot use client certificate \"{}\" with key \"{key_name}\": {e}",
            cert_path.display()
        ))
    })?;
    Ok((cert, key))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// libpq's ssl_min_protocol_version / ssl_max_protocol_version values.
pub fn parse_protocol(text: &str) -> Option<Option<Protocol>> {
    Some(match text {
        "" => None,
        "TLSv1" => Some(Protocol::Tlsv10),
        "TLSv1.1" => Some(Protocol::Tlsv11),
        "TLSv1.2" => Some(Protocol::Tlsv12),
        "TLSv1.3" => Some(Protocol::Tlsv13),
        _ => return None,
    })
}
