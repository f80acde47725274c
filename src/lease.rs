//! The lease on the lock's session: how long the server keeps a lock whose holder has gone
//! silent, and the arithmetic that orders it after pglock's own fencing.
//!
//! The server ends an idle holder's session (and so frees the lock) `length` after the last
//! statement it answered: `idle_session_timeout` in session scope (PostgreSQL 14+),
//! `idle_in_transaction_session_timeout` in xact scope, and on the server's socket TCP keepalives
//! with `tcp_user_timeout` (every version; waiters too). pglock's lock checks renew it.
//!
//! The order that makes this safe: a holder that loses its server notices within two check
//! intervals (a check every interval, each answered within one), then stops the command within
//! `--kill-after`. So the lease must be longer than `2 x check_interval + kill_after`; what is
//! left over, the slack, covers the network's one-way delay and scheduling. pglock's dead man's
//! switch and pglock itself (after a freeze) act at half the slack, between the two.

use std::time::Duration;

/// The slack of the default lease.
pub const DEFAULT_SLACK: Duration = Duration::from_secs(2);
/// The least slack `--lease` may leave.
pub const MIN_SLACK: Duration = Duration::from_secs(1);
/// The longest lease the server can enforce: `idle_session_timeout`,
/// `idle_in_transaction_session_timeout` and `tcp_user_timeout` are ints of milliseconds, and
/// `SET` of a larger value fails, which would fail every run.
pub const MAX: Duration = Duration::from_millis(i32::MAX as u64);
/// How [`MAX`] is written in messages and documentation.
pub const MAX_TEXT: &str = "24d20h31m23.647s (2147483647 ms)";

/// A lease, with the timings that must fall inside it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// How long the server keeps a silent holder's session.
    pub length: Duration,
    /// How long pglock, or its dead man's switch, lets the lock go unconfirmed before it takes
    /// the lease for lost and stops the command: halfway between pglock's own detection
    /// (`2 x check_interval`) and the last moment that still leaves `kill_after` before the
    /// lease ends.
    pub unconfirmed_after: Duration,
}

/// The shortest lease that keeps the order.
pub fn minimum(check_interval: Duration, kill_after: Duration) -> Duration {
    detection(check_interval, kill_after).saturating_add(MIN_SLACK)
}

/// The lease for these settings: `length`, or the default derived from them.
pub fn new(check_interval: Duration, kill_after: Duration, length: Option<Duration>) -> Lease {
    let stopped_by = detection(check_interval, kill_after);
    let length = length.unwrap_or(stopped_by.saturating_add(DEFAULT_SLACK));
    let slack = length.saturating_sub(stopped_by);
    Lease {
        length,
        unconfirmed_after: check_interval.saturating_mul(2).saturating_add(slack / 2),
    }
}

/// When a holder that lost its server has stopped its command, counted from the last answer.
/// Saturating: the flags are bounded, but this is arithmetic on what users typed.
fn detection(check_interval: Duration, kill_after: Duration) -> Duration {
    check_interval.saturating_mul(2).saturating_add(kill_after)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[test]
    fn the_default_orders_detection_switch_and_lease() {
        // --check-interval 5s --kill-after 10s: detection at 10 s, the command dead by 20 s.
        let lease = new(S(5), S(10), None);
        assert_eq!(lease.length, S(22));
        assert_eq!(lease.unconfirmed_after, S(11));
        // Acting at `unconfirmed_after` still stops the command before the lease ends.
        assert!(lease.unconfirmed_after + S(10) < lease.length);
        assert!(lease.unconfirmed_after > S(10));
    }

    #[test]
    fn the_short_settings_of_the_nemesis_suite() {
        let lease = new(S(1), S(2), None);
        assert_eq!(lease.length, S(6));
        assert_eq!(minimum(S(1), S(2)), S(5));
    }

    #[test]
    fn max_is_what_the_server_stores() {
        assert_eq!(MAX.as_millis(), 2_147_483_647);
        assert_eq!(crate::duration::parse("24d20h31m23.647s"), Ok(MAX));
    }

    #[test]
    fn a_given_length_keeps_the_order_at_the_minimum() {
        let lease = new(S(1), S(2), Some(minimum(S(1), S(2))));
        assert_eq!(lease.unconfirmed_after, Duration::from_millis(2500));
        assert!(lease.unconfirmed_after + S(2) < lease.length);
    }
}
