//! The one clock of the runtime's persisted times: process deadlines, correlation windows and
//! saga leases.
//!
//! It reads wall-clock milliseconds (Unix time, comparable across instances) once, at an anchor,
//! and advances them with tokio's clock: real time in production, paused and auto-advanced time
//! in tests, so deadlines and leases expire under `tokio::time::pause` as they do for real.

use crate::timestamp::Timestamp;
use std::sync::OnceLock;
use std::time::Duration;

/// Wall-clock milliseconds anchored at creation and advanced by tokio's clock.
///
/// A runner keeps its own [`Clock`] (created on its runtime) so that paused time in one test
/// runtime never skews another; [`now_millis`] reads a process-wide one.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    wall_ms: i64,
    /// The wall clock at the anchor, at full precision ([`timestamp_at`](Self::timestamp_at)).
    wall: std::time::SystemTime,
    at: tokio::time::Instant,
}

impl Clock {
    /// A clock anchored now.
    pub fn new() -> Self {
        // The instant first: a time told from it is never before the true one.
        let at = tokio::time::Instant::now();
        let wall = std::time::SystemTime::now();
        Self {
            wall_ms: wall.duration_since(std::time::UNIX_EPOCH).map_or(0, millis),
            wall,
            at,
        }
    }

    /// The wall-clock time of `instant` (not before the anchor), at full precision: what an
    /// embedded store reports as a write's time from the write's one read of tokio's clock.
    pub(crate) fn timestamp_at(&self, instant: tokio::time::Instant) -> Timestamp {
        let elapsed = instant.saturating_duration_since(self.at);
        Timestamp::from(self.wall.checked_add(elapsed).unwrap_or(self.wall))
    }

    /// The current time in Unix milliseconds.
    pub fn now_millis(&self) -> i64 {
        let elapsed = tokio::time::Instant::now().saturating_duration_since(self.at);
        self.wall_ms.saturating_add(millis(elapsed))
    }

    /// The time `after` from now, in Unix milliseconds (saturating).
    pub fn after_millis(&self, after: Duration) -> i64 {
        self.now_millis().saturating_add(millis(after))
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

/// The current time in Unix milliseconds on the process-wide [`Clock`] (anchored at first use).
pub fn now_millis() -> i64 {
    static GLOBAL: OnceLock<Clock> = OnceLock::new();
    GLOBAL.get_or_init(Clock::new).now_millis()
}

/// `d` after `at`, saturating: a duration too long for the clock (`Duration::MAX`, meant as
/// "never") reads as a century. `Instant + Duration` panics on overflow, and the durations added
/// to instants here come from settings (an ack wait, a retry policy's delays, a breaker's
/// cool-down).
pub(crate) fn later(at: tokio::time::Instant, d: Duration) -> tokio::time::Instant {
    const CENTURY: Duration = Duration::from_secs(100 * 365 * 86_400);
    at.checked_add(d).unwrap_or_else(|| at + CENTURY)
}

/// A duration in whole milliseconds, saturating at `i64::MAX`.
pub fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn later_saturates() {
        let now = tokio::time::Instant::now();
        assert_eq!(later(now, Duration::from_secs(5)), now + Duration::from_secs(5));
        assert!(later(now, Duration::MAX) > now + Duration::from_secs(99 * 365 * 86_400));
    }

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time() {
        let clock = Clock::new();
        let t0 = clock.now_millis();
        tokio::time::sleep(Duration::from_secs(90)).await;
        let t1 = clock.now_millis();
        assert!((90_000..91_000).contains(&(t1 - t0)), "{t0} {t1}");
        assert_eq!(clock.after_millis(Duration::from_millis(5)), t1 + 5);
        let told = clock.timestamp_at(tokio::time::Instant::now()).unix_millis();
        assert!((t1..t1 + 2).contains(&told), "{t1} {told}");
        assert_eq!(millis(Duration::MAX), i64::MAX);
    }
}
