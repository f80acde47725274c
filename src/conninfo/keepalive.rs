//! TCP keepalives and tcp_user_timeout derived from `--check-interval`, which replace libpq's
//! keepalive settings: pglock's detection of a silent network relies on them. Every value is
//! clamped to what Linux accepts, so a long interval weakens the detection instead of failing
//! every connection with EINVAL.

use postgres::Config;
use std::time::Duration;

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

/// Sets the derived keepalives on `config`, and the derived tcp_user_timeout unless the
/// connection settings gave one.
pub fn apply(config: &mut Config, check_interval: Duration) {
    let k = derive(check_interval);
    config
        .keepalives(true)
        .keepalives_idle(k.idle)
        .keepalives_interval(k.interval)
        .keepalives_retries(k.retries);
    if config.get_tcp_user_timeout().is_none() {
        config.tcp_user_timeout(k.user_timeout);
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
        apply(&mut config, secs(5));
        assert_eq!(
            config.get_tcp_user_timeout(),
            Some(&Duration::from_millis(500))
        );
        assert_eq!(config.get_keepalives_idle(), secs(5));
        let mut config = Config::new();
        apply(&mut config, secs(5));
        assert_eq!(config.get_tcp_user_timeout(), Some(&secs(15)));
    }

    #[test]
    fn keepalives_stay_within_what_the_kernel_takes() {
        let mut config = Config::new();
        apply(&mut config, secs(10 * 3600));
        assert_eq!(config.get_keepalives_idle(), secs(32767));
        assert_eq!(config.get_keepalives_interval(), Some(secs(32767)));
        let mut small = Config::new();
        apply(&mut small, Duration::from_millis(100));
        assert_eq!(small.get_keepalives_idle(), secs(1));
        assert_eq!(
            small.get_tcp_user_timeout(),
            Some(&Duration::from_millis(5200))
        );
    }
}
