//! Which failures of the lock connection are worth another try.
//!
//! pglock reconnects while it waits, so it must tell "later may work" from "this fails the same
//! way every time". Later may work when the connection broke (refused, reset, closed, timed
//! out), the server is shutting down, crashed or starting up (57P01, 57P02, 57P03), or there is
//! no free connection slot: max_connections, a role's or a database's CONNECTION LIMIT (53300),
//! or a pooler's queue (PgBouncer's query_wait_timeout, max_client_conn). Everything else (a
//! wrong password, an unknown database, TLS verification, a protocol violation, a pooler that
//! rejects what pglock sends) is fatal and must end pglock at once: retrying it is how a waiter
//! came to log in 381 times in ten minutes.
//!
//! PgBouncer reports everything of its own as SQLSTATE 08P01, which PostgreSQL uses for protocol
//! violations, so for 08P01 the message decides. A pooler's error that ends a query mid-way never
//! reaches pglock at all: the sync rust-postgres client reports the end of the connection that
//! follows the ErrorResponse ("connection closed") and drops the error. That happens even while
//! connecting, since rust-postgres sends `SHOW transaction_read_only` for
//! target_session_attrs=read-write. So a closed connection is told apart by what surrounds it:
//! a pooler's queue timeout comes after a wait of whole seconds ([`QUEUED_AFTER`]), a down
//! server hangs up at once, and a statement-pooling PgBouncer, which closes the connection when a
//! transaction stays open, is found by [`rejects_transactions`].

use super::Opener;
use std::io::ErrorKind;

/// What to do about a failure of the lock connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Trying again later may work. `slot`: the server or a pooler had no free connection slot,
    /// which is a queue to wait in rather than an outage.
    Transient {
        slot: bool,
    },
    Fatal(Fatal),
}

/// Which exit a fatal failure takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fatal {
    /// The server or a pooler refused or ended the session (exit 69).
    Connect,
    /// Anything else (exit 1).
    Other,
}

const TRANSIENT: Class = Class::Transient { slot: false };
const SLOT: Class = Class::Transient { slot: true };

/// Classifies an error from connecting or from a query on the lock connection.
pub fn classify(e: &tokio_postgres::Error) -> Class {
    let db = e.as_db_error();
    classify_facts(&Facts {
        code: db.map(|d| d.code().code()),
        message: db.map_or("", |d| d.message()),
        fatal: db.is_some_and(|d| matches!(d.severity(), "FATAL" | "PANIC")),
        closed: e.is_closed(),
        io: io_kind(e),
        timeout: e.to_string().starts_with("timeout waiting for server"),
    })
}

/// Classifies a failure to open or set up a socket, which has no server error to go by.
pub fn classify_io(e: &std::io::Error) -> Class {
    classify_facts(&Facts {
        io: Some(e.kind()),
        ..Facts::default()
    })
}

/// What [`classify`] looks at, apart from the error value, which only rust-postgres can build.
#[derive(Debug, Default, Clone, Copy)]
struct Facts<'a> {
    code: Option<&'a str>,
    message: &'a str,
    /// The server ended the session (severity FATAL or PANIC).
    fatal: bool,
    closed: bool,
    /// The first I/O error in the source chain: a TCP or socket failure, also inside TLS.
    io: Option<ErrorKind>,
    /// connect_timeout ran out.
    timeout: bool,
}

fn io_kind(e: &tokio_postgres::Error) -> Option<ErrorKind> {
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            return Some(io.kind());
        }
        source = s.source();
    }
    None
}

fn classify_facts(f: &Facts) -> Class {
    if let Some(code) = f.code {
        return by_code(code, f.message, f.fatal);
    }
    if f.closed || f.timeout {
        return TRANSIENT;
    }
    match f.io {
        // Permissions and malformed input do not fix themselves.
        Some(
            ErrorKind::PermissionDenied
            | ErrorKind::InvalidInput
            | ErrorKind::InvalidData
            | ErrorKind::Unsupported,
        ) => Class::Fatal(Fatal::Connect),
        // Refused, reset, aborted, unreachable, timed out, a missing Unix socket (the server is
        // not running), a failed name lookup (DNS not ready yet): the network's business.
        Some(_) => TRANSIENT,
        // TLS verification, authentication, configuration, unexpected or unparsable messages.
        None => Class::Fatal(Fatal::Other),
    }
}

fn by_code(code: &str, message: &str, fatal: bool) -> Class {
    let refused = if fatal { Fatal::Connect } else { Fatal::Other };
    match code {
        // too_many_connections: max_connections, or a role's or a database's CONNECTION LIMIT.
        "53300" => SLOT,
        // admin_shutdown, crash_shutdown, cannot_connect_now (starting up, shutting down).
        "57P01" | "57P02" | "57P03" => TRANSIENT,
        // idle_session_timeout, idle_in_transaction_session_timeout: the lease pglock set ran
        // out (pglock or its network was frozen), so the session and anything it was granted
        // are gone; a new connection starts over.
        "57P05" | "25P03" => TRANSIENT,
        // connection_exception, sqlclient_unable_to_establish_sqlconnection,
        // connection_does_not_exist, connection_failure.
        "08000" | "08001" | "08003" | "08006" => TRANSIENT,
        // protocol_violation, and every error PgBouncer makes up itself.
        "08P01" => by_pooler_message(message).unwrap_or(Class::Fatal(refused)),
        _ => Class::Fatal(refused),
    }
}

/// Phrases of a pooler's "no server connection for you yet" (PgBouncer's messages, and the
/// server's own 53300 messages, which PgBouncer before 1.21 passed on without their code).
const SLOT_PHRASES: &[&str] = &[
    "query_wait_timeout",
    "no more connections allowed",
    "client connections exceeded",
    "too many connections",
    "too many clients",
    "connection slots are reserved",
];

/// PgBouncer's messages for a server that is away for now.
const AWAY_PHRASES: &[&str] = &[
    "server shutting down",
    "client_login_timeout",
    "server login has been failing",
    "cannot connect to server",
    "server conn crashed",
    "admin forced disconnect",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "terminating connection due to administrator command",
];

/// Why a server login fails for good, also inside PgBouncer's "cached error".
const REFUSED_PHRASES: &[&str] = &[
    "authentication failed",
    "does not exist",
    "pg_hba.conf",
    "wrong password type",
    "not permitted to log in",
];

fn by_pooler_message(message: &str) -> Option<Class> {
    let has = |phrases: &[&str]| phrases.iter().any(|p| message.contains(p));
    if has(SLOT_PHRASES) {
        Some(SLOT)
    } else if has(REFUSED_PHRASES) {
        None
    } else if has(AWAY_PHRASES) {
        Some(TRANSIENT)
    } else {
        None
    }
}

/// A connection attempt closed without a word after this long was waiting in a pooler's queue.
pub const QUEUED_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// How soon after the lock query a closed connection suggests a pooler that rejects open
/// transactions: PgBouncer closes it as soon as the server answers. A pooler closing after
/// longer has other reasons (query_wait_timeout counts whole seconds).
pub const REJECTED_WITHIN: std::time::Duration = std::time::Duration::from_millis(500);

/// The message for a pooler that closes connections holding an open transaction.
pub const REJECTS_TRANSACTIONS: &str = "the connection is closed whenever a transaction stays \
     open (PgBouncer in statement pooling?): --scope xact needs session or transaction pooling, \
     or connect to the server directly ('pglock doctor' tells which pooling is in the path)";

/// Whether the server, or a pooler in front of it, closes a connection as soon as it holds an
/// open transaction, as PgBouncer's statement pooling does. A fresh connection must answer a
/// plain query and then lose the connection on BEGIN; a server that is merely going away fails
/// the plain query or the connection first.
pub fn rejects_transactions(opener: &Opener) -> bool {
    let Ok(mut probe) = opener.open() else {
        return false;
    };
    if probe.query("SELECT 1").is_err() {
        return false;
    }
    match probe.query("BEGIN") {
        Ok(_) => {
            let _ = probe.query("ROLLBACK");
            false
        }
        Err(e) => e.is_closed() || e.code().is_none() && io_kind(&e).is_some(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &'static str, message: &'static str) -> Class {
        classify_facts(&Facts {
            code: Some(code),
            message,
            fatal: true,
            ..Facts::default()
        })
    }

    #[test]
    fn server_codes() {
        for message in [
            "sorry, too many clients already",
            "too many connections for role \"ci\"",
            "too many connections for database \"app\"",
            "remaining connection slots are reserved for roles with the SUPERUSER attribute",
        ] {
            assert_eq!(db("53300", message), SLOT, "{message}");
        }
        for code in [
            "57P01", "57P02", "57P03", "08006", "08000", "08001", "08003",
        ] {
            assert_eq!(db(code, "x"), TRANSIENT, "{code}");
        }
        for code in [
            "28P01", "28000", "3D000", "57P04", "42501", "08004", "53200",
        ] {
            assert_eq!(db(code, "x"), Class::Fatal(Fatal::Connect), "{code}");
        }
        let error = Facts {
            code: Some("42883"),
            message: "function pg_advisory_lock(text) does not exist",
            fatal: false,
            ..Facts::default()
        };
        assert_eq!(classify_facts(&error), Class::Fatal(Fatal::Other));
    }

    #[test]
    fn pgbouncer_messages() {
        for message in [
            "query_wait_timeout",
            "no more connections allowed (max_client_conn)",
            "client connections exceeded (max_user_client_connections)",
            "server login has been failing, cached error: too many connections for role \"ci\" \
             (server_login_retry)",
        ] {
            assert_eq!(db("08P01", message), SLOT, "{message}");
        }
        for message in [
            "server shutting down",
            "client_login_timeout (server down)",
            "pgbouncer cannot connect to server",
            "server login has been failing, cached error: the database system is starting up \
             (server_login_retry)",
            "admin forced disconnect",
        ] {
            assert_eq!(db("08P01", message), TRANSIENT, "{message}");
        }
        for message in [
            "transaction blocks not allowed in statement pooling mode",
            "no such database: nope",
            "no such user",
            "unsupported startup parameter: search_path",
            "server login has been failing, cached error: password authentication failed for \
             user \"ci\" (server_login_retry)",
            "bouncer config error",
            "invalid message length",
        ] {
            assert_eq!(
                db("08P01", message),
                Class::Fatal(Fatal::Connect),
                "{message}"
            );
        }
    }

    #[test]
    fn broken_connections() {
        let closed = Facts {
            closed: true,
            ..Facts::default()
        };
        assert_eq!(classify_facts(&closed), TRANSIENT);
        let timeout = Facts {
            timeout: true,
            ..Facts::default()
        };
        assert_eq!(classify_facts(&timeout), TRANSIENT);
        for kind in [
            ErrorKind::ConnectionRefused,
            ErrorKind::ConnectionReset,
            ErrorKind::ConnectionAborted,
            ErrorKind::BrokenPipe,
            ErrorKind::UnexpectedEof,
            ErrorKind::TimedOut,
            ErrorKind::NotFound,
            ErrorKind::AddrNotAvailable,
            ErrorKind::Other,
        ] {
            let f = Facts {
                io: Some(kind),
                ..Facts::default()
            };
            assert_eq!(classify_facts(&f), TRANSIENT, "{kind:?}");
        }
        let denied = Facts {
            io: Some(ErrorKind::PermissionDenied),
            ..Facts::default()
        };
        assert_eq!(classify_facts(&denied), Class::Fatal(Fatal::Connect));
        // No code, no I/O error, not closed: authentication, TLS, configuration, protocol.
        assert_eq!(
            classify_facts(&Facts::default()),
            Class::Fatal(Fatal::Other)
        );
    }

    /// Real errors from rust-postgres, from sockets that misbehave in known ways.
    mod real {
        use super::super::*;
        use std::io::{Read, Write};
        use std::net::TcpListener;
        use std::time::Duration;

        use crate::pg::connect;
        use crate::pg::deadline::OnSignal;
        use crate::pg::session::Failed;

        /// pglock's own connect, which fails either before the server speaks (a socket error)
        /// or with the driver's error.
        fn open(port: u16) -> Failed {
            let mut config = tokio_postgres::Config::new();
            config.host("127.0.0.1").port(port).user("u").dbname("d");
            let keepalive = crate::conninfo::keepalive::derive(Duration::from_secs(5));
            let plain = crate::tls::Connector::Plain;
            let bound = connect::Bound {
                step: Duration::from_secs(2),
                until: None,
                on_signal: OnSignal::Grace,
            };
            match connect::open(&config, &plain, keepalive, bound) {
                Ok(_) => panic!("connected"),
                Err(failed) => failed,
            }
        }

        fn connect(port: u16) -> tokio_postgres::Error {
            match open(port) {
                Failed::Error(e) => e,
                other => panic!("not the driver's error: {other}"),
            }
        }

        /// A listener that reads the startup packet and answers with `reply`, then hangs up.
        fn answering(reply: Vec<u8>) -> u16 {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let port = listener.local_addr().unwrap().port();
            std::thread::spawn(move || {
                let (mut s, _) = listener.accept().unwrap();
                let mut len = [0u8; 4];
                s.read_exact(&mut len).unwrap();
                let mut rest = vec![0u8; u32::from_be_bytes(len) as usize - 4];
                s.read_exact(&mut rest).unwrap();
                let _ = s.write_all(&reply);
            });
            port
        }

        /// An ErrorResponse as the server or PgBouncer sends it.
        fn error_response(code: &str, message: &str) -> Vec<u8> {
            let mut body = Vec::new();
            for (tag, value) in [
                (b'S', "FATAL"),
                (b'V', "FATAL"),
                (b'C', code),
                (b'M', message),
            ] {
                body.push(tag);
                body.extend_from_slice(value.as_bytes());
                body.push(0);
            }
            body.push(0);
            let mut packet = vec![b'E'];
            packet.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
            packet.extend_from_slice(&body);
            packet
        }

        #[test]
        fn refused() {
            let port = TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let Failed::Connect(e) = open(port) else {
                panic!("not a socket error");
            };
            assert_eq!(classify_io(&e), TRANSIENT);
        }

        #[test]
        fn closed_during_startup() {
            assert_eq!(classify(&connect(answering(Vec::new()))), TRANSIENT);
        }

        #[test]
        fn errors_during_startup() {
            let cases = [
                ("53300", "too many connections for role \"ci\"", SLOT),
                ("08P01", "query_wait_timeout", SLOT),
                ("57P03", "the database system is starting up", TRANSIENT),
                (
                    "28P01",
                    "password authentication failed for user \"u\"",
                    Class::Fatal(Fatal::Connect),
                ),
                ("08P01", "no such database: d", Class::Fatal(Fatal::Connect)),
            ];
            for (code, message, want) in cases {
                let e = connect(answering(error_response(code, message)));
                assert_eq!(e.code().map(|c| c.code()), Some(code), "{e}");
                assert_eq!(classify(&e), want, "{code} {message}");
            }
        }

        #[test]
        fn a_protocol_violation_is_fatal() {
            // ReadyForQuery before any authentication: not a server pglock can talk to.
            let e = connect(answering(vec![b'Z', 0, 0, 0, 5, b'I']));
            assert_eq!(classify(&e), Class::Fatal(Fatal::Other), "{e}");
        }
    }
}
