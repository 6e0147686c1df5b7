//! Layer: attempt accounting. Deliveries deferred by a breaker or an outage are not attempts;
//! a failure is retried with the policy's back-off until the attempts are spent.

use super::{Deferral, Dispatch, Message, Outcome, Received};
use crate::dedup::{DedupError, DedupStore, StreamMessage};
use crate::handler::RetryPolicy;
use crate::id::MessageId;
use crate::monitor::DeadLetterReason;
use futures::future::BoxFuture;
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

/// A handler's attempts: its retry policy, its deferrals, which are not attempts, and where its
/// attempts beyond the first are recorded. Read by the [`Attempts`] layer, and by the pull loop
/// for a message whose dispatch panicked outside the handler (`run::LastResort`), so that both
/// count attempts and spend them alike.
#[derive(Clone)]
pub(crate) struct Budget {
    pub(crate) retry: RetryPolicy,
    pub(crate) ledger: Arc<Ledger>,
    /// The store recording the attempts that started ([`DedupStore::attempt_started`]); `None`:
    /// attempts are counted from deliveries alone (commands, tests).
    pub(crate) starts: Option<Starts>,
}

/// Where a handler's attempts beyond the first are recorded: its dedup store, under its dedup key.
#[derive(Clone)]
pub(crate) struct Starts {
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) handler: Arc<str>,
}

/// How a delivery's attempt was counted ([`Budget::counted`]).
pub(crate) struct Counted {
    /// Which attempt it is.
    pub(crate) attempt: u64,
    /// Its deliveries deferred (not attempts).
    pub(crate) deferred: u64,
    /// The record to write before the handler runs (an attempt after the first, on a store
    /// that keeps records).
    pub(crate) record: Option<StreamMessage>,
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

    /// Whether a delivery counted `by_count` by deliveries ([`attempt`](Self::attempt)) reads
    /// the store's records: a redelivery, on a store that keeps them.
    pub(crate) fn reads_records(&self, by_count: u64) -> bool {
        by_count > 1 && self.starts.is_some()
    }

    /// Which attempt this delivery of `raw` (message id `id`, if its envelope could be read),
    /// counted `(by_count, deferred)` by deliveries less deferrals ([`attempt`](Self::attempt)),
    /// is: for a redelivery ([`reads_records`](Self::reads_records)) at most one more than the
    /// last attempt the store recorded as started (two if none is recorded: the first attempt is
    /// never recorded). The delivery count alone can overstate it: nats-server 2.9 counts
    /// deliveries into a pull request whose subscriber is gone (see
    /// [`DedupStore::attempt_started`]). A store that keeps no records leaves the count as it is.
    pub(crate) async fn counted(
        &self,
        raw: &dyn Received,
        id: Option<MessageId>,
        (by_count, deferred): (u64, u64),
    ) -> Result<Counted, DedupError> {
        let counted = |attempt, record| Counted {
            attempt,
            deferred,
            record,
        };
        let (Some(starts), Some(info), true) = (&self.starts, raw.info(), self.reads_records(by_count)) else {
            return Ok(counted(by_count, None));
        };
        // The record is keyed by the stream position, not the id: a nil id stands in where the
        // envelope could not be read.
        let m = StreamMessage::of(id.unwrap_or(MessageId::from_uuid(uuid::Uuid::nil())), info);
        Ok(match starts.store.attempts_started(&starts.handler, &m).await? {
            None => counted(by_count, None),
            Some(recorded) => counted(by_count.min(recorded.max(1) + 1), Some(m)),
        })
    }

    /// The write recording that `attempt` starts at `m` (see [`counted`](Self::counted)).
    pub(crate) fn record(&self, m: StreamMessage, attempt: u64) -> Option<BoxFuture<'static, Result<(), DedupError>>> {
        let starts = self.starts.clone()?;
        Some(Box::pin(async move {
            starts.store.attempt_started(&starts.handler, &m, attempt).await
        }))
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

/// Counts the attempt ([`Message::attempt`]: by deliveries less deferrals and, for a
/// redelivery, at most one more than the attempts the dedup store recorded as started, see
/// [`DedupStore::attempts_started`]); dead-letters a message
/// that has had more attempts than the policy allows (earlier runs crashed); turns
/// [`Outcome::Failed`] into [`Outcome::Retry`] with the back-off, or into a dead letter once the
/// attempts are spent. An attempt after the first is recorded in the dedup store just before the
/// handler runs (by [`CatchPanic`](super::CatchPanic), below the breaker, so that a deferral is
/// never recorded as an attempt).
pub struct Attempts<D> {
    pub(crate) inner: D,
    pub(crate) budget: Budget,
}

impl<D: Dispatch> Dispatch for Attempts<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let max = self.budget.max();
        // Counted once per delivery: a retry in place (ordered handlers) adds to it.
        let (counted, deferred) = match msg.counted {
            Some(c) => c,
            None => {
                let (by_count, deferred) = self.budget.attempt(msg.sequence(), msg.delivered());
                if self.budget.reads_records(by_count) {
                    // A redelivery: its records read (boxed: first deliveries, nearly every
                    // message, carry no room for the read in their state).
                    match self.read_records(msg, (by_count, deferred)).await {
                        Ok(counted) => counted,
                        Err(deferral) => return deferral,
                    }
                } else {
                    (by_count, deferred)
                }
            }
        };
        msg.counted = Some((counted, deferred));
        let attempt = counted.saturating_add(u64::from(msg.retried_in_place));
        if attempt > max {
            return exhausted(attempt, msg.delivered(), deferred, max);
        }
        msg.attempt = attempt;
        match self.inner.dispatch(msg).await {
            Outcome::Failed { reason, retry_after } => self.budget.failed(attempt, reason, retry_after),
            other => other,
        }
    }
}

impl<D: Sync> Attempts<D> {
    /// A redelivery's attempt and deferral counts from its records (the attempt recorded as
    /// started, see [`Budget::counted`]); the deferral to return if they cannot be read now.
    /// Out of line and boxed: first deliveries, nearly every message, read no records and carry
    /// no room for the read in their state.
    #[cold]
    #[inline(never)]
    fn read_records<'a>(
        &'a self,
        msg: &'a mut Message<'_>,
        by_count: (u64, u64),
    ) -> BoxFuture<'a, Result<(u64, u64), Outcome>> {
        Box::pin(async move {
            let id = msg.envelope().map(|e| e.message_id());
            match self.budget.counted(msg.received(), id, by_count).await {
                Ok(c) => {
                    msg.record_start = c.record.and_then(|m| self.budget.record(m, c.attempt));
                    Ok((c.attempt, c.deferred))
                }
                Err(e) => Err(Outcome::Deferred {
                    reason: format!("reading the attempts started at this message: {e}"),
                    delay: super::invoke::UNAVAILABLE_DEFERRAL,
                    cause: Deferral::Unavailable,
                }),
            }
        })
    }
}

/// The dead letter of a message whose next run would be attempt `attempt`, over `max`.
#[cold]
#[inline(never)]
fn exhausted(attempt: u64, delivered: u64, deferred: u64, max: u64) -> Outcome {
    Outcome::DeadLetter {
        kind: DeadLetterReason::Exhausted,
        reason: format!(
            "retries exhausted: this would be attempt {attempt} (delivered {delivered} times, {deferred} deferred by a circuit breaker or an outage), max_attempts {max} (earlier runs did not finish)"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dedup::{KvDedup, MemoryDedup};
    use crate::pipeline::CatchPanic;
    use crate::pipeline::test_raw::Raw;
    use crate::timestamp::Timestamp;
    use crate::transport::memory::MemoryTransport;
    use crate::transport::{KeyValue, KvSpec, Transport};
    use std::sync::atomic::AtomicU64;

    /// Fails every run, counting them.
    #[derive(Default)]
    struct Fails(AtomicU64);

    impl Dispatch for Fails {
        async fn dispatch(&self, _msg: &mut Message<'_>) -> Outcome {
            self.0.fetch_add(1, Ordering::Relaxed);
            Outcome::Failed {
                reason: "no".into(),
                retry_after: Duration::ZERO,
            }
        }
    }

    const STORED: i128 = 1_764_892_800_000_000_000;

    /// Delivery `delivered` of stream message 7 of `DOCUMENT_EVENTS`, stored at `stored` (unix nanos).
    fn delivery(delivered: u64, stored: i128) -> Raw {
        Raw::seventh(delivered, Timestamp::from_unix_nanos(stored).expect("in range"), None)
    }

    /// Attempts (5 at most) around a handler that always fails, counting with `store`.
    fn layer(store: Arc<dyn DedupStore>) -> Attempts<CatchPanic<Fails>> {
        Attempts {
            inner: CatchPanic {
                inner: Fails::default(),
                ack_wait: Duration::from_secs(30),
            },
            budget: Budget {
                retry: RetryPolicy::attempts(5),
                ledger: Arc::default(),
                starts: Some(Starts {
                    store,
                    handler: "h".into(),
                }),
            },
        }
    }

    async fn run(layer: &Attempts<CatchPanic<Fails>>, raw: &Raw) -> (Outcome, u64) {
        let mut msg = Message::new(raw, raw.envelope());
        let outcome = layer.dispatch(&mut msg).await;
        (outcome, msg.attempt)
    }

    async fn kv() -> impl KeyValue {
        MemoryTransport::new()
            .key_value(&KvSpec::new("cim_dedup_test"))
            .await
            .expect("bucket")
    }

    /// Delivery counts raised by deliveries that reached nobody (nats-server 2.9 and a pull
    /// request left behind on a leaf node) are not attempts: each run records its attempt, and
    /// the attempts follow the records.
    #[tokio::test]
    async fn attempts_follow_the_records_of_runs_not_the_delivery_count() {
        let kv = kv().await;
        let layer = layer(Arc::new(KvDedup::new(kv.clone())));
        let mut seen = Vec::new();
        for delivered in [1, 19, 40, 41, 300] {
            let (outcome, attempt) = run(&layer, &delivery(delivered, STORED)).await;
            seen.push((attempt, matches!(outcome, Outcome::DeadLetter { .. })));
        }
        assert_eq!(
            seen,
            [(1, false), (2, false), (3, false), (4, false), (5, true)],
            "the fifth run is the last attempt"
        );
        assert_eq!(layer.inner.inner.0.load(Ordering::Relaxed), 5, "every attempt ran");
        let record = kv.get("h.a.DOCUMENT_EVENTS.7").await.expect("read").expect("recorded");
        assert_eq!(&record.value[..], format!("5 {STORED}").as_bytes());
        // The crash rule counts the same way: one more attempt than recorded.
        let (outcome, _) = run(&layer, &delivery(301, STORED)).await;
        assert!(
            matches!(&outcome, Outcome::DeadLetter { reason, .. } if reason.contains("attempt 6")),
            "{outcome:?}"
        );
        assert_eq!(layer.inner.inner.0.load(Ordering::Relaxed), 5, "not run again");
    }

    /// A record of the same sequence in a stream deleted and created again is another message's.
    #[tokio::test]
    async fn a_record_of_another_message_at_the_same_sequence_counts_as_none() {
        let layer = layer(Arc::new(KvDedup::new(kv().await)));
        for delivered in [2, 3, 4] {
            run(&layer, &delivery(delivered, STORED)).await;
        }
        let (_, attempt) = run(&layer, &delivery(90, STORED + 1)).await;
        assert_eq!(attempt, 2);
    }

    /// A store that keeps no records (in memory, lost on restart) counts deliveries as before:
    /// a message delivered more often than the attempts allow is dead-lettered unrun.
    #[tokio::test]
    async fn without_records_the_delivery_count_is_the_attempt_count() {
        let layer = layer(Arc::new(MemoryDedup::default()));
        let (outcome, attempt) = run(&layer, &delivery(3, STORED)).await;
        assert_eq!((attempt, matches!(outcome, Outcome::Retry { .. })), (3, true));
        let (outcome, _) = run(&layer, &delivery(17, STORED)).await;
        assert!(matches!(outcome, Outcome::DeadLetter { .. }), "{outcome:?}");
        assert_eq!(layer.inner.inner.0.load(Ordering::Relaxed), 1);
    }
}
