//! Layer: counters, metrics and the outcome's log line, updated once from the final outcome.

use super::{Deferral, Dispatch, Message, Outcome};
use crate::monitor::{self, HandlerMetrics};
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
    /// Lets through one warning of a deferral for unavailable infrastructure per
    /// [`UNAVAILABLE_WARNING_MS`].
    pub(crate) unavailable_warning: crate::throttle::Throttle,
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

/// Counts a run that panicked, in the counters and the metrics.
pub(crate) fn count_panic(counters: &HandlerCounters, metrics: &HandlerMetrics) {
    counters.panicked.fetch_add(1, Ordering::Relaxed);
    metrics.panicked();
}

/// Counts `outcome`, a message's final one, in the counters and the metrics: the record layer's
/// count, and the pull loop's for a message whose dispatch panicked outside the handler.
pub(crate) fn count_outcome(c: &HandlerCounters, metrics: &HandlerMetrics, outcome: &Outcome) {
    let (counter, counted) = match outcome {
        Outcome::Succeeded => (&c.succeeded, monitor::Outcome::Succeeded),
        Outcome::Duplicate => (&c.duplicates, monitor::Outcome::Duplicate),
        Outcome::Skipped => (&c.skipped, monitor::Outcome::Skipped),
        Outcome::Failed { .. } | Outcome::Retry { .. } => (&c.retried, monitor::Outcome::Retried),
        Outcome::Deferred { .. } => (&c.deferred, monitor::Outcome::Deferred),
        Outcome::DeadLettered { kind, .. } | Outcome::DeadLetter { kind, .. } => {
            metrics.dead_letter(*kind);
            (&c.dead_lettered, monitor::Outcome::DeadLettered)
        }
        Outcome::Rejected { .. } => (&c.rejected, monitor::Outcome::Rejected),
    };
    counter.fetch_add(1, Ordering::Relaxed);
    metrics.outcome(counted);
}

/// How often, at most, one handler warns of a deferral for unavailable infrastructure: an
/// outage defers every delivery, each counted, and this says why without a line per message.
const UNAVAILABLE_WARNING_MS: u64 = 10_000;

/// Counts the final outcome (and what happened in place on the way: retries and deferrals of an
/// ordered handler, a panic) in the handler's counters and metrics, and logs it.
pub struct Record<D> {
    pub(crate) inner: D,
    pub(crate) counters: Arc<HandlerCounters>,
    pub(crate) metrics: Arc<HandlerMetrics>,
}

impl<D: Dispatch> Dispatch for Record<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        self.metrics.delivered(msg.delivered());
        // The in-process transport's time of handing the message over: no second clock read.
        let start = msg.received().taken().unwrap_or_else(tokio::time::Instant::now);
        let outcome = self.inner.dispatch(msg).await;
        if msg.ran {
            self.metrics.ran(start.elapsed());
        }
        let c = &*self.counters;
        if msg.retried_in_place > 0 || msg.deferred_in_place > 0 || msg.panicked {
            count_in_place(c, &self.metrics, msg);
        }
        count_outcome(c, &self.metrics, &outcome);
        if !matches!(outcome, Outcome::Succeeded) {
            log_outcome(c, msg, &outcome);
        }
        outcome
    }
}

/// Counts what happened in place on the way to the final outcome: retries and deferrals of an
/// ordered handler, a panic. Out of line: most messages have none, and the loops would sit in
/// the hot path's code.
#[cold]
#[inline(never)]
fn count_in_place(c: &HandlerCounters, metrics: &HandlerMetrics, msg: &Message<'_>) {
    c.retried.fetch_add(u64::from(msg.retried_in_place), Ordering::Relaxed);
    c.deferred
        .fetch_add(u64::from(msg.deferred_in_place), Ordering::Relaxed);
    for _ in 0..msg.retried_in_place {
        metrics.outcome(monitor::Outcome::Retried);
    }
    for _ in 0..msg.deferred_in_place {
        metrics.outcome(monitor::Outcome::Deferred);
    }
    if msg.panicked {
        count_panic(c, metrics);
    }
}

/// The log line of an outcome other than success. Out of line (each `tracing` call expands into
/// its callsite's code): a success, nearly every message, logs nothing and runs none of it.
#[cold]
#[inline(never)]
fn log_outcome(c: &HandlerCounters, msg: &Message<'_>, outcome: &Outcome) {
    match outcome {
        // Not called for a success (the caller's guard); nothing to log if it were.
        Outcome::Succeeded => {}
        Outcome::Duplicate => tracing::debug!("already handled; not running again"),
        Outcome::Skipped => tracing::debug!("another event type; acknowledging without running"),
        Outcome::Failed { reason, .. } | Outcome::Retry { reason, .. } => {
            tracing::warn!(%reason, attempt = msg.attempt(), "will be retried");
        }
        Outcome::Deferred {
            reason,
            delay,
            cause: Deferral::Unavailable,
        } if c.unavailable_warning.pass(UNAVAILABLE_WARNING_MS) => tracing::warn!(
            %reason, ?delay,
            "deferred: infrastructure unavailable; run again without spending an attempt (one such warning per handler every 10 s; each is counted as outcome \"deferred\")"
        ),
        Outcome::Deferred { reason, delay, cause } => tracing::debug!(%reason, ?delay, ?cause, "deferred"),
        Outcome::DeadLettered { reason, .. } | Outcome::DeadLetter { reason, .. } => {
            tracing::warn!(%reason, subject = msg.received().subject(), "dead-lettered");
        }
        Outcome::Rejected { reason } => tracing::info!(%reason, "rejected"),
    }
}
