//! One live connection as synchronous calls: tokio-postgres's client and connection on a
//! current-thread runtime of the session's own. Each call drives the connection alongside the
//! statement on the calling thread, as the synchronous rust-postgres client does (its client
//! cannot be built on a socket pglock opened), and nothing runs between calls.

use super::connect::{self, Dial};
use super::session::Failed;
use crate::tls::Connector;
use std::os::fd::RawFd;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::runtime::Runtime;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{AsyncMessage, CancelToken, Client, Error, Row, SimpleQueryMessage};

/// A tokio-postgres connection whatever its TLS stream: what reads and writes the socket.
pub type Connection = Box<dyn Messages + Send>;

/// The part of tokio-postgres's `Connection` that pglock drives.
pub trait Messages {
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<AsyncMessage, Error>>>;
}

impl<S, T> Messages for tokio_postgres::Connection<S, T>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<AsyncMessage, Error>>> {
        tokio_postgres::Connection::poll_message(self, cx)
    }
}

/// A notification the session received (it LISTENs only with `--replace`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub process_id: i32,
    pub channel: String,
    pub payload: String,
}

/// Keeps a notification; drops notices.
fn keep(notes: &mut Vec<Note>, message: AsyncMessage) {
    if let AsyncMessage::Notification(n) = message {
        notes.push(Note {
            process_id: n.process_id(),
            channel: n.channel().to_string(),
            payload: n.payload().to_string(),
        });
    }
}

/// Polls `work` with the connection beside it, until `work` is done. Messages nobody asked
/// for are dropped, but notifications are kept in `notes`; a connection error ends the call
/// with it, and a closed connection (`ended`) leaves `work` to fail as the client sees it.
pub async fn drive<T>(
    connection: &mut Connection,
    ended: &mut bool,
    notes: &mut Vec<Note>,
    work: impl Future<Output = Result<T, Error>>,
) -> Result<T, Error> {
    let mut work = std::pin::pin!(work);
    std::future::poll_fn(|cx| match read_ready(connection, ended, notes, cx) {
        Err(e) => Poll::Ready(Err(e)),
        Ok(()) => work.as_mut().poll(cx),
    })
    .await
}

/// Reads every message the connection has ready, keeping notifications; Err (and `ended`) on
/// a connection error, `ended` when it has closed.
fn read_ready(
    connection: &mut Connection,
    ended: &mut bool,
    notes: &mut Vec<Note>,
    cx: &mut Context<'_>,
) -> Result<(), Error> {
    while !*ended {
        match connection.poll_message(cx) {
            Poll::Ready(Some(Ok(message))) => keep(notes, message),
            Poll::Ready(Some(Err(e))) => {
                *ended = true;
                return Err(e);
            }
            Poll::Ready(None) => *ended = true,
            Poll::Pending => break,
        }
    }
    Ok(())
}

pub struct Link {
    runtime: Runtime,
    client: Client,
    connection: Connection,
    socket: RawFd,
    dial: Dial,
    connector: Connector,
    /// The connection has ended (the server closed it, or it failed).
    ended: bool,
    /// Notifications received and not yet taken.
    notes: Vec<Note>,
}

impl Link {
    pub(super) fn new(
        runtime: Runtime,
        client: Client,
        connection: Connection,
        socket: RawFd,
        dial: Dial,
        connector: Connector,
    ) -> Link {
        Link {
            runtime,
            client,
            connection,
            socket,
            dial,
            connector,
            ended: false,
            notes: Vec::new(),
        }
    }

    /// One round trip over the simple protocol.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, Error> {
        let work = self.client.simple_query(sql);
        self.runtime.block_on(drive(
            &mut self.connection,
            &mut self.ended,
            &mut self.notes,
            work,
        ))
    }

    /// One round trip over the extended protocol, parameters with their declared types.
    pub fn query_typed(
        &mut self,
        sql: &str,
        params: &[(&(dyn ToSql + Sync), Type)],
    ) -> Result<Vec<Row>, Error> {
        let work = self.client.query_typed(sql, params);
        self.runtime.block_on(drive(
            &mut self.connection,
            &mut self.ended,
            &mut self.notes,
            work,
        ))
    }

    /// Reads whatever the server has sent unasked, without waiting for more: Err if the
    /// connection failed, Ok(false) if it has ended.
    pub fn settle(&mut self) -> Result<bool, Error> {
        let connection = &mut self.connection;
        let ended = &mut self.ended;
        let notes = &mut self.notes;
        self.runtime.block_on(async {
            // One turn of the reactor, so that what the socket holds is seen now.
            tokio::task::yield_now().await;
            std::future::poll_fn(|cx| {
                Poll::Ready(read_ready(connection, ended, notes, cx).map(|()| !*ended))
            })
            .await
        })
    }

    /// The notifications received so far, taken.
    pub fn take_notes(&mut self) -> Vec<Note> {
        std::mem::take(&mut self.notes)
    }

    pub fn is_closed(&self) -> bool {
        self.ended || self.client.is_closed()
    }

    pub fn socket(&self) -> RawFd {
        self.socket
    }

    /// Where the connection went.
    pub fn dial(&self) -> &Dial {
        &self.dial
    }

    /// What a cancel request for this session needs.
    pub fn cancel_parts(&self) -> (CancelToken, Dial, Connector) {
        (
            self.client.cancel_token(),
            self.dial.clone(),
            self.connector.clone(),
        )
    }

    /// Says goodbye: the client's end makes the connection send Terminate, which one poll
    /// writes (the socket's buffer takes it; nothing waits for the server). Closing the socket
    /// ends the session either way.
    pub fn close(self) {
        let Link {
            runtime,
            client,
            mut connection,
            ..
        } = self;
        drop(client);
        runtime.block_on(std::future::poll_fn(|cx| {
            let _ = connection.poll_message(cx);
            Poll::Ready(())
        }));
    }
}

/// Cancels the statement running on a session, over a socket of its own, within `limit`.
pub fn cancel(parts: &(CancelToken, Dial, Connector), limit: Duration) -> Result<(), Failed> {
    let (token, dial, connector) = parts;
    connect::cancel(dial, connector, token, limit)
}
