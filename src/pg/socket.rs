//! Finding the lock connection's socket. rust-postgres does not expose it, and pglock needs it
//! to poll(2) for a closed session and to cut a connection that stopped answering.
//!
//! Connecting opens exactly one socket that stays open, so the socket that is new after the
//! connect is the connection's. Two things could spoil that diff: another thread opening a
//! socket meanwhile, and a reused descriptor number. Every connection pglock opens goes through
//! [`identify`], which holds a process-wide lock for the connect, and sockets are compared by
//! inode as well as number, so a number closed and reused in between is still told apart.
//! Short-lived sockets of other threads (a cancel request) are excluded by looking again until
//! one candidate is left.
//!
//! The connect itself runs as a [`deadline`] step: past the connect timeout, every socket opened
//! since it began is cut, so TLS, start-up and authentication are bounded as well as TCP.

use super::deadline::{self, Cut};
use nix::sys::stat::SFlag;
use std::os::fd::{BorrowedFd, RawFd};
use std::sync::Mutex;
use std::time::Duration;

static CONNECTING: Mutex<()> = Mutex::new(());

/// An open socket: its descriptor and its inode.
pub type Entry = (RawFd, u64);

/// How a connect under [`identify`] ended.
pub enum Connected<T, E> {
    /// Connected, on this socket.
    On(T, RawFd),
    /// Connected, but which socket is the connection's is not clear.
    Unknown(T),
    Failed(E),
    /// `limit` ran out and the connect was cut, whatever it returned.
    NoAnswer,
}

/// Runs `connect` within `limit` and returns its result with the one socket it left open.
pub fn identify<T, E>(limit: Duration, connect: impl FnOnce() -> Result<T, E>) -> Connected<T, E> {
    let _only_one = CONNECTING.lock().unwrap_or_else(|p| p.into_inner());
    let before = open_sockets();
    let step = deadline::begin(Some(limit), Cut::OpenedSince(before.clone()));
    let result = connect();
    if step.end() {
        return Connected::NoAnswer;
    }
    let value = match result {
        Ok(value) => value,
        Err(e) => return Connected::Failed(e),
    };
    let mut candidates = opened_since(&before);
    for _ in 0..20 {
        if candidates.len() <= 1 {
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
        let now = open_sockets();
        candidates.retain(|c| now.contains(c));
    }
    match candidates.as_slice() {
        [(fd, _)] => Connected::On(value, *fd),
        _ => Connected::Unknown(value),
    }
}

/// The sockets open now that were not in `before`.
pub fn opened_since(before: &[Entry]) -> Vec<Entry> {
    open_sockets()
        .into_iter()
        .filter(|e| !before.contains(e))
        .collect()
}

/// The sockets this process has open, with their inodes.
fn open_sockets() -> Vec<Entry> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let fd: RawFd = entry.ok()?.file_name().to_str()?.parse().ok()?;
        // fstat(2) on the number, not stat(2) on /proc/self/fd/N: no path walk through procfs.
        // SAFETY: the number is borrowed for this one fstat call only, which reads nothing but
        // the descriptor table: one closed since the listing just fails with EBADF (skipped).
        let stat = nix::sys::stat::fstat(unsafe { BorrowedFd::borrow_raw(fd) }).ok()?;
        let socket = SFlag::from_bits_truncate(stat.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK;
        socket.then_some((fd, stat.st_ino))
    })
    .collect()
}

/// Shuts a socket down in both directions: a query blocked on it fails at once, and the server
/// sees the session end. The descriptor stays open (its owner closes it).
pub fn cut(fd: RawFd) {
    // SAFETY: shutdown(2) does not close the descriptor; the caller guarantees `fd` is the
    // connection's socket and still open (it is only cut while its session exists).
    let fd = unsafe { BorrowedFd::borrow_raw(fd) };
    let _ = nix::sys::socket::shutdown(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        nix::sys::socket::Shutdown::Both,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_one_new_socket_even_with_a_reused_number() {
        let limit = Duration::from_secs(60);
        // A pair is two sockets: ambiguous, so nothing is claimed.
        let Connected::<_, std::io::Error>::Unknown(pair) =
            identify(limit, std::os::unix::net::UnixStream::pair)
        else {
            panic!("a pair was taken for one socket");
        };
        drop(pair);
        let Connected::On(listener, socket) =
            identify(limit, || std::net::TcpListener::bind("127.0.0.1:0"))
        else {
            panic!("the listener was not found");
        };
        assert_eq!(socket, std::os::fd::AsRawFd::as_raw_fd(&listener));
    }
}
