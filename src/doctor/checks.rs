//! The doctor's checks, each read from what the server says over pglock's own kind of
//! connection (the same settings, TLS policy and bounds as a run's).

use super::{Finding, Request};
use crate::appname::{AppName, Observer};
use crate::conninfo::Target;
use crate::duration;
use crate::ledger::sql::{COLUMNS, STATUSES};
use crate::ledger::table::Table;
use crate::pg::sql::Scope;
use crate::pg::{Opener, Session, session::final_column};
use crate::tls::Check;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio_postgres::SimpleQueryMessage;

/// How long the pooler check waits for a server connection a transaction pooler would have to
/// free first.
const POOL_WAIT: Duration = Duration::from_secs(2);

/// Everything the server says in one round trip.
const FACTS: &str = "SELECT current_setting('server_version') AS version, \
     current_setting('server_version_num') AS num, \
     current_setting('transaction_read_only') AS read_only, \
     coalesce((SELECT CASE WHEN ssl THEN coalesce(version, 'TLS') END \
               FROM pg_stat_ssl WHERE pid = pg_backend_pid()), '') AS tls, \
     current_setting('max_connections') AS max_conn, \
     current_setting('superuser_reserved_connections') AS reserved, \
     (SELECT rolconnlimit FROM pg_roles WHERE rolname = current_user) AS role_limit, \
     (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser, \
     (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend') AS clients, \
     (SELECT count(*) FROM pg_stat_activity WHERE usename = current_user) AS role_sessions, \
     current_user AS role";

struct Facts {
    version: String,
    num: i64,
    read_only: bool,
    tls: String,
    max_conn: i64,
    reserved: i64,
    role_limit: i64,
    superuser: bool,
    clients: i64,
    role_sessions: i64,
    role: String,
}

/// All checks, in the order they are printed. A connection that fails ends the list there.
pub fn run(req: &Request, target: &Target) -> Vec<Finding> {
    let name = AppName::observer(Observer::Doctor).encoded();
    let opener = match Opener::new(target, &name, None, Duration::from_secs(5)) {
        Ok(opener) => opener,
        Err(e) => {
            let fix = "fix the TLS settings it names (sslcert, sslkey, sslrootcert)";
            return vec![Finding::fail("connection", format!("{e:#}"), fix)];
        }
    };
    let mut session = match opener.open() {
        Ok(session) => session,
        Err(e) => {
            let fix = "check host, port, user, database, password (or ~/.pgpass) and sslmode, \
                       as psql would take them";
            let message = format!("cannot connect to {}: {e}", target.describe);
            return vec![Finding::fail("connection", message, fix)];
        }
    };
    let limit = opener.connect_timeout();
    let facts = match session.query_within(FACTS, limit) {
        Ok(messages) => parse(&messages),
        Err(e) => None.ok_or(e.to_string()),
    };
    let facts = match facts {
        Ok(facts) => facts,
        Err(why) => {
            let fix = "the role must be able to read pg_stat_activity and pg_roles";
            return vec![Finding::fail(
                "connection",
                format!("cannot ask the server: {why}"),
                fix,
            )];
        }
    };
    let mut out = vec![connection(&facts, &session, target)];
    out.push(lease(&facts, req));
    out.extend(limits(&facts, req));
    if let Some(table) = &req.ledger {
        out.push(ledger(&mut session, table, &facts, limit));
    }
    out.push(clock(&mut session, limit));
    // Last: it may leave the session cut (a pooler that had no server session to give it).
    out.insert(1, pooler(&opener, session, req.scope, limit));
    out
}

fn parse(messages: &[SimpleQueryMessage]) -> Result<Facts, String> {
    let text = |name: &str| final_column(messages, name).unwrap_or_default();
    let num = |name: &str| text(name).parse::<i64>().unwrap_or(-1);
    if text("version").is_empty() {
        return Err("no answer to the server's settings".into());
    }
    Ok(Facts {
        version: text("version"),
        num: num("num"),
        read_only: text("read_only") == "on",
        tls: text("tls"),
        max_conn: num("max_conn"),
        reserved: num("reserved"),
        role_limit: num("role_limit"),
        superuser: text("superuser") == "t",
        clients: num("clients"),
        role_sessions: num("role_sessions"),
        role: text("role"),
    })
}

fn connection(facts: &Facts, session: &Session, target: &Target) -> Finding {
    const C: &str = "connection";
    let peer = session.peer();
    let mut message = format!("PostgreSQL {} at {}", facts.version, peer.describe());
    if facts.read_only {
        let fix = "point pglock at the primary: a standby's advisory locks are its own";
        return Finding::fail(C, format!("{message}, read-only"), fix);
    }
    message.push_str(", writable");
    let verified = match target.verify.check {
        Check::Full => "certificate and host name verified",
        Check::Chain => "certificate chain verified, host name not",
        Check::Nothing | Check::Disabled => "certificate not verified",
    };
    match (facts.tls.as_str(), peer.is_local()) {
        ("", true) => Finding::ok(C, format!("{message}, plaintext on this machine")),
        ("", false) => Finding::warn(
            C,
            format!("{message}, plaintext over a network"),
            "set sslmode=verify-full (and sslrootcert) so that nobody on the way reads the \
             password or answers for the server",
        ),
        (tls, false) if target.verify.check != Check::Full => Finding::warn(
            C,
            format!("{message}, {tls}, {verified}"),
            "set sslmode=verify-full (and sslrootcert): without it a machine in the middle can \
             answer for the server",
        ),
        (tls, _) => Finding::ok(C, format!("{message}, {tls}, {verified}")),
    }
}

/// A transaction pooler hands each transaction to any server session: one client's session
/// lock would be taken on one server session and checked on another. Told apart by what it
/// does: a second client holds a transaction open on the first's server session (a pooler
/// reuses the one just freed), and the first asks again. Directly or through a session pooler,
/// the first keeps its own server session; through a transaction pooler it gets another, or
/// waits for one. The first is the session the other checks used.
fn pooler(opener: &Opener, mut first: Session, scope: Scope, limit: Duration) -> Finding {
    const C: &str = "pooler";
    let pid = |s: &mut Session, within: Duration| -> Result<String, String> {
        s.query_within("SELECT pg_backend_pid()::text", within)
            .map(|m| crate::pg::session::first_value(&m).unwrap_or_default())
            .map_err(|e| e.to_string())
    };
    let mut second = match opener.open() {
        Ok(second) => second,
        Err(e) => {
            let fix = "each pglock run needs a connection of its own";
            return Finding::warn(
                C,
                format!("cannot open a second connection to look: {e}"),
                fix,
            );
        }
    };
    let before = pid(&mut first, limit);
    let held = second.query_within("BEGIN; SELECT pg_backend_pid()::text", limit);
    if let Err(e) = &held {
        let fix = "--scope xact needs session or transaction pooling; session scope needs \
                   session pooling or a direct connection";
        return Finding::fail(
            C,
            format!("an open transaction is refused ({e}): statement pooling?"),
            fix,
        );
    }
    let after = pid(&mut first, POOL_WAIT);
    let _ = second.query_within("ROLLBACK", limit);
    let pooled = match (&before, &after) {
        (Ok(a), Ok(b)) => a != b,
        // No server session for a plain SELECT within seconds: the pool's only one was busy.
        (Ok(_), Err(_)) => true,
        (Err(e), _) => return Finding::warn(C, format!("cannot tell: {e}"), "run it again"),
    };
    first.close();
    second.close();
    match (pooled, scope) {
        (false, _) => Finding::ok(
            C,
            "each client keeps its server session (direct, or session pooling)",
        ),
        (true, Scope::Xact) => {
            Finding::ok(C, "transaction pooling in the path: fine for --scope xact")
        }
        (true, Scope::Session) => Finding::fail(
            C,
            "transaction pooling in the path: a session lock would be taken on one server \
             session and checked on another, and another client could take it meanwhile",
            "use --scope xact (or session pooling, or connect to the server directly)",
        ),
    }
}

fn lease(facts: &Facts, req: &Request) -> Finding {
    const C: &str = "lease";
    let Some(lease) = req.lease else {
        return Finding::warn(
            C,
            "none (--lease 0): a holder whose host vanishes keeps the lock until TCP gives up \
             (hours by default)",
            "drop --lease 0",
        );
    };
    let length = duration::format(lease.length);
    match req.scope {
        Scope::Session if facts.num < 140_000 => Finding::warn(
            C,
            format!(
                "{length}, by TCP keepalives only: PostgreSQL {} has no idle_session_timeout, \
                 so a stuck pglock on a host that is up keeps its lock",
                facts.version
            ),
            "use --scope xact (idle_in_transaction_session_timeout), or PostgreSQL 14 or later",
        ),
        Scope::Session => Finding::ok(
            C,
            format!(
                "{length}: idle_session_timeout and TCP keepalives end a silent holder's session"
            ),
        ),
        Scope::Xact => Finding::ok(
            C,
            format!(
                "{length}: idle_in_transaction_session_timeout and TCP keepalives end a silent \
                 holder's session"
            ),
        ),
    }
}

fn limits(facts: &Facts, req: &Request) -> Vec<Finding> {
    const C: &str = "limits";
    let reserved = if facts.superuser { 0 } else { facts.reserved };
    let free = facts.max_conn - reserved - facts.clients;
    let role_free = (facts.role_limit >= 0).then(|| facts.role_limit - facts.role_sessions);
    let role_text = match facts.role_limit {
        n if n < 0 => format!("role {} has no connection limit", facts.role),
        n => format!(
            "role {} may open {n} ({} open now)",
            facts.role, facts.role_sessions
        ),
    };
    let mut out = Vec::new();
    let summary = format!(
        "max_connections {}, {} in use, {free} free for this role; {role_text}",
        facts.max_conn, facts.clients
    );
    match req.fleet {
        None => out.push(Finding::ok(C, summary)),
        Some(fleet) => {
            // One connection per run (holder or waiter); a waiter adds up to two more while it
            // waits (its status line's and its wait guard's), briefly.
            let needed = i64::from(fleet);
            let short = match role_free {
                Some(role_free) if role_free < needed => Some(role_free),
                _ if free < needed => Some(free),
                _ => None,
            };
            match short {
                None => out.push(Finding::ok(
                    C,
                    format!("a fleet of {fleet} fits: {summary}"),
                )),
                Some(room) => out.push(Finding::warn(
                    C,
                    format!(
                        "a fleet of {fleet} needs {fleet} connections, {room} are free: {summary}"
                    ),
                    "raise max_connections or the role's CONNECTION LIMIT; waiters beyond it wait \
                     on the client for a free slot (see Large fleets in the README)",
                )),
            }
        }
    }
    let cancel = if facts.superuser {
        "superuser: may cancel any session".to_string()
    } else {
        format!(
            "role {} may cancel its own other sessions (a reconnecting waiter ends its stranded \
             backend; the wait guard cancels a dead waiter's wait)",
            facts.role
        )
    };
    out.push(Finding::ok(C, cancel));
    if req.limit > 1 {
        out.push(Finding::ok(
            C,
            format!(
                "--limit {}: one connection per holder and waiter, as a plain lock",
                req.limit
            ),
        ));
    }
    out
}

fn ledger(session: &mut Session, table: &Table, facts: &Facts, limit: Duration) -> Finding {
    const C: &str = "ledger";
    let flag = if table.to_string() == crate::ledger::table::DEFAULT {
        String::new()
    } else {
        format!(" --ledger {table}")
    };
    let literal = table.quoted().replace('\'', "''");
    let sql = format!(
        "SELECT to_regclass('{literal}') IS NOT NULL AS present, \
           (SELECT string_agg(attname, ',') FROM pg_attribute \
              WHERE attrelid = to_regclass('{literal}') AND attnum > 0 AND NOT attisdropped) AS columns, \
           (SELECT string_agg(pg_get_constraintdef(oid), ' ') FROM pg_constraint \
              WHERE conrelid = to_regclass('{literal}') AND contype = 'c') AS checks, \
           CASE WHEN to_regclass('{literal}') IS NULL THEN '' ELSE \
             concat_ws(',', \
               CASE WHEN NOT has_table_privilege('{literal}', 'SELECT') THEN 'SELECT' END, \
               CASE WHEN NOT has_table_privilege('{literal}', 'INSERT') THEN 'INSERT' END, \
               CASE WHEN NOT has_table_privilege('{literal}', 'UPDATE') THEN 'UPDATE' END) END AS denied"
    );
    let messages = match session.query_within(&sql, limit) {
        Ok(m) => m,
        Err(e) => return Finding::warn(C, format!("cannot look at {table}: {e}"), "run it again"),
    };
    let text = |name: &str| final_column(&messages, name).unwrap_or_default();
    if text("present") != "t" {
        return Finding::fail(
            C,
            format!("table {table} does not exist"),
            format!("create it with 'pglock init{flag}' (or apply 'pglock init{flag} --print')"),
        );
    }
    let columns = text("columns");
    let have: Vec<&str> = columns.split(',').collect();
    let checks = text("checks");
    let mut missing: Vec<String> = COLUMNS
        .iter()
        .filter(|c| !have.contains(c))
        .map(|c| format!("column {c}"))
        .collect();
    missing.extend(
        STATUSES
            .iter()
            .filter(|s| !checks.contains(&format!("'{s}'")))
            .map(|s| format!("status {s}")),
    );
    if !missing.is_empty() {
        return Finding::fail(
            C,
            format!(
                "table {table} was made by an earlier pglock (no {})",
                missing.join(", ")
            ),
            format!(
                "upgrade it with 'pglock init{flag}' as its owner (or apply 'pglock init{flag} --print')"
            ),
        );
    }
    let denied = text("denied");
    if !denied.is_empty() {
        return Finding::fail(
            C,
            format!("role {} may not {denied} on {table}", facts.role),
            format!(
                "a DBA can grant what a runner needs with 'pglock init{flag} --grant {}'",
                facts.role
            ),
        );
    }
    Finding::ok(C, format!("table {table} is up to date and writable"))
}

/// The host's clock against the server's, taking the server's reading to be from the middle of
/// the round trip.
fn clock(session: &mut Session, limit: Duration) -> Finding {
    const C: &str = "clock";
    let epoch = |t: SystemTime| {
        t.duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let before = SystemTime::now();
    let answer = session.query_within("SELECT extract(epoch FROM clock_timestamp())::text", limit);
    let after = SystemTime::now();
    let server = match answer {
        Ok(m) => crate::pg::session::first_value(&m).and_then(|v| v.parse::<f64>().ok()),
        Err(e) => {
            return Finding::warn(
                C,
                format!("cannot read the server's clock: {e}"),
                "run it again",
            );
        }
    };
    let Some(server) = server else {
        return Finding::warn(C, "the server gave no time", "run it again");
    };
    let host = (epoch(before) + epoch(after)) / 2.0;
    let off = host - server;
    let how = if off >= 0.0 { "ahead of" } else { "behind" };
    // Whole seconds past one, milliseconds below: the reading is only as good as the round trip.
    let amount = match off.abs() {
        a if a >= 1.0 => duration::format(Duration::from_secs(a.round().min(1e9) as u64)),
        a => duration::format(Duration::from_millis((a * 1000.0).round() as u64)),
    };
    if off.abs() > 1.0 {
        Finding::warn(
            C,
            format!("this host's clock is {amount} {how} the server's"),
            "run NTP (chrony, systemd-timesyncd): pglock decides by the server's clock, but people \
             compare logs",
        )
    } else {
        Finding::ok(C, format!("within {amount} of the server's"))
    }
}
