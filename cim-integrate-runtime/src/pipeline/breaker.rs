//! Layer: a handler's own circuit breaker.

use super::{Deferral, Dispatch, Message, Outcome};
use crate::breaker::CircuitBreaker;
use std::time::Duration;

/// Shortest delay of a deferral, so that a breaker about to half-open does not spin.
pub(crate) const MIN_DEFERRAL: Duration = Duration::from_millis(10);

/// Asks the breaker before running the rest of the stack: while it is open the message is
/// deferred for the rest of the cool-down (not an attempt). A failure or panic counts against
/// it, and a failure that opened it is not retried before it lets probes through.
pub struct Breaker<D> {
    pub(crate) inner: D,
    pub(crate) breaker: Option<CircuitBreaker>,
}

impl<D: Dispatch> Dispatch for Breaker<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let Some(breaker) = &self.breaker else {
            return self.inner.dispatch(msg).await;
        };
        let permit = match breaker.try_acquire() {
            Ok(permit) => permit,
            Err(open) => {
                return Outcome::Deferred {
                    reason: open.to_string(),
                    delay: open.retry_after.max(MIN_DEFERRAL),
                    cause: Deferral::Breaker,
                };
            }
        };
        let mut outcome = self.inner.dispatch(msg).await;
        match &mut outcome {
            Outcome::Succeeded => permit.success(),
            Outcome::Failed { retry_after, .. } => {
                permit.failure();
                *retry_after = (*retry_after).max(breaker.retry_after());
            }
            // Says nothing about the downstream (undecodable, permanent, deferred by another
            // breaker): the permit is dropped unrecorded.
            _ => drop(permit),
        }
        outcome
    }
}
