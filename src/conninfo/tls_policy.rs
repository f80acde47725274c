//! libpq's TLS settings (sslmode, sslrootcert, sslcert, sslkey, sslcertmode and the protocol
//! bounds) turned into a [`Verify`] policy, with libpq's defaults under ~/.postgresql.

use super::{Options, invalid, usage};
use crate::tls::{self, Check, ClientCert, Roots, SslMode, Verify};
use anyhow::Result;
use native_tls::Protocol;
use std::path::{Path, PathBuf};

/// The policy for these settings; `only_sockets` when no host of the list uses TCP.
pub(super) fn tls_policy(
    opts: &Options,
    home: Option<&Path>,
    only_sockets: bool,
) -> Result<Verify> {
    let system = opts.get("sslrootcert") == Some("system");
    let mode = ssl_mode(opts, system)?;
    let min_protocol = protocol(opts, "ssl_min_protocol_version")?;
    let max_protocol = protocol(opts, "ssl_max_protocol_version")?;
    // PostgreSQL never offers TLS on a Unix socket, and libpq ignores sslmode there.
    if mode == SslMode::Disable || only_sockets {
        return Ok(Verify::disabled());
    }
    let defaults = Defaults(home);
    let roots = if system {
        Some(Roots::System)
    } else {
        root_file(opts, mode, &defaults)?
    };
    let check = match (mode, &roots) {
        (SslMode::Disable, _) => Check::Disabled,
        (SslMode::Allow | SslMode::Prefer, _) => Check::Nothing,
        // libpq: "if a root CA file exists, require behaves like verify-ca".
        (SslMode::Require, Some(_)) => Check::Chain,
        (SslMode::Require, None) => Check::Nothing,
        (SslMode::VerifyCa, _) => Check::Chain,
        (SslMode::VerifyFull, _) => Check::Full,
    };
    Ok(Verify {
        check,
        roots: roots.unwrap_or(Roots::System),
        identity: identity(opts, &defaults)?,
        min_protocol,
        max_protocol,
    })
}

/// libpq's files under ~/.postgresql.
struct Defaults<'a>(Option<&'a Path>);

impl Defaults<'_> {
    fn file(&self, name: &str) -> Option<PathBuf> {
        self.0.map(|h| h.join(".postgresql").join(name))
    }
}

/// sslmode, whose default is verify-full with sslrootcert=system and prefer otherwise.
fn ssl_mode(opts: &Options, system: bool) -> Result<SslMode> {
    let mode = match opts.get("sslmode") {
        None if system => SslMode::VerifyFull,
        None => SslMode::Prefer,
        Some(v) => SslMode::parse(v).ok_or_else(|| {
            invalid(
                opts,
                "sslmode",
                v,
                "disable, allow, prefer, require, verify-ca or verify-full",
            )
        })?,
    };
    if system && mode != SslMode::VerifyFull {
        return Err(usage(format!(
            "sslrootcert=system needs sslmode=verify-full, not {} (from {})",
            opts.get("sslmode").unwrap_or(""),
            opts.source("sslmode")
        )));
    }
    Ok(mode)
}

/// The roots of the sslrootcert file (or ~/.postgresql/root.crt), when the mode uses them.
fn root_file(opts: &Options, mode: SslMode, defaults: &Defaults) -> Result<Option<Roots>> {
    let file = opts
        .get("sslrootcert")
        .map(PathBuf::from)
        .or_else(|| defaults.file("root.crt"));
    match file {
        // prefer never verifies (the choice); don't pay for reading roots.
        Some(f) if f.exists() && matches!(mode, SslMode::Allow | SslMode::Prefer) => Ok(None),
        Some(f) if f.exists() => Ok(Some(Roots::File(tls::load_roots(&f)?))),
        missing if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
            let shown =
                missing.map_or("~/.postgresql/root.crt".into(), |f| f.display().to_string());
            Err(usage(format!(
                "sslmode={} needs a root certificate, and \"{shown}\" does not exist; set \
                 sslrootcert to your CA's certificate, use sslrootcert=system for the operating \
                 system's trust store, or choose sslmode=require",
                opts.get("sslmode").unwrap_or("verify-full")
            )))
        }
        _ => Ok(None),
    }
}

/// The client certificate and key, when sslcert (or ~/.postgresql/postgresql.crt) exists.
fn identity(opts: &Options, defaults: &Defaults) -> Result<Option<ClientCert>> {
    if opts.get("sslcertmode") == Some("disable") {
        return Ok(None);
    }
    let cert = opts
        .get("sslcert")
        .map(PathBuf::from)
        .or_else(|| defaults.file("postgresql.crt"));
    // libpq sends no certificate when the file is missing, even a named one.
    let Some(cert) = cert.filter(|c| c.exists()) else {
        return Ok(None);
    };
    let key = opts
        .get("sslkey")
        .map(PathBuf::from)
        .or_else(|| defaults.file("postgresql.key"))
        .unwrap_or_else(|| PathBuf::from("postgresql.key"));
    Ok(Some(tls::load_identity(&cert, &key)?))
}

fn protocol(opts: &Options, key: &str) -> Result<Option<Protocol>> {
    match opts.get(key) {
        None if key == "ssl_min_protocol_version" => Ok(Some(Protocol::Tlsv12)),
        None => Ok(None),
        Some(v) => tls::parse_protocol(v)
            .ok_or_else(|| invalid(opts, key, v, "TLSv1, TLSv1.1, TLSv1.2 or TLSv1.3")),
    }
}
