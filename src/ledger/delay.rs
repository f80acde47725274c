//! The lock-delay, as Consul's: the server frees a lock the moment it ends the holder's session
//! (`pg_terminate_backend`, a restart, a failover), while the old command may still be handling
//! its SIGTERM. pglock cannot keep a lock the server dropped, but the next holder can wait before
//! it starts its command.
//!
//! What it goes by is a `running` row of the lock (and slot) that the new holder finds, and marks
//! abandoned: holding the lock exclusively proves its holder's session is gone, and a pglock that
//! ends its run writes the end before it lets go of the lock. That row recorded how soon its
//! command is stopped after a loss: 2 x its `--check-interval` to notice a loss that nothing
//! announced (a failed-over primary that is simply gone), then its `--kill-after` until SIGKILL.
//!
//! Counted from when: the loss came before this holder's grant, and the grant before the
//! statement that found the row, so "from the answer" is late enough whenever the loss was. The
//! row's own times are no bound: it says when the run started, not when it lost its lock, which
//! may be hours later. So the wait is a duration from the answer, on the host's monotonic clock;
//! no wall clock, the host's or the server's, is compared with anything.
//!
//! A `lost` row needs no wait: pglock writes it only after it reaped the command (or never
//! started it). Not covered: a run in `--scope xact` writes no row until it ends, so a holder
//! whose xact-scope session the server ended leaves nothing to find; a row of an earlier pglock,
//! or of `--on-lost ignore` (which lets the command run on), records no bound.

use crate::duration;
use std::time::Duration;

/// On top of the old run's bound: the signal's delivery, scheduling, and the network's one-way
/// delay, as the lease's default slack.
pub const MARGIN: Duration = Duration::from_secs(2);

/// What the statement before the command found about runs whose holder vanished.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Vanished {
    /// `running` rows of the lock (and slot) that this holder marks abandoned.
    pub runs: i64,
    /// The longest time after its loss that one of their commands may still run; None when none
    /// recorded one.
    pub stop_within: Option<Duration>,
}

impl Vanished {
    /// From the answer's `abandoned` and `stop_within_ms` columns.
    pub fn from_row(row: &tokio_postgres::Row) -> Result<Vanished, tokio_postgres::Error> {
        let runs: i64 = row.try_get("abandoned")?;
        let ms: Option<i64> = row.try_get("stop_within_ms")?;
        Ok(Vanished {
            runs,
            stop_within: ms.map(|ms| Duration::from_millis(ms.max(0) as u64)),
        })
    }

    /// How long to wait before the command, counted from the answer; None: at once.
    pub fn wait(&self) -> Option<Duration> {
        if self.runs == 0 {
            return None;
        }
        self.stop_within.map(|d| d.saturating_add(MARGIN))
    }

    /// The `-v` line about it, if there is anything to say.
    pub fn describe(&self, label: &str) -> Option<String> {
        if self.runs == 0 {
            return None;
        }
        Some(match self.wait() {
            Some(wait) => format!(
                "lock-delay: an earlier run of \"{label}\" ended uncleanly (still running: the \
                 server ended its holder's session); waiting {} (2 x its --check-interval + its \
                 --kill-after + {}) so that its command has stopped before this one starts",
                duration::format(wait),
                duration::format(MARGIN),
            ),
            None => format!(
                "no lock-delay: the earlier run(s) of \"{label}\" found still running recorded \
                 no --kill-after (an earlier pglock, or --on-lost ignore)"
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_vanished_run_with_a_bound_delays() {
        let clean = Vanished {
            runs: 0,
            stop_within: None,
        };
        assert_eq!(clean.wait(), None);
        assert_eq!(clean.describe("k"), None);
        let bounded = Vanished {
            runs: 1,
            stop_within: Some(Duration::from_secs(20)),
        };
        assert_eq!(bounded.wait(), Some(Duration::from_secs(22)));
        assert!(bounded.describe("k").unwrap().starts_with("lock-delay: "));
        let unknown = Vanished {
            runs: 2,
            stop_within: None,
        };
        assert_eq!(unknown.wait(), None);
        assert!(unknown.describe("k").unwrap().starts_with("no lock-delay"));
    }
}
