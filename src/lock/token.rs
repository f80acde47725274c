//! `--fencing-token`: a number that grows from each holder of a lock to the next, which storage
//! can compare to reject the writes of a holder that lost the lock (Kleppmann's fencing token).
//!
//! PostgreSQL has no durable counter a plain role may bump without a table, so the token is the
//! tuple (timeline, checkpoint LSN, transaction id), read by the lock's own statement after the
//! grant, and compared lexicographically:
//! - The transaction id (`txid_current()`, one assigned to the lock's transaction) grows on a
//!   running server, so it orders holders that read the same checkpoint. Alone it is not enough:
//!   a transaction that writes nothing does not wait for its commit record to reach the disk,
//!   and after a crash the server hands out again the ids whose records had not.
//! - The checkpoint LSN (from pg_control, which is written only after the checkpoint's record is
//!   flushed) never falls on a running server, and crash recovery ends with a checkpoint of its
//!   own before it accepts connections, so every token after a crash beats every token before.
//! - The timeline (of the WAL being inserted, not pg_control's, which lags until the first
//!   checkpoint after a promotion) grows with every promotion, so a promoted standby beats the
//!   old primary although its checkpoint LSN and ids may be lower, having missed their end.
//!
//! The timeline orders primaries only if every promotion picks one above all before it: a backup
//! restored by crash recovery alone keeps its timeline, and a standby that never saw a
//! promotion's history file picks the same number again (README, "Fencing tokens").
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
    /// Reads the `token` column of [`crate::pg::sql::TOKEN_PARTS`]: a WAL file name, an LSN
    /// (`HI/LO` in hex) and a decimal transaction id, space separated.
    pub fn parse(parts: &str) -> Option<Token> {
        let hex = |digits: &str| {
            let plain = !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_hexdigit());
            plain
                .then(|| u64::from_str_radix(digits, 16).ok())
                .flatten()
        };
        let mut words = parts.split(' ');
        let (wal_file, lsn, xid) = (words.next()?, words.next()?, words.next()?);
        if words.next().is_some() || wal_file.len() != 24 {
            return None;
        }
        let (hi, lo) = lsn.split_once('/')?;
        let (hi, lo) = (hex(hi)?, hex(lo)?);
        if hi > u32::MAX.into() || lo > u32::MAX.into() {
            return None;
        }
        Some(Token {
            timeline: u32::try_from(hex(wal_file.get(..8)?)?).ok()?,
            checkpoint_lsn: hi << 32 | lo,
            xid: xid.parse().ok()?,
        })
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
            Token::parse("000000020000000000000005 0/5000028 738"),
            Some(Token {
                timeline: 2,
                checkpoint_lsn: 0x5000028,
                xid: 738
            })
        );
        assert_eq!(
            Token::parse("FFFFFFFF0000A1B20000003C A1B2/3C0000D8 18446744073709551615"),
            Some(Token {
                timeline: u32::MAX,
                checkpoint_lsn: 0xA1B2_3C00_00D8,
                xid: u64::MAX
            })
        );
        for bad in [
            "",
            "000000010000000000000005 0/5000028",
            "000000010000000000000005 0/5000028 7 8",
            "000000010000000000000005 0/5000028 x",
            "000000010000000000000005 0/5000028 -1",
            "00000001000000000000005 0/5000028 7",
            "+0000001000000000000005 0/5000028 7",
            "000000010000000000000005 05000028 7",
            "000000010000000000000005 1FFFFFFFF/0 7",
            "000000010000000000000005 +1/0 7",
        ] {
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
