//! Lock id derivation: how a `--key` string or a raw `--lock-id` becomes the argument of
//! PostgreSQL's advisory-lock functions, and where that lock shows up in pg_locks.

use clap::ValueEnum;
use sha2::{Digest, Sha256};
use std::fmt;

/// How a key string becomes a lock id: pglock's own formula, or another library's, so that
/// pglock can take the same lock as an application that uses that library.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum KeyHash {
    /// First 8 bytes of SHA-256(key), big-endian, signed.
    #[default]
    Sha256,
    /// sqlx's PgAdvisoryLock::new: HKDF-SHA256 (no salt), 8 bytes, little-endian, signed.
    Sqlx,
    /// Python postgres-lock: SHA-1 of the key as a decimal integer, its first 18 digits.
    #[value(name = "postgres-lock")]
    PostgresLock,
}

impl KeyHash {
    pub fn id(self, key: &str) -> LockId {
        match self {
            KeyHash::Sha256 => LockId::from_key(key),
            KeyHash::Sqlx => {
                let mut out = [0u8; 8];
                hkdf::Hkdf::<Sha256>::new(None, key.as_bytes())
                    .expand(b"SQLx (Rust) Postgres advisory lock", &mut out)
                    .expect("8 bytes is a valid HKDF-SHA256 output length");
                LockId::Big(i64::from_le_bytes(out))
            }
            KeyHash::PostgresLock => {
                let digest = sha1::Sha1::digest(key.as_bytes());
                let decimal = to_decimal(&digest);
                let first: String = decimal.chars().take(18).collect();
                LockId::Big(first.parse().expect("18 decimal digits fit in an i64"))
            }
        }
    }
}

/// A big-endian unsigned integer of any length, in decimal.
fn to_decimal(bytes: &[u8]) -> String {
    let mut number = bytes.to_vec();
    let mut digits = Vec::new();
    while number.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for byte in number.iter_mut() {
            let cur = (rem << 8) | u32::from(*byte);
            *byte = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).expect("ASCII digits")
}

/// The ids behind `--limit N` for a lock: slot `i` is the first 8 bytes of
/// SHA-256(base NUL "slot" NUL i) and the waiters' gate SHA-256(base NUL "gate"), where base is
/// the key, or `lock-id:ID` for a raw id. A NUL cannot occur in a command-line key, so these
/// never collide with a plain key's id.
pub fn semaphore_id(base: &str, what: &str) -> LockId {
    LockId::from_key(&format!("{base}\0{what}"))
}

/// Slot `i` (0-based) of the semaphore on `base`.
pub fn slot_id(base: &str, i: usize) -> LockId {
    semaphore_id(base, &format!("slot\0{i}"))
}

/// The gate of the semaphore on `base`: its waiters' queue.
pub fn gate_id(base: &str) -> LockId {
    semaphore_id(base, "gate")
}

/// What the ids of a `--limit` semaphore derive from, and what the ledger's `key` column holds:
/// the key, or `lock-id:ID` for a raw id.
pub fn base(key: Option<&str>, id: LockId) -> String {
    match key {
        Some(k) => k.to_string(),
        None => format!("lock-id:{id}"),
    }
}

/// Which lock, and how it is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The key, or the raw id as text: what messages and application_name show.
    pub label: String,
    /// Some for --key, None for --lock-id.
    pub key: Option<String>,
    pub id: LockId,
    /// What semaphore slot ids derive from: the key, or `lock-id:ID`.
    pub base: String,
}

impl Target {
    /// `--key` (hashed with `hash`) or `--lock-id`; clap guarantees exactly one.
    pub fn new(key: Option<&str>, lock_id: Option<LockId>, hash: KeyHash) -> Target {
        match (key, lock_id) {
            (Some(key), _) => Target {
                label: key.to_string(),
                key: Some(key.to_string()),
                id: hash.id(key),
                base: base(Some(key), hash.id(key)),
            },
            (None, Some(id)) => Target {
                label: id.to_string(),
                key: None,
                id,
                base: base(None, id),
            },
            // clap's required group rules this out; a zero id keeps it total without a panic.
            (None, None) => Target::new(None, Some(LockId::Big(0)), hash),
        }
    }
}

/// Keys are names, not payloads; a bound keeps application_name and messages readable.
pub const MAX_KEY_BYTES: usize = 1024;

/// The two advisory-lock key spaces, which never overlap on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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
}

/// Every advisory lock in the current database: a SQL condition on pg_locks aliased `l`.
pub const ALL_ADVISORY: &str = "l.locktype = 'advisory' \
    AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())";

/// A SQL condition on pg_locks (aliased `l`) that matches exactly these locks in the current
/// database (none for an empty list). The one place that knows where pg_locks shows an advisory
/// lock, so every statement that looks for one uses it; the text holds only numbers.
pub fn pg_locks_match(ids: &[LockId]) -> String {
    predicate(ids, " ")
}

/// [`pg_locks_match`] laid out for a person to read and paste, one condition a line.
pub fn pg_locks_match_pretty(ids: &[LockId]) -> String {
    predicate(ids, "\n   ")
}

/// Many locks are three arrays of coordinates, which the server joins by hashing: a list of
/// 1026 row comparisons took 20 ms to plan, the arrays well under 1 ms.
fn predicate(ids: &[LockId], sep: &str) -> String {
    let which = match ids {
        [] => "false".to_string(),
        [one] => {
            let (classid, objid, objsubid) = one.pg_locks_coordinates();
            format!("l.classid = {classid} AND l.objid = {objid} AND l.objsubid = {objsubid}")
        }
        many => {
            let column = |pick: fn((u32, u32, i16)) -> String| {
                let list: Vec<String> = many
                    .iter()
                    .map(|id| pick(id.pg_locks_coordinates()))
                    .collect();
                list.join(",")
            };
            format!(
                "(l.classid, l.objid, l.objsubid) IN (SELECT * FROM unnest('{{{}}}'::oid[], \
                 '{{{}}}'::oid[], '{{{}}}'::int2[]))",
                column(|c| c.0.to_string()),
                column(|c| c.1.to_string()),
                column(|c| c.2.to_string()),
            )
        }
    };
    format!(
        "l.locktype = 'advisory'{sep}AND l.database = (SELECT oid FROM pg_database WHERE \
         datname = current_database()){sep}AND {which}"
    )
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
    fn other_libraries_vectors() {
        // From the field notes, and computed independently with Python's hashlib and hmac.
        let cases = [
            (
                "nightly-report",
                7440995589958059143,
                8797529593787444750,
                106076166759017618,
            ),
            (
                "deploy-prod",
                -4774651977129594492,
                6158424737360530806,
                490043920424174915,
            ),
            (
                "my first Postgres advisory lock!",
                -189962333788185713,
                -5560419505042474287,
                113547194377684280,
            ),
            (
                "straße-backup",
                -7639829751000102351,
                -723981962518612732,
                138453920063380248,
            ),
            (
                "夜间报告",
                4604635150399458250,
                -3912964464901551898,
                134201441990048539,
            ),
            (
                "🔒",
                7701668758205862634,
                -2174858188468066231,
                881169683542943582,
            ),
        ];
        for (key, sha, sqlx, pl) in cases {
            assert_eq!(KeyHash::Sha256.id(key), LockId::Big(sha), "{key}");
            assert_eq!(KeyHash::Sqlx.id(key), LockId::Big(sqlx), "{key}");
            assert_eq!(KeyHash::PostgresLock.id(key), LockId::Big(pl), "{key}");
        }
    }

    #[test]
    fn decimal_conversion() {
        assert_eq!(to_decimal(&[0]), "0");
        assert_eq!(to_decimal(&[1, 0]), "256");
        assert_eq!(to_decimal(&[0xff; 8]), u64::MAX.to_string());
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
    fn one_predicate_for_one_or_many_locks() {
        let db = "l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE \
                  datname = current_database())";
        assert_eq!(ALL_ADVISORY, db);
        assert_eq!(
            pg_locks_match(&[LockId::Pair(-7, 9)]),
            format!("{db} AND l.classid = 4294967289 AND l.objid = 9 AND l.objsubid = 2")
        );
        assert_eq!(
            pg_locks_match(&[LockId::Big(-4294967289), LockId::Pair(1, 2)]),
            format!(
                "{db} AND (l.classid, l.objid, l.objsubid) IN (SELECT * FROM unnest(\
                 '{{4294967295,1}}'::oid[], '{{7,2}}'::oid[], '{{1,2}}'::int2[]))"
            )
        );
        assert_eq!(pg_locks_match(&[]), format!("{db} AND false"));
        assert_eq!(
            pg_locks_match_pretty(&[LockId::Big(5)]),
            "l.locktype = 'advisory'\n   AND l.database = (SELECT oid FROM pg_database WHERE \
             datname = current_database())\n   AND l.classid = 0 AND l.objid = 5 AND l.objsubid = 1"
        );
    }

    #[test]
    fn semaphore_ids_follow_the_documented_formula() {
        // First 8 bytes of SHA-256(base NUL "slot" NUL i) and (base NUL "gate"), computed with
        // Python's hashlib.
        assert_eq!(slot_id("k", 0), LockId::Big(9009068897969849019));
        assert_eq!(gate_id("k"), LockId::Big(-4934267895824464760));
        assert_eq!(slot_id("lock-id:42", 2), LockId::Big(-6512913733935295479));
    }

    #[test]
    fn key_bounds() {
        assert!(check_key("").is_err());
        assert!(check_key(&"k".repeat(1024)).is_ok());
        assert!(check_key(&"k".repeat(1025)).is_err());
    }
}
