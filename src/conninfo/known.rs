//! The table of libpq's connection options: for each, its environment variable, what pglock does
//! with it, and one line for the man page's ENVIRONMENT section (see [`crate::docs`]). Keys not
//! in the table are refused; so are the ones pglock cannot honour safely.

use super::{Options, usage};
use anyhow::Result;

/// How pglock treats one of libpq's connection options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Use {
    Honoured,
    /// Read and checked, then replaced: pglock sets TCP keepalives from `--check-interval`,
    /// which its detection of a lost lock relies on.
    Overridden,
    /// Accepted because it changes neither the server, the user nor the security of the
    /// connection (application_name: pglock names its session itself).
    Ignored,
    /// A security setting pglock cannot implement: refusing it beats silently weakening it.
    Unsupported,
}

pub struct Known {
    pub key: &'static str,
    pub env: Option<&'static str>,
    pub how: Use,
    /// What the setting means to pglock, for the man page; empty when it has no variable.
    pub about: &'static str,
}

const fn known(key: &'static str, env: Option<&'static str>, how: Use) -> Known {
    Known {
        key,
        env,
        how,
        about: "",
    }
}

const fn var(key: &'static str, env: &'static str, how: Use, about: &'static str) -> Known {
    Known {
        key,
        env: Some(env),
        how,
        about,
    }
}

use Use::*;

/// libpq's connection options (as of PostgreSQL 17) and their environment variables.
pub const KNOWN: &[Known] = &[
    var(
        "host",
        "PGHOST",
        Honoured,
        "the server host, or a socket directory",
    ),
    var(
        "hostaddr",
        "PGHOSTADDR",
        Honoured,
        "the server's numeric address",
    ),
    var("port", "PGPORT", Honoured, "the server port (5432)"),
    var(
        "dbname",
        "PGDATABASE",
        Honoured,
        "the database (the user name)",
    ),
    var(
        "user",
        "PGUSER",
        Honoured,
        "the user (the operating-system user)",
    ),
    var(
        "password",
        "PGPASSWORD",
        Honoured,
        "the password; pglock never prints it",
    ),
    var(
        "passfile",
        "PGPASSFILE",
        Honoured,
        "the password file (~/.pgpass), with libpq's matching rules",
    ),
    var(
        "service",
        "PGSERVICE",
        Honoured,
        "a service name from the service file",
    ),
    var(
        "options",
        "PGOPTIONS",
        Honoured,
        "server options for the session",
    ),
    var(
        "connect_timeout",
        "PGCONNECT_TIMEOUT",
        Honoured,
        "seconds to wait for a connection to each host",
    ),
    known("keepalives", None, Overridden),
    known("keepalives_idle", None, Overridden),
    known("keepalives_interval", None, Overridden),
    known("keepalives_count", None, Overridden),
    known("tcp_user_timeout", None, Honoured),
    var(
        "target_session_attrs",
        "PGTARGETSESSIONATTRS",
        Honoured,
        "read-write (pglock's default), primary or any",
    ),
    var(
        "load_balance_hosts",
        "PGLOADBALANCEHOSTS",
        Honoured,
        "disable or random",
    ),
    var(
        "channel_binding",
        "PGCHANNELBINDING",
        Honoured,
        "disable, prefer or require",
    ),
    var(
        "sslmode",
        "PGSSLMODE",
        Honoured,
        "disable, allow, prefer (the default), require, verify-ca or verify-full",
    ),
    var(
        "sslrootcert",
        "PGSSLROOTCERT",
        Honoured,
        "the root certificate file, or system",
    ),
    var(
        "sslcert",
        "PGSSLCERT",
        Honoured,
        "the client certificate file",
    ),
    var(
        "sslkey",
        "PGSSLKEY",
        Honoured,
        "the client certificate's key file",
    ),
    var(
        "sslcertmode",
        "PGSSLCERTMODE",
        Honoured,
        "allow (send a client certificate if there is one) or disable",
    ),
    var(
        "ssl_min_protocol_version",
        "PGSSLMINPROTOCOLVERSION",
        Honoured,
        "the lowest TLS version, TLSv1 to TLSv1.3 (TLSv1.2)",
    ),
    var(
        "ssl_max_protocol_version",
        "PGSSLMAXPROTOCOLVERSION",
        Honoured,
        "the highest TLS version, TLSv1 to TLSv1.3",
    ),
    var(
        "gssencmode",
        "PGGSSENCMODE",
        Honoured,
        "disable, allow or prefer; pglock never uses GSSAPI encryption",
    ),
    var(
        "sslnegotiation",
        "PGSSLNEGOTIATION",
        Honoured,
        "postgres, the only value pglock supports",
    ),
    var("application_name", "PGAPPNAME", Ignored, ""),
    known("fallback_application_name", None, Ignored),
    var("client_encoding", "PGCLIENTENCODING", Ignored, ""),
    var("sslsni", "PGSSLSNI", Ignored, ""),
    var("sslcompression", "PGSSLCOMPRESSION", Ignored, ""),
    known("sslpassword", None, Ignored),
    var("krbsrvname", "PGKRBSRVNAME", Ignored, ""),
    var("gsslib", "PGGSSLIB", Ignored, ""),
    var("gssdelegation", "PGGSSDELEGATION", Ignored, ""),
    var("sslcrl", "PGSSLCRL", Unsupported, ""),
    var("sslcrldir", "PGSSLCRLDIR", Unsupported, ""),
    var("requirepeer", "PGREQUIREPEER", Unsupported, ""),
    var("require_auth", "PGREQUIREAUTH", Unsupported, ""),
    known("replication", None, Unsupported),
];

/// Variables pglock reads besides the ones of [`KNOWN`]: where the service files are. They are
/// paths, and taken as the bytes they are.
pub const FILE_VARIABLES: &[(&str, &str)] = &[
    (
        "PGSERVICEFILE",
        "the service file (~/.pg_service.conf), searched before PGSYSCONFDIR/pg_service.conf",
    ),
    (
        "PGSYSCONFDIR",
        "the directory of the system-wide pg_service.conf",
    ),
];

pub fn lookup(key: &str) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.key == key)
}

/// Refuses settings that would make pglock weaker than psql under the same configuration.
pub(super) fn check_supported(opts: &Options) -> Result<()> {
    for (key, (value, source)) in &opts.0 {
        let how = lookup(key).map_or(Unsupported, |k| k.how);
        let refused = match (*key, value.as_str()) {
            (_, "") => false,
            (_, _) if how == Unsupported => true,
            ("gssencmode", v) => !matches!(v, "disable" | "allow" | "prefer"),
            ("sslcertmode", v) => !matches!(v, "disable" | "allow"),
            ("sslnegotiation", v) => v != "postgres",
            _ => false,
        };
        if refused {
            return Err(usage(format!(
                "pglock does not support {key}={value} (set by {}): it cannot give the \
                 protection this asks for, and will not connect without it; remove the setting",
                source.describe(key)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_honoured_variable_says_what_it_means() {
        for k in KNOWN {
            let documented = !k.about.is_empty();
            let should = k.env.is_some() && k.how == Honoured;
            assert_eq!(documented, should, "{}", k.key);
        }
    }

    /// The guide's section on connecting (doc/connecting.md), which is written by hand.
    fn readme_connecting() -> &'static str {
        let readme = include_str!("../../doc/connecting.md");
        let start = readme.find("## Connecting").expect("a Connecting section");
        let end = readme[start..]
            .find("\n## ")
            .map_or(readme.len(), |n| start + n);
        &readme[start..end]
    }

    #[test]
    fn the_readme_names_every_key_and_variable() {
        let text = readme_connecting();
        for k in KNOWN {
            assert!(text.contains(&format!("`{}", k.key)), "{}", k.key);
            if let Some(var) = k.env {
                assert!(text.contains(var), "{var}");
            }
        }
        for (var, _) in FILE_VARIABLES {
            assert!(text.contains(var), "{var}");
        }
    }

    #[test]
    fn the_readme_says_which_keys_check_interval_overrides() {
        let overridden: Vec<String> = KNOWN
            .iter()
            .filter(|k| k.how == Overridden)
            .map(|k| format!("`{}`", k.key))
            .collect();
        assert_eq!(overridden.len(), 4);
        let row = readme_connecting()
            .lines()
            .find(|l| l.contains("overridden by `--check-interval`"))
            .expect("a row for the overridden keys");
        for key in &overridden {
            assert!(row.contains(key.as_str()), "{key} in {row}");
        }
    }
}
