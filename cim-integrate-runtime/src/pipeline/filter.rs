//! Layer: a typed handler on a wide pattern (`document.*`) skips other event types; a message
//! without a valid envelope goes no further.

use super::{Dispatch, Message, Outcome};
use crate::handler::Registration;
use crate::monitor::DeadLetterReason;

/// Skips messages that are not the handler's event type ([`Registration::accepts`]), and
/// dead-letters messages without a valid envelope.
pub struct Filter<D> {
    pub(crate) inner: D,
    pub(crate) registration: Registration,
}

impl<D: Dispatch> Dispatch for Filter<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let Some(envelope) = msg.envelope() else {
            return invalid_envelope(msg);
        };
        // Subjects arrive without the deployment prefix (the transport strips it).
        let own_subject = envelope.subject().as_str();
        let event_type = envelope.event_type().filter(|t| !t.is_empty());
        if !self.registration.accepts(own_subject, event_type) {
            return Outcome::Skipped;
        }
        self.inner.dispatch(msg).await
    }
}

/// The outcome of a message whose envelope could not be rebuilt.
pub(crate) fn invalid_envelope(msg: &Message<'_>) -> Outcome {
    let reason = msg
        .envelope_error()
        .map_or_else(|| "invalid envelope".to_owned(), |e| format!("invalid envelope: {e}"));
    Outcome::DeadLetter {
        kind: DeadLetterReason::InvalidEnvelope,
        reason,
    }
}
