//! Layer: attempt accounting. Deliveries deferred by a breaker or an outage are not attempts;
//! a failure is retried with the policy's back-off until the attempts are spent.

use super::{Dispatch, Message, Outcome};
use crate::handler::RetryPolicy;
use crate::monitor::DeadLetterReason;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most messages whose deferrals a handler remembers; beyond, the oldest are forgotten (and their
/// deferrals count as attempts again).
const LEDGER_LIMIT: usize = 65_536;

/// Stream sequence -> deliveries that were deferred (not attempted), for messages not yet
/// settled. Written at the edge (settle), read by [`Attempts`].
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    map: Mutex<BTreeMap<u64, u64>>,
    /// The map's length, read without the lock on the hot path.
    len: AtomicUsize,
}

impl Ledger {
    fn deferred(&self, seq: u64) -> u64 {
        if self.len.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&seq).copied().unwrap_or(0)
    }

    /// This delivery of `seq` was deferred: its redelivery is not an attempt.
    pub(crate) fn note(&self, seq: u64) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(seq).or_insert(0) += 1;
        while map.len() > LEDGER_LIMIT {
            map.pop_first();
        }
        self.len.store(map.len(), Ordering::Relaxed);
    }

    /// `seq` is settled for good.
    pub(crate) fn forget(&self, seq: u64) {
        if self.len.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&seq);
        self.len.store(map.len(), Ordering::Relaxed);
    }
}

/// A handler's attempts: its retry policy, and its deferrals, which are not attempts. Read by the
/// [`Attempts`] layer, and by the pull loop for a message whose dispatch panicked outside the
/// handler (`run::LastResort`), so that both count attempts and spend them alike.
#[derive(Clone)]
pub(crate) struct Budget {
    pub(crate) retry: RetryPolicy,
    pub(crate) ledger: Arc<Ledger>,
}

impl Budget {
    /// The most attempts (at least 1).
    #[inline]
    fn max(&self) -> u64 {
        u64::from(self.retry.max_attempts.max(1))
    }

    /// Which attempt delivery number `delivered` of stream sequence `seq` is (deliveries less
    /// those deferred, at least 1), and how many were deferred.
    #[inline]
    pub(crate) fn attempt(&self, seq: u64, delivered: u64) -> (u64, u64) {
        let deferred = self.ledger.deferred(seq);
        (delivered.saturating_sub(deferred).max(1), deferred)
    }

    /// What failed attempt number `attempt` becomes: a retry after the policy's back-off (at
    /// least `retry_after`) while attempts remain, a dead letter (`Exhausted`) on the last.
    pub(crate) fn failed(&self, attempt: u64, reason: String, retry_after: Duration) -> Outcome {
        if attempt >= self.max() {
            Outcome::DeadLetter {
                kind: DeadLetterReason::Exhausted,
                reason: format!("retries exhausted after {attempt} attempts; last: {reason}"),
            }
        } else {
            Outcome::Retry {
                reason,
                delay: self.retry.delay(attempt).max(retry_after),
            }
        }
    }
}

/// Counts the attempt ([`Message::attempt`]); dead-letters a message delivered more often than
/// the policy allows (earlier runs crashed); turns [`Outcome::Failed`] into [`Outcome::Retry`]
/// with the back-off, or into a dead letter once the attempts are spent.
pub struct Attempts<D> {
    pub(crate) inner: D,
    pub(crate) budget: Budget,
}

impl<D: Dispatch> Dispatch for Attempts<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let max = self.budget.max();
        let (delivered, deferred) = self.budget.attempt(msg.sequence(), msg.delivered());
        let attempt = delivered.saturating_add(u64::from(msg.retried_in_place));
        if attempt > max {
            return Outcome::DeadLetter {
                kind: DeadLetterReason::Exhausted,
                reason: format!(
                    "retries exhausted: delivered {} times ({deferred} deferred by a circuit breaker or an outage), max_attempts {max} (earlier runs did not finish)",
                    msg.delivered()
                ),
            };
        }
        msg.attempt = attempt;
        match self.inner.dispatch(msg).await {
            Outcome::Failed { reason, retry_after } => self.budget.failed(attempt, reason, retry_after),
            other => other,
        }
    }
}
