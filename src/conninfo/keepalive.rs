//! TCP keepalives and tcp_user_timeout derived from `--check-interval`, which replace libpq's
//! keepalive settings: pglock's detection of a silent network relies on them. Every value is
//! clamped to what Linux accepts, so a long interval weakens the detection instead of failing
//! every connection with EINVAL.

use std::os::fd::BorrowedFd;
use std::time::Duration;
use tokio_postgres::Config;

/// Linux's largest TCP_KEEPIDLE and TCP_KEEPINTVL (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL); the
/// server's end of the connection is clamped to it too.
pub const MAX_KEEPALIVE: Duration = Duration::from_secs(32767);
/// TCP_USER_TIMEOUT is an int of milliseconds.
pub(super) const MAX_USER_TIMEOUT_MS: i64 = i32::MAX as i64;
const MAX_USER_TIMEOUT: Duration = Duration::from_millis(MAX_USER_TIMEOUT_MS as u64);
/// Probes sent before the kernel gives up on a silent peer.
const RETRIES: u32 = 3;

/// Socket settings for one `--check-interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    pub retries: u32,
    /// How long sent data may stay unacknowledged before the kernel drops the connection: a
    /// silent partition is noticed within 2 x interval + 5 s, unless clamped.
    pub user_timeout: Duration,
}

pub fn derive(check_interval: Duration) -> Keepalive {
    // The kernel counts keepalive times in whole seconds.
    let probe = check_interval.clamp(Duration::from_secs(1), MAX_KEEPALIVE);
    let user_timeout = check_interval
        .saturating_mul(2)
        .saturating_add(Duration::from_secs(5))
        .min(MAX_USER_TIMEOUT);
    Keepalive {
        idle: probe,
        interval: probe,
        retries: RETRIES,
        user_timeout,
    }
}

/// The settings for one connection: the derived ones, with the connection settings'
/// tcp_user_timeout when they give one.
pub fn for_connection(config: &Config, check_interval: Duration) -> Keepalive {
    let mut k = derive(check_interval);
    if let Some(given) = config.get_tcp_user_timeout() {
        k.user_timeout = *given;
    }
    k
}

impl Keepalive {
    /// Puts these settings on a TCP socket that pglock opened. Each failure is the connect's:
    /// a socket without them would not notice a silent network in the time the lease promises.
    pub fn set_on(&self, socket: BorrowedFd) -> std::io::Result<()> {
        use nix::sys::socket::{setsockopt, sockopt};
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        let millis = u32::try_from(self.user_timeout.as_millis()).unwrap_or(u32::MAX);
        setsockopt(&socket, sockopt::KeepAlive, &true)?;
        setsockopt(&socket, sockopt::TcpKeepIdle, &secs(self.idle))?;
        setsockopt(&socket, sockopt::TcpKeepInterval, &secs(self.interval))?;
        setsockopt(&socket, sockopt::TcpKeepCount, &self.retries)?;
        setsockopt(&socket, sockopt::TcpUserTimeout, &millis)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn follows_the_interval() {
        let k = derive(secs(5));
        assert_eq!((k.idle, k.interval, k.retries), (secs(5), secs(5), 3));
        assert_eq!(k.user_timeout, secs(15));
        // Below a second: the kernel's unit is a second.
        let k = derive(Duration::from_millis(200));
        assert_eq!((k.idle, k.interval), (secs(1), secs(1)));
        assert_eq!(k.user_timeout, Duration::from_millis(5400));
    }

    #[test]
    fn clamps_to_what_linux_accepts() {
        // 9h6m7s is the last interval the kernel takes as it is.
        assert_eq!(derive(secs(32767)).idle, secs(32767));
        for interval in [
            secs(32768),
            secs(10 * 3600),
            secs(400 * 86400),
            Duration::MAX,
        ] {
            let k = derive(interval);
            assert_eq!(
                (k.idle, k.interval),
                (secs(32767), secs(32767)),
                "{interval:?}"
            );
            assert!(k.user_timeout <= MAX_USER_TIMEOUT, "{interval:?}");
        }
        assert_eq!(derive(secs(10 * 3600)).user_timeout, secs(72005));
        assert_eq!(derive(Duration::MAX).user_timeout, MAX_USER_TIMEOUT);
    }

    #[test]
    fn a_given_tcp_user_timeout_stays() {
        let mut config = Config::new();
        config.tcp_user_timeout(Duration::from_millis(500));
        let k = for_connection(&config, secs(5));
        assert_eq!(k.user_timeout, Duration::from_millis(500));
        assert_eq!(k.idle, secs(5));
        assert_eq!(
            for_connection(&Config::new(), secs(5)).user_timeout,
            secs(15)
        );
    }

    #[test]
    fn a_socket_takes_the_settings() {
        use nix::sys::socket::{getsockopt, sockopt};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let k = derive(secs(10 * 3600));
        k.set_on(std::os::fd::AsFd::as_fd(&stream)).unwrap();
        assert!(getsockopt(&stream, sockopt::KeepAlive).unwrap());
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepIdle).unwrap(), 32767);
        assert_eq!(
            getsockopt(&stream, sockopt::TcpKeepInterval).unwrap(),
            32767
        );
        assert_eq!(getsockopt(&stream, sockopt::TcpKeepCount).unwrap(), 3);
        assert_eq!(
            getsockopt(&stream, sockopt::TcpUserTimeout).unwrap(),
            72_005_000
        );
    }
}
