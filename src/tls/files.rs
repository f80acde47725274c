//! The TLS files libpq reads (sslrootcert, sslcert, sslkey) and its protocol-version names. A
//! file that cannot be used is a usage error (exit 2): the files are part of the configuration,
//! not of the server.

use super::Identity;
use crate::exit::{Failure, fail};
use anyhow::Result;
use openssl::pkey::PKey;
use openssl::ssl::SslVersion;
use openssl::x509::X509;
use std::path::Path;

fn usage(message: String) -> anyhow::Error {
    fail(Failure::Usage, message)
}

/// The certificates of an sslrootcert file.
pub fn load_roots(path: &Path) -> Result<Vec<X509>> {
    let pem = std::fs::read(path).map_err(|e| {
        usage(format!(
            "cannot read root certificate file \"{}\" (sslrootcert): {e}",
            path.display()
        ))
    })?;
    match X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        _ => Err(usage(format!(
            "root certificate file \"{}\" (sslrootcert) holds no PEM certificate; give a file \
             with -----BEGIN CERTIFICATE----- blocks",
            path.display()
        ))),
    }
}

/// Reads and checks a client certificate chain and its private key (sslcert, sslkey).
///
/// Like libpq, the key must not be readable by others (0600 or less, or 0640 or less when root
/// owns it) and must be PEM: PKCS#8 or the older RSA and EC formats. pglock cannot ask for a
/// passphrase, so an encrypted key gets a message that says how to decrypt it.
pub fn load_identity(cert_path: &Path, key_path: &Path) -> Result<Identity> {
    let key_name = key_path.display();
    let pem = read_private(cert_path, key_path)?;
    let chain = load_chain(cert_path)?;
    if find(&pem, b"-----BEGIN ").is_none() {
        return Err(usage(format!(
            "private key file \"{key_name}\" is not PEM; convert it with: openssl pkey -in \
             \"{key_name}\" -out key.pem"
        )));
    }
    if find(&pem, b"-----BEGIN ENCRYPTED PRIVATE KEY-----").is_some()
        || find(&pem, b"Proc-Type: 4,ENCRYPTED").is_some()
    {
        return Err(usage(format!(
            "private key file \"{key_name}\" is encrypted, and pglock cannot ask for its \
             passphrase; write a decrypted copy (mode 0600) with: openssl pkey -in \
             \"{key_name}\" -out key.pem"
        )));
    }
    // The callback answers any passphrase prompt with nothing: OpenSSL's default one would read
    // the terminal.
    let key = PKey::private_key_from_pem_callback(&pem, |_| Ok(0)).map_err(|_| {
        usage(format!(
            "private key file \"{key_name}\" holds no private key OpenSSL can read; give a PEM \
             key (-----BEGIN PRIVATE KEY-----)"
        ))
    })?;
    let matches = chain[0]
        .public_key()
        .is_ok_and(|public| public.public_eq(&key));
    if !matches {
        return Err(usage(format!(
            "private key file \"{key_name}\" does not belong to client certificate \"{}\"; set \
             sslkey to the certificate's key",
            cert_path.display()
        )));
    }
    Ok(Identity { chain, key })
}

/// The sslcert file: the client certificate first, then any intermediates.
fn load_chain(cert_path: &Path) -> Result<Vec<X509>> {
    let text = std::fs::read(cert_path).map_err(|e| {
        usage(format!(
            "cannot read client certificate file \"{}\" (sslcert): {e}",
            cert_path.display()
        ))
    })?;
    match X509::stack_from_pem(&text) {
        Ok(chain) if !chain.is_empty() => Ok(chain),
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// libpq's ssl_min_protocol_version / ssl_max_protocol_version values.
pub fn parse_protocol(text: &str) -> Option<Option<SslVersion>> {
    Some(match text {
        "" => None,
        "TLSv1" => Some(SslVersion::TLS1),
        "TLSv1.1" => Some(SslVersion::TLS1_1),
        "TLSv1.2" => Some(SslVersion::TLS1_2),
        "TLSv1.3" => Some(SslVersion::TLS1_3),
        _ => return None,
    })
}
