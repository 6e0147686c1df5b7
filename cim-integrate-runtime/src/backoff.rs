//! Doubling back-off between the retries of an operation that failed for a passing reason (a
//! store or server unavailable): one schedule for the saga runner's writes, the dedup marks,
//! provisioning, key-value writes nobody heard and a NATS pull's wait for its consumer leader.
//! Each caller keeps its own budget, on the clock its deadline is counted on.

use std::time::Duration;

/// The pause before the next retry: `first`, doubled after each wait, up to `max`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Backoff {
    pause: Duration,
    max: Duration,
}

impl Backoff {
    /// A schedule starting at `first`, doubling up to `max`.
    pub(crate) const fn new(first: Duration, max: Duration) -> Self {
        Self { pause: first, max }
    }

    /// The pause the next [`wait`](Self::wait) sleeps.
    pub(crate) fn pause(&self) -> Duration {
        self.pause
    }

    /// Sleeps the pause (on tokio's clock), then doubles it, up to the maximum.
    pub(crate) async fn wait(&mut self) {
        self.wait_within(Duration::MAX).await;
    }

    /// As [`wait`](Self::wait), sleeping no longer than `left` (what remains of a deadline).
    pub(crate) async fn wait_within(&mut self, left: Duration) {
        tokio::time::sleep(self.pause.min(left)).await;
        self.pause = (self.pause * 2).min(self.max);
    }
}

#[cfg(test)]
mod tests {
    use super::Backoff;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn pauses_double_up_to_the_maximum() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let mut slept = Vec::new();
        for _ in 0..6 {
            let start = tokio::time::Instant::now();
            let pause = b.pause();
            b.wait().await;
            assert_eq!(start.elapsed(), pause);
            slept.push(pause.as_millis());
        }
        assert_eq!(slept, [100, 200, 400, 800, 1000, 1000]);
    }

    /// The first connection's schedule (100 ms doubling to 2 s), cut short by its deadline.
    #[tokio::test(start_paused = true)]
    async fn a_wait_within_a_deadline_stops_at_it() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut slept = Vec::new();
        for _ in 0..7 {
            slept.push(b.pause().as_millis());
            b.wait_within(Duration::MAX).await;
        }
        assert_eq!(slept, [100, 200, 400, 800, 1600, 2000, 2000]);
        let start = tokio::time::Instant::now();
        b.wait_within(Duration::from_millis(50)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(50));
    }
}
