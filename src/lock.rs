//! The lock connection: one dedicated PostgreSQL session that acquires the advisory lock, can be
//! watched while the command runs, and releases the lock at the end.
//!
//! Round trips are kept to the minimum: application_name travels in the startup packet, and the
//! session settings and the lock call go to the server as one simple-protocol query. The simple
//! protocol also keeps pglock working through PgBouncer, which breaks named prepared statements.

use crate::cli::Scope;
use crate::conninfo::Target;
use crate::exit::{Failure, fail};
use crate::key::LockId;
pub use crate::semaphore::Semaphore;
use crate::tls::Connector;
use crate::{duration, semaphore, step};
use anyhow::Result;
use postgres::error::SqlState;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{CancelToken, Client, Config, SimpleQueryMessage};
use std::os::fd::RawFd;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// PostgreSQL truncates application_name to 63 bytes; we shorten it ourselves so the
/// `@host:pid` end, which identifies the holder, survives.
const NAMEDATALEN: usize = 63;

/// How quickly the server notices a waiter whose client vanished (PG 14+).
const CLIENT_CHECK_MS: u32 = 500;

/// What to take.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: LockId,
    pub shared: bool,
    pub scope: Scope,
    /// Try once instead of waiting.
    pub nowait: bool,
    /// Wait at most this long (server-side lock_timeout).
    pub timeout: Option<Duration>,
    /// `--limit N` above 1: take one of N slots instead of `id`.
    pub semaphore: Option<Semaphore>,
}

/// The lock this session holds.
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub id: LockId,
    pub shared: bool,
    pub scope: Scope,
    /// The semaphore slot, with the gate whose holder a release must wake.
    pub slot: Option<(usize, LockId)>,
}

/// How an acquisition attempt ended, short of an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquired {
    Held,
    Busy,
    TimedOut,
    /// The wait was cancelled from another thread (a signal arrived).
    Cancelled,
}

pub struct Session {
    client: Client,
    connector: Connector,
    socket: Option<RawFd>,
    held: Option<Held>,
    watchdog: Option<Watchdog>,
    /// When the lock was granted, in Unix milliseconds. See [`GRANTED_TAG`].
    granted_at: Option<u128>,
}

/// The lock checks start with `/* pglock: granted <unix ms> */`. pg_stat_activity keeps no
/// record of when a lock was granted, and each check moves the session's state_change, so this
/// comment in its visible last query is how `pglock status` and holder reports tell since when
/// a pglock has held its lock.
pub const GRANTED_TAG: &str = "/* pglock: granted ";

/// Opens lock connections; pglock may need several when the server goes away while it waits.
pub struct Opener {
    config: Config,
    connector: Connector,
    describe: String,
}

/// `pglock:<label>@<host>:<pid>`, shortened to what the server keeps.
pub fn application_name(label: &str) -> String {
    let host = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into());
    let tail = format!("@{host}:{}", std::process::id());
    let room = NAMEDATALEN.saturating_sub("pglock:".len() + tail.len());
    let mut cut = label.len().min(room);
    while !label.is_char_boundary(cut) {
        cut -= 1;
    }
    let name = format!("pglock:{}{tail}", &label[..cut]);
    // A pathological hostname could still overflow; the server would cut the end, so we do it
    // ourselves at a character boundary.
    let mut end = name.len().min(NAMEDATALEN);
    while !name.is_char_boundary(end) {
        end -= 1;
    }
    name[..end].to_string()
}

impl Opener {
    /// Prepares connections to `target`. `check_interval` drives TCP keepalives and
    /// tcp_user_timeout, so a silent network partition is noticed within 2 x interval + 5s.
    pub fn new(
        target: &Target,
        app_name: &str,
        connect_timeout: Option<Duration>,
        check_interval: Duration,
    ) -> Result<Opener> {
        let connector = Connector::new(&target.verify)?;
        let mut config = target.config.clone();
        config.application_name(app_name);
        match connect_timeout {
            Some(t) => {
                config.connect_timeout(t);
            }
            None if config.get_connect_timeout().is_none() => {
                config.connect_timeout(DEFAULT_CONNECT_TIMEOUT);
            }
            None => {}
        }
        // The kernel counts keepalive times in whole seconds.
        let probe = check_interval.max(Duration::from_secs(1));
        config
            .keepalives(true)
            .keepalives_idle(probe)
            .keepalives_interval(probe)
            .keepalives_retries(3);
        if config.get_tcp_user_timeout().is_none() {
            config.tcp_user_timeout(2 * check_interval + Duration::from_secs(5));
        }
        Ok(Opener {
            config,
            connector,
            describe: target.describe.clone(),
        })
    }

    /// The application_name every connection of this run carries.
    pub fn application_name(&self) -> &str {
        self.config.get_application_name().unwrap_or_default()
    }

    /// Opens one dedicated connection.
    pub fn open(&self) -> Result<Session, postgres::Error> {
        step!("connecting to {}", self.describe);
        let started = Instant::now();
        let before = open_sockets();
        let client = connect(&self.connector, &self.config)?;
        let socket = only_new_socket(&before, &open_sockets());
        step!(
            "connected in {} (socket {socket:?})",
            duration::format(started.elapsed())
        );
        Ok(Session {
            client,
            connector: self.connector.clone(),
            socket,
            held: None,
            watchdog: None,
            granted_at: None,
        })
    }

    /// The error pglock exits 69 with.
    pub fn failure(&self, e: &postgres::Error) -> anyhow::Error {
        fail(
            Failure::Unavailable,
            format!("cannot connect to {}: {}", self.describe, describe_error(e)),
        )
    }
}

/// Connects as `connector.connect(config)` would, but looks the host name up on this thread.
///
/// rust-postgres looks a name up on a blocking-pool thread that its runtime starts for the
/// purpose and joins when the connection closes: over loopback that thread was about 1 ms of a
/// 7 ms pglock run. For the usual single host, this looks the name up here instead, as libpq
/// does, and tries its addresses in order, handing rust-postgres one at a time as hostaddr (which
/// it uses as is; the name still serves TLS). Looked up at each connect, so that a reconnect
/// follows a DNS change. Anything else (several hosts, load balancing, a failed lookup) is left
/// to rust-postgres.
fn connect(connector: &Connector, config: &Config) -> Result<Client, postgres::Error> {
    use postgres::config::{Host, LoadBalanceHosts};
    use std::net::{SocketAddr, ToSocketAddrs};
    let name = match (config.get_hosts(), config.get_hostaddrs()) {
        ([Host::Tcp(name)], [])
            if config.get_load_balance_hosts() == LoadBalanceHosts::Disable
                && name.parse::<std::net::IpAddr>().is_err() =>
        {
            name
        }
        _ => return connector.connect(config),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    let addrs: Vec<SocketAddr> = match (name.as_str(), port).to_socket_addrs() {
        // hostaddr cannot carry an IPv6 scope id.
        Ok(addrs) => addrs
            .filter(|a| !matches!(a, SocketAddr::V6(v6) if v6.scope_id() != 0))
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut last = None;
    for addr in addrs {
        let mut one = config.clone();
        one.hostaddr(addr.ip());
        match connector.connect(&one) {
            Ok(client) => return Ok(client),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) => Err(e),
        // Nothing to try: rust-postgres looks again and reports the failure its usual way.
        None => connector.connect(config),
    }
}

impl Session {
    /// A handle that cancels a running lock wait from another thread.
    pub fn canceller(&self) -> Canceller {
        Canceller {
            token: self.client.cancel_token(),
            connector: self.connector.clone(),
        }
    }

    /// The connection's socket, for watching it with poll(2) while the command runs.
    pub fn socket(&self) -> Option<RawFd> {
        self.socket
    }

    /// Takes the lock (or a semaphore slot). `interrupted` tells a cancel caused by a signal
    /// from one sent by another pglock.
    pub fn acquire(
        &mut self,
        req: &Request,
        interrupted: &dyn Fn() -> bool,
    ) -> Result<Acquired, postgres::Error> {
        if let Some(semaphore) = &req.semaphore {
            return semaphore::acquire(self, req, semaphore, interrupted);
        }
        let sql = format!(
            "{}SELECT {}({})",
            prelude(req, lock_timeout_ms(req.nowait, req.timeout)),
            lock_fn(req.nowait, req.scope, req.shared),
            req.id.sql_args()
        );
        match self.client.simple_query(&sql) {
            Ok(messages) => {
                if req.nowait && final_value(&messages).as_deref() != Some("t") {
                    return Ok(Acquired::Busy);
                }
                self.hold(Held {
                    id: req.id,
                    shared: req.shared,
                    scope: req.scope,
                    slot: None,
                });
                Ok(Acquired::Held)
            }
            Err(e) => outcome_of(e),
        }
    }

    pub(crate) fn hold(&mut self, held: Held) {
        self.held = Some(held);
        self.granted_at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_millis());
    }

    /// The lock held, once acquired.
    pub fn held(&self) -> Option<Held> {
        self.held
    }

    /// One simple-protocol round trip on the lock connection (semaphore steps, holder reports,
    /// `pglock status`); the simple protocol keeps it PgBouncer-safe.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<SimpleQueryMessage>, postgres::Error> {
        self.client.simple_query(sql)
    }

    /// Ends the lock: pg_advisory_unlock for a session lock (it must report that it was held),
    /// COMMIT or ROLLBACK for a transaction lock. Then closes the connection.
    pub fn release(mut self, success: bool) -> Result<()> {
        let Some(held) = self.held.take() else {
            return Ok(());
        };
        let lost = |msg: String| fail(Failure::LockLost, msg);
        // A semaphore slot frees up: wake the waiter at the gate, if any.
        let wake = held
            .slot
            .map(|(_, gate)| semaphore::wake_gate_sql(gate))
            .unwrap_or_default();
        match held.scope {
            Scope::Session => {
                let sql = format!(
                    "SELECT {}({}){wake}",
                    unlock_fn(held.shared),
                    held.id.sql_args()
                );
                let messages = self.client.simple_query(&sql).map_err(|e| {
                    lost(format!("cannot release the lock: {}", describe_error(&e)))
                })?;
                if first_value(&messages).as_deref() != Some("t") {
                    return Err(lost(
                        "the lock was no longer held when the command ended".into(),
                    ));
                }
            }
            Scope::Xact => {
                let end = if success { "COMMIT" } else { "ROLLBACK" };
                let sql = format!("{end}{wake}");
                self.client.simple_query(&sql).map_err(|e| {
                    lost(format!(
                        "cannot end the lock's transaction: {}",
                        describe_error(&e)
                    ))
                })?;
            }
        }
        // Terminate is fire-and-forget; the lock is already released.
        let _ = self.client.close();
        Ok(())
    }

    /// Handles whatever the server sent while the lock was held. Nothing is expected there, so
    /// this is how a closed session shows up at once: Err(reason) means the lock is gone.
    pub fn readable(&mut self) -> Result<(), String> {
        // A bounded wait rather than iter(): the client's runtime only learns that the socket is
        // readable when it gets to poll its reactor, which iter() never lets it do.
        let outcome = self
            .client
            .notifications()
            .timeout_iter(Duration::from_millis(10))
            .next()
            .map(|_| ());
        if let Err(e) = outcome {
            return Err(format!("the connection failed: {}", describe_error(&e)));
        }
        if self.client.is_closed() {
            return Err("the server closed the connection".into());
        }
        Ok(())
    }

    /// Asks the server whether this backend still holds the lock as granted. The answer must
    /// come within `limit`; otherwise the connection is cut and the lock counts as lost.
    pub fn check(&mut self, limit: Duration) -> Result<(), String> {
        let Some(held) = self.held else {
            return Ok(());
        };
        let tag = self
            .granted_at
            .map_or(String::new(), |ms| format!("{GRANTED_TAG}{ms} */ "));
        let sql = format!(
            "{tag}SELECT count(*) FROM pg_locks l WHERE {} AND l.pid = pg_backend_pid() AND l.granted",
            held.id.pg_locks_filter()
        );
        if self.watchdog.is_none() {
            self.watchdog = self.socket.map(Watchdog::start);
        }
        if let Some(w) = &self.watchdog {
            w.arm(limit);
        }
        let result = self.client.simple_query(&sql);
        let expired = self.watchdog.as_ref().is_some_and(|w| w.disarm());
        match result {
            Err(_) if expired => Err(format!(
                "no answer to the lock check within {}",
                duration::format(limit)
            )),
            Err(e) => Err(format!("the lock check failed: {}", describe_error(&e))),
            Ok(messages) if final_value(&messages).as_deref() == Some("0") => Err(
                "this session no longer holds it (a transaction-pooling PgBouncer? use --scope xact)"
                    .into(),
            ),
            Ok(_) => Ok(()),
        }
    }
}

/// Cuts the lock connection when a check gets no answer in time: the blocked query then fails at
/// once instead of waiting for TCP to give up.
struct Watchdog {
    state: Arc<(Mutex<WatchState>, Condvar)>,
}

#[derive(Default)]
struct WatchState {
    deadline: Option<Instant>,
    expired: bool,
}

impl Watchdog {
    fn start(fd: RawFd) -> Watchdog {
        let state = Arc::new((Mutex::new(WatchState::default()), Condvar::new()));
        let shared = Arc::clone(&state);
        std::thread::spawn(move || {
            let (lock, cvar) = &*shared;
            let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                st = match st.deadline {
                    None => cvar.wait(st).unwrap_or_else(|p| p.into_inner()),
                    Some(deadline) if Instant::now() >= deadline => {
                        st.expired = true;
                        st.deadline = None;
                        let _ = nix::sys::socket::shutdown(fd, nix::sys::socket::Shutdown::Both);
                        st
                    }
                    Some(deadline) => {
                        let left = deadline.saturating_duration_since(Instant::now());
                        cvar.wait_timeout(st, left)
                            .unwrap_or_else(|p| p.into_inner())
                            .0
                    }
                };
            }
        });
        Watchdog { state }
    }

    fn arm(&self, limit: Duration) {
        let (lock, cvar) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        st.deadline = Some(Instant::now() + limit);
        st.expired = false;
        cvar.notify_one();
    }

    /// Stops the countdown; true if it had already run out and cut the connection.
    fn disarm(&self) -> bool {
        let (lock, _) = &*self.state;
        let mut st = lock.lock().unwrap_or_else(|p| p.into_inner());
        st.deadline = None;
        st.expired
    }
}

/// Cancels the lock wait of a [`Session`] from another thread.
pub struct Canceller {
    token: CancelToken,
    connector: Connector,
}

impl Canceller {
    pub fn cancel(&self) {
        if let Err(e) = self.connector.cancel(&self.token) {
            step!("cancel request failed: {}", describe_error(&e));
        }
    }
}

/// The advisory-lock function for a request.
pub(crate) fn lock_fn(nowait: bool, scope: Scope, shared: bool) -> String {
    format!(
        "pg_{}advisory_{}lock{}",
        if nowait { "try_" } else { "" },
        if scope == Scope::Xact { "xact_" } else { "" },
        if shared { "_shared" } else { "" }
    )
}

fn unlock_fn(shared: bool) -> &'static str {
    if shared {
        "pg_advisory_unlock_shared"
    } else {
        "pg_advisory_unlock"
    }
}

/// lock_timeout in milliseconds: 0 waits forever, so a wait that must end gets at least 1.
pub(crate) fn lock_timeout_ms(nowait: bool, timeout: Option<Duration>) -> u128 {
    match (nowait, timeout) {
        (true, _) | (false, None) => 0,
        (false, Some(t)) => t.as_millis().max(1),
    }
}

/// What goes before the lock call in the same round trip: BEGIN for xact scope, then the
/// session settings.
///
/// A DBA's server-wide timeouts must not end a lock holder, so they are zeroed here. Settings the
/// server lacks (transaction_timeout before 17, idle_session_timeout and
/// client_connection_check_interval before 14) are skipped: `current_setting(name, true)` is NULL
/// for them, so an older server costs no error and no extra round trip. (Joining pg_settings
/// instead builds all of the server's ~350 settings and cost a new backend about 1 ms.) In xact
/// scope they are SET LOCAL, so a transaction-pooling PgBouncer does not leak them to other
/// clients.
pub(crate) fn prelude(req: &Request, lock_timeout_ms: u128) -> String {
    let local = req.scope == Scope::Xact;
    let settings = format!(
        "SELECT set_config(v.name, v.setting, {local}) FROM (VALUES \
         ('statement_timeout', '0'), ('idle_in_transaction_session_timeout', '0'), \
         ('idle_session_timeout', '0'), ('transaction_timeout', '0'), \
         ('lock_timeout', '{lock_timeout_ms}'), \
         ('client_connection_check_interval', '{CLIENT_CHECK_MS}')) AS v(name, setting) \
         WHERE current_setting(v.name, true) IS NOT NULL; "
    );
    match req.scope {
        Scope::Session => settings,
        Scope::Xact => format!("BEGIN; {settings}"),
    }
}

/// Maps the errors a lock wait ends with normally.
pub(crate) fn outcome_of(e: postgres::Error) -> Result<Acquired, postgres::Error> {
    match e.code() {
        Some(&SqlState::LOCK_NOT_AVAILABLE) => Ok(Acquired::TimedOut),
        Some(&SqlState::QUERY_CANCELED) => Ok(Acquired::Cancelled),
        _ => Err(e),
    }
}

pub(crate) fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("").to_string()),
        _ => None,
    })
}

/// The first column of the first row of the last statement in a (multi-statement) result.
pub(crate) fn final_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    let ends: Vec<usize> = messages
        .iter()
        .enumerate()
        .filter(|(_, m)| matches!(m, SimpleQueryMessage::CommandComplete(_)))
        .map(|(i, _)| i)
        .collect();
    let start = match ends.len() {
        0 | 1 => 0,
        n => ends[n - 2] + 1,
    };
    first_value(&messages[start..])
}

/// A postgres error as one line: the server's own message when there is one.
pub fn describe_error(e: &postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        let mut text = db.message().to_string();
        if let Some(detail) = db.detail() {
            text.push_str(" (");
            text.push_str(detail);
            text.push(')');
        }
        return text.replace('\n', " ");
    }
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text.replace('\n', " ")
}

/// The sockets this process has open.
fn open_sockets() -> Vec<RawFd> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
        .filter(|&fd| {
            nix::sys::stat::fstat(unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) })
                .is_ok_and(|st| st.st_mode & nix::libc::S_IFMT == nix::libc::S_IFSOCK)
        })
        .collect()
}

/// rust-postgres does not expose its socket. Connecting opens exactly one socket that stays open
/// (failed attempts on other hosts are closed again), so the one that is new is the connection's.
fn only_new_socket(before: &[RawFd], after: &[RawFd]) -> Option<RawFd> {
    let mut new = after.iter().filter(|fd| !before.contains(fd));
    match (new.next(), new.next()) {
        (Some(&fd), None) => Some(fd),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn application_name_keeps_host_and_pid() {
        let name = application_name(&"k".repeat(200));
        assert!(name.len() <= NAMEDATALEN, "{name}");
        assert!(name.ends_with(&format!(":{}", std::process::id())));
        assert!(name.starts_with("pglock:kkk"));
        let short = application_name("nightly-report");
        assert!(short.starts_with("pglock:nightly-report@"));
        let multibyte = application_name(&"é".repeat(100));
        assert!(multibyte.len() <= NAMEDATALEN);
    }

    #[test]
    fn lock_function_names() {
        assert_eq!(lock_fn(false, Scope::Session, false), "pg_advisory_lock");
        assert_eq!(
            lock_fn(true, Scope::Session, true),
            "pg_try_advisory_lock_shared"
        );
        assert_eq!(
            lock_fn(true, Scope::Xact, true),
            "pg_try_advisory_xact_lock_shared"
        );
        assert_eq!(lock_fn(false, Scope::Xact, false), "pg_advisory_xact_lock");
    }
}
