//! Layer: stores what cannot be handled in the dead-letter stream, with the reason, before the
//! original is terminated.

use super::{Deferral, Dispatch, Message, Outcome};
use crate::handler::context::DynPublish;
use crate::headers::{self, Headers};
use crate::service::{
    DEAD_LETTER_AT, DEAD_LETTER_DELIVERIES, DEAD_LETTER_HANDLER, DEAD_LETTER_ORIGINAL_MSG_ID, DEAD_LETTER_REASON,
    DEAD_LETTER_SEQUENCE, DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT,
};
use crate::subject::Subject;
use crate::timestamp::Timestamp;
use crate::transport::OutboundMessage;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait before redelivering a message whose dead letter could not be stored.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// Turns [`Outcome::DeadLetter`] into [`Outcome::DeadLettered`] once the dead letter (original
/// payload and headers, plus `X-Dead-Letter-*` headers) is stored on `dlq.{set}.{handler}`; if it
/// cannot be stored, the message is deferred (redelivered later), never terminated unseen.
pub struct DeadLetter<D> {
    pub(crate) inner: D,
    pub(crate) publisher: Arc<dyn DynPublish>,
    pub(crate) subject: Subject,
    pub(crate) handler: Arc<str>,
}

impl<D: Dispatch> Dispatch for DeadLetter<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        match self.inner.dispatch(msg).await {
            Outcome::DeadLetter { kind, reason } => {
                let letter = self.letter(msg, &reason);
                match self.publisher.publish_and_wait(letter).await {
                    Ok(_) => Outcome::DeadLettered { kind, reason },
                    Err(e) => Outcome::Deferred {
                        reason: format!("dead-lettering failed ({e}); redelivering later: {reason}"),
                        delay: DEAD_LETTER_RETRY,
                        cause: Deferral::Unavailable,
                    },
                }
            }
            other => other,
        }
    }
}

impl<D> DeadLetter<D> {
    fn letter(&self, msg: &Message<'_>, reason: &str) -> OutboundMessage {
        let raw = msg.received();
        let mut hdrs = Headers::new();
        for (n, v) in raw.headers().iter().filter(|(n, _)| *n != headers::NATS_MSG_ID) {
            hdrs.push_received(n.to_owned(), v.to_owned());
        }
        if let Some(orig) = raw.headers().get(headers::NATS_MSG_ID) {
            hdrs.push_received(DEAD_LETTER_ORIGINAL_MSG_ID.to_owned(), header_safe(orig));
        }
        let (stream, sequence) = raw
            .info()
            .map_or((String::new(), 0), |i| (i.stream.to_string(), i.stream_sequence));
        // One dead letter per (handler, stored message), however often this is retried.
        let id = letter_id(&self.handler, &stream, sequence);
        for (n, v) in [
            (headers::NATS_MSG_ID, id.to_string()),
            (DEAD_LETTER_REASON, header_safe(reason)),
            (DEAD_LETTER_HANDLER, self.handler.to_string()),
            (DEAD_LETTER_SUBJECT, header_safe(raw.subject())),
            (DEAD_LETTER_STREAM, stream),
            (DEAD_LETTER_SEQUENCE, sequence.to_string()),
            (DEAD_LETTER_DELIVERIES, msg.delivered().to_string()),
            (DEAD_LETTER_AT, Timestamp::now().to_rfc3339()),
        ] {
            hdrs.push_received(n.to_owned(), v);
        }
        OutboundMessage {
            subject: self.subject.clone(),
            headers: hdrs,
            payload: raw.payload().clone(),
        }
    }
}

/// The id of the dead letter of (handler, stored message): see [`crate::id::derived_uuid`].
pub(crate) fn letter_id(handler: &str, stream: &str, sequence: u64) -> uuid::Uuid {
    crate::id::derived_uuid(&[
        b"dlq",
        handler.as_bytes(),
        stream.as_bytes(),
        sequence.to_string().as_bytes(),
    ])
}

fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}
