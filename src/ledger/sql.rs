//! Every statement the ledger sends: the DDL that `pglock init` runs (and `--print` shows), and
//! the queries of the run hooks and the reading commands.
//!
//! The table name is the only text spliced in, always as checked, double-quoted identifiers
//! ([`Table::quoted`]); role names go through [`super::table::quote_ident`]; lock ids are
//! numbers. Everything a user typed otherwise (keys, host names, commands, durations) travels as
//! a bind parameter: these statements go over the extended protocol as unnamed statements,
//! with Parse, Bind, Execute and Sync in one message, which a transaction-pooling PgBouncer keeps
//! on one server connection. Each statement's doc lists its parameters; the types are
//! declared with it ([`Statement::types`]), so the server never has to guess them.
//!
//! Every time is the server's: `clock_timestamp()`, never a host clock, and times go out as
//! RFC 3339 UTC text or Unix seconds computed on the server.

use super::table::Table;
use crate::key::LockId;
use tokio_postgres::types::Type;

/// A statement and the types of its parameters, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub text: String,
    pub types: &'static [Type],
}

/// The table's columns, as [`init`] makes them: what `pglock doctor` expects of a table that
/// is up to date.
pub const COLUMNS: [&str; 18] = [
    "id",
    "key",
    "lock_id",
    "slot",
    "host",
    "pid",
    "backend_pid",
    "db_user",
    "started_at",
    "finished_at",
    "status",
    "exit_code",
    "command",
    "kill_after_ms",
    "check_interval_ms",
    "waited_ms",
    "attempts",
    "output_tail",
];

/// The run statuses, as the CHECK constraint lists them.
pub const STATUSES: [&str; 7] = [
    "running",
    "succeeded",
    "failed",
    "lost",
    "abandoned",
    "timeout",
    "replaced",
];

/// A timestamptz column as RFC 3339 UTC text with microseconds: `2026-11-26T03:00:01.250000Z`.
fn rfc3339(column: &str) -> String {
    format!("to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')")
}

/// Seconds from a timestamptz to now, by the server's clock.
fn age(column: &str) -> String {
    format!("extract(epoch FROM clock_timestamp() - {column})::float8")
}

/// `pglock init`: the table, its indexes and the grants, in one transaction serialized by a
/// fixed advisory lock (`init_lock`), since concurrent `CREATE ... IF NOT EXISTS` can still
/// collide in the catalogs. Its first value says whether the table existed before. A table of
/// an earlier pglock, which keyed runs by the key's text alone, gets its `lock_id` column here
/// (see [`upgrade`]).
pub fn init(table: &Table, init_lock: LockId, roles: &[String]) -> String {
    let t = table.quoted();
    let statuses: Vec<String> = STATUSES.iter().map(|s| format!("'{s}'")).collect();
    let mut script = format!(
        "-- pglock run ledger ({table}); pglock init runs exactly this.\n\
         {begin};\n\
         -- One init at a time: concurrent CREATE ... IF NOT EXISTS can collide in the catalogs.\n\
         SELECT pg_advisory_xact_lock({lock});\n\
         SELECT to_regclass('{t}') IS NOT NULL AS existed;\n\
         CREATE TABLE IF NOT EXISTS {t} (\n    \
             id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,\n    \
             key         text        NOT NULL,\n    \
             lock_id     text        NOT NULL,\n    \
             slot        integer,\n    \
             host        text        NOT NULL,\n    \
             pid         integer     NOT NULL,\n    \
             backend_pid integer     NOT NULL,\n    \
             db_user     text        NOT NULL,\n    \
             started_at  timestamptz NOT NULL,\n    \
             finished_at timestamptz,\n    \
             status      text        NOT NULL CHECK (status IN ({statuses})),\n    \
             exit_code   integer,\n    \
             command     text,\n    \
             kill_after_ms     bigint,\n    \
             check_interval_ms bigint,\n    \
             waited_ms   bigint,\n    \
             attempts    integer,\n    \
             output_tail text,\n    \
             CHECK ((status = 'running') = (finished_at IS NULL))\n\
         );\n\
         {upgrade}\
         {stop_columns}\
         {run_columns}\
         {statuses_upgrade}\
         -- history and check by key, prune's newer-row test\n\
         CREATE INDEX IF NOT EXISTS {key_started} ON {t} (key, started_at);\n\
         CREATE INDEX IF NOT EXISTS {succeeded} ON {t} (key, started_at) WHERE status = 'succeeded';\n\
         -- a run's last success and failures, by the lock it holds\n\
         CREATE INDEX IF NOT EXISTS {lock_started} ON {t} (lock_id, started_at);\n\
         -- the next holder's cleanup of runs whose pglock died\n\
         CREATE INDEX IF NOT EXISTS {lock_running} ON {t} (lock_id, slot) WHERE status = 'running';\n\
         -- history --all and prune by age\n\
         CREATE INDEX IF NOT EXISTS {started} ON {t} (started_at);\n",
        begin = crate::pg::sql::BEGIN,
        lock = init_lock.sql_args(),
        statuses = statuses.join(", "),
        upgrade = upgrade(table),
        stop_columns = stop_columns(table),
        run_columns = run_columns(table),
        statuses_upgrade = status_check(table),
        key_started = table.index("key_started"),
        succeeded = table.index("succeeded"),
        lock_started = table.index("lock_started"),
        lock_running = table.index("lock_running"),
        started = table.index("started"),
    );
    for role in roles {
        script.push_str(&grant(table, role));
    }
    script.push_str("COMMIT;\n");
    script
}

/// The upgrade of a table made by an earlier pglock, whose runs have no `lock_id`: adds the
/// column and fills it in as those versions took the locks, with the default key hash (a
/// `lock-id:ID` key is the raw id; a `--limit` run's lock is its semaphore's gate). Only when the
/// column is missing, so that an init against an up-to-date table takes no lock that would wait
/// for running jobs.
fn upgrade(table: &Table) -> String {
    let t = table.quoted();
    let literal = t.replace('\'', "''");
    let sha = |bytes: &str| {
        format!("(('x' || left(encode(sha256({bytes}), 'hex'), 16))::bit(64)::bigint)::text")
    };
    format!(
        "-- An earlier pglock keyed runs by the key's text alone; key them by the lock.\n\
         DO $upgrade$ BEGIN\n  \
           IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = '{literal}'::regclass\n      \
                          AND attname = 'lock_id' AND NOT attisdropped) THEN\n    \
             ALTER TABLE {t} ADD COLUMN lock_id text;\n    \
             UPDATE {t} SET lock_id = CASE\n      \
               WHEN slot IS NULL AND key LIKE 'lock-id:%' THEN substr(key, 9)\n      \
               WHEN slot IS NULL THEN {plain}\n      \
               ELSE {gate} END;\n    \
             ALTER TABLE {t} ALTER COLUMN lock_id SET NOT NULL;\n  \
           END IF;\n\
         END $upgrade$;\n",
        plain = sha("convert_to(key, 'UTF8')"),
        gate = sha("convert_to(key, 'UTF8') || '\\x00'::bytea || convert_to('gate', 'UTF8')"),
    )
}

/// The upgrade of a table made before runs recorded how soon their command is stopped after a
/// loss (`kill_after_ms`, `check_interval_ms`, for the next holder's lock-delay). Adding a
/// nullable column without a default only changes the catalog, but it takes an ACCESS EXCLUSIVE
/// lock, which waits for running xact-scope jobs: so only while the column is missing, as
/// [`upgrade`]. Rows from before keep NULL: their runs' settings are unknown.
fn stop_columns(table: &Table) -> String {
    let t = table.quoted();
    let literal = t.replace('\'', "''");
    format!(
        "-- Runs record how soon their command is stopped after a loss (the next holder's lock-delay).\n\
         DO $upgrade$ BEGIN\n  \
           IF (SELECT count(*) FROM pg_attribute WHERE attrelid = '{literal}'::regclass\n      \
               AND attname IN ('kill_after_ms', 'check_interval_ms') AND NOT attisdropped) < 2 THEN\n    \
             ALTER TABLE {t} ADD COLUMN IF NOT EXISTS kill_after_ms bigint,\n      \
                             ADD COLUMN IF NOT EXISTS check_interval_ms bigint;\n  \
           END IF;\n\
         END $upgrade$;\n"
    )
}

/// The upgrade of a table made before runs recorded their wait for the lock (`waited_ms`), their
/// attempts (`--retries`) and their output's tail, and before a run could time out
/// (`--max-runtime`). In the same transaction the status check is replaced by one that allows
/// `timeout`, and roles that may end runs may set the new end columns too: the run path's
/// statements name the new columns, so a table without them fails the run (78, "run pglock
/// init") before any run could write a status the old check refuses. Only while a column is
/// missing, as [`stop_columns`].
fn run_columns(table: &Table) -> String {
    let t = table.quoted();
    let literal = t.replace('\'', "''");
    let statuses: Vec<String> = STATUSES.iter().map(|s| format!("'{s}'")).collect();
    format!(
        "-- Runs record their wait, attempts and output, and may time out (--max-runtime).\n\
         DO $upgrade$ DECLARE c record; BEGIN\n  \
           IF (SELECT count(*) FROM pg_attribute WHERE attrelid = '{literal}'::regclass\n      \
               AND attname IN ('waited_ms', 'attempts', 'output_tail') AND NOT attisdropped) < 3 THEN\n    \
             FOR c IN SELECT conname FROM pg_constraint WHERE conrelid = '{literal}'::regclass\n        \
                 AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%''abandoned''%' LOOP\n      \
               EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', '{literal}'::regclass, c.conname);\n    \
             END LOOP;\n    \
             ALTER TABLE {t} ADD CONSTRAINT {check} CHECK (status IN ({statuses})),\n      \
                             ADD COLUMN IF NOT EXISTS waited_ms bigint,\n      \
                             ADD COLUMN IF NOT EXISTS attempts integer,\n      \
                             ADD COLUMN IF NOT EXISTS output_tail text;\n    \
             FOR c IN SELECT DISTINCT a.grantee FROM pg_attribute, aclexplode(attacl) AS a\n        \
                 WHERE attrelid = '{literal}'::regclass AND attname = 'exit_code'\n        \
                 AND a.privilege_type = 'UPDATE' LOOP\n      \
               EXECUTE format('GRANT UPDATE (attempts, output_tail) ON %s TO %s', '{literal}'::regclass,\n        \
                 CASE WHEN c.grantee = 0 THEN 'PUBLIC' ELSE c.grantee::regrole::text END);\n    \
             END LOOP;\n  \
           END IF;\n\
         END $upgrade$;\n",
        check = table.index("status_check"),
        statuses = statuses.join(", "),
    )
}

/// The upgrade of a table made before `--replace`, whose status check does not allow
/// `replaced`: the check is replaced by one that lists every status. Only while `replaced` is
/// missing from it (the ALTER takes an ACCESS EXCLUSIVE lock, as in [`upgrade`]), and NOT VALID:
/// every existing row already passes the narrower check, so the table is not scanned under that
/// lock. Serialized with other inits by the init lock.
fn status_check(table: &Table) -> String {
    let t = table.quoted();
    let literal = t.replace('\'', "''");
    let list: Vec<String> = STATUSES.iter().map(|s| format!("''{s}''")).collect();
    format!(
        "-- A status check that lacks a status (a run stopped by --replace is 'replaced').\n\
         DO $upgrade$ DECLARE c name; BEGIN\n  \
           SELECT conname INTO c FROM pg_constraint WHERE conrelid = '{literal}'::regclass\n      \
             AND contype = 'c' AND pg_get_constraintdef(oid) LIKE '%''abandoned''%'\n      \
             AND ({lacking});\n  \
           IF c IS NOT NULL THEN\n    \
             EXECUTE format('ALTER TABLE {t_fmt} DROP CONSTRAINT %I, ADD CONSTRAINT %I \
CHECK (status IN ({list})) NOT VALID', c, c);\n  \
           END IF;\n\
         END $upgrade$;\n",
        t_fmt = literal,
        list = list.join(", "),
        lacking = STATUSES
            .iter()
            .map(|s| format!("pg_get_constraintdef(oid) NOT LIKE '%''{s}''%'"))
            .collect::<Vec<_>>()
            .join(" OR "),
    )
}

/// What a runner needs: read, insert, and update of the columns a run's end sets (no delete,
/// and no rewriting of who ran what when).
fn grant(table: &Table, role: &str) -> String {
    format!(
        "GRANT USAGE ON SCHEMA {schema} TO {role};\n\
         GRANT SELECT, INSERT, UPDATE (status, finished_at, exit_code, attempts, output_tail) \
         ON {t} TO {role};\n",
        schema = table.quoted_schema(),
        t = table.quoted(),
    )
}

/// The part of the statement before the command that decides: the lock's last success, its
/// failures within the `--once-per` window, and the verdict. Runs are matched by the lock they
/// held (`lock_id`), not by the key's text: `--key K` and `--key K --key-hash sqlx` are two
/// locks, `--lock-id 43` and `--key lock-id:43` too. `$1` lock id, `$2` the window in seconds
/// (NULL without --once-per), `$3` --max-attempts.
fn decision(t: &str) -> String {
    format!(
        "last AS (\
             SELECT started_at, host FROM {t} WHERE lock_id = $1 AND status = 'succeeded' \
             ORDER BY started_at DESC, id DESC LIMIT 1), \
         failures AS (\
             SELECT count(*) AS n FROM {t} \
             WHERE $2 IS NOT NULL AND lock_id = $1 AND status <> 'succeeded' \
             AND started_at > clock_timestamp() - $2 * interval '1 second'), \
         verdict AS (\
             SELECT CASE \
                 WHEN $2 IS NULL THEN 'run' \
                 WHEN (SELECT started_at FROM last) > clock_timestamp() - $2 * interval '1 second' \
                 THEN 'skip' \
                 WHEN (SELECT n FROM failures) >= $3 THEN 'exhausted' \
                 ELSE 'run' END AS verdict)"
    )
}

/// The columns the two statements before the command answer with, from `verdict v` and `last l`.
fn decided() -> String {
    format!(
        "v.verdict, {last_success} AS last_success, l.host AS last_host, {last_age} AS last_age, \
         (SELECT n FROM failures) AS failures",
        last_success = rfc3339("l.started_at"),
        last_age = age("l.started_at"),
    )
}

/// The columns that tell the next holder about the runs it found `running` (aliased
/// `abandoned`): how many, and `stop_within_ms`, the longest time after its loss that one of
/// their commands may still have run (2 x its --check-interval to notice a loss the server's
/// goodbye did not announce, then its --kill-after to stop), NULL when none recorded a bound
/// (an earlier pglock, `--on-lost ignore`). See [`super::delay`].
fn vanished() -> &'static str {
    "(SELECT count(*) FROM abandoned) AS abandoned, \
     (SELECT max(2 * check_interval_ms + kill_after_ms) FROM abandoned) AS stop_within_ms"
}

/// The one statement before the command, in session scope (on the lock's own connection, in
/// autocommit): marks the lock's (and slot's) `running` rows `abandoned` when `$9` (holding the
/// lock exclusively proves their pglock is gone), decides as [`decision`], and inserts the
/// `running` row only when the command will run.
///
/// `$1` lock id, `$2` window, `$3` --max-attempts (see [`decision`]), `$4` key, `$5` slot (NULL
/// without --limit), `$6` host, `$7` pid, `$8` command (NULL unless --record-command), `$9`
/// whether to mark running rows abandoned, `$10` --kill-after in ms (NULL with --on-lost
/// ignore), `$11` --check-interval in ms, `$12` how long the run waited for the lock, in ms.
///
/// One row: `verdict` (`run`, `skip` or `exhausted`), `last_success` (RFC 3339), `last_host`,
/// `last_age` (seconds), `failures`, `run_id`, and the abandoned runs as [`vanished`].
pub fn begin(table: &Table) -> Statement {
    let t = table.quoted();
    let text = format!(
        "WITH abandoned AS (\
             UPDATE {t} SET status = 'abandoned', finished_at = clock_timestamp() \
             WHERE $9 AND lock_id = $1 AND slot IS NOT DISTINCT FROM $5 AND status = 'running' \
             RETURNING id, kill_after_ms, check_interval_ms), \
         {decision}, \
         run AS (\
             INSERT INTO {t} (key, lock_id, slot, host, pid, backend_pid, db_user, started_at, status, command, \
                              kill_after_ms, check_interval_ms, waited_ms) \
             SELECT $4, $1, $5, $6, $7, pg_backend_pid(), session_user, clock_timestamp(), 'running', $8, \
                    $10, $11, $12 \
             FROM verdict WHERE verdict = 'run' \
             RETURNING id) \
         SELECT {decided}, (SELECT id FROM run) AS run_id, {vanished} \
         FROM verdict v LEFT JOIN last l ON true",
        decision = decision(&t),
        decided = decided(),
        vanished = vanished(),
    );
    Statement {
        text,
        types: &[
            Type::TEXT,
            Type::FLOAT8,
            Type::INT4,
            Type::TEXT,
            Type::INT4,
            Type::TEXT,
            Type::INT4,
            Type::TEXT,
            Type::BOOL,
            Type::INT8,
            Type::INT8,
            Type::INT8,
        ],
    }
}

/// The one statement before the command in xact scope, inside the lock's transaction: it only
/// reads, so the transaction gets no xid (which would hold back vacuum for the whole run) and
/// locks nothing but the table's ACCESS SHARE. The run's row is written when it ends
/// ([`record`]), which also marks the `running` rows it finds here abandoned. `$1` to `$3` as
/// [`decision`], `$4` slot, `$5` whether this holder may call running rows dead. One row: as
/// [`begin`]'s without `run_id`, plus `now` (RFC 3339), the run's start.
pub fn decide(table: &Table) -> Statement {
    let t = table.quoted();
    let text = format!(
        "WITH abandoned AS (\
             SELECT kill_after_ms, check_interval_ms FROM {t} \
             WHERE $5 AND lock_id = $1 AND slot IS NOT DISTINCT FROM $4 AND status = 'running'), \
         {decision} \
         SELECT {decided}, {vanished}, {now} AS now \
         FROM verdict v LEFT JOIN last l ON true",
        decision = decision(&t),
        decided = decided(),
        vanished = vanished(),
        now = rfc3339("clock_timestamp()"),
    );
    Statement {
        text,
        types: &[Type::TEXT, Type::FLOAT8, Type::INT4, Type::INT4, Type::BOOL],
    }
}

/// The one statement after the command in xact scope: the whole run as one row, written in the
/// lock's transaction (whose COMMIT ends the lock, so the next holder sees it), or on a
/// connection of its own once the lock was lost. Marks the lock's (and slot's) `running` rows
/// `abandoned` first when `$7`, as [`begin`] does.
///
/// `$1` lock id, `$2` key, `$3` slot, `$4` host, `$5` pid, `$6` command, `$7` whether to mark
/// running rows abandoned, `$8` the start (RFC 3339, from [`decide`]), `$9` status, `$10` exit
/// code, `$11` --kill-after and `$12` --check-interval in ms (as [`begin`]'s), `$13` the wait
/// in ms, `$14` attempts, `$15` the output's tail (NULL unless captured). Returns `id` and
/// `status`.
pub fn record(table: &Table) -> Statement {
    let t = table.quoted();
    let text = format!(
        "WITH abandoned AS (\
             UPDATE {t} SET status = 'abandoned', finished_at = clock_timestamp() \
             WHERE $7 AND lock_id = $1 AND slot IS NOT DISTINCT FROM $3 AND status = 'running' \
             RETURNING id) \
         INSERT INTO {t} (key, lock_id, slot, host, pid, backend_pid, db_user, started_at, \
                          finished_at, status, exit_code, command, kill_after_ms, check_interval_ms, \
                          waited_ms, attempts, output_tail) \
         SELECT $2, $1, $3, $4, $5, pg_backend_pid(), session_user, $8::timestamptz, \
                clock_timestamp(), $9, $10, $6, $11, $12, $13, $14, $15 \
         FROM (SELECT count(*) FROM abandoned) AS a \
         RETURNING id, status"
    );
    Statement {
        text,
        types: &[
            Type::TEXT,
            Type::TEXT,
            Type::INT4,
            Type::TEXT,
            Type::INT4,
            Type::TEXT,
            Type::BOOL,
            Type::TEXT,
            Type::TEXT,
            Type::INT4,
            Type::INT8,
            Type::INT8,
            Type::INT8,
            Type::INT4,
            Type::TEXT,
        ],
    }
}

/// The one statement after the command in session scope: the run's end. `$1` run id, `$2`
/// status, `$3` exit code, `$4` attempts, `$5` the output's tail (NULL unless captured). With
/// `guard` (on the lock's own connection) the row says `lost`
/// with exit code 74 if this session no longer holds that lock, which is what the release that
/// follows will find; a loss already known (`$2` = `lost`) keeps its exit code, which
/// `--on-lost ignore` takes from the command. Returns the status written, or no row if the run
/// was no longer `running` (another holder marked it abandoned).
pub fn finish(table: &Table, guard: Option<LockId>) -> Statement {
    let held = match guard {
        Some(id) => format!(
            "EXISTS (SELECT FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid() AND l.granted)",
            crate::pg::sql::matches(&[id])
        ),
        None => "true".into(),
    };
    let text = format!(
        "UPDATE {t} SET finished_at = clock_timestamp(), \
             status = CASE WHEN h.held THEN $2 ELSE 'lost' END, \
             exit_code = CASE WHEN h.held OR $2 = 'lost' THEN $3 ELSE {lost} END, \
             attempts = $4, output_tail = $5 \
         FROM (SELECT {held} AS held) AS h \
         WHERE id = $1 AND status = 'running' \
         RETURNING status",
        t = table.quoted(),
        lost = crate::exit::LOCK_LOST,
    );
    Statement {
        text,
        types: &[Type::INT8, Type::TEXT, Type::INT4, Type::INT4, Type::TEXT],
    }
}

/// `pglock history`: newest first. `$1` key (NULL: every key), `$2` seconds back (NULL: no
/// bound), `$3` how many (NULL: all).
pub fn history(table: &Table) -> Statement {
    let text = format!(
        "SELECT id, key, slot, host, pid, backend_pid, db_user, \
                {started} AS started_at, {finished} AS finished_at, \
                extract(epoch FROM coalesce(finished_at, clock_timestamp()) - started_at)::float8 \
                    AS duration, \
                status, exit_code, command, waited_ms, attempts, output_tail \
         FROM {t} \
         WHERE ($1::text IS NULL OR key = $1) \
           AND ($2::float8 IS NULL OR started_at > clock_timestamp() - $2 * interval '1 second') \
         ORDER BY started_at DESC, id DESC \
         LIMIT $3",
        t = table.quoted(),
        started = rfc3339("started_at"),
        finished = rfc3339("finished_at"),
    );
    Statement {
        text,
        types: &[Type::TEXT, Type::FLOAT8, Type::INT8],
    }
}

/// `pglock check`: one key's last success, last finished run and run in progress. `$1` key.
pub fn check(table: &Table) -> Statement {
    let t = table.quoted();
    let newest = "ORDER BY started_at DESC, id DESC LIMIT 1";
    let text = format!(
        "WITH s AS (SELECT started_at, host FROM {t} WHERE key = $1 AND status = 'succeeded' {newest}), \
              f AS (SELECT started_at, finished_at, host, status, exit_code FROM {t} \
                    WHERE key = $1 AND status <> 'running' {newest}), \
              r AS (SELECT started_at, host FROM {t} WHERE key = $1 AND status = 'running' {newest}) \
         SELECT {s_at} AS success_at, s.host AS success_host, {s_age} AS success_age, \
                {f_at} AS last_at, f.host AS last_host, f.status AS last_status, \
                f.exit_code AS last_exit, {f_age} AS last_age, \
                {r_at} AS running_at, r.host AS running_host, {r_age} AS running_age \
         FROM (SELECT) AS one LEFT JOIN s ON true LEFT JOIN f ON true LEFT JOIN r ON true",
        s_at = rfc3339("s.started_at"),
        s_age = age("s.started_at"),
        f_at = rfc3339("f.started_at"),
        f_age = age("f.finished_at"),
        r_at = rfc3339("r.started_at"),
        r_age = age("r.started_at"),
    );
    Statement {
        text,
        types: &[Type::TEXT],
    }
}

/// `pglock metrics`: one row per key, found with a loose index scan (one index probe per key,
/// however many runs the table holds), as Unix seconds.
pub fn metrics(table: &Table) -> Statement {
    let t = table.quoted();
    let epoch = |c: &str| format!("extract(epoch FROM {c})::float8");
    let text = format!(
        "WITH RECURSIVE keys AS (\
             (SELECT key FROM {t} ORDER BY key LIMIT 1) \
             UNION ALL \
             SELECT (SELECT key FROM {t} WHERE key > keys.key ORDER BY key LIMIT 1) \
             FROM keys WHERE keys.key IS NOT NULL) \
         SELECT k.key, \
                (SELECT {success} FROM {t} WHERE key = k.key AND status = 'succeeded') AS last_success, \
                f.started, f.finished, f.exit_code, \
                (SELECT count(*) FROM {t} WHERE key = k.key AND status = 'running') AS running, \
                (SELECT waited_ms FROM {t} WHERE key = k.key AND waited_ms IS NOT NULL \
                 ORDER BY started_at DESC, id DESC LIMIT 1) AS waited_ms \
         FROM keys k \
         LEFT JOIN LATERAL (\
             SELECT {started} AS started, {finished} AS finished, exit_code FROM {t} \
             WHERE key = k.key AND status <> 'running' \
             ORDER BY started_at DESC, id DESC LIMIT 1) AS f ON true \
         WHERE k.key IS NOT NULL \
         ORDER BY k.key",
        success = epoch("max(started_at)"),
        started = epoch("started_at"),
        finished = epoch("finished_at"),
    );
    Statement { text, types: &[] }
}

/// The rows `pglock prune` may delete (aliased `r`): finished, started more than `$1` seconds
/// ago, and superseded both among its key's runs and among its lock's: a newer finished run of
/// each and, for a success, a newer success of each. So every key keeps its newest finished run
/// and newest success (`history`, `check` and `metrics` select by key), every lock keeps its own
/// (`--once-per` decides by lock id, and one key text can name two locks, `--key K` and `--key K
/// --key-hash sqlx`, as one lock can have two names), and every running row stays.
fn doomed(t: &str) -> String {
    let newer = |by: &str, status: &str| {
        format!(
            "EXISTS (SELECT FROM {t} n WHERE n.{by} = r.{by} \
             AND (n.started_at, n.id) > (r.started_at, r.id) AND n.status {status})"
        )
    };
    format!(
        "r.status <> 'running' \
         AND r.started_at < clock_timestamp() - $1 * interval '1 second' \
         AND {} AND {} \
         AND (r.status <> 'succeeded' OR ({} AND {}))",
        newer("key", "<> 'running'"),
        newer("lock_id", "<> 'running'"),
        newer("key", "= 'succeeded'"),
        newer("lock_id", "= 'succeeded'"),
    )
}

/// One batch of `pglock prune`: deletes at most `$2` rows, `$1` the age in seconds; how many.
pub fn prune_batch(table: &Table) -> Statement {
    let t = table.quoted();
    Statement {
        text: format!(
            "WITH d AS (DELETE FROM {t} WHERE id IN \
             (SELECT r.id FROM {t} r WHERE {} ORDER BY r.id LIMIT $2) RETURNING 1) \
             SELECT count(*) FROM d",
            doomed(&t)
        ),
        types: &[Type::FLOAT8, Type::INT8],
    }
}

/// `pglock prune --dry-run`: how many rows a prune would delete. `$1` the age in seconds.
pub fn prune_count(table: &Table) -> Statement {
    let t = table.quoted();
    Statement {
        text: format!("SELECT count(*) FROM {t} r WHERE {}", doomed(&t)),
        types: &[Type::FLOAT8],
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_column_the_doctor_expects_is_made_by_init() {
        let table = super::Table::parse("public.t").unwrap();
        let script = super::init(&table, crate::key::LockId::Big(1), &[]);
        for column in super::COLUMNS {
            assert!(
                script.contains(&format!("\n    {column} ")),
                "{column} is not made by init"
            );
        }
        // And the other way: a column added to the table is one the doctor expects.
        let body = script.split("CREATE TABLE IF NOT EXISTS").nth(1).unwrap();
        let body = &body[..body.find("\n);").unwrap()];
        for line in body.lines().skip(1) {
            let word = line.split_whitespace().next().unwrap_or("");
            if word.chars().all(|c| c.is_ascii_lowercase() || c == '_') && word != "check" {
                assert!(
                    super::COLUMNS.contains(&word),
                    "{word} is missing from COLUMNS"
                );
            }
        }
    }

    use super::*;

    fn table() -> Table {
        Table::parse("ops.runs").unwrap()
    }

    #[test]
    fn init_snapshot() {
        let script = init(&table(), LockId::Big(7), &["\"runner\"".into()]);
        assert!(script.starts_with("-- pglock run ledger (ops.runs)"));
        for line in [
            "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE;",
            "SELECT pg_advisory_xact_lock(7);",
            "SELECT to_regclass('\"ops\".\"runs\"') IS NOT NULL AS existed;",
            "CREATE TABLE IF NOT EXISTS \"ops\".\"runs\" (",
            "    status      text        NOT NULL CHECK (status IN ('running', 'succeeded', \
             'failed', 'lost', 'abandoned', 'timeout', 'replaced')),",
            "    CHECK ((status = 'running') = (finished_at IS NULL))",
            "CREATE INDEX IF NOT EXISTS \"runs_key_started\" ON \"ops\".\"runs\" (key, started_at);",
            "CREATE INDEX IF NOT EXISTS \"runs_succeeded\" ON \"ops\".\"runs\" (key, started_at) \
             WHERE status = 'succeeded';",
            "CREATE INDEX IF NOT EXISTS \"runs_lock_running\" ON \"ops\".\"runs\" (lock_id, slot) \
             WHERE status = 'running';",
            "CREATE INDEX IF NOT EXISTS \"runs_lock_started\" ON \"ops\".\"runs\" (lock_id, started_at);",
            "    lock_id     text        NOT NULL,",
            "    ALTER TABLE \"ops\".\"runs\" ADD COLUMN lock_id text;",
            "    kill_after_ms     bigint,",
            "    check_interval_ms bigint,",
            "      AND attname IN ('kill_after_ms', 'check_interval_ms') AND NOT attisdropped) < 2 THEN",
            "    ALTER TABLE \"ops\".\"runs\" ADD COLUMN IF NOT EXISTS kill_after_ms bigint,",
            "CREATE INDEX IF NOT EXISTS \"runs_started\" ON \"ops\".\"runs\" (started_at);",
            "GRANT USAGE ON SCHEMA \"ops\" TO \"runner\";",
            "GRANT SELECT, INSERT, UPDATE (status, finished_at, exit_code, attempts, output_tail) \
             ON \"ops\".\"runs\" TO \"runner\";",
            "    waited_ms   bigint,",
            "    attempts    integer,",
            "    output_tail text,",
            "      AND attname IN ('waited_ms', 'attempts', 'output_tail') AND NOT attisdropped) < 3 THEN",
            "    ALTER TABLE \"ops\".\"runs\" ADD CONSTRAINT \"runs_status_check\" CHECK (status IN \
             ('running', 'succeeded', 'failed', 'lost', 'abandoned', 'timeout', 'replaced')),",
        ] {
            assert!(script.lines().any(|l| l == line), "{line}\n{script}");
        }
        assert!(script.ends_with("COMMIT;\n"));
        assert!(!script.contains("DELETE"));
    }

    #[test]
    fn begin_snapshot() {
        let s = begin(&table());
        assert_eq!(s.types.len(), 12);
        assert!(s.text.starts_with(
            "WITH abandoned AS (UPDATE \"ops\".\"runs\" SET status = 'abandoned', finished_at = \
             clock_timestamp() WHERE $9 AND lock_id = $1 AND slot IS NOT DISTINCT FROM $5 AND \
             status = 'running' RETURNING id, kill_after_ms, check_interval_ms), "
        ));
        assert!(s.text.contains(
            "WHEN (SELECT started_at FROM last) > clock_timestamp() - $2 * interval '1 second' \
             THEN 'skip' WHEN (SELECT n FROM failures) >= $3 THEN 'exhausted' ELSE 'run' END"
        ));
        assert!(s.text.contains(
            "SELECT $4, $1, $5, $6, $7, pg_backend_pid(), session_user, clock_timestamp(), \
             'running', $8, $10, $11, $12 FROM verdict WHERE verdict = 'run' RETURNING id"
        ));
        // The lock-delay's bound: of the runs this holder found running, and no clock in it.
        assert!(s.text.contains(
            "(SELECT count(*) FROM abandoned) AS abandoned, (SELECT max(2 * check_interval_ms + \
             kill_after_ms) FROM abandoned) AS stop_within_ms"
        ));
        assert!(s.text.contains(
            "to_char(l.started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS \
             last_success"
        ));
        // Runs are found by the lock they held, never by the key's text.
        assert!(
            s.text
                .contains("WHERE lock_id = $1 AND status = 'succeeded'")
        );
        assert!(!s.text.contains("key = $"));
        assert!(!s.text.contains("now()"));
    }

    #[test]
    fn xact_scope_reads_first_and_writes_the_whole_run_at_the_end() {
        let d = decide(&table());
        assert_eq!(d.types.len(), 5);
        assert!(d.text.starts_with(
            "WITH abandoned AS (SELECT kill_after_ms, check_interval_ms FROM \"ops\".\"runs\" \
             WHERE $5 AND lock_id = $1 AND slot IS NOT DISTINCT FROM $4 AND status = 'running'), \
             last AS (SELECT started_at, host FROM"
        ));
        assert!(d.text.contains("AS stop_within_ms"));
        for write in ["UPDATE", "INSERT", "DELETE"] {
            assert!(!d.text.contains(write), "{write}: {}", d.text);
        }
        let r = record(&table());
        assert_eq!(r.types.len(), 15);
        assert!(r.text.contains(
            "WHERE $7 AND lock_id = $1 AND slot IS NOT DISTINCT FROM $3 AND status = 'running'"
        ));
        assert!(r.text.contains(
            "SELECT $2, $1, $3, $4, $5, pg_backend_pid(), session_user, $8::timestamptz, \
             clock_timestamp(), $9, $10, $6, $11, $12, $13, $14, $15"
        ));
    }

    #[test]
    fn finish_snapshots() {
        let plain = finish(&table(), None);
        assert_eq!(
            plain.text,
            "UPDATE \"ops\".\"runs\" SET finished_at = clock_timestamp(), status = CASE WHEN \
             h.held THEN $2 ELSE 'lost' END, exit_code = CASE WHEN h.held OR $2 = 'lost' THEN \
             $3 ELSE 74 END, attempts = $4, output_tail = $5 FROM (SELECT true AS held) AS h WHERE id = $1 AND status = 'running' \
             RETURNING status"
        );
        let guarded = finish(&table(), Some(LockId::Big(42)));
        assert!(guarded.text.contains(&format!(
            "FROM (SELECT EXISTS (SELECT FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid() \
             AND l.granted) AS held) AS h",
            crate::pg::sql::matches(&[LockId::Big(42)])
        )));
    }

    #[test]
    fn reading_snapshots() {
        let h = history(&table());
        assert!(h.text.contains(
            "WHERE ($1::text IS NULL OR key = $1) AND ($2::float8 IS NULL OR started_at > \
             clock_timestamp() - $2 * interval '1 second') ORDER BY started_at DESC, id DESC LIMIT $3"
        ));
        let c = check(&table());
        assert!(c.text.contains("FROM (SELECT) AS one LEFT JOIN s ON true"));
        let m = metrics(&table());
        assert!(m.text.starts_with(
            "WITH RECURSIVE keys AS ((SELECT key FROM \"ops\".\"runs\" ORDER BY key LIMIT 1) \
             UNION ALL SELECT (SELECT key FROM \"ops\".\"runs\" WHERE key > keys.key"
        ));
    }

    #[test]
    fn prune_snapshots() {
        let batch = prune_batch(&table());
        assert_eq!(
            batch.text,
            "WITH d AS (DELETE FROM \"ops\".\"runs\" WHERE id IN (SELECT r.id FROM \"ops\".\"runs\" r WHERE \
             r.status <> 'running' AND r.started_at < clock_timestamp() - $1 * interval '1 second' \
             AND EXISTS (SELECT FROM \"ops\".\"runs\" n WHERE n.key = r.key AND (n.started_at, \
             n.id) > (r.started_at, r.id) AND n.status <> 'running') \
             AND EXISTS (SELECT FROM \"ops\".\"runs\" n WHERE n.lock_id = r.lock_id AND (n.started_at, \
             n.id) > (r.started_at, r.id) AND n.status <> 'running') AND (r.status <> 'succeeded' \
             OR (EXISTS (SELECT FROM \"ops\".\"runs\" n WHERE n.key = r.key AND (n.started_at, \
             n.id) > (r.started_at, r.id) AND n.status = 'succeeded') \
             AND EXISTS (SELECT FROM \"ops\".\"runs\" n WHERE n.lock_id = r.lock_id AND (n.started_at, \
             n.id) > (r.started_at, r.id) AND n.status = 'succeeded'))) ORDER BY r.id LIMIT $2) \
             RETURNING 1) SELECT count(*) FROM d"
        );
        assert!(
            prune_count(&table())
                .text
                .starts_with("SELECT count(*) FROM")
        );
    }
}
