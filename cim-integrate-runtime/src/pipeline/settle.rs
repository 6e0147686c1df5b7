//! The edge: what an [`Outcome`] means for a stream delivery.

use super::Outcome;
use super::attempts::Ledger;
use super::breaker::MIN_DEFERRAL;
use super::run::Settle;
use crate::transport::{Acker, Delivery};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Redelivery delay of a failure that reached the edge without an attempts layer, or of a dead
/// letter that was not stored.
const FALLBACK_DELAY: Duration = Duration::from_secs(1);

/// Settles stream deliveries: ack (handled, duplicate, skipped), nak with the delay (retry,
/// deferral; a deferral is noted so that its redelivery is not counted as an attempt), term
/// (only once the dead letter is stored).
pub(crate) struct Ack {
    pub(crate) ledger: Arc<Ledger>,
}

impl<A: Acker> Settle<Delivery<A>> for Ack {
    async fn settle(&self, d: Delivery<A>, _reply: Option<Bytes>, outcome: Outcome) {
        let seq = d.info().stream_sequence;
        let result = match outcome {
            Outcome::Succeeded | Outcome::Duplicate | Outcome::Skipped => {
                self.ledger.forget(seq);
                d.ack().await
            }
            Outcome::DeadLettered { .. } => {
                self.ledger.forget(seq);
                d.term().await
            }
            Outcome::Retry { delay, .. } => d.nak(Some(delay)).await,
            Outcome::Deferred { delay, .. } => {
                self.ledger.note(seq);
                d.nak(Some(delay.max(MIN_DEFERRAL))).await
            }
            // Not stored anywhere, so never terminated: redelivered.
            Outcome::Failed { .. } | Outcome::DeadLetter { .. } | Outcome::Rejected { .. } => {
                d.nak(Some(FALLBACK_DELAY)).await
            }
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "acknowledgement failed; the message will be redelivered");
        }
    }

    async fn abandon(&self, d: Delivery<A>) {
        // Pulled but never started: back to the stream at once, for another instance.
        if let Err(e) = d.nak(None).await {
            tracing::debug!(error = %e, "releasing an unstarted delivery failed; redelivered after the ack wait");
        }
    }
}
