//! Errors from the server or the network, as pglock reports and classifies them.

use tokio_postgres::error::SqlState;

/// A postgres error as one line: the server's own message when there is one, else the chain of
/// causes with repeated links left out: native-tls shows OpenSSL's text with the certificate
/// check's result appended, and its cause shows the same text again without it.
pub fn describe_error(e: &tokio_postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let mut text = db.message().to_string();
        if let Some(detail) = db.detail() {
            text.push_str(" (");
            text.push_str(detail);
            text.push(')');
        }
        return text.replace('\n', " ");
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text.replace('\n', " ")
}

/// Whether trying again later may help: the connection broke, the server is restarting or has
/// no free slot, as opposed to a wrong password, an unknown database or a bad query. The one
/// judgement is [`super::classify`]'s; this is its yes or no.
pub fn is_transient(e: &tokio_postgres::Error) -> bool {
    matches!(
        super::classify::classify(e),
        super::classify::Class::Transient { .. }
    )
}

/// The wait ended because the server cancelled it (a signal of ours, or pg_cancel_backend).
pub fn is_cancel(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::QUERY_CANCELED)
}

/// lock_timeout ran out.
pub fn is_lock_timeout(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&SqlState::LOCK_NOT_AVAILABLE)
}
