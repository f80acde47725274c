//! `--fencing-token`: a number that grows from each holder of a lock to the next, which storage
//! can compare to reject the writes of a holder that lost the lock (Kleppmann's fencing token).
//!
//! PostgreSQL has no durable counter a plain role may bump without a table, so the token is the
//! tuple (timeline, checkpoint LSN, transaction id), read by the lock's own statement after the
//! grant, and compared lexicographically:
//! - The transaction id (`txid_current()`, one assigned to the lock's transaction) grows on a
//!   running server, so it orders holders that read the same checkpoint. Alone it is not enough:
//!   a transaction that writes nothing leaves no commit record, and after a crash the server
//!   hands the same ids out again.
//! - The checkpoint LSN (from pg_control, which is written only after the checkpoint's record is
//!   flushed) never falls on a running server, and crash recovery ends with a checkpoint of its
//!   own before it accepts connections, so every token after a crash beats every token before.
//! - The timeline (of the WAL being inserted, not pg_control's, which lags until the first
//!   checkpoint after a promotion) grows with every promotion, so a promoted standby beats the
//!   old primary although its checkpoint LSN and ids may be lower, having missed their end.
//!
//! The command gets it as one fixed-width decimal, 10 + 20 + 20 digits: equal width makes the
//! string order and the numeric order the same, and the parts stay readable.

use std::fmt;

/// A fencing token; the derived order (field by field) is the token's order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Token {
    pub timeline: u32,
    pub checkpoint_lsn: u64,
    pub xid: u64,
}

/// The variable the command finds it in.
pub const VARIABLE: &str = "PGLOCK_FENCING_TOKEN";

impl Token {
    /// Reads the `token` column of [`crate::pg::sql::TOKEN_PARTS`]: three decimals, space
    /// separated.
    pub fn parse(parts: &str) -> Option<Token> {
        let mut words = parts.split(' ');
        let token = Token {
            timeline: words.next()?.parse().ok()?,
            checkpoint_lsn: words.next()?.parse().ok()?,
            xid: words.next()?.parse().ok()?,
        };
        words.next().is_none().then_some(token)
    }
}

impl fmt::Display for Token {
    /// `timeline × 10^40 + checkpoint LSN × 10^20 + xid`, zero-padded to 50 digits: u32 has at
    /// most 10 digits and u64 at most 20, so no part can spill into the next.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:010}{:020}{:020}",
            self.timeline, self.checkpoint_lsn, self.xid
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_server_answer() {
        assert_eq!(
            Token::parse("2 83886416 738"),
            Some(Token {
                timeline: 2,
                checkpoint_lsn: 83886416,
                xid: 738
            })
        );
        for bad in ["", "1 2", "1 2 3 4", "1 2 x", "-1 2 3", "4294967296 1 1"] {
            assert_eq!(Token::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fixed_width_decimal() {
        let t = Token {
            timeline: 1,
            checkpoint_lsn: 22021912,
            xid: 727,
        };
        assert_eq!(
            t.to_string(),
            "00000000010000000000002202191200000000000000000727"
        );
        let max = Token {
            timeline: u32::MAX,
            checkpoint_lsn: u64::MAX,
            xid: u64::MAX,
        };
        assert_eq!(max.to_string().len(), 50);
        assert_eq!(
            max.to_string(),
            "42949672951844674407370955161518446744073709551615"
        );
    }

    /// The string and the tuple sort the same way, also where a part gains a digit (which a
    /// packing without fixed widths would get wrong).
    #[test]
    fn string_order_is_token_order() {
        let tokens = [
            (1, 22021912, 729),
            (1, 22022208, 727),
            (1, 99999999, 99999),
            (1, 100000000, 1),
            (2, 0, 0),
            (2, 67108960, 735),
            (10, 1, 1),
            (u32::MAX, u64::MAX, u64::MAX),
        ]
        .map(|(timeline, checkpoint_lsn, xid)| Token {
            timeline,
            checkpoint_lsn,
            xid,
        });
        for pair in tokens.windows(2) {
            assert!(pair[0] < pair[1]);
            assert!(pair[0].to_string() < pair[1].to_string());
        }
    }
}
