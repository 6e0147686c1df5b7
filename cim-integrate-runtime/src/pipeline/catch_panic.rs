//! Layer: a panicking handler is a failed attempt, not a dead process; a slow one keeps its
//! delivery alive with progress signals.

use super::{Dispatch, Message, Outcome, Received};
use futures::FutureExt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

/// Runs the rest of the stack catching panics (a panic becomes [`Outcome::Failed`]), telling the
/// server every half ack wait that the message is still in progress.
pub struct CatchPanic<D> {
    pub(crate) inner: D,
    pub(crate) ack_wait: Duration,
}

impl<D: Dispatch> Dispatch for CatchPanic<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let raw = msg.received();
        let run = AssertUnwindSafe(self.inner.dispatch(msg)).catch_unwind();
        match with_progress(run, raw, self.ack_wait).await {
            Ok(outcome) => outcome,
            Err(panic) => {
                msg.panicked = true;
                msg.ran = true;
                Outcome::Failed {
                    reason: format!("handler panicked: {}", panic_message(panic.as_ref())),
                    retry_after: Duration::ZERO,
                }
            }
        }
    }
}

/// Runs `fut` while telling the server every half `ack_wait` that `raw` is still in progress.
pub(crate) async fn with_progress<F: Future>(fut: F, raw: &dyn Received, ack_wait: Duration) -> F::Output {
    let fut = std::pin::pin!(fut);
    let mut fut = fut;
    // Most runs finish without waiting: arm the progress timer only for those that wait.
    if let std::task::Poll::Ready(r) = futures::poll!(fut.as_mut()) {
        return r;
    }
    let period = (ack_wait / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = fut.as_mut() => return r,
            _ = tick.tick() => {
                if let Err(e) = raw.in_progress().await {
                    tracing::debug!(error = %e, "progress signal failed");
                }
            }
        }
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}
