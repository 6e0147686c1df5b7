//! Layer: an ordered handler (and a command) retries in place, so later messages wait.

use super::catch_panic::with_progress;
use super::{Deferral, Dispatch, Message, Outcome};
use std::time::Duration;

/// For an ordered handler: a retry or a breaker deferral waits in place (the delivery kept alive
/// with progress signals) and runs the rest of the stack again, instead of being redelivered
/// after later messages. Other handlers pass through.
pub struct Ordered<D> {
    pub(crate) inner: D,
    pub(crate) ordered: bool,
    pub(crate) ack_wait: Duration,
    /// Longest wait in place; a longer retry or deferral goes back up the stack (commands: the
    /// sender is waiting, so an open breaker's cool-down is answered at once). `None`: no limit.
    pub(crate) max_wait: Option<Duration>,
}

impl<D: Dispatch> Dispatch for Ordered<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        if !self.ordered {
            return self.inner.dispatch(msg).await;
        }
        loop {
            let outcome = self.inner.dispatch(msg).await;
            let (delay, deferral) = match &outcome {
                Outcome::Retry { delay, reason } => {
                    tracing::warn!(%reason, attempt = msg.attempt(), ?delay, "retrying in place");
                    (*delay, false)
                }
                Outcome::Deferred {
                    delay,
                    cause: Deferral::Breaker,
                    reason,
                } => {
                    tracing::debug!(%reason, ?delay, "deferred in place: a circuit breaker is open");
                    (*delay, true)
                }
                _ => return outcome,
            };
            if self.max_wait.is_some_and(|max| delay > max) {
                return outcome;
            }
            with_progress(tokio::time::sleep(delay), msg.received(), self.ack_wait).await;
            if deferral {
                msg.deferred_in_place = msg.deferred_in_place.saturating_add(1);
            } else {
                msg.retried_in_place = msg.retried_in_place.saturating_add(1);
            }
        }
    }
}
