//! Where a lock shows up in pg_locks: the one formula the tests use for the coordinates of a key,
//! a raw id, a pair, and a `--limit` semaphore's slots and queue, computed independently of
//! pglock's own code, and the one predicate that finds a lock's rows.

use postgres::Client;

/// An advisory lock as PostgreSQL knows it: the bigint space or the (int4, int4) space, which
/// never overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lock {
    Id(i64),
    Pair(i32, i32),
}

/// The lock id of a key: the first 8 bytes of its SHA-256, big-endian, as the README gives it.
pub fn key_id(key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(key.as_bytes());
    i64::from_be_bytes(d[..8].try_into().unwrap())
}

impl Lock {
    /// The lock of `--key key`.
    pub fn key(key: &str) -> Lock {
        Lock::Id(key_id(key))
    }

    /// Slot `i` of the `--limit` semaphore on `base`: the key `base NUL "slot" NUL i`.
    pub fn slot(base: &str, i: usize) -> Lock {
        Lock::key(&format!("{base}\0slot\0{i}"))
    }

    /// The queue ("gate") of the `--limit` semaphore on `base`: the key `base NUL "gate"`.
    pub fn gate(base: &str) -> Lock {
        Lock::key(&format!("{base}\0gate"))
    }

    /// The bigint id; a pair has none.
    #[track_caller]
    pub fn id(self) -> i64 {
        match self {
            Lock::Id(id) => id,
            Lock::Pair(a, b) => panic!("the pair ({a}, {b}) has no bigint id"),
        }
    }

    /// (classid, objid, objsubid) in pg_locks: a bigint's high and low 32 bits with objsubid 1,
    /// or a pair's two numbers (as unsigned oids) with objsubid 2.
    pub fn coordinates(self) -> (i64, i64, i16) {
        match self {
            Lock::Id(id) => (
                (id as u64 >> 32) as i64,
                (id as u64 & 0xffff_ffff) as i64,
                1,
            ),
            Lock::Pair(a, b) => (a as u32 as i64, b as u32 as i64, 2),
        }
    }

    /// Takes the lock exclusively on a session of the test's own, as another program would in
    /// SQL; closing the session (dropping the client) frees it.
    pub fn take_in_sql(self) -> Client {
        let mut client = super::sql();
        match self {
            Lock::Id(id) => client.execute("SELECT pg_advisory_lock($1)", &[&id]),
            Lock::Pair(a, b) => client.execute("SELECT pg_advisory_lock($1, $2)", &[&a, &b]),
        }
        .unwrap();
        client
    }

    /// Lets go of the lock that [`Lock::take_in_sql`] took on `client`, at once.
    pub fn unlock_in_sql(self, client: &mut Client) {
        let unlocked: bool = match self {
            Lock::Id(id) => client.query_one("SELECT pg_advisory_unlock($1)", &[&id]),
            Lock::Pair(a, b) => client.query_one("SELECT pg_advisory_unlock($1, $2)", &[&a, &b]),
        }
        .unwrap()
        .get(0);
        assert!(unlocked, "{self:?} was not held");
    }
}

/// The rows of one lock in this database's pg_locks, granted or waiting.
const ROWS: &str = "FROM pg_locks WHERE locktype = 'advisory' \
     AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
     AND classid::bigint = $1 AND objid::bigint = $2 AND objsubid = $3 AND granted = $4";

/// How many sessions hold (`granted`) or wait for `lock`.
pub fn lock_rows(client: &mut Client, lock: Lock, granted: bool) -> i64 {
    let (classid, objid, objsubid) = lock.coordinates();
    client
        .query_one(
            &format!("SELECT count(*) {ROWS}"),
            &[&classid, &objid, &objsubid, &granted],
        )
        .unwrap()
        .get(0)
}

/// The backend pids that hold (`granted`) or wait for `lock`.
pub fn lock_pids(client: &mut Client, lock: Lock, granted: bool) -> Vec<i32> {
    let (classid, objid, objsubid) = lock.coordinates();
    client
        .query(
            &format!("SELECT pid {ROWS} ORDER BY pid"),
            &[&classid, &objid, &objsubid, &granted],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}
