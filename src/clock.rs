//! The clock for "how long since the server last confirmed the lock".
//!
//! std's `Instant` reads CLOCK_MONOTONIC, which stops while the host is suspended (to RAM or
//! to disk). A host that slept through its lease resumed believing that only a moment had
//! passed since the last confirmation, so it went on asking the server at its next check while
//! the next holder already ran. CLOCK_BOOTTIME is the same clock but keeps counting while the
//! host sleeps, so the freeze check sees the whole gap and stops the command without asking.
//!
//! What it cannot see: a hypervisor that stops every clock of its guest, BOOTTIME included, and
//! resumes it as if no time had passed. Only the lease on the server, and fencing tokens in the
//! storage, cover that (README, "Leases").
//!
//! A [`Deadline`] is the same clock read by the command between fork and exec, where a stall (a
//! slow fork, a stopped pglock) would otherwise start it after the lock was given away.

use nix::time::{ClockId, clock_gettime};
use std::time::{Duration, Instant};

/// A moment, read on CLOCK_BOOTTIME and on CLOCK_MONOTONIC.
#[derive(Debug, Clone, Copy)]
pub struct Stamp {
    /// None if CLOCK_BOOTTIME could not be read.
    boot: Option<Duration>,
    mono: Instant,
}

impl Stamp {
    pub fn now() -> Stamp {
        Stamp {
            boot: boottime(),
            mono: Instant::now(),
        }
    }

    /// How long ago this was, suspended time included. Never less than the monotonic time
    /// since, which is also the answer when CLOCK_BOOTTIME cannot be read (a kernel before
    /// 2.6.39, a seccomp filter that refuses it): clock_gettime then fails rather than lies, and
    /// the monotonic clock still catches every freeze but a suspend, as pglock always did.
    pub fn elapsed(&self) -> Duration {
        let mono = self.mono.elapsed();
        match (self.boot, boottime()) {
            (Some(then), Some(now)) => now.saturating_sub(then).max(mono),
            _ => mono,
        }
    }

    /// `within` after this stamp, as a deadline that can be read between fork and exec.
    pub fn deadline(&self, within: Duration) -> Deadline {
        let left = within.saturating_sub(self.elapsed());
        // The clock that is read now is the one read later: BOOTTIME, unless it is refused.
        let (clock, now) = match boottime() {
            Some(now) => (ClockId::CLOCK_BOOTTIME, now),
            None => (
                ClockId::CLOCK_MONOTONIC,
                read(ClockId::CLOCK_MONOTONIC).unwrap_or_default(),
            ),
        };
        Deadline {
            clock,
            at: now.saturating_add(left),
        }
    }

    /// A stamp taken now, as the host will read it after sleeping for `slept`: BOOTTIME moved
    /// on, CLOCK_MONOTONIC did not. For tests, which cannot suspend their host; `slept` must be
    /// shorter than the host's uptime.
    #[cfg(test)]
    pub fn before_a_suspend_of(slept: Duration) -> Stamp {
        let now = Stamp::now();
        let boot = now.boot.expect("CLOCK_BOOTTIME readable");
        assert!(boot > slept, "up for {boot:?} only");
        Stamp {
            boot: Some(boot - slept),
            ..now
        }
    }
}

/// A moment on [`Stamp`]'s clock by which something must have happened.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    clock: ClockId,
    at: Duration,
}

impl Deadline {
    /// Whether it has passed. One clock_gettime(2), which is async-signal-safe and allocates
    /// nothing: fit for a child between fork and exec. A clock that cannot be read says it has
    /// passed: the caller then asks the server rather than trust a guess.
    pub fn passed(&self) -> bool {
        read(self.clock).is_none_or(|now| now >= self.at)
    }
}

fn boottime() -> Option<Duration> {
    read(ClockId::CLOCK_BOOTTIME)
}

fn read(clock: ClockId) -> Option<Duration> {
    let t = clock_gettime(clock).ok()?;
    Some(Duration::new(
        u64::try_from(t.tv_sec()).ok()?,
        u32::try_from(t.tv_nsec()).ok()?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(clock: ClockId) -> Duration {
        super::read(clock).unwrap()
    }

    #[test]
    fn a_stamp_reads_boottime() {
        let before = read(ClockId::CLOCK_BOOTTIME);
        let stamp = Stamp::now();
        let after = read(ClockId::CLOCK_BOOTTIME);
        let boot = stamp.boot.expect("CLOCK_BOOTTIME readable");
        assert!(
            before <= boot && boot <= after,
            "{before:?} {boot:?} {after:?}"
        );
        // On a host that has slept since it booted, the two clocks differ by the time it slept,
        // and the stamp is not CLOCK_MONOTONIC's reading.
        let mono = read(ClockId::CLOCK_MONOTONIC);
        if before > mono + Duration::from_millis(100) {
            assert!(boot > mono, "{boot:?} is CLOCK_MONOTONIC's {mono:?}");
        }
    }

    #[test]
    fn elapsed_counts_the_time_the_host_slept() {
        let stamp = Stamp::before_a_suspend_of(Duration::from_secs(30));
        assert!(stamp.mono.elapsed() < Duration::from_secs(10));
        assert!(stamp.elapsed() >= Duration::from_secs(30));
    }

    #[test]
    fn a_deadline_counts_from_the_stamp() {
        let now = Stamp::now();
        assert!(!now.deadline(Duration::from_secs(60)).passed());
        assert!(now.deadline(Duration::ZERO).passed());
        // Slept through it: already past, though CLOCK_MONOTONIC barely moved.
        let slept = Stamp::before_a_suspend_of(Duration::from_secs(30));
        assert!(slept.deadline(Duration::from_secs(10)).passed());
        assert!(!slept.deadline(Duration::from_secs(90)).passed());
    }

    #[test]
    fn without_boottime_elapsed_is_monotonic() {
        let earlier = Instant::now().checked_sub(Duration::from_secs(5)).unwrap();
        let stamp = Stamp {
            boot: None,
            mono: earlier,
        };
        let elapsed = stamp.elapsed();
        assert!(elapsed >= Duration::from_secs(5) && elapsed < Duration::from_secs(60));
    }
}
