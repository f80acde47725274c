//! Every statement pglock sends while it takes, watches and releases a lock, built only from
//! numbers and static text. Lock ids go in as integers; their pg_locks coordinates come from
//! [`LockId::pg_locks_coordinates`] through [`matches`], the one predicate every query uses.
//!
//! All of it runs over the simple protocol (PgBouncer breaks named prepared statements), and
//! where statements go together they go in one round trip.

use crate::key::LockId;
use std::time::Duration;

/// How quickly the server notices a waiter whose client vanished (PG 14+).
pub const CLIENT_CHECK_MS: u32 = 500;

/// The lock checks start with `/* pglock: held for <ms> ms */`: how long the lock had been held
/// when the check was sent, by the holder's monotonic clock. pg_stat_activity keeps no record of
/// when a lock was granted, and each check moves the session's state_change, so this comment in
/// its visible last query is how `pglock status` and holder reports tell since when a pglock has
/// held its lock: the check's query_start minus that, all in the server's clock. (pglock before
/// 0.1.1 tagged `/* pglock: granted <unix ms> */`, its own wall clock, which reports still read.)
pub const HELD_TAG: &str = "/* pglock: held for ";

/// Marks the semaphore head's wait statement, so that a release cancels that statement and
/// nothing else. What follows it names the slot holders whose release may wake it: see
/// [`head_wait`].
pub const WAIT_MARK: &str = "/* pglock: semaphore wait";

/// The whole mark of older pglocks' heads, which named no holders and which any release woke:
/// still woken, so that two versions in one fleet keep handing slots over at once.
const WAIT_MARK_OLD: &str = "/* pglock: semaphore wait */";

/// The mark of a head whose list of holders would not fit in pg_stat_activity's query text
/// (`track_activity_query_size`, 1024 bytes by default): every release wakes it.
const WAIT_MARK_ANY: &str = "/* pglock: semaphore wait for any */";

/// The longest list of holders a head names in its mark (pids of up to 7 digits and a space:
/// about 110 holders); with more it is woken by every release ([`WAIT_MARK_ANY`]).
const MAX_NAMED: usize = 900;

/// The column that answers [`holders`].
pub const HOLDERS_COLUMN: &str = "holders";

/// The name of the savepoint an xact-scope holder keeps its lock checks in (see
/// `lock::Holder`).
pub const CHECK_SAVEPOINT: &str = "pglock_check";

/// Session or transaction lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// pg_advisory_lock, released with pg_advisory_unlock.
    Session,
    /// pg_advisory_xact_lock inside a transaction, released by COMMIT or ROLLBACK.
    Xact,
}

impl Scope {
    pub fn name(self) -> &'static str {
        match self {
            Scope::Session => "session",
            Scope::Xact => "xact",
        }
    }

    fn local(self) -> bool {
        self == Scope::Xact
    }
}

/// Which advisory-lock function a call uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub try_only: bool,
    pub scope: Scope,
    pub shared: bool,
}

impl Call {
    pub fn function(self) -> &'static str {
        match (self.try_only, self.scope, self.shared) {
            (false, Scope::Session, false) => "pg_advisory_lock",
            (false, Scope::Session, true) => "pg_advisory_lock_shared",
            (false, Scope::Xact, false) => "pg_advisory_xact_lock",
            (false, Scope::Xact, true) => "pg_advisory_xact_lock_shared",
            (true, Scope::Session, false) => "pg_try_advisory_lock",
            (true, Scope::Session, true) => "pg_try_advisory_lock_shared",
            (true, Scope::Xact, false) => "pg_try_advisory_xact_lock",
            (true, Scope::Xact, true) => "pg_try_advisory_xact_lock_shared",
        }
    }
}

/// The pg_locks rows (aliased `l`) of these advisory locks in the current database: the one
/// predicate, [`crate::key::pg_locks_match`], which reports use too.
pub fn matches(ids: &[LockId]) -> String {
    crate::key::pg_locks_match(ids)
}

/// lock_timeout in milliseconds: 0 waits forever, so a wait that must end gets at least 1.
pub fn lock_timeout_ms(wait: Option<Duration>) -> u128 {
    wait.map_or(0, |t| t.as_millis().max(1))
}

/// What the settings round trip sets up besides the timeouts it neutralises.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// The lease on the session, in milliseconds (0: none): see [`crate::lease`].
    pub lease_ms: u128,
    /// TCP keepalive idle time and interval for the server's end of the connection, in seconds,
    /// with a lease: probes then end a silent client's session `lease_ms` after it was last
    /// heard from (tcp_user_timeout), waiting or not.
    pub keepalive_s: u64,
    /// A backend this pglock left behind on a connection that broke (it may still wait for the
    /// lock, or have been granted it): ended first, so that pglock never queues behind itself.
    pub stranded: Option<i32>,
}

/// How pglock begins every transaction it holds a lock in. A database's or role's
/// `default_transaction_isolation` must not give the lock's transaction a snapshot from before
/// the grant: under repeatable read or serializable the first statement (the settings) takes it,
/// so a waiter granted the lock later would not see what the previous holder committed (its
/// ledger row: `--once-per` would run the job again). Read write likewise, so that the ledger's
/// row can be written whatever `default_transaction_read_only` says (pglock's
/// target_session_attrs=read-write refuses such sessions anyway; this is for `any`).
pub const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE";

/// BEGIN for xact scope, then the session settings, then the backend's pid (see
/// [`BACKEND_PID`]).
///
/// In session scope the ledger's statements are transactions of their own: the session's
/// defaults are set to what [`BEGIN`] says, for the same reasons.
///
/// A DBA's server-wide timeouts must not end a lock holder, so they are zeroed here, except the
/// two idle timeouts, which carry the lease. Settings the server lacks (transaction_timeout
/// before 17, idle_session_timeout and client_connection_check_interval before 14) are skipped:
/// `current_setting(name, true)` is NULL for them, so an older server costs no error and no extra
/// round trip. (Joining pg_settings instead builds all of the server's ~350 settings and cost a
/// new backend about 1 ms.) In xact scope they are SET LOCAL, so a transaction-pooling PgBouncer
/// does not leak them to other clients.
pub fn prelude(scope: Scope, lock_timeout_ms: u128, settings: Settings) -> String {
    let lease = settings.lease_ms;
    let mut values = format!(
        "('statement_timeout', '0'), ('idle_in_transaction_session_timeout', '{lease}'), \
         ('idle_session_timeout', '{lease}'), ('transaction_timeout', '0'), \
         ('lock_timeout', '{lock_timeout_ms}'), \
         ('client_connection_check_interval', '{CLIENT_CHECK_MS}'), \
         ('default_transaction_isolation', 'read committed'), \
         ('default_transaction_read_only', 'off')"
    );
    if lease > 0 {
        let k = settings.keepalive_s.max(1);
        values.push_str(&format!(
            ", ('tcp_keepalives_idle', '{k}'), ('tcp_keepalives_interval', '{k}'), \
             ('tcp_user_timeout', '{lease}')"
        ));
    }
    let stranded = settings.stranded.map_or(String::new(), |pid| {
        format!(
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a WHERE a.pid = {pid} \
             AND a.application_name = current_setting('application_name'); "
        )
    });
    let settings = format!(
        "{stranded}{}SELECT pg_backend_pid() AS {BACKEND_PID}; ",
        set_configs(scope, &values)
    );
    match scope {
        Scope::Session => settings,
        Scope::Xact => format!("{BEGIN}; {settings}"),
    }
}

/// The column of [`prelude`]'s answer that names the backend.
pub const BACKEND_PID: &str = "backend_pid";

/// Suspends the lease (0) or restores it: the idle timeouts alone, since a stopped job's host
/// still answers TCP keepalives.
pub fn lease(scope: Scope, lease_ms: u128) -> String {
    set_configs(
        scope,
        &format!(
            "('idle_in_transaction_session_timeout', '{lease_ms}'), \
             ('idle_session_timeout', '{lease_ms}')"
        ),
    )
}

/// Sets `values` (`('name', 'setting'), ...`), skipping the settings the server lacks (see
/// [`prelude`]); SET LOCAL in xact scope.
fn set_configs(scope: Scope, values: &str) -> String {
    format!(
        "SELECT set_config(v.name, v.setting, {local}) FROM (VALUES {values}) AS \
         v(name, setting) WHERE current_setting(v.name, true) IS NOT NULL; ",
        local = scope.local()
    )
}

/// The settings and the lock call, in one round trip. Its last value is the try's boolean.
pub fn acquire(call: Call, lock_timeout_ms: u128, settings: Settings, id: LockId) -> String {
    format!(
        "{}{}",
        prelude(call.scope, lock_timeout_ms, settings),
        lock(call, id)
    )
}

/// The lock call alone, for a session whose settings [`acquire`] already made.
pub fn lock(call: Call, id: LockId) -> String {
    format!("SELECT {}({})", call.function(), id.sql_args())
}

/// How long the server has spent on the statement, in milliseconds (statement_timestamp() is
/// when the message arrived), read after a lock wait so that the client can tell a grant that
/// was late on the wire (see `lock::LATE_GRANT`).
const WAITED: &str =
    "(extract(epoch FROM clock_timestamp() - statement_timestamp()) * 1000)::bigint";

/// The column of [`wait`]'s answer that carries [`WAITED`].
pub const WAITED_COLUMN: &str = "waited_ms";

/// The blocking lock call of a lock that was taken, and after the grant how long the server
/// waited, with the fencing token's parts when `token`: one statement, its lock call fenced in
/// a subquery (OFFSET 0) so that what follows is read after the grant.
pub fn wait(call: Call, id: LockId, token: bool) -> String {
    let token = if token {
        format!(", {TOKEN_PARTS} AS token")
    } else {
        String::new()
    };
    fenced(call, id, &format!("{token}, {WAITED} AS {WAITED_COLUMN}"))
}

/// The lock call in a subquery that the planner cannot fold into the outer one (OFFSET 0), and
/// `columns` (each with its leading comma) projected from its row, so computed after it.
fn fenced(call: Call, id: LockId, columns: &str) -> String {
    let granted = if call.try_only { "s.granted" } else { "true" };
    format!(
        "SELECT {granted} AS granted{columns} FROM (SELECT {}({}) AS granted OFFSET 0) AS s",
        call.function(),
        id.sql_args()
    )
}

/// Releases a session lock; its value says whether it was held. `wake` may follow.
pub fn unlock(shared: bool, id: LockId) -> String {
    let function = if shared {
        "pg_advisory_unlock_shared"
    } else {
        "pg_advisory_unlock"
    };
    format!("SELECT {function}({})", id.sql_args())
}

/// Ends a transaction lock.
pub fn end_transaction(commit: bool) -> &'static str {
    if commit { "COMMIT" } else { "ROLLBACK" }
}

/// Whether this backend holds `id` as granted (a count). The tag says how long it has.
pub fn holds(id: LockId, held_for_ms: Option<u128>) -> String {
    let tag = held_for_ms.map_or(String::new(), held_tag);
    format!(
        "{tag}SELECT count(*) AS n FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid() AND l.granted",
        matches(&[id])
    )
}

/// [`HELD_TAG`] for a lock held `ms` milliseconds: what a check's text must begin with.
pub fn held_tag(ms: u128) -> String {
    format!("{HELD_TAG}{ms} ms */ ")
}

/// Where an xact-scope lock check stands to its savepoint, [`CHECK_SAVEPOINT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Savepoint {
    /// Not made yet, or something to keep was done in it: make one (nested, then).
    Make,
    /// Inside it.
    Inside,
    /// A cancel aborted it: roll back to it, which keeps it.
    RollBack,
}

/// An xact-scope lock check: `first` and the check, inside the savepoint [`CHECK_SAVEPOINT`],
/// so that a cancel landing on them (an administrator's pg_cancel_backend, a semaphore's late
/// wake-up) aborts only the savepoint and not the transaction, whose end would free the lock.
/// The savepoint is kept, not released, so that the next check starts inside it. One round
/// trip, as a plain check.
pub fn check_in_savepoint(tag: &str, savepoint: Savepoint, first: &str, check: &str) -> String {
    let enter = match savepoint {
        Savepoint::Make => format!("SAVEPOINT {CHECK_SAVEPOINT}; "),
        Savepoint::Inside => String::new(),
        Savepoint::RollBack => format!("ROLLBACK TO SAVEPOINT {CHECK_SAVEPOINT}; "),
    };
    format!("{tag}{enter}{first}{check}")
}

fn id_array(ids: &[LockId]) -> String {
    let list: Vec<String> = ids.iter().map(LockId::sql_args).collect();
    format!("ARRAY[{}]::bigint[]", list.join(","))
}

/// The first slot this session can take at once, as a 0-based `slot`, or no row.
pub fn try_slots(scope: Scope, slots: &[LockId]) -> String {
    let call = Call {
        try_only: true,
        scope,
        shared: false,
    };
    format!(
        "SELECT t.n - 1 AS slot FROM unnest({}) WITH ORDINALITY AS t(id, n) WHERE {}(t.id) LIMIT 1",
        id_array(slots),
        call.function()
    )
}

/// The slot locks (`classid`, `objid`) this session holds, after a session-scope wait that may
/// have raced a grant, with a fencing token if `token`; then the [`holders`]. (In xact scope the
/// wait's error aborted the transaction, and [`fresh_transaction`] gives back whatever it was
/// granted.)
pub fn held_slots(slots: &[LockId], token: bool) -> String {
    let held = format!(
        "SELECT l.classid::text AS classid, l.objid::text AS objid FROM pg_locks l \
         WHERE {} AND l.granted AND l.pid = pg_backend_pid() LIMIT 1",
        matches(slots)
    );
    let held = if token { with_token(&held) } else { held };
    format!("{held}; SELECT {} AS {HOLDERS_COLUMN}", holders(slots))
}

/// The other sessions that hold these slots: their pids, in text order, separated by spaces
/// (empty when there are none), as a scalar subquery.
pub fn holders(slots: &[LockId]) -> String {
    format!(
        "(SELECT COALESCE(string_agg(DISTINCT l.pid::text, ' ' ORDER BY l.pid::text), '') \
         FROM pg_locks l WHERE {} AND l.granted AND l.pid <> pg_backend_pid())",
        matches(slots)
    )
}

/// An xact-scope head of the queue whose statement failed (its wait was woken, timed out or
/// hit by a stray wake-up) starts a new transaction with the same settings and keeps the gate,
/// a session lock; then reads the [`holders`] of `slots`. The ROLLBACK gives back a grant that
/// raced the wake-up. Unlike a savepoint, this statement can be repeated whatever a cancel
/// interrupted: ROLLBACK ends an aborted transaction, or only warns when there is none.
pub fn fresh_transaction(settings: Settings, slots: &[LockId]) -> String {
    let settings = Settings {
        stranded: None,
        ..settings
    };
    format!(
        "ROLLBACK; {}SELECT {} AS {HOLDERS_COLUMN}",
        prelude(Scope::Xact, 0, settings),
        holders(slots)
    )
}

/// Queues at the semaphore's gate, waiting at most `lock_timeout_ms`.
pub fn gate(scope: Scope, lock_timeout_ms: u128, gate: LockId) -> String {
    format!(
        "SELECT set_config('lock_timeout', '{lock_timeout_ms}', {}); SELECT pg_advisory_lock({})",
        scope.local(),
        gate.sql_args()
    )
}

/// The head's wait: try every slot and, if none is free, block on slot `k`, in one statement, so
/// that no release can fall between the try and the wait; with the slot's fencing token if
/// `token`.
///
/// `named` is what the head last read of the slots' [`holders`] (None: nothing yet). Its mark
/// names them, and only a holder it names wakes it ([`wake_gate`]); the statement blocks only
/// while they are still exactly the holders, and otherwise answers slot -1 with the holders
/// now, to be named in the next wait. So a cancel that ends this wait comes from a holder that
/// had released its slot before sending it, or from someone else (an administrator) if every
/// named holder still holds one.
pub fn head_wait(
    scope: Scope,
    lock_timeout_ms: u128,
    slots: &[LockId],
    k: usize,
    token: bool,
    named: Option<&str>,
) -> String {
    let block = Call {
        try_only: false,
        scope,
        shared: false,
    };
    let holders = holders(slots);
    let (mark, otherwise) = match named {
        // No holders named yet: nothing wakes this statement, so it must not block.
        None => (format!("{WAIT_MARK} for - */"), "-1".to_string()),
        Some(named) => (
            match named.len() > MAX_NAMED {
                true => WAIT_MARK_ANY.to_string(),
                false => format!("{WAIT_MARK} for {named} */"),
            },
            format!(
                "(SELECT CASE WHEN {holders} = {} THEN (SELECT {k} FROM (SELECT {}({})) AS w) \
                 ELSE -1 END)",
                literal(named),
                block.function(),
                slots[k].sql_args()
            ),
        ),
    };
    let wait = format!(
        "SELECT COALESCE(({}), {otherwise}) AS slot, {holders} AS {HOLDERS_COLUMN}",
        try_slots(scope, slots),
    );
    format!(
        "{mark} SELECT set_config('lock_timeout', '{lock_timeout_ms}', {}); {}",
        scope.local(),
        if token { with_token(&wait) } else { wait }
    )
}

/// Leaves the gate once a slot is ours.
pub fn leave_gate(gate: LockId) -> String {
    format!("SELECT pg_advisory_unlock({})", gate.sql_args())
}

/// An xact-scope semaphore wait whose transaction a stray wake-up aborted: start over.
pub const RESTART_TRANSACTION: &str = "ROLLBACK; SELECT pg_advisory_unlock_all()";

/// Appended to a slot's release: cancel the gate holder's wait statement so it looks again.
/// Only that statement: a cancel landing on any other would abort more than a wait. And only if
/// its mark names this session among the holders it waits on (see [`head_wait`]), so that the
/// head can tell this wake-up from an administrator's cancel.
pub fn wake_gate(gate: LockId) -> String {
    format!(
        "; SELECT pg_cancel_backend(l.pid) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
         WHERE {} AND l.granted AND l.pid <> pg_backend_pid() AND a.state = 'active' \
         AND starts_with(a.query, '{WAIT_MARK}') AND pg_has_role(a.usesysid, 'MEMBER') \
         AND (position(' ' || pg_backend_pid() || ' ' IN split_part(a.query, '*/', 1) || ' ') > 0 \
         OR starts_with(a.query, '{WAIT_MARK_ANY}') OR starts_with(a.query, '{WAIT_MARK_OLD}'))",
        matches(&[gate])
    )
}

/// How many of these slot locks are held in this database (slots above our --limit).
pub fn count_held(slots: &[LockId]) -> String {
    format!(
        "SELECT count(*) AS n FROM pg_locks l WHERE {} AND l.granted",
        matches(slots)
    )
}

/// `--fencing-token`'s parts ([`crate::lock::token`]), as the server prints them: the name of
/// the WAL file being written (its first 8 hex digits are the insert timeline), the latest
/// checkpoint's LSN and a transaction id. Valid only after the grant, so only in the projection
/// of a row that exists because the lock was taken. pglock decodes the hex itself: casts and
/// operators in SQL cost a new backend catalog lookups, 0.2 ms here. `txid_current()` rather
/// than `pg_current_xact_id()`, which PostgreSQL 12 lacks. On a standby it fails: a token comes
/// only from a primary.
pub const TOKEN_PARTS: &str = "concat_ws(' ', pg_walfile_name(pg_current_wal_lsn()), \
     (pg_control_checkpoint()).checkpoint_lsn, txid_current())";

/// The settings and the lock call with its fencing token, in one round trip: [`acquire`] whose
/// last statement also has a `token` column, NULL when a try failed.
pub fn acquire_with_token(
    call: Call,
    lock_timeout_ms: u128,
    settings: Settings,
    id: LockId,
) -> String {
    format!(
        "{}{}",
        prelude(call.scope, lock_timeout_ms, settings),
        lock_with_token(call, id)
    )
}

/// [`lock`] with the fencing token of the grant. The lock call sits in a subquery that the
/// planner cannot fold into the outer one (OFFSET 0), so the token is computed once, after it.
pub fn lock_with_token(call: Call, id: LockId) -> String {
    let token = if call.try_only {
        format!("CASE WHEN s.granted THEN {TOKEN_PARTS} END")
    } else {
        TOKEN_PARTS.to_string()
    };
    fenced(call, id, &format!(", {token} AS token"))
}

/// A statement that returns a row only for a lock it holds (a slot), with the fencing token
/// added to that row. The token is projected after the row passed the statement's own
/// conditions, that is after its lock call.
pub fn with_token(select: &str) -> String {
    format!("SELECT s.*, {TOKEN_PARTS} AS token FROM ({select} OFFSET 0) AS s")
}

/// A string literal for any text, dollar-quoted with a tag the text does not contain, so that
/// neither quotes nor backslashes (whatever standard_conforming_strings says) can end it.
pub fn literal(text: &str) -> String {
    let mut tag = String::from("$pglock$");
    let mut n = 0;
    // The literal ends at the first tag after the opening one: that must be the closing one.
    while format!("{text}{tag}").find(&tag) != Some(text.len()) {
        n += 1;
        tag = format!("$pglock{n}$");
    }
    format!("{tag}{text}{tag}")
}

/// Cancels the lock wait of backend `backend` if it is still named `app_name` (a dead waiter's,
/// for the wait guard).
pub fn cancel_waiter(app_name: &str, backend: i32) -> String {
    format!(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = {backend} \
         AND application_name = {} AND wait_event_type = 'Lock'",
        literal(app_name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: LockId = LockId::Big(-4774651977129594492);

    #[test]
    fn predicate_uses_the_coordinates() {
        assert_eq!(
            matches(&[ID]),
            "l.locktype = 'advisory' AND l.database = (SELECT oid FROM pg_database WHERE \
             datname = current_database()) AND l.classid = 3183282002 AND l.objid = 4044550532 \
             AND l.objsubid = 1"
        );
    }

    #[test]
    fn function_names() {
        let call = |try_only, scope, shared| {
            Call {
                try_only,
                scope,
                shared,
            }
            .function()
        };
        assert_eq!(call(false, Scope::Session, false), "pg_advisory_lock");
        assert_eq!(
            call(true, Scope::Session, true),
            "pg_try_advisory_lock_shared"
        );
        assert_eq!(
            call(true, Scope::Xact, true),
            "pg_try_advisory_xact_lock_shared"
        );
        assert_eq!(call(false, Scope::Xact, false), "pg_advisory_xact_lock");
    }

    #[test]
    fn the_wait_reads_what_follows_the_grant_after_it() {
        let call = Call {
            try_only: false,
            scope: Scope::Session,
            shared: false,
        };
        assert_eq!(
            wait(call, LockId::Big(7), false),
            "SELECT true AS granted, (extract(epoch FROM clock_timestamp() - \
             statement_timestamp()) * 1000)::bigint AS waited_ms FROM (SELECT \
             pg_advisory_lock(7) AS granted OFFSET 0) AS s"
        );
        assert!(wait(call, LockId::Big(7), true).contains(" AS token, "));
    }

    #[test]
    fn acquire_snapshot() {
        let call = Call {
            try_only: false,
            scope: Scope::Xact,
            shared: true,
        };
        assert_eq!(
            acquire(call, 1500, Settings::default(), LockId::Pair(1, 2)),
            "BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; SELECT set_config(v.name, \
             v.setting, true) FROM (VALUES \
             ('statement_timeout', '0'), ('idle_in_transaction_session_timeout', '0'), \
             ('idle_session_timeout', '0'), ('transaction_timeout', '0'), \
             ('lock_timeout', '1500'), ('client_connection_check_interval', '500'), \
             ('default_transaction_isolation', 'read committed'), \
             ('default_transaction_read_only', 'off')) AS \
             v(name, setting) WHERE current_setting(v.name, true) IS NOT NULL; \
             SELECT pg_backend_pid() AS backend_pid; \
             SELECT pg_advisory_xact_lock_shared(1,2)"
        );
        let leased = Settings {
            lease_ms: 6000,
            keepalive_s: 1,
            stranded: Some(77),
        };
        assert_eq!(
            prelude(Scope::Session, 0, leased),
            "SELECT pg_terminate_backend(a.pid) FROM pg_stat_activity a WHERE a.pid = 77 \
             AND a.application_name = current_setting('application_name'); \
             SELECT set_config(v.name, v.setting, false) FROM (VALUES \
             ('statement_timeout', '0'), ('idle_in_transaction_session_timeout', '6000'), \
             ('idle_session_timeout', '6000'), ('transaction_timeout', '0'), \
             ('lock_timeout', '0'), ('client_connection_check_interval', '500'), \
             ('default_transaction_isolation', 'read committed'), \
             ('default_transaction_read_only', 'off'), ('tcp_keepalives_idle', '1'), ('tcp_keepalives_interval', '1'), \
             ('tcp_user_timeout', '6000')) AS v(name, setting) \
             WHERE current_setting(v.name, true) IS NOT NULL; \
             SELECT pg_backend_pid() AS backend_pid; "
        );
        assert_eq!(
            lock(call, LockId::Big(-7)),
            "SELECT pg_advisory_xact_lock_shared(-7)"
        );
    }

    #[test]
    fn release_and_check_snapshots() {
        assert_eq!(
            unlock(true, LockId::Big(42)),
            "SELECT pg_advisory_unlock_shared(42)"
        );
        assert_eq!(end_transaction(false), "ROLLBACK");
        assert_eq!(
            holds(LockId::Big(42), Some(7)),
            format!(
                "/* pglock: held for 7 ms */ SELECT count(*) AS n FROM pg_locks l WHERE {} AND \
                 l.pid = pg_backend_pid() AND l.granted",
                matches(&[LockId::Big(42)])
            )
        );
    }

    #[test]
    fn semaphore_snapshots() {
        let slots = [LockId::Big(1), LockId::Big(2)];
        assert_eq!(
            try_slots(Scope::Session, &slots),
            "SELECT t.n - 1 AS slot FROM unnest(ARRAY[1,2]::bigint[]) WITH ORDINALITY AS t(id, n) \
             WHERE pg_try_advisory_lock(t.id) LIMIT 1"
        );
        assert_eq!(
            gate(Scope::Xact, 0, LockId::Big(9)),
            "SELECT set_config('lock_timeout', '0', true); SELECT pg_advisory_lock(9)"
        );
        // Nothing named yet: a try that never blocks, and the holders to name.
        let first = head_wait(Scope::Xact, 250, &slots, 1, false, None);
        assert!(first.starts_with("/* pglock: semaphore wait for - */ SELECT set_config("));
        assert!(first.contains(", -1) AS slot, (SELECT COALESCE(string_agg("));
        assert!(!first.contains("pg_advisory_xact_lock("));
        let wait = head_wait(Scope::Xact, 250, &slots, 1, false, Some("12 345"));
        assert!(wait.starts_with("/* pglock: semaphore wait for 12 345 */ SELECT set_config("));
        assert!(wait.contains(&format!(
            "(SELECT CASE WHEN {} = $pglock$12 345$pglock$ THEN (SELECT 1 FROM \
             (SELECT pg_advisory_xact_lock(2)) AS w) ELSE -1 END)) AS slot, ",
            holders(&slots)
        )));
        assert!(wait.ends_with(" AS holders"));
        let many = vec!["1234567"; 200].join(" ");
        assert!(
            head_wait(Scope::Session, 0, &slots, 0, false, Some(&many))
                .starts_with("/* pglock: semaphore wait for any */ SELECT")
        );
        assert_eq!(leave_gate(LockId::Big(9)), "SELECT pg_advisory_unlock(9)");
        assert!(held_slots(&slots, false).starts_with("SELECT l.classid"));
        assert!(held_slots(&slots, false).ends_with(" AS holders"));
        let fresh = fresh_transaction(
            Settings {
                lease_ms: 0,
                keepalive_s: 0,
                stranded: Some(7),
            },
            &slots,
        );
        assert!(fresh.starts_with("ROLLBACK; BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE; "));
        assert!(fresh.ends_with(" AS holders"));
        assert!(!fresh.contains("pg_terminate_backend"));
        let wake = wake_gate(LockId::Big(9));
        assert!(wake.contains("starts_with(a.query, '/* pglock: semaphore wait')"));
        assert!(wake.contains("position(' ' || pg_backend_pid() || ' ' IN "));
        assert!(wake.contains("starts_with(a.query, '/* pglock: semaphore wait */')"));
        let check = |savepoint| check_in_savepoint("/* t */ ", savepoint, "SET x; ", "SELECT 1");
        assert_eq!(
            check(Savepoint::Make),
            "/* t */ SAVEPOINT pglock_check; SET x; SELECT 1"
        );
        assert_eq!(check(Savepoint::Inside), "/* t */ SET x; SELECT 1");
        assert_eq!(
            check(Savepoint::RollBack),
            "/* t */ ROLLBACK TO SAVEPOINT pglock_check; SET x; SELECT 1"
        );
        assert!(count_held(&slots).contains(&matches(&slots)));
    }

    #[test]
    fn token_snapshots() {
        let call = |try_only| Call {
            try_only,
            scope: Scope::Session,
            shared: false,
        };
        assert_eq!(
            lock_with_token(call(true), LockId::Big(7)),
            format!(
                "SELECT s.granted AS granted, CASE WHEN s.granted THEN {TOKEN_PARTS} END AS token \
                 FROM (SELECT pg_try_advisory_lock(7) AS granted OFFSET 0) AS s"
            )
        );
        assert_eq!(
            lock_with_token(call(false), LockId::Big(7)),
            format!(
                "SELECT true AS granted, {TOKEN_PARTS} AS token \
                 FROM (SELECT pg_advisory_lock(7) AS granted OFFSET 0) AS s"
            )
        );
        assert!(
            acquire_with_token(call(true), 0, Settings::default(), LockId::Big(7))
                .starts_with(&prelude(Scope::Session, 0, Settings::default()))
        );
        let slots = [LockId::Big(1), LockId::Big(2)];
        assert!(
            head_wait(Scope::Session, 5, &slots, 0, true, Some("7")).ends_with(&format!(
                "{TOKEN_PARTS} AS token FROM (SELECT COALESCE(({}), (SELECT CASE WHEN {h} = \
                 $pglock$7$pglock$ THEN (SELECT 0 FROM (SELECT pg_advisory_lock(1)) AS w) ELSE \
                 -1 END)) AS slot, {h} AS holders OFFSET 0) AS s",
                try_slots(Scope::Session, &slots),
                h = holders(&slots)
            ))
        );
        assert!(held_slots(&slots, true).contains("LIMIT 1 OFFSET 0) AS s"));
    }

    #[test]
    fn literals_cannot_be_escaped() {
        assert_eq!(literal("it's \\ ok"), "$pglock$it's \\ ok$pglock$");
        assert_eq!(literal("a$pglock$b"), "$pglock1$a$pglock$b$pglock1$");
        assert_eq!(literal("a$pglock"), "$pglock1$a$pglock$pglock1$");
        assert_eq!(
            cancel_waiter("pglock:k@h:1", 42),
            "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE pid = 42 \
             AND application_name = $pglock$pglock:k@h:1$pglock$ AND wait_event_type = 'Lock'"
        );
    }

    #[test]
    fn timeouts() {
        assert_eq!(lock_timeout_ms(None), 0);
        assert_eq!(lock_timeout_ms(Some(Duration::ZERO)), 1);
        assert_eq!(lock_timeout_ms(Some(Duration::from_secs(2))), 2000);
    }
}
