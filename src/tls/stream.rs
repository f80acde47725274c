//! The glue between an OpenSSL context and rust-postgres: a [`MakeTlsConnect`] that configures
//! one connection (SNI, the host-name check), performs the handshake over tokio-openssl, and
//! gives SCRAM the channel binding (tls-server-end-point).
//!
//! A failed handshake becomes one line saying why, in OpenSSL's words but without its error
//! codes and source positions, and with no `source()`: the caller prints the chain, and
//! OpenSSL's own error types repeat their text at every level of it.

use openssl::error::ErrorStack;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::ssl::{Ssl, SslContext, SslRef};
use openssl::x509::X509VerifyResult;
use openssl::x509::verify::X509CheckFlags;
use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, BufReader, ReadBuf};
use tokio_openssl::SslStream;

/// OpenSSL's verify results for a certificate that names another host (x509_vfy.h).
const HOSTNAME_MISMATCH: i32 = 62;
const IP_ADDRESS_MISMATCH: i32 = 64;

/// Makes one [`Handshake`] per connection (and per cancel request).
#[derive(Clone)]
pub struct MakeTls {
    context: SslContext,
    check_host: bool,
}

impl MakeTls {
    pub fn new(context: SslContext, check_host: bool) -> MakeTls {
        MakeTls {
            context,
            check_host,
        }
    }
}

impl<S> MakeTlsConnect<S> for MakeTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type TlsConnect = Handshake;
    type Error = ErrorStack;

    /// `host` is the host name even when pglock connects to an address it looked up itself.
    fn make_tls_connect(&mut self, host: &str) -> Result<Handshake, ErrorStack> {
        let mut ssl = Ssl::new(&self.context)?;
        let ip = host.parse::<IpAddr>().ok();
        // libpq's sslsni: the name goes in the hello, an address never does.
        if ip.is_none() {
            ssl.set_hostname(host)?;
        }
        if self.check_host {
            let param = ssl.param_mut();
            param.set_hostflags(X509CheckFlags::NO_PARTIAL_WILDCARDS);
            match ip {
                Some(ip) => param.set_ip(ip)?,
                None => param.set_host(host)?,
            }
        }
        Ok(Handshake {
            ssl,
            host: host.to_string(),
        })
    }
}

/// One connection's TLS handshake, ready to run on the socket rust-postgres opened.
pub struct Handshake {
    ssl: Ssl,
    host: String,
}

type Handshaking<S> = Pin<Box<dyn Future<Output = Result<TlsStream<S>, HandshakeError>> + Send>>;

impl<S> TlsConnect<S> for Handshake
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = TlsStream<S>;
    type Error = HandshakeError;
    type Future = Handshaking<S>;

    fn connect(self, socket: S) -> Handshaking<S> {
        Box::pin(async move {
            // Reading the socket in 8 kB pieces saves system calls on TLS records.
            let buffered = BufReader::with_capacity(8192, socket);
            let mut stream =
                SslStream::new(self.ssl, buffered).map_err(|e| HandshakeError(e.to_string()))?;
            match Pin::new(&mut stream).connect().await {
                Ok(()) => Ok(TlsStream(stream)),
                Err(e) => Err(HandshakeError(explain(
                    &e,
                    stream.ssl().verify_result(),
                    &self.host,
                ))),
            }
        })
    }
}

/// Why a handshake failed, in one line.
fn explain(error: &openssl::ssl::Error, verify: X509VerifyResult, host: &str) -> String {
    if verify != X509VerifyResult::OK {
        let why = match verify.as_raw() {
            HOSTNAME_MISMATCH | IP_ADDRESS_MISMATCH => {
                format!("the server's certificate does not name \"{host}\"")
            }
            _ => verify.error_string().to_string(),
        };
        return format!("certificate verify failed: {why}");
    }
    if let Some(io) = error.io_error() {
        return io.to_string();
    }
    let reasons: Vec<&str> = error
        .ssl_error()
        .map(|stack| stack.errors().iter().filter_map(|e| e.reason()).collect())
        .unwrap_or_default();
    if reasons.is_empty() {
        error.to_string()
    } else {
        reasons.join(": ")
    }
}

/// A failed handshake, explained; see the module documentation.
#[derive(Debug)]
pub struct HandshakeError(String);

impl fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for HandshakeError {}

/// The encrypted connection.
pub struct TlsStream<S>(SslStream<BufReader<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> postgres::tls::TlsStream for TlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match server_end_point(self.0.ssl()) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// RFC 5929's tls-server-end-point: the server certificate's hash, with the hash function of its
/// signature, except that MD5 and SHA-1 become SHA-256. None when the signature names no hash
/// (Ed25519), in which case SCRAM runs without channel binding, as with libpq.
fn server_end_point(ssl: &SslRef) -> Option<Vec<u8>> {
    let cert = ssl.peer_certificate()?;
    let algorithms = cert
        .signature_algorithm()
        .object()
        .nid()
        .signature_algorithms()?;
    let digest = match algorithms.digest {
        Nid::MD5 | Nid::SHA1 => MessageDigest::sha256(),
        nid => MessageDigest::from_nid(nid)?,
    };
    cert.digest(digest).ok().map(|hash| hash.to_vec())
}
