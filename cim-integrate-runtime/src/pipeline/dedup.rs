//! Layer: a handler never runs twice for one message id, and a message is never acknowledged
//! before its de-duplication mark is written.

use super::catch_panic::with_progress;
use super::{Deferral, Dispatch, Message, Outcome};
use crate::dedup::DedupStore;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait before redelivering a message whose dedup check could not be made.
const CHECK_RETRY: Duration = Duration::from_secs(1);
/// First and longest pause between attempts to write a mark.
const MARK_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(2));

/// Asks the [`DedupStore`] whether this handler already handled the message id (yes:
/// [`Outcome::Duplicate`]; the store unreachable: deferred, never a blind run). After a
/// successful run it writes the mark, retrying in place (the delivery kept alive) while the
/// store is unreachable: the acknowledgement waits for the mark.
pub struct Dedup<D> {
    pub(crate) inner: D,
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) key: Arc<str>,
    pub(crate) ack_wait: Duration,
}

impl<D: Dispatch> Dispatch for Dedup<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let Some(id) = msg.envelope().map(|e| e.message_id()) else {
            return super::filter::invalid_envelope(msg);
        };
        let seen = match self.store.seen_now(&self.key, id) {
            Some(r) => r,
            None => self.store.seen(&self.key, id).await,
        };
        match seen {
            Ok(true) => return Outcome::Duplicate,
            Ok(false) => {}
            Err(e) => {
                return Outcome::Deferred {
                    reason: format!("dedup check failed: {e}"),
                    delay: CHECK_RETRY,
                    cause: Deferral::Unavailable,
                };
            }
        }
        let outcome = self.inner.dispatch(msg).await;
        if outcome == Outcome::Succeeded {
            match self.store.mark_now(&self.key, id) {
                Some(Ok(())) => {}
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "dedup mark failed; retrying before the acknowledgement");
                    with_progress(self.mark(id), msg.received(), self.ack_wait).await;
                }
                None => with_progress(self.mark(id), msg.received(), self.ack_wait).await,
            }
        }
        outcome
    }
}

impl<D> Dedup<D> {
    /// Writes the mark, retrying with back-off until it is stored.
    async fn mark(&self, id: crate::id::MessageId) {
        let mut pause = MARK_BACKOFF.0;
        loop {
            match self.store.mark(&self.key, id).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, ?pause, "dedup mark failed; retrying before the acknowledgement");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MARK_BACKOFF.1);
                }
            }
        }
    }
}
