//! The terminal of saga steps and compensations: one call, under the step's timeout. A step
//! is not a received message, so it comes with a [`Synthetic`] one carrying the saga's identity.

use super::{Dispatch, Message, Outcome, Received};
use crate::envelope::{Envelope, EnvelopeError};
use crate::handler::HandlerError;
use crate::headers::Headers;
use crate::monitor::DeadLetterReason;
use crate::monitor::HandlerMetrics;
use crate::pipeline::catch_panic::CatchPanic;
use crate::pipeline::record::{HandlerCounters, Record};
use crate::pipeline::trace::Trace;
use crate::transport::{DeliveryInfo, TransportError};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A message made up for a call that did not arrive as one (a saga step): its envelope is
/// the saga's identity on the saga's subject.
pub(crate) struct Synthetic {
    envelope: Envelope,
    /// Built on first use: a step's pipeline rarely reads them (one per attempt otherwise).
    headers: std::sync::OnceLock<Headers>,
}

impl Synthetic {
    pub(crate) fn new(envelope: Envelope) -> Self {
        Self {
            envelope,
            headers: std::sync::OnceLock::new(),
        }
    }
}

impl Received for Synthetic {
    fn subject(&self) -> &str {
        self.envelope.subject().as_str()
    }
    fn headers(&self) -> &Headers {
        self.headers.get_or_init(|| self.envelope.to_headers())
    }
    fn payload(&self) -> &Bytes {
        self.envelope.payload()
    }
    fn info(&self) -> Option<&DeliveryInfo> {
        None
    }
    fn in_progress(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        Ok(self.envelope.clone())
    }
}

/// Runs one call (its future `F`) under `timeout` (armed when the call first waits, so a call that
/// finishes in its first poll reads no clock and makes no timer): success, a permanent failure (dead
/// letter: the saga compensates), a transient failure or timeout ([`Outcome::Failed`]: the saga
/// retries it), or a deferral when the call's own breaker refused.
pub(crate) struct Call<F> {
    call: Mutex<Option<F>>,
    timeout: Duration,
}

impl<F> Dispatch for Call<F>
where
    F: Future<Output = Result<(), HandlerError>> + Send,
{
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let call = self.call.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(call) = call else {
            return Outcome::Failed {
                reason: "the call was already made".to_owned(),
                retry_after: Duration::ZERO,
            };
        };
        msg.ran = true;
        // A call that finishes in its first poll (most steps on the embedded transport) needs no
        // timer: the timeout is armed only when it first waits, and counts from there.
        let mut call = std::pin::pin!(call);
        let result = match futures::poll!(call.as_mut()) {
            std::task::Poll::Ready(r) => Ok(r),
            std::task::Poll::Pending => tokio::time::timeout(self.timeout, call).await,
        };
        match result {
            Ok(Ok(())) => Outcome::Succeeded,
            Ok(Err(e)) => call_error(e),
            Err(_) => Outcome::Failed {
                reason: format!("timed out after {:?}", self.timeout),
                retry_after: Duration::ZERO,
            },
        }
    }
}

/// The outcome of a failed call, its reason worded as the saga record keeps it
/// (`transient: ...`, `permanent: ...`).
fn call_error(e: HandlerError) -> Outcome {
    if let HandlerError::Transient(inner) = &e
        && let Some(deferred) = super::invoke::deferral(inner.as_ref())
    {
        return deferred;
    }
    let reason = e.to_string();
    if e.is_permanent() {
        Outcome::DeadLetter {
            kind: DeadLetterReason::Permanent,
            reason,
        }
    } else {
        Outcome::Failed {
            reason,
            retry_after: Duration::ZERO,
        }
    }
}

/// The counters and metrics of one kind of call (a saga's step, or its compensation).
#[derive(Clone)]
pub(crate) struct Observer {
    pub(crate) label: Arc<str>,
    pub(crate) counters: Arc<HandlerCounters>,
    pub(crate) metrics: Arc<HandlerMetrics>,
}

impl Observer {
    /// Counters and metrics labelled `source_domain` / `target_domain` / `label` / `kind`: all
    /// bounded (a saga's and a step's names, never an id).
    pub(crate) fn new(source_domain: &str, target_domain: &str, label: String, kind: &str) -> Self {
        Self {
            metrics: Arc::new(HandlerMetrics::new(source_domain, target_domain, &label, kind)),
            label: Arc::from(label),
            counters: Arc::new(HandlerCounters::default()),
        }
    }

    /// Runs `call` through trace, record, catch panic and the call's terminal, as `envelope`.
    pub(crate) async fn run<F>(&self, kind: &'static str, envelope: Envelope, timeout: Duration, call: F) -> Outcome
    where
        F: Future<Output = Result<(), HandlerError>> + Send,
    {
        let stack = Trace {
            inner: Record {
                inner: CatchPanic {
                    inner: Call {
                        call: Mutex::new(Some(call)),
                        timeout,
                    },
                    ack_wait: timeout,
                },
                counters: self.counters.clone(),
                metrics: self.metrics.clone(),
            },
            kind,
            handler: self.label.clone(),
            delivery: false,
        };
        let received = Synthetic::new(envelope);
        let mut msg = Message::new(&received, received.envelope());
        stack.dispatch(&mut msg).await
    }
}
