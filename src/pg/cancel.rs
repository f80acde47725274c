//! Cancelling a lock wait from another thread, with a deadline: a cancel request is a
//! connection of its own (TLS included), and a server that stopped answering must not hold up
//! whoever sends it.

use super::error::describe_error;
use super::socket;
use crate::step;
use crate::tls::Connector;
use postgres::CancelToken;
use std::os::fd::RawFd;
use std::sync::mpsc;
use std::time::Duration;

/// How long a cancel request may take before the sender gives up on it.
pub const CANCEL_DEADLINE: Duration = Duration::from_secs(1);

/// Cancels the running statement of one session.
#[derive(Clone)]
pub struct Canceller {
    token: CancelToken,
    connector: Connector,
    socket: Option<RawFd>,
}

impl Canceller {
    pub(super) fn new(token: CancelToken, connector: Connector, socket: Option<RawFd>) -> Self {
        Canceller {
            token,
            connector,
            socket,
        }
    }

    /// Sends a cancel request and waits for it at most `deadline`; false if it was not
    /// delivered. The request runs on a `cancel` thread, left behind if it hangs: it holds
    /// nothing but its own socket.
    pub fn cancel_within(&self, deadline: Duration) -> bool {
        let (done, outcome) = mpsc::channel();
        let token = self.token.clone();
        let connector = self.connector.clone();
        let started = std::thread::Builder::new()
            .name("cancel".into())
            .spawn(move || {
                let result = connector.cancel(&token).map_err(|e| describe_error(&e));
                let _ = done.send(result);
            });
        if started.is_err() {
            return false;
        }
        match outcome.recv_timeout(deadline) {
            Ok(Ok(())) => true,
            Ok(Err(why)) => {
                step!("cancel request failed: {why}");
                false
            }
            Err(_) => {
                step!("cancel request got no answer within {deadline:?}");
                false
            }
        }
    }

    /// The last resort when a cancel cannot be delivered: cut the session's socket. The waiting
    /// statement fails at once, and the server drops a waiter whose connection is gone.
    pub fn cut(&self) {
        if let Some(fd) = self.socket {
            socket::cut(fd);
        }
    }
}
