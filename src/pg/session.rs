//! One dedicated connection: statements over the simple protocol, bounded when asked, and the
//! socket that the supervising loop polls.

use super::cancel::Canceller;
use super::error::describe_error;
use super::watchdog::Watchdog;
use crate::duration;
use crate::tls::Connector;
use postgres::fallible_iterator::FallibleIterator;
use postgres::types::{ToSql, Type};
use postgres::{Client, Row, SimpleQueryMessage};
use std::os::fd::RawFd;
use std::time::Duration;

pub struct Session {
    client: Client,
    connector: Connector,
    socket: Option<RawFd>,
    /// Started with the command, or by the first bounded statement.
    watchdog: Option<Watchdog>,
}

/// Why a bounded statement failed.
#[derive(Debug)]
pub enum Failed {
    /// No answer within the limit: the connection was cut.
    NoAnswer(Duration),
    Error(postgres::Error),
}

impl std::fmt::Display for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failed::NoAnswer(limit) => write!(f, "no answer within {}", duration::format(*limit)),
            Failed::Error(e) => f.write_str(&describe_error(e)),
        }
    }
}

impl Session {
    pub(super) fn new(client: Client, connector: Connector, socket: Option<RawFd>) -> Session {
        Session {
            client,
            connector,
            socket,
            watchdog: None,
        }
    }

    /// A handle that cancels a running statement from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller::new(
            self.client.cancel_token(),
            self.connector.clone(),
            self.socket,
        )
    }

    /// The connection's socket, for poll(2) while the command runs.
    pub fn socket(&self) -> Option<RawFd> {
        self.socket
    }

    /// One round trip, as long as it takes (a lock wait).
    pub fn query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, postgres::Error> {
        self.client.simple_query(sql)
    }

    /// One round trip that must be answered within `limit`; otherwise the connection is cut
    /// and the statement fails. Without a known socket it cannot be bounded.
    pub fn query_within(
        &mut self,
        sql: &str,
        limit: Duration,
    ) -> Result<Vec<SimpleQueryMessage>, Failed> {
        self.within(limit, |client| client.simple_query(sql))
    }

    /// Starts the thread that bounds [`Session::query_within`] now, off the path of the first
    /// bounded statement (it would otherwise start with it). `period` is the shortest limit
    /// the statements will get (see [`Watchdog`]).
    pub fn start_watchdog(&mut self, period: Duration) {
        if self.watchdog.is_none() {
            self.watchdog = self.socket.and_then(|fd| Watchdog::start(fd, period).ok());
        }
    }

    /// Runs `statement` on the client, cutting the connection if it takes longer than `limit`.
    fn within<T>(
        &mut self,
        limit: Duration,
        statement: impl FnOnce(&mut Client) -> Result<T, postgres::Error>,
    ) -> Result<T, Failed> {
        self.start_watchdog(limit);
        if let Some(w) = &self.watchdog {
            w.arm(limit);
        }
        let result = statement(&mut self.client);
        let expired = self.watchdog.as_ref().is_some_and(Watchdog::disarm);
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
    ) -> Result<Vec<Row>, postgres::Error> {
        self.client.query_typed(sql, &typed(params, types))
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
        self.within(limit, |client| client.query_typed(sql, &typed))
    }

    /// Handles whatever the server sent unasked. Nothing is expected, so this is how a closed
    /// session shows up at once: Err(reason) means the session is gone.
    pub fn readable(&mut self) -> Result<(), String> {
        // A bounded wait rather than iter(): the client's runtime only learns that the socket is
        // readable when it gets to poll its reactor, which iter() never lets it do.
        let outcome = self
            .client
            .notifications()
            .timeout_iter(Duration::from_millis(10))
            .next()
            .map(|_| ());
        if let Err(e) = outcome {
            return Err(format!("the connection failed: {}", describe_error(&e)));
        }
        if self.client.is_closed() {
            return Err("the server closed the connection".into());
        }
        Ok(())
    }

    /// Says goodbye. Terminate is fire-and-forget; a dead connection just closes.
    pub fn close(self) {
        let Session {
            client, watchdog, ..
        } = self;
        drop(watchdog);
        let _ = client.close();
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
