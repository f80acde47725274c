//! Cancelling a lock wait from another thread, with a deadline: a cancel request is a
//! connection of its own (TLS included), and a server that stopped answering must not hold up
//! whoever sends it.

use super::connect::Dial;
use super::link;
use crate::step;
use crate::tls::Connector;
use std::time::Duration;
use tokio_postgres::CancelToken;

/// Cancels the running statement of one session.
#[derive(Clone)]
pub struct Canceller {
    parts: std::sync::Arc<(CancelToken, Dial, Connector)>,
}

impl Canceller {
    pub(super) fn new(parts: (CancelToken, Dial, Connector)) -> Self {
        Canceller {
            parts: std::sync::Arc::new(parts),
        }
    }

    /// Sends a cancel request and waits for it at most `deadline`; false if it was not
    /// delivered. The request is a deadline step on a socket of its own, opened to the address
    /// the session itself used, so nothing is left behind when the server does not answer.
    pub fn cancel_within(&self, deadline: Duration) -> bool {
        match link::cancel(&self.parts, deadline) {
            Ok(()) => true,
            Err(why) => {
                step!("cancel request failed: {why}");
                false
            }
        }
    }
}
