//! Layer: an ordered handler (and a command) retries in place, so later messages wait.

use super::catch_panic::with_progress;
use super::{Deferral, Dispatch, Message, Outcome};
use futures::future::BoxFuture;
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
        // One await of the stack below, for both kinds of handler: each await of it would hold
        // (and compile) the whole of it again, the handler's run included.
        loop {
            let outcome = self.inner.dispatch(msg).await;
            if !self.ordered {
                return outcome;
            }
            let Some(wait) = self.in_place(msg, &outcome) else {
                return outcome;
            };
            wait_in_place(wait, msg, self.ack_wait).await;
        }
    }
}

/// A retry or a breaker deferral an ordered handler waits out in place.
struct InPlace {
    delay: Duration,
    deferral: bool,
}

impl<D> Ordered<D> {
    /// The wait in place that `outcome` asks for, logged; `None` to return it up the stack.
    #[cold]
    #[inline(never)]
    fn in_place(&self, msg: &Message<'_>, outcome: &Outcome) -> Option<InPlace> {
        let wait = match outcome {
            Outcome::Retry { delay, reason } => {
                tracing::warn!(%reason, attempt = msg.attempt(), ?delay, "retrying in place");
                InPlace {
                    delay: *delay,
                    deferral: false,
                }
            }
            Outcome::Deferred {
                delay,
                cause: Deferral::Breaker,
                reason,
            } => {
                tracing::debug!(%reason, ?delay, "deferred in place: a circuit breaker is open");
                InPlace {
                    delay: *delay,
                    deferral: true,
                }
            }
            _ => return None,
        };
        self.max_wait.is_none_or(|max| wait.delay <= max).then_some(wait)
    }
}

/// Waits `wait` out with progress signals, then counts it on `msg`. Boxed: a handler that never
/// waits in place (nearly every message) carries no room for the wait in its state.
fn wait_in_place<'a>(wait: InPlace, msg: &'a mut Message<'_>, ack_wait: Duration) -> BoxFuture<'a, ()> {
    Box::pin(async move {
        with_progress(tokio::time::sleep(wait.delay), msg.received(), ack_wait).await;
        if wait.deferral {
            msg.deferred_in_place = msg.deferred_in_place.saturating_add(1);
        } else {
            msg.retried_in_place = msg.retried_in_place.saturating_add(1);
        }
    })
}
