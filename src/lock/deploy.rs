//! `--supersede` and `--replace`: only the newest run of a lock waits, and a `--replace` run also
//! asks a `--replace` holder to stop. Everything here is by the server's clock and visible in
//! pg_stat_activity, so hosts whose clocks disagree still agree on which run is newest.
//!
//! How runs find each other: the first round trip of a marked run (settings and try) and its
//! wait statement begin with [`marker`], `/* pglock supersede ID */` or `/* pglock replace ID */`.
//! Its first round trip, before the try, cancels every older marked waiter of the same lock
//! (any marked waiter that is already queued is older), and says when it arrived
//! (`statement_timestamp()`). A cancelled waiter then asks whether a marked session of its lock
//! arrived after it did: if so it was superseded, otherwise the cancel was someone else's (an
//! administrator's) and it says so as before. Two runs that arrive in the same instant may both
//! queue; the one granted first looks for a newer marked waiter and, if there is one, gives the
//! lock back and steps aside ([`newer`]).
//!
//! A `--replace` holder learns of a newer `--replace` run by a notification on the lock's
//! channel ([`channel`]: it LISTENs in session scope, where its connection is idle and watched),
//! and in every scope by its periodic check, which also looks for a queued `--replace` waiter
//! (an xact-scope holder is idle in a transaction, where notifications wait, and a
//! transaction-pooling PgBouncer has no LISTEN).
//!
//! A plain run sends none of this.

use crate::key::LockId;
use crate::pg::sql::{Scope, literal, matches};

/// What a run accepts from newer runs of its lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Deploy {
    /// Neither flag: nothing is sent, nothing is accepted.
    #[default]
    Plain,
    /// `--supersede`.
    Supersede,
    /// `--replace` (which implies `--supersede`).
    Replace,
}

impl Deploy {
    /// The word in the marker and in `pglock status`.
    pub fn word(self) -> Option<&'static str> {
        match self {
            Deploy::Plain => None,
            Deploy::Supersede => Some("supersede"),
            Deploy::Replace => Some("replace"),
        }
    }
}

/// The comment a marked run's statements begin with. The lock id in it keeps the runs of
/// different locks apart without a join.
pub fn marker(deploy: Deploy, id: LockId) -> String {
    deploy.word().map_or(String::new(), |w| {
        format!("/* pglock {w} {} */ ", id.sql_args())
    })
}

/// Whether pg_stat_activity's `a.query` is a marked statement of lock `id`, waiter or newcomer.
fn marked(id: LockId) -> String {
    format!(
        "(starts_with(a.query, {}) OR starts_with(a.query, {}))",
        literal(&marker(Deploy::Supersede, id)),
        literal(&marker(Deploy::Replace, id))
    )
}

/// The LISTEN/NOTIFY channel of lock `id`: a plain identifier (no sign, no comma).
pub fn channel(id: LockId) -> String {
    let args = id.sql_args().replace('-', "n").replace(',', "_");
    format!("pglock_replace_{args}")
}

/// The column of [`arrive`]'s answer: when the run arrived, by the server's clock, as text.
pub const ARRIVED: &str = "pglock_arrived";
/// Older marked waiters this run could not cancel (no permission).
pub const OUT_OF_REACH: &str = "pglock_out_of_reach";

/// What a marked run's first round trip starts with: the marker, then the cancel of every older
/// marked waiter of the lock (whose role this one may signal; the others are counted), and when
/// this run arrived. `--replace` also notifies the lock's channel (a holder started with
/// `--replace` stops its command) and, in session scope, LISTENs on it, so that it hears of
/// newer runs once it holds the lock. In xact scope both would wait for the lock's transaction
/// to end, so neither is sent: the holder's check finds a `--replace` waiter instead.
pub fn arrive(deploy: Deploy, scope: Scope, id: LockId) -> String {
    if deploy == Deploy::Plain {
        return String::new();
    }
    let reach = "(pg_has_role(a.usesysid, 'MEMBER') OR (pg_has_role('pg_signal_backend', 'MEMBER') \
                 AND NOT coalesce(r.rolsuper, true)))";
    let mut sql = format!(
        "{mark}SELECT statement_timestamp()::text AS {ARRIVED}, \
         count(CASE WHEN w.reach THEN pg_cancel_backend(w.pid) END) AS pglock_cancelled, \
         count(*) FILTER (WHERE NOT w.reach) AS {OUT_OF_REACH} \
         FROM (SELECT DISTINCT a.pid, {reach} AS reach FROM pg_locks l \
               JOIN pg_stat_activity a ON a.pid = l.pid LEFT JOIN pg_roles r ON r.oid = a.usesysid \
               WHERE {lock} AND NOT l.granted AND a.pid <> pg_backend_pid() AND {marked}) AS w; ",
        mark = marker(deploy, id),
        lock = matches(&[id]),
        marked = marked(id),
    );
    if deploy == Deploy::Replace && scope == Scope::Session {
        let channel = channel(id);
        sql.push_str(&format!(
            "SELECT pg_notify('{channel}', current_setting('application_name')); LISTEN {channel}; "
        ));
    }
    sql
}

/// The application_name of the newest marked session of lock `id` that arrived after `arrived`
/// (this run's [`ARRIVED`]), if any, as the column `newer`. `waiting`: only one queued for the
/// lock (a granted run's question: is someone newer waiting behind me?); otherwise any (a
/// cancelled waiter's: did a newer run cancel me? It may still be in its first round trip, or
/// already granted). pg_stat_activity is read afresh: in a transaction the server would
/// otherwise answer from the snapshot it took first.
pub fn newer(id: LockId, arrived: &str, waiting: bool) -> String {
    let queued = if waiting {
        format!(
            " AND EXISTS (SELECT FROM pg_locks l WHERE {} AND NOT l.granted AND l.pid = a.pid)",
            matches(&[id])
        )
    } else {
        String::new()
    };
    format!(
        "SELECT pg_stat_clear_snapshot(); SELECT (SELECT a.application_name FROM pg_stat_activity a \
         WHERE a.pid <> pg_backend_pid() AND {marked} AND a.query_start > {since}::timestamptz{queued} \
         ORDER BY a.query_start DESC LIMIT 1) AS newer",
        marked = marked(id),
        since = literal(arrived),
    )
}

/// The column of a `--replace` holder's check that names a queued `--replace` waiter.
pub const REPLACER: &str = "replacer";

/// What a marked holder's check adds: the marker after the held tag (for `pglock status`), and
/// for `--replace` a fresh look at pg_stat_activity and a `replacer` column. `check` is
/// [`crate::pg::sql::holds`]'s statement, a single `SELECT count(*) AS n FROM ...`.
pub fn check(deploy: Deploy, id: LockId, check: &str) -> String {
    match deploy {
        Deploy::Plain => check.to_string(),
        Deploy::Supersede => format!("{}{check}", marker(deploy, id)),
        Deploy::Replace => {
            let replacer = format!(
                "(SELECT a.application_name FROM pg_locks w JOIN pg_stat_activity a ON a.pid = w.pid \
                 WHERE {} AND NOT w.granted AND starts_with(a.query, {}) \
                 ORDER BY a.query_start DESC LIMIT 1) AS {REPLACER}",
                matches(&[id]).replace("l.", "w."),
                literal(&marker(Deploy::Replace, id)),
            );
            let with = check.replacen(
                "SELECT count(*) AS n",
                &format!("SELECT count(*) AS n, {replacer}"),
                1,
            );
            format!(
                "{}SELECT pg_stat_clear_snapshot(); {with}",
                marker(deploy, id)
            )
        }
    }
}

/// `HOST (pid PID)` from a pglock application_name, or the name as it is.
pub fn who(application_name: &str) -> String {
    match crate::appname::AppName::parse(application_name) {
        Some(app) => format!("{} (pid {})", crate::appname::printable(&app.host), app.pid),
        None => crate::appname::printable(application_name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_runs_send_nothing() {
        let id = LockId::Big(-7);
        assert_eq!(arrive(Deploy::Plain, Scope::Session, id), "");
        assert_eq!(marker(Deploy::Plain, id), "");
        assert_eq!(
            check(Deploy::Plain, id, "SELECT count(*) AS n"),
            "SELECT count(*) AS n"
        );
    }

    #[test]
    fn marks_and_channels() {
        assert_eq!(
            marker(Deploy::Replace, LockId::Pair(1, -2)),
            "/* pglock replace 1,-2 */ "
        );
        assert_eq!(channel(LockId::Pair(1, -2)), "pglock_replace_1_n2");
        let first = arrive(Deploy::Replace, Scope::Session, LockId::Big(5));
        assert!(first.starts_with("/* pglock replace 5 */ SELECT statement_timestamp()"));
        assert!(first.ends_with("LISTEN pglock_replace_5; "));
        let xact = arrive(Deploy::Replace, Scope::Xact, LockId::Big(5));
        assert!(!xact.contains("LISTEN") && !xact.contains("pg_notify"));
        let held = check(
            Deploy::Replace,
            LockId::Big(5),
            &crate::pg::sql::holds(LockId::Big(5), None),
        );
        assert!(held.contains("SELECT count(*) AS n, (SELECT a.application_name FROM pg_locks w"));
        assert!(held.contains("w.locktype = 'advisory'"));
    }

    #[test]
    fn names_become_host_and_pid() {
        assert_eq!(who("pglock:deploy@ci-7:4242"), "ci-7 (pid 4242)");
    }
}
