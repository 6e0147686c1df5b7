//! Layer: attempt accounting. Deliveries deferred by a breaker or an outage are not attempts;
//! a failure is retried with the policy's back-off until the attempts are spent.

use super::{Dispatch, Message, Outcome};
use crate::handler::RetryPolicy;
use crate::monitor::DeadLetterReason;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

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
    /// How many deliveries of `seq` were deferred (not attempts).
    pub(crate) fn deferred(&self, seq: u64) -> u64 {
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

/// Counts the attempt ([`Message::attempt`]); dead-letters a message delivered more often than
/// the policy allows (earlier runs crashed); turns [`Outcome::Failed`] into [`Outcome::Retry`]
/// with the back-off, or into a dead letter once the attempts are spent.
pub struct Attempts<D> {
    pub(crate) inner: D,
    pub(crate) retry: RetryPolicy,
    pub(crate) ledger: Arc<Ledger>,
}

impl<D: Dispatch> Dispatch for Attempts<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let max = u64::from(self.retry.max_attempts.max(1));
        let deferred = self.ledger.deferred(msg.sequence());
        let attempt = msg
            .delivered()
            .saturating_sub(deferred)
            .max(1)
            .saturating_add(u64::from(msg.retried_in_place));
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
            Outcome::Failed { reason, .. } if attempt >= max => Outcome::DeadLetter {
                kind: DeadLetterReason::Exhausted,
                reason: format!("retries exhausted after {attempt} attempts; last: {reason}"),
            },
            Outcome::Failed { reason, retry_after } => Outcome::Retry {
                reason,
                delay: self.retry.delay(attempt).max(retry_after),
            },
            other => other,
        }
    }
}
