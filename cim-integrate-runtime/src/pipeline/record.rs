//! Layer: counters, metrics and the outcome's log line, updated once from the final outcome.

use super::{Dispatch, Message, Outcome};
use crate::monitor::{self, HandlerMetrics};
use futures::FutureExt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one handler (event or command).
#[derive(Debug, Default)]
pub struct HandlerCounters {
    /// Runs that succeeded.
    pub succeeded: AtomicU64,
    /// Deliveries skipped because the handler had already handled the message.
    pub duplicates: AtomicU64,
    /// Failed runs that will be retried.
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Runs that panicked.
    pub panicked: AtomicU64,
    /// Deliveries deferred because a circuit breaker was open or infrastructure was unavailable.
    pub deferred: AtomicU64,
    /// Messages of another event type that the pattern matched, acknowledged without running.
    pub skipped: AtomicU64,
    /// Commands the handler rejected.
    pub rejected: AtomicU64,
}

/// A snapshot of one handler's counters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct HandlerStats {
    /// Durable name (event handlers) or `{set}-{name}` (command handlers).
    pub handler: String,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Deliveries skipped as duplicates.
    pub duplicates: u64,
    /// Failed runs to be retried.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Runs that panicked.
    pub panicked: u64,
    /// Deliveries deferred because a circuit breaker was open or infrastructure was unavailable.
    pub deferred: u64,
    /// Messages of another event type, acknowledged without running.
    pub skipped: u64,
    /// Commands rejected.
    pub rejected: u64,
}

impl HandlerCounters {
    pub(crate) fn snapshot(&self, handler: &str) -> HandlerStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        HandlerStats {
            handler: handler.to_owned(),
            succeeded: get(&self.succeeded),
            duplicates: get(&self.duplicates),
            retried: get(&self.retried),
            dead_lettered: get(&self.dead_lettered),
            panicked: get(&self.panicked),
            deferred: get(&self.deferred),
            skipped: get(&self.skipped),
            rejected: get(&self.rejected),
        }
    }
}

/// Counts the final outcome (and what happened in place on the way: retries and deferrals of an
/// ordered handler, a panic) in the handler's counters and metrics, and logs it.
///
/// A panic in the layers below it outside the handler (a layer of the user's, a dedup store, a
/// bug of ours; the handler's own panics are the catch-panic layer's) is caught here and costs
/// the message a retry ([`contained`](super::run::contained)), counted as a panic and a retry,
/// so that an operator sees it in the handler's stats and metrics, not only in the log.
pub struct Record<D> {
    pub(crate) inner: D,
    pub(crate) counters: Arc<HandlerCounters>,
    pub(crate) metrics: Arc<HandlerMetrics>,
    /// The handler's name, for the log line of a contained panic.
    pub(crate) handler: Arc<str>,
}

impl<D: Dispatch> Dispatch for Record<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        self.metrics.delivered(msg.delivered());
        let start = tokio::time::Instant::now();
        let outcome = match AssertUnwindSafe(self.inner.dispatch(msg)).catch_unwind().await {
            Ok(outcome) => outcome,
            Err(panic) => {
                msg.panicked = true;
                super::run::contained(&self.handler, msg.received(), panic.as_ref())
            }
        };
        if msg.ran {
            self.metrics.ran(start.elapsed());
        }
        let c = &*self.counters;
        let add = |counter: &AtomicU64, n: u64| {
            if n > 0 {
                counter.fetch_add(n, Ordering::Relaxed);
            }
        };
        add(&c.retried, u64::from(msg.retried_in_place));
        add(&c.deferred, u64::from(msg.deferred_in_place));
        for _ in 0..msg.retried_in_place {
            self.metrics.outcome(monitor::Outcome::Retried);
        }
        for _ in 0..msg.deferred_in_place {
            self.metrics.outcome(monitor::Outcome::Deferred);
        }
        if msg.panicked {
            add(&c.panicked, 1);
            self.metrics.panicked();
        }
        match &outcome {
            Outcome::Succeeded => {
                add(&c.succeeded, 1);
                self.metrics.outcome(monitor::Outcome::Succeeded);
            }
            Outcome::Duplicate => {
                add(&c.duplicates, 1);
                self.metrics.outcome(monitor::Outcome::Duplicate);
                tracing::debug!("already handled; not running again");
            }
            Outcome::Skipped => {
                add(&c.skipped, 1);
                self.metrics.outcome(monitor::Outcome::Skipped);
                tracing::debug!("another event type; acknowledging without running");
            }
            Outcome::Failed { reason, .. } | Outcome::Retry { reason, .. } => {
                add(&c.retried, 1);
                self.metrics.outcome(monitor::Outcome::Retried);
                tracing::warn!(%reason, attempt = msg.attempt(), "will be retried");
            }
            Outcome::Deferred { reason, delay, cause } => {
                add(&c.deferred, 1);
                self.metrics.outcome(monitor::Outcome::Deferred);
                tracing::debug!(%reason, ?delay, ?cause, "deferred");
            }
            Outcome::DeadLettered { kind, reason } | Outcome::DeadLetter { kind, reason } => {
                add(&c.dead_lettered, 1);
                self.metrics.outcome(monitor::Outcome::DeadLettered);
                self.metrics.dead_letter(*kind);
                tracing::warn!(%reason, subject = msg.received().subject(), "dead-lettered");
            }
            Outcome::Rejected { reason } => {
                add(&c.rejected, 1);
                self.metrics.outcome(monitor::Outcome::Rejected);
                tracing::info!(%reason, "rejected");
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Received;
    use crate::pipeline::test_raw::Raw;
    use crate::transport::DeliveryInfo;

    /// Panics: a layer under the record layer that has a bug.
    struct Panics;

    impl Dispatch for Panics {
        async fn dispatch(&self, _msg: &mut Message<'_>) -> Outcome {
            panic!("a layer's bug")
        }
    }

    /// A panic under the record layer, outside the handler, is a retry counted as a panic and a
    /// retry, in the counters and the metrics.
    #[tokio::test]
    async fn a_panic_below_is_counted_as_a_panic_and_a_retry() {
        let record = Record {
            inner: Panics,
            counters: Arc::new(HandlerCounters::default()),
            metrics: Arc::new(HandlerMetrics::new("document", "search", "search-h", "DocumentCreated")),
            handler: "search-h".into(),
        };
        let raw = Raw {
            headers: crate::headers::Headers::new(),
            payload: bytes::Bytes::from_static(b"{}"),
            info: DeliveryInfo {
                stream: "DOCUMENT_EVENTS".into(),
                consumer: "search-h".into(),
                stream_sequence: 1,
                consumer_sequence: 1,
                delivered: 3,
                published: crate::timestamp::Timestamp::from_unix_nanos(1_700_000_000_000_000_000).expect("time"),
                resumed: None,
            },
        };
        let mut msg = Message::new(&raw, raw.envelope());
        let outcome = record.dispatch(&mut msg).await;
        match outcome {
            Outcome::Retry { reason, delay } => {
                assert!(reason.contains("a layer's bug"), "{reason}");
                // The third delivery: 1 s doubled twice.
                assert_eq!(delay, std::time::Duration::from_secs(4));
            }
            other => panic!("{other:?}"),
        }
        let stats = record.counters.snapshot("search-h");
        assert_eq!((stats.panicked, stats.retried, stats.succeeded), (1, 1, 0), "{stats:?}");
    }
}
