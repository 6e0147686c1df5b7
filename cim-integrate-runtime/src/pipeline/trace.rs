//! Layer: one `handle` span around every message, carrying its identity.

use super::{Dispatch, Message, Outcome};
use crate::monitor::HANDLE_TARGET;
use std::sync::Arc;
use tracing::Instrument;

/// Opens the `handle` span: `kind` (`event`, `command`), `handler`, `subject`, `message_id`,
/// `correlation_id`, `causation_id`, `delivered`. Everything below (the handler's own logs and
/// its publishes) is inside it, so one correlation id finds every step of a conversation.
pub struct Trace<D> {
    pub(crate) inner: D,
    pub(crate) kind: &'static str,
    pub(crate) handler: Arc<str>,
    /// A message delivered by a consumer (an event, a command), not a step run in place (a saga
    /// step): with `otel`, its span takes its trace from the message, never from the consuming
    /// loop.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) delivery: bool,
}

impl<D: Dispatch> Dispatch for Trace<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let span = self.span(msg);
        self.inner.dispatch(msg).instrument(span).await
    }
}

impl<D> Trace<D> {
    /// The `handle` span of `msg`. Out of line: the span's fields are built only where a
    /// subscriber wants it, and that code stays out of every message's poll.
    #[inline(never)]
    fn span(&self, msg: &Message<'_>) -> tracing::Span {
        let delivered = msg.delivered();
        let span = match msg.envelope() {
            Some(e) => tracing::info_span!(
                target: HANDLE_TARGET,
                "handle",
                kind = self.kind,
                handler = %self.handler,
                subject = %e.subject(),
                message_id = %e.message_id(),
                correlation_id = %e.correlation_id(),
                causation_id = %e.causation_id(),
                delivered,
            ),
            None => tracing::info_span!(
                target: HANDLE_TARGET,
                "handle",
                kind = self.kind,
                handler = %self.handler,
                subject = msg.received().subject(),
                delivered,
            ),
        };
        #[cfg(feature = "otel")]
        if self.delivery {
            // A redriven dead letter starts from stored state: linked to its first trace.
            let headers = msg.received().headers();
            let redriven = headers.get(crate::service::REDRIVE_COUNT).is_some();
            crate::trace_context::adopt(&span, headers, redriven);
        }
        span
    }
}
