//! One dedicated connection: statements over the simple protocol, each a [`deadline`] step, and
//! the socket that the supervising loop polls.

use super::cancel::Canceller;
use super::deadline::{self, Cut};
use super::error::describe_error;
use super::link::Link;
use crate::duration;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Row, SimpleQueryMessage};

pub struct Session {
    link: Link,
    /// Where unbounded statements ([`Session::query`]: a lock wait) must end; None: only a
    /// signal ends them.
    wait_until: Option<Instant>,
    /// The server process behind the connection, once the settings round trip said.
    backend_pid: Option<i32>,
}

/// Why a bounded statement, or a connect, failed.
#[derive(Debug)]
pub enum Failed {
    /// No answer within the limit: the connection was cut.
    NoAnswer(Duration),
    Error(tokio_postgres::Error),
    /// The socket could not be opened (a refused connection, a failed name lookup, no server
    /// behind a Unix socket path) or set up.
    Connect(std::io::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::NoAnswer(limit) => write!(f, "no answer within {}", duration::format(*limit)),
            Failed::Error(e) => f.write_str(&describe_error(e)),
            Failed::Connect(e) => write!(f, "error connecting to server: {e}"),
        }
    }
}

impl std::error::Error for Failed {}

impl Session {
    pub(super) fn new(link: Link) -> Session {
        Session {
            link,
            wait_until: None,
            backend_pid: None,
        }
    }

    /// A handle that cancels a running statement from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller::new(self.link.cancel_parts())
    }

    /// Reads the backend's pid from the answer to [`super::sql::prelude`].
    pub fn learn_backend_pid(&mut self, messages: &[SimpleQueryMessage]) {
        if let Some(pid) = final_column(messages, super::sql::BACKEND_PID) {
            self.backend_pid = pid.parse().ok();
        }
    }

    /// The server process behind the connection, when known.
    pub fn backend_pid(&self) -> Option<i32> {
        self.backend_pid
    }

    /// Where the connection went (which host of a list answered, over which address).
    pub fn peer(&self) -> &super::connect::Dial {
        self.link.dial()
    }

    /// The connection's socket, for poll(2) while the command runs.
    pub fn socket(&self) -> Option<RawFd> {
        Some(self.link.socket())
    }

    /// From now on [`Session::query`] (a lock wait) must be answered by `until`, or the
    /// connection is cut: the client's own bound on --timeout, which the server's lock_timeout
    /// alone does not give when the server stops answering.
    pub fn wait_until(&mut self, until: Option<Instant>) {
        self.wait_until = until;
    }

    /// One round trip, as long as the wait allows (see [`Session::wait_until`]).
    pub fn query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, tokio_postgres::Error> {
        let limit = self
            .wait_until
            .map(|until| until.saturating_duration_since(Instant::now()));
        let step = deadline::begin(limit, Cut::Socket(self.link.socket()));
        let result = self.link.simple_query(sql);
        step.end();
        result
    }

    /// One round trip that must be answered within `limit`; otherwise the connection is cut
    /// and the statement fails.
    pub fn query_within(
        &mut self,
        sql: &str,
        limit: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, Failed> {
        self.within(limit, |link| link.simple_query(sql))
    }

    /// Runs `statement` on the client, cutting the connection if it takes longer than `limit`.
    fn within<T>(
        &mut self,
        limit: Duration,
        statement: impl FnOnce(&mut Link) -> Result<T, tokio_postgres::Error>,
    ) -> Result<T, Failed> {
        let step = deadline::begin(Some(limit), Cut::Socket(self.link.socket()));
        let result = statement(&mut self.link);
        let expired = step.end();
        match result {
            Err(_) if expired => Err(Failed::NoAnswer(limit)),
            Err(e) => Err(Failed::Error(e)),
            Ok(value) => Ok(value),
        }
    }

    /// One round trip over the extended protocol, for statements with bind parameters: an
    /// unnamed statement whose Parse, Bind, Execute and Sync go out in one message, so a
    /// transaction-pooling PgBouncer runs it on one server connection. `types` declares each
    /// parameter's type.
    pub fn query_typed(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        types: &[Type],
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        self.link.query_typed(sql, &typed(params, types))
    }

    /// [`Session::query_typed`], answered within `limit` or the connection is cut, as
    /// [`Session::query_within`].
    pub fn query_typed_within(
        &mut self,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
        types: &[Type],
        limit: Duration,
    ) -> Result<Vec<Row>, Failed> {
        let typed = typed(params, types);
        self.within(limit, |link| link.query_typed(sql, &typed))
    }

    /// Handles whatever the server sent unasked. Nothing is expected, so this is how a closed
    /// session shows up at once: Err(reason) means the session is gone.
    pub fn readable(&mut self) -> Result<(), String> {
        match self.link.settle() {
            Err(e) => Err(format!("the connection failed: {}", describe_error(&e))),
            Ok(false) => Err("the server closed the connection".into()),
            Ok(true) if self.link.is_closed() => Err("the server closed the connection".into()),
            Ok(true) => Ok(()),
        }
    }

    /// The notifications received so far (a session LISTENs only with `--replace`).
    pub fn take_notifications(&mut self) -> Vec<super::link::Note> {
        self.link.take_notes()
    }

    /// Says goodbye. Terminate is fire-and-forget; a dead connection just closes.
    pub fn close(self) {
        self.link.close();
    }
}

/// Parameters paired with their declared types, as rust-postgres takes them.
fn typed<'a>(
    params: &[&'a (dyn ToSql + Sync)],
    types: &[Type],
) -> Vec<(&'a (dyn ToSql + Sync), Type)> {
    params.iter().copied().zip(types.iter().cloned()).collect()
}

/// The first column of the first row of the last statement in a (multi-statement) result.
pub fn final_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    let ends: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .map(|(i, _)| i)
        .collect();
    let start = match ends.len() {
        0 | 1 => 0,
        n => ends[n - 2] + 1,
    };
    first_value(&messages[start..])
}

/// The first column of the first row.
pub fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("").to_string()),
        _ => None,
    })
}

/// A named column of the first row of the last statement.
pub fn final_column(messages: &[SimpleQueryMessage], name: &str) -> Option<String> {
    messages.iter().rev().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => row.try_get(name).ok().flatten().map(str::to_string),
        _ => None,
    })
}
