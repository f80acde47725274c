//! Cancelling a lock wait from another thread, with a deadline: a cancel request is a
//! connection of its own (TLS included), and a server that stopped answering must not hold up
//! whoever sends it.

use super::error::describe_error;
use crate::step;
use crate::tls::Connector;
use postgres::CancelToken;
use std::sync::mpsc;
use std::time::Duration;

/// Cancels the running statement of one session.
#[derive(Clone)]
pub struct Canceller {
    token: CancelToken,
    connector: Connector,
}

impl Canceller {
    pub(super) fn new(token: CancelToken, connector: Connector) -> Self {
        Canceller { token, connector }
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
}
