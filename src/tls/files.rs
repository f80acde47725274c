//! The TLS files libpq reads (sslrootcert, sslcert, sslkey) and its protocol-version names. A
//! file that cannot be used is a usage error (exit 2): the files are part of the configuration,
//! not of the server.

use crate::exit::{Failure, fail};
use anyhow::Result;
use native_tls::{Certificate, Identity, Protocol};
use std::path::{Path, PathBuf};

/// A client certificate chain and its key, with the files they came from for messages.
#[derive(Clone)]
pub struct ClientCert {
    pub identity: Identity,
    pub cert: PathBuf,
    pub key: PathBuf,
}

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
/// how to convert them. Whether the key belongs to the certificate, OpenSSL checks when the
/// connector is built.
pub fn load_identity(cert_path: &Path, key_path: &Path) -> Result<ClientCert> {
    // The key first, as libpq: a missing key is the likelier mistake.
    let raw = read_private(cert_path, key_path)?;
    let cert = load_chain(cert_path)?;
    let key = pkcs8(key_path, &raw)?;
    let identity = Identity::from_pkcs8(&cert, &key).map_err(|e| {
        usage(format!(
            "cannot use client certificate \"{}\" with key \"{}\": {e}",
            cert_path.display(),
            key_path.display()
        ))
    })?;
    Ok(ClientCert {
        identity,
        cert: cert_path.to_path_buf(),
        key: key_path.to_path_buf(),
    })
}

/// The sslcert file (the client certificate first, then any intermediates), as PEM.
fn load_chain(cert_path: &Path) -> Result<Vec<u8>> {
    let pem = std::fs::read(cert_path).map_err(|e| {
        usage(format!(
            "cannot read client certificate file \"{}\" (sslcert): {e}",
            cert_path.display()
        ))
    })?;
    match Certificate::stack_from_pem(&pem) {
        Ok(chain) if !chain.is_empty() => Ok(pem),
        _ => Err(usage(format!(
            "client certificate file \"{}\" (sslcert) holds no PEM certificate",
            cert_path.display()
        ))),
    }
}

/// The key file's bytes, after libpq's permission check.
fn read_private(cert_path: &Path, key_path: &Path) -> Result<Vec<u8>> {
    use std::os::unix::fs::MetadataExt;
    let key_name = key_path.display();
    let meta = std::fs::metadata(key_path).map_err(|e| {
        usage(format!(
            "certificate \"{}\" is present, but its private key file \"{key_name}\" cannot be \
             read: {e}; set sslkey to the key's path",
            cert_path.display()
        ))
    })?;
    let allowed = if meta.uid() == 0 { 0o640 } else { 0o600 };
    if meta.mode() & 0o777 & !allowed != 0 {
        return Err(usage(format!(
            "private key file \"{key_name}\" has group or world access; run chmod 0600 \
             \"{key_name}\""
        )));
    }
    std::fs::read(key_path)
        .map_err(|e| usage(format!("cannot read private key file \"{key_name}\": {e}")))
}

/// The unencrypted PKCS#8 PEM block of a key file, or a usage error saying how to get one.
fn pkcs8(key_path: &Path, raw: &[u8]) -> Result<Vec<u8>> {
    let key_name = key_path.display();
    let convert = format!(
        "openssl pkcs8 -topk8 -nocrypt -in \"{key_name}\" -out key.pk8 (then chmod 0600 \
         key.pk8 and set sslkey to it)"
    );
    // Tools such as `openssl pkcs12` put "Bag Attributes" text before the PEM block.
    let Some(start) = find(raw, b"-----BEGIN ") else {
        return Err(usage(format!(
            "private key file \"{key_name}\" is not PEM; convert it with: {convert}"
        )));
    };
    let key = &raw[start..];
    if key.starts_with(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
        || find(key, b"Proc-Type: 4,ENCRYPTED").is_some()
    {
        return Err(usage(format!(
            "private key file \"{key_name}\" is encrypted, and pglock cannot ask for its \
             passphrase; write a decrypted PKCS#8 copy with: {convert}"
        )));
    }
    if !key.starts_with(b"-----BEGIN PRIVATE KEY-----") {
        return Err(usage(format!(
            "private key file \"{key_name}\" is not in PKCS#8 format (-----BEGIN PRIVATE \
             KEY-----), the only one pglock reads; convert it with: {convert}"
        )));
    }
    Ok(key.to_vec())
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
