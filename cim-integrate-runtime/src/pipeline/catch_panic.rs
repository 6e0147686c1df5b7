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
        // The attempt is recorded as started before the handler runs (see `Attempts`).
        if let Some(record) = msg.record_start.take()
            && let Err(e) = record.await
        {
            return Outcome::Deferred {
                reason: format!("recording the attempt's start: {e}"),
                delay: super::invoke::UNAVAILABLE_DEFERRAL,
                cause: super::Deferral::Unavailable,
            };
        }
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
///
/// A future of its own rather than an `async fn`: it is nested in every dispatch, and the
/// `async fn` kept `fut` twice (the argument and its pinned copy) beside its timer and signal,
/// a size every layer above it moved again per message. This holds `fut` once, and arms the
/// timer only for a run that waits.
pub(crate) fn with_progress<F: Future>(fut: F, raw: &dyn Received, ack_wait: Duration) -> WithProgress<'_, F> {
    WithProgress {
        fut,
        raw,
        ack_wait,
        tick: None,
        signal: None,
    }
}

pin_project_lite::pin_project! {
    /// See [`with_progress`].
    pub(crate) struct WithProgress<'a, F> {
        #[pin]
        fut: F,
        raw: &'a dyn Received,
        ack_wait: Duration,
        // Armed when `fut` first waits: the first signal goes half an ack wait later.
        tick: Option<tokio::time::Interval>,
        // A progress signal on its way (`fut` is still polled meanwhile).
        signal: Option<futures::future::BoxFuture<'a, Result<(), crate::transport::TransportError>>>,
    }
}

impl<F: Future> Future for WithProgress<'_, F> {
    type Output = F::Output;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        use std::task::Poll;
        let this = self.project();
        if let Poll::Ready(r) = this.fut.poll(cx) {
            return Poll::Ready(r);
        }
        poll_progress(this.signal, this.tick, *this.raw, *this.ack_wait, cx);
        Poll::Pending
    }
}

/// Keeps the progress signals of a future that waits going: sends one every half ack wait
/// (each after the one before was answered), waking `cx` when the next is due. Out of line: a
/// future that does not wait (nearly every handler run on an in-process transport) never runs
/// it, and the code the signals take stays out of the hot path's.
#[inline(never)]
fn poll_progress<'a>(
    signal: &mut Option<futures::future::BoxFuture<'a, Result<(), crate::transport::TransportError>>>,
    tick: &mut Option<tokio::time::Interval>,
    raw: &'a dyn Received,
    ack_wait: Duration,
    cx: &mut std::task::Context<'_>,
) {
    use std::task::Poll;
    loop {
        if let Some(pending) = signal {
            match pending.as_mut().poll(cx) {
                Poll::Pending => return,
                Poll::Ready(Err(e)) => tracing::debug!(error = %e, "progress signal failed"),
                Poll::Ready(Ok(())) => {}
            }
            *signal = None;
        }
        let tick = tick.get_or_insert_with(|| {
            let period = (ack_wait / 2).max(Duration::from_millis(100));
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            // A signal answered late is followed by the next one a period later, not by one
            // per period missed meanwhile, back to back, to a server already slow to answer.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick
        });
        match tick.poll_tick(cx) {
            Poll::Ready(_) => *signal = Some(raw.in_progress()),
            Poll::Pending => return,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::TransportError;
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// A delivery whose progress signals are counted (when sent and when answered), each
    /// answered `answer` later, the `fail_first` first ones with an error.
    struct Counted {
        raw: super::super::test_raw::Raw,
        sent: AtomicUsize,
        answered: AtomicUsize,
        answer: Duration,
        /// How long the first signal's answer takes (`answer` for the others).
        first_answer: Duration,
        fail_first: usize,
    }

    impl Counted {
        fn new(answer: Duration, fail_first: usize) -> Self {
            Self {
                raw: super::super::test_raw::Raw {
                    headers: crate::headers::Headers::new(),
                    payload: bytes::Bytes::new(),
                    info: crate::transport::DeliveryInfo {
                        stream: "S".into(),
                        consumer: "c".into(),
                        stream_sequence: 1,
                        consumer_sequence: 1,
                        delivered: 1,
                        published: crate::timestamp::Timestamp::now(),
                        resumed: None,
                    },
                },
                sent: AtomicUsize::new(0),
                answered: AtomicUsize::new(0),
                answer,
                first_answer: answer,
                fail_first,
            }
        }
    }

    impl Received for Counted {
        fn subject(&self) -> &str {
            self.raw.subject()
        }
        fn headers(&self) -> &crate::headers::Headers {
            self.raw.headers()
        }
        fn payload(&self) -> &bytes::Bytes {
            self.raw.payload()
        }
        fn info(&self) -> Option<&crate::transport::DeliveryInfo> {
            self.raw.info()
        }
        fn in_progress(&self) -> BoxFuture<'_, Result<(), TransportError>> {
            let n = self.sent.fetch_add(1, Ordering::SeqCst);
            let answer = if n == 0 { self.first_answer } else { self.answer };
            Box::pin(async move {
                tokio::time::sleep(answer).await;
                self.answered.fetch_add(1, Ordering::SeqCst);
                if n < self.fail_first {
                    Err(TransportError::Timeout("progress".into()))
                } else {
                    Ok(())
                }
            })
        }
        fn envelope(&self) -> Result<crate::envelope::Envelope, crate::envelope::EnvelopeError> {
            self.raw.envelope()
        }
    }

    /// A run that sleeps `run`, under progress signals for `ack_wait`, reporting to `raw`.
    async fn sleep_under_progress(raw: &Counted, run: Duration, ack_wait: Duration) {
        with_progress(tokio::time::sleep(run), raw, ack_wait).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_run_that_finishes_at_once_sends_no_signal() {
        let raw = Counted::new(Duration::ZERO, 0);
        assert_eq!(with_progress(async { 7 }, &raw, Duration::from_secs(2)).await, 7);
        assert_eq!(raw.sent.load(Ordering::SeqCst), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_run_signals_every_half_ack_wait() {
        let raw = Counted::new(Duration::ZERO, 0);
        let start = Instant::now();
        let run = async {
            tokio::time::sleep(Duration::from_millis(2_600)).await;
            "done"
        };
        assert_eq!(with_progress(run, &raw, Duration::from_secs(2)).await, "done");
        assert_eq!(start.elapsed(), Duration::from_millis(2_600));
        // At 1 s and 2 s.
        assert_eq!(raw.sent.load(Ordering::SeqCst), 2);
        assert_eq!(raw.answered.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_run_goes_on_while_a_signal_is_answered_and_failures_do_not_stop_it() {
        // Each answer takes 700 ms (the first fails); the run ends at 1.2 s, while the signal
        // sent at 1 s is still unanswered: it ends then, not when the answer comes.
        let raw = Counted::new(Duration::from_millis(700), 1);
        let start = Instant::now();
        sleep_under_progress(&raw, Duration::from_millis(1_200), Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_millis(1_200));
        assert_eq!(raw.sent.load(Ordering::SeqCst), 1);
        assert_eq!(raw.answered.load(Ordering::SeqCst), 0);
        // A longer run: signals at 1, 2 and 3 s (the failed first one does not stop the next).
        let raw = Counted::new(Duration::from_millis(700), 1);
        sleep_under_progress(&raw, Duration::from_millis(3_500), Duration::from_secs(2)).await;
        assert_eq!(raw.sent.load(Ordering::SeqCst), 3);
        assert_eq!(raw.answered.load(Ordering::SeqCst), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_is_not_followed_by_a_burst_of_signals() {
        // Every second; the first answer takes 3.5 s (it comes at 4.5 s), the others none. The
        // ticks missed meanwhile (2, 3 and 4 s) give one signal at 4.5 s, the next at 5.5 s;
        // not three at 4.5 s and then 5 and 6 s.
        let mut raw = Counted::new(Duration::ZERO, 0);
        raw.first_answer = Duration::from_millis(3_500);
        sleep_under_progress(&raw, Duration::from_millis(6_200), Duration::from_secs(2)).await;
        assert_eq!(raw.sent.load(Ordering::SeqCst), 3);
        assert_eq!(raw.answered.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn the_period_is_at_least_100_ms() {
        let raw = Counted::new(Duration::ZERO, 0);
        sleep_under_progress(&raw, Duration::from_millis(450), Duration::from_millis(10)).await;
        assert_eq!(raw.sent.load(Ordering::SeqCst), 4);
    }
}
