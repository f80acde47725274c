//! Lock id derivation: how a `--key` string or a raw `--lock-id` becomes the argument of
//! PostgreSQL's advisory-lock functions, and where that lock shows up in pg_locks.

use sha2::{Digest, Sha256};
use std::fmt;

/// Keys are names, not payloads; a bound keeps application_name and messages readable.
pub const MAX_KEY_BYTES: usize = 1024;

/// The two advisory-lock key spaces, which never overlap on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockId {
    /// One bigint: `pg_advisory_lock(bigint)`.
    Big(i64),
    /// Two int4s: `pg_advisory_lock(int4, int4)`.
    Pair(i32, i32),
}

impl LockId {
    /// The default derivation: the first 8 bytes of SHA-256 of the key, big-endian, signed.
    pub fn from_key(key: &str) -> LockId {
        let digest = Sha256::digest(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        LockId::Big(i64::from_be_bytes(first))
    }

    /// Parses `--lock-id`: one i64, or `A,B` with two i32.
    pub fn parse(text: &str) -> Result<LockId, String> {
        let hint = "use one signed 64-bit integer (42) or two signed 32-bit integers (1,2)";
        match text.split_once(',') {
            None => text
                .trim()
                .parse::<i64>()
                .map(LockId::Big)
                .map_err(|_| format!("'{text}' is not a lock id: {hint}")),
            Some((a, b)) => match (a.trim().parse::<i32>(), b.trim().parse::<i32>()) {
                (Ok(a), Ok(b)) => Ok(LockId::Pair(a, b)),
                _ => Err(format!("'{text}' is not a lock id: {hint}")),
            },
        }
    }

    /// The argument list for the advisory-lock SQL functions, e.g. `42` or `1,2`.
    pub fn sql_args(&self) -> String {
        match self {
            LockId::Big(id) => id.to_string(),
            LockId::Pair(a, b) => format!("{a},{b}"),
        }
    }

    /// How pg_locks shows this lock: (classid, objid, objsubid).
    pub fn pg_locks_coordinates(&self) -> (u32, u32, i16) {
        match *self {
            LockId::Big(id) => ((id as u64 >> 32) as u32, id as u64 as u32, 1),
            LockId::Pair(a, b) => (a as u32, b as u32, 2),
        }
    }

    /// A SQL condition on pg_locks (aliased `l`) that matches exactly this lock in the current
    /// database.
    pub fn pg_locks_filter(&self) -> String {
        let (classid, objid, objsubid) = self.pg_locks_coordinates();
        format!(
            "l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
             AND l.classid = {classid} AND l.objid = {objid} AND l.objsubid = {objsubid}"
        )
    }
}

impl fmt::Display for LockId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.sql_args())
    }
}

/// Validates a `--key` value.
pub fn check_key(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("the key is empty: give the lock a name, e.g. --key nightly-report".into());
    }
    if text.len() > MAX_KEY_BYTES {
        return Err(format!(
            "the key is {} bytes long; the limit is {MAX_KEY_BYTES} bytes",
            text.len()
        ));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_vectors_from_the_notes() {
        assert_eq!(
            LockId::from_key("nightly-report"),
            LockId::Big(7440995589958059143)
        );
        assert_eq!(
            LockId::from_key("deploy-prod"),
            LockId::Big(-4774651977129594492)
        );
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!(LockId::parse("42"), Ok(LockId::Big(42)));
        assert_eq!(
            LockId::parse("-9223372036854775808"),
            Ok(LockId::Big(i64::MIN))
        );
        assert_eq!(LockId::parse("1,-2"), Ok(LockId::Pair(1, -2)));
        for bad in [
            "",
            "x",
            "1,",
            "1,2,3",
            "4294967296,1",
            "9223372036854775808",
            "1.5",
        ] {
            assert!(LockId::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn coordinates_rebuild_the_bigint() {
        let id = -4774651977129594492i64;
        let (classid, objid, sub) = LockId::Big(id).pg_locks_coordinates();
        assert_eq!(((classid as u64) << 32 | objid as u64) as i64, id);
        assert_eq!(sub, 1);
        assert_eq!(LockId::Pair(-1, 7).pg_locks_coordinates(), (u32::MAX, 7, 2));
    }

    #[test]
    fn key_bounds() {
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(1024)).is_ok());
        assert!(check_key(&"k".repeat(1025)).is_err());
    }
}
