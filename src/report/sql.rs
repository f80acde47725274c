//! Every statement the report layer sends or prints. They are built only from static text and
//! numbers (lock coordinates from `key::pg_locks_match`), never from names or user input, and
//! each one has a snapshot test below: a change to a statement shows up as a diff in review.

use crate::key::{self, LockId};

/// Which advisory locks a report reads.
#[derive(Debug, Clone, Copy)]
pub enum Locks<'a> {
    /// Every advisory lock in the current database.
    All,
    /// These locks (in the current database).
    These(&'a [LockId]),
}

/// The output columns of [`rows`], by name: model.rs reads rows by these names, and unit tests
/// check both sides against this list.
#[cfg(test)]
pub const COLUMNS: [&str; 18] = [
    "classid",
    "objid",
    "objsubid",
    "mode",
    "granted",
    "pid",
    "application_name",
    "usename",
    "client_addr",
    "state",
    "backend_start",
    "held_since",
    "waiting_since",
    "age_secs",
    "queue_position",
    "visible",
    "viewer",
    "accepts",
];

/// `pg::sql::HELD_TAG` and the milliseconds after it, as a POSIX regular expression (a unit test
/// checks that it matches the tag).
const HELD_RE: &str = r"^/\* pglock: held for ([0-9]{1,15}) ms ";

/// The tag of pglock before 0.1.1: the grant time in the holder's own clock.
const GRANTED_RE: &str = r"^/\* pglock: granted ([0-9]{1,15}) ";

/// The marker of a run started with `--supersede` or `--replace` (`crate::lock::deploy`), in
/// its wait statement or, after the held tag, in its checks: the word it carries.
const ACCEPTS_RE: &str = r"/\* pglock (supersede|replace) [-0-9,]+ \*/";

/// The query behind every report: one row per holder or waiter of the chosen locks, with what
/// pg_stat_activity says about its session. `after_rollback` ends an aborted transaction first
/// (a lock_timeout leaves one in xact scope).
///
/// Sent with the simple protocol, so it also works through PgBouncer. waitstart is read through
/// to_jsonb so that servers before 14, which lack the column, fall back to the start of the
/// waiting statement instead of failing. Queue positions follow wait start, the order in which
/// PostgreSQL grants waiters. Times are ISO 8601 in UTC with milliseconds.
pub fn rows(locks: Locks, after_rollback: bool) -> String {
    let filter = match locks {
        Locks::All => key::ALL_ADVISORY.to_string(),
        Locks::These(ids) => key::pg_locks_match(ids),
    };
    let iso = |col: &str, name: &str| {
        format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS {name}")
    };
    format!(
        "{rollback}WITH r AS (\
           SELECT l.classid, l.objid, l.objsubid, l.mode, l.granted, l.pid, \
                  a.application_name, a.usename, host(a.client_addr) AS client_addr, a.state, \
                  a.backend_start AS started_at, \
                  CASE WHEN NOT l.granted THEN NULL \
                       WHEN a.query ~ '{HELD_RE}' \
                       THEN a.query_start - make_interval(secs => \
                            substring(a.query from '{HELD_RE}')::bigint / 1000.0) \
                       WHEN a.query ~ '{GRANTED_RE}' \
                       THEN to_timestamp(substring(a.query from '{GRANTED_RE}')::bigint / 1000.0) \
                       WHEN a.state LIKE 'idle%' THEN a.state_change \
                       ELSE a.backend_start END AS held_at, \
                  CASE WHEN l.granted THEN NULL \
                       ELSE coalesce((to_jsonb(l) ->> 'waitstart')::timestamptz, a.query_start) \
                  END AS waiting_at, \
                  a.backend_start IS NOT NULL AS visible, \
                  substring(a.query from '{ACCEPTS_RE}') AS accepts \
           FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid \
           WHERE {filter} AND l.pid IS DISTINCT FROM pg_backend_pid()) \
         SELECT classid, objid, objsubid, mode, granted, pid, application_name, usename, \
                client_addr, state, {}, {}, {}, \
                floor(extract(epoch FROM clock_timestamp() - coalesce(held_at, waiting_at)))::bigint \
                  AS age_secs, \
                CASE WHEN NOT granted THEN row_number() OVER (PARTITION BY classid, objid, objsubid, granted \
                     ORDER BY waiting_at NULLS LAST, pid) END AS queue_position, \
                accepts, visible, current_user AS viewer \
         FROM r \
         ORDER BY classid, objid, objsubid, granted DESC, waiting_at NULLS LAST, held_at, pid",
        iso("started_at", "backend_start"),
        iso("held_at", "held_since"),
        iso("waiting_at", "waiting_since"),
        rollback = if after_rollback { "ROLLBACK; " } else { "" },
    )
}

/// The query `pglock key` prints for a person to paste into psql.
pub fn paste(ids: &[LockId]) -> String {
    format!(
        "SELECT l.pid, l.mode, l.granted, a.application_name, a.usename, a.client_addr,\n       \
         a.backend_start, a.state_change\n  \
         FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid\n \
         WHERE {};",
        key::pg_locks_match_pretty(ids)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: &str = "l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database \
                      WHERE datname = current_database())";

    /// The statement for `filter`, as it was reviewed.
    fn snapshot(rollback: &str, filter: &str) -> String {
        format!(
            "{rollback}WITH r AS (SELECT l.classid, l.objid, l.objsubid, l.mode, l.granted, \
             l.pid, a.application_name, a.usename, host(a.client_addr) AS client_addr, a.state, \
             a.backend_start AS started_at, CASE WHEN NOT l.granted THEN NULL WHEN a.query ~ \
             '^/\\* pglock: held for ([0-9]{{1,15}}) ms ' THEN a.query_start - \
             make_interval(secs => substring(a.query from '^/\\* pglock: held for \
             ([0-9]{{1,15}}) ms ')::bigint / 1000.0) WHEN a.query ~ \
             '^/\\* pglock: granted ([0-9]{{1,15}}) ' THEN to_timestamp(substring(a.query from \
             '^/\\* pglock: granted ([0-9]{{1,15}}) ')::bigint / 1000.0) WHEN a.state LIKE \
             'idle%' THEN a.state_change ELSE a.backend_start END AS held_at, CASE WHEN \
             l.granted THEN NULL ELSE coalesce((to_jsonb(l) ->> 'waitstart')::timestamptz, \
             a.query_start) END AS waiting_at, a.backend_start IS NOT NULL AS visible, \
             substring(a.query from '/\\* pglock (supersede|replace) [-0-9,]+ \\*/') AS accepts \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid WHERE {filter} AND l.pid \
             IS DISTINCT FROM pg_backend_pid()) SELECT classid, objid, objsubid, mode, granted, \
             pid, application_name, usename, client_addr, state, to_char(started_at AT TIME \
             ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS backend_start, to_char(held_at \
             AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS held_since, \
             to_char(waiting_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"') AS \
             waiting_since, floor(extract(epoch FROM clock_timestamp() - coalesce(held_at, \
             waiting_at)))::bigint AS age_secs, CASE WHEN NOT granted THEN row_number() OVER \
             (PARTITION BY classid, objid, objsubid, granted ORDER BY waiting_at NULLS LAST, \
             pid) END AS queue_position, accepts, visible, current_user AS viewer FROM r ORDER BY \
             classid, objid, objsubid, granted DESC, waiting_at NULLS LAST, held_at, pid"
        )
    }

    #[test]
    fn rows_of_every_advisory_lock() {
        assert_eq!(rows(Locks::All, false), snapshot("", DB));
    }

    #[test]
    fn rows_of_one_lock_after_a_rollback() {
        assert_eq!(
            rows(Locks::These(&[LockId::Pair(-1, 7)]), true),
            snapshot(
                "ROLLBACK; ",
                &format!("{DB} AND l.classid = 4294967295 AND l.objid = 7 AND l.objsubid = 2")
            )
        );
    }

    #[test]
    fn rows_of_several_locks() {
        assert_eq!(
            rows(Locks::These(&[LockId::Big(1), LockId::Big(-1)]), false),
            snapshot(
                "",
                &format!(
                    "{DB} AND (l.classid, l.objid, l.objsubid) IN (SELECT * FROM unnest(\
                     '{{0,4294967295}}'::oid[], '{{1,4294967295}}'::oid[], '{{1,1}}'::int2[]))"
                )
            )
        );
    }

    #[test]
    fn every_column_the_model_reads_is_selected_by_name() {
        let sql = rows(Locks::All, false);
        let outer = &sql[sql.rfind(") SELECT ").unwrap()..sql.find(" FROM r ").unwrap()];
        for column in COLUMNS {
            assert!(
                outer.contains(&format!(" {column},")) || outer.contains(&format!(" AS {column}")),
                "{column}"
            );
        }
    }

    #[test]
    fn the_grant_pattern_matches_the_tag() {
        let quoted: String = crate::pg::sql::HELD_TAG
            .chars()
            .flat_map(|c| {
                let escape = "\\^$.|?*+()[]{}".contains(c).then_some('\\');
                escape.into_iter().chain([c])
            })
            .collect();
        assert_eq!(HELD_RE, format!("^{quoted}([0-9]{{1,15}}) ms "));
        assert!(!HELD_RE.contains('\''), "it goes into a SQL string literal");
    }

    #[test]
    fn the_query_to_paste() {
        assert_eq!(
            paste(&[LockId::Big(7440995589958059143)]),
            "SELECT l.pid, l.mode, l.granted, a.application_name, a.usename, a.client_addr,\n       \
             a.backend_start, a.state_change\n  \
             FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid\n \
             WHERE l.locktype = 'advisory'\n   \
             AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())\n   \
             AND l.classid = 1732491792 AND l.objid = 2729624711 AND l.objsubid = 1;"
        );
        assert!(paste(&[LockId::Big(1), LockId::Pair(1, 2)]).ends_with(
            "\n   AND (l.classid, l.objid, l.objsubid) IN (SELECT * FROM unnest('{0,1}'::oid[], \
             '{1,2}'::oid[], '{1,2}'::int2[]));"
        ));
    }
}
