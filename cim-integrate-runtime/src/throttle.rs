//! At most once per interval, across threads: for checks and warnings that a storm of failures
//! would otherwise repeat for every message.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Milliseconds since the first call in this process: a monotonic clock cheap to store in an
/// atomic.
pub(crate) fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    let start = START.get_or_init(Instant::now);
    u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// Lets one caller through, then no other until `every_ms` have passed; open at first.
#[derive(Debug, Default)]
pub(crate) struct Throttle {
    /// When (in [`monotonic_ms`]) the next caller may pass.
    next_ms: AtomicU64,
}

impl Throttle {
    /// `true` for the one caller that passes now; the next may pass `every_ms` later.
    pub(crate) fn pass(&self, every_ms: u64) -> bool {
        let (now, next) = (monotonic_ms(), self.next_ms.load(Relaxed));
        now >= next
            && self
                .next_ms
                .compare_exchange(next, now.saturating_add(every_ms), Relaxed, Relaxed)
                .is_ok()
    }

    /// Opens it: the next caller passes.
    #[cfg(any(feature = "nats", test))]
    pub(crate) fn reopen(&self) {
        self.next_ms.store(0, Relaxed);
    }
}

/// Occurrences since the last report of them, reported at most every 10 s: the connection's
/// failed attempts and dropped messages, a consumer's pull interruptions.
#[cfg(feature = "nats")]
#[derive(Debug, Default)]
pub(crate) struct Counted {
    since_report: AtomicU64,
    throttle: Throttle,
}

#[cfg(feature = "nats")]
impl Counted {
    /// Counts one; `Some(count since the last report)` if it is time to report.
    pub(crate) fn count(&self) -> Option<u64> {
        self.since_report.fetch_add(1, Relaxed);
        self.throttle.pass(10_000).then(|| self.since_report.swap(0, Relaxed))
    }

    /// Forgets what was not reported: the next occurrence is reported at once, with a count
    /// that starts again.
    pub(crate) fn reset(&self) {
        self.since_report.store(0, Relaxed);
        self.throttle.reopen();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_caller_passes_per_interval() {
        let t = Throttle::default();
        assert!(t.pass(60_000), "open at first");
        assert!(!t.pass(60_000), "closed for the interval");
        let zero = Throttle::default();
        assert!(zero.pass(0) && zero.pass(0), "an interval of zero never closes");
        t.reopen();
        assert!(t.pass(60_000), "open again");
    }
}
