//! Layer: stores what cannot be handled in the dead-letter stream, with the reason, before the
//! original is terminated.

use super::{Deferral, Dispatch, Message, Outcome, Received};
use crate::handler::context::DynPublish;
use crate::headers::{self, Headers};
use crate::monitor::DeadLetterReason;
use crate::service::{
    DEAD_LETTER_AT, DEAD_LETTER_DELIVERIES, DEAD_LETTER_HANDLER, DEAD_LETTER_HEADERS_OMITTED, DEAD_LETTER_KIND,
    DEAD_LETTER_ORIGINAL_MSG_ID, DEAD_LETTER_PAYLOAD_OMITTED, DEAD_LETTER_REASON, DEAD_LETTER_SEQUENCE,
    DEAD_LETTER_STORED, DEAD_LETTER_STREAM, DEAD_LETTER_SUBJECT,
};
use crate::subject::Subject;
use crate::timestamp::Timestamp;
use crate::transport::OutboundMessage;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Arc;
use std::time::Duration;

/// How long to wait before redelivering a message whose dead letter could not be stored.
const DEAD_LETTER_RETRY: Duration = Duration::from_secs(1);

/// Turns [`Outcome::DeadLetter`] into [`Outcome::DeadLettered`] once the dead letter (original
/// payload and headers, plus `X-Dead-Letter-*` headers) is stored on `dlq.{set}.{handler}`; if it
/// cannot be stored for now (the stream unreachable), the message is deferred (redelivered
/// later), never terminated unseen.
///
/// A dead letter that can never be stored as it is (the original fits the limit, its copy with
/// the added headers does not; a header the server refuses) is stored without the payload
/// (`X-Dead-Letter-Payload-Omitted`: its size), then, if that still cannot be stored, without the
/// original's headers too (`X-Dead-Letter-Headers-Omitted`: how many). Either way it points at
/// the original, which stays in its stream: `X-Dead-Letter-Stream`, `X-Dead-Letter-Sequence`.
/// Only if even that cannot be stored is the original terminated without a dead letter, logged
/// as an error with the same pointer; a message that can never be stored is never redelivered
/// for ever, holding a slot of the handler's outstanding deliveries.
pub struct DeadLetter<D> {
    pub(crate) inner: D,
    pub(crate) letters: Letters,
}

/// Where one handler's dead letters go, and how they are written: by the [`DeadLetter`] layer,
/// and by the pull loop for a message whose dispatch panicked outside the handler on its last
/// attempt (`run::LastResort`), which cannot count on the layer (it may be what panicked).
#[derive(Clone)]
pub(crate) struct Letters {
    pub(crate) publisher: Arc<dyn DynPublish>,
    pub(crate) subject: Subject,
    pub(crate) handler: Arc<str>,
}

/// How much of the original a dead letter carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Keep {
    /// Payload and headers.
    All,
    /// Headers only.
    Headers,
    /// Only the dead letter's own headers.
    Nothing,
}

impl<D: Dispatch> Dispatch for DeadLetter<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        match self.inner.dispatch(msg).await {
            Outcome::DeadLetter { kind, reason } => self.store(msg, kind, reason).await,
            other => other,
        }
    }
}

impl<D> DeadLetter<D> {
    /// [`Letters::store`] of `msg`. Out of line and boxed: nearly every message is not a dead
    /// letter, and carries no room for the store (a publish and its acknowledgement) in its state.
    #[cold]
    #[inline(never)]
    fn store<'a>(&'a self, msg: &'a Message<'_>, kind: DeadLetterReason, reason: String) -> BoxFuture<'a, Outcome> {
        Box::pin(self.letters.store(msg.received(), msg.delivered(), kind, reason))
    }
}

impl Letters {
    /// Stores the dead letter of `raw` (delivered `delivered` times): `DeadLettered` once it is
    /// stored (or can never be), `Deferred` while the stream is unreachable.
    pub(crate) async fn store(
        &self,
        raw: &dyn Received,
        delivered: u64,
        kind: DeadLetterReason,
        reason: String,
    ) -> Outcome {
        let mut refused = None;
        for keep in [Keep::All, Keep::Headers, Keep::Nothing] {
            match self
                .publisher
                .publish_and_wait(self.letter(raw, delivered, kind, &reason, keep))
                .await
            {
                Ok(_) => {
                    if let Some(e) = refused {
                        tracing::warn!(error = %e, omitted = ?keep, "dead letter stored without parts of the original");
                    }
                    return Outcome::DeadLettered { kind, reason };
                }
                // Will never be stored as it is: store less of it.
                Err(e) if e.is_permanent() => refused = Some(e),
                Err(e) => {
                    return Outcome::Deferred {
                        reason: format!("dead-lettering failed ({e}); redelivering later: {reason}"),
                        delay: DEAD_LETTER_RETRY,
                        cause: Deferral::Unavailable,
                    };
                }
            }
        }
        let (stream, sequence, _) = position(raw);
        let error = refused.map(|e| e.to_string()).unwrap_or_default();
        tracing::error!(
            %error, %reason, %stream, sequence, handler = %self.handler,
            "the dead letter cannot be stored, even without the original's payload and headers; terminating the original, which stays in its stream"
        );
        Outcome::DeadLettered {
            kind,
            reason: format!("{reason} (no dead letter stored: {error}; the original is {stream} #{sequence})"),
        }
    }

    fn letter(
        &self,
        raw: &dyn Received,
        delivered: u64,
        kind: DeadLetterReason,
        reason: &str,
        keep: Keep,
    ) -> OutboundMessage {
        let mut hdrs = Headers::new();
        if keep == Keep::Nothing {
            let omitted = raw.headers().iter().count();
            hdrs.push_received(DEAD_LETTER_HEADERS_OMITTED.to_owned(), omitted.to_string());
        } else {
            for (n, v) in raw.headers().iter().filter(|(n, _)| *n != headers::NATS_MSG_ID) {
                hdrs.push_received(n.to_owned(), v.to_owned());
            }
        }
        if let Some(orig) = raw.headers().get(headers::NATS_MSG_ID) {
            hdrs.push_received(DEAD_LETTER_ORIGINAL_MSG_ID.to_owned(), header_safe(orig));
        }
        let (stream, sequence, stored) = position(raw);
        // One dead letter per (handler, stored message), however often this is retried.
        let id = letter_id(&self.handler, &stream, sequence);
        for (n, v) in [
            (headers::NATS_MSG_ID, id.to_string()),
            (DEAD_LETTER_REASON, header_safe(reason)),
            (DEAD_LETTER_KIND, kind.as_str().to_owned()),
            (DEAD_LETTER_HANDLER, self.handler.to_string()),
            (DEAD_LETTER_SUBJECT, header_safe(raw.subject())),
            (DEAD_LETTER_STREAM, stream),
            (DEAD_LETTER_SEQUENCE, sequence.to_string()),
            (DEAD_LETTER_DELIVERIES, delivered.to_string()),
            (DEAD_LETTER_AT, Timestamp::now().to_rfc3339()),
        ] {
            hdrs.push_received(n.to_owned(), v);
        }
        if let Some(stored) = stored {
            hdrs.push_received(DEAD_LETTER_STORED.to_owned(), stored.to_rfc3339());
        }
        let payload = if keep == Keep::All {
            raw.payload().clone()
        } else {
            hdrs.push_received(DEAD_LETTER_PAYLOAD_OMITTED.to_owned(), raw.payload().len().to_string());
            Bytes::new()
        };
        OutboundMessage {
            subject: self.subject.clone(),
            headers: hdrs,
            payload,
        }
    }
}

/// The original's stream, sequence and stored time (empty, 0 and `None` for a message outside
/// any stream).
fn position(raw: &dyn Received) -> (String, u64, Option<Timestamp>) {
    raw.info().map_or((String::new(), 0, None), |i| {
        (i.stream.to_string(), i.stream_sequence, Some(i.published))
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::Received;
    use crate::pipeline::test_raw::Raw;
    use crate::transport::{DeliveryInfo, PublishAck, TransportError};
    use futures::future::BoxFuture;
    use std::sync::Mutex;

    /// Refuses (with `refuse`) every letter that `refused` picks; keeps the others.
    struct Store {
        refused: fn(&OutboundMessage) -> Option<TransportError>,
        kept: Mutex<Vec<OutboundMessage>>,
    }

    impl DynPublish for Store {
        fn publish_and_wait(&self, m: OutboundMessage) -> BoxFuture<'static, Result<PublishAck, TransportError>> {
            let result = match (self.refused)(&m) {
                Some(e) => Err(e),
                None => {
                    self.kept.lock().unwrap().push(m);
                    Ok(PublishAck {
                        stream: "DEAD_LETTERS".into(),
                        sequence: 1,
                        duplicate: false,
                    })
                }
            };
            Box::pin(std::future::ready(result))
        }
    }

    struct Fails;
    impl Dispatch for Fails {
        async fn dispatch(&self, _msg: &mut Message<'_>) -> Outcome {
            Outcome::dead_letter_permanent("bad")
        }
    }

    /// When the test's original was stored: a time with nanoseconds.
    fn stored() -> Timestamp {
        Timestamp::from_unix_nanos(1_764_892_800_123_456_789).expect("in range")
    }

    async fn dead_letter(refused: fn(&OutboundMessage) -> Option<TransportError>) -> (Outcome, Vec<OutboundMessage>) {
        let mut headers = Headers::new();
        headers.insert("X-Tenant", "acme").unwrap();
        let raw = Raw {
            headers,
            payload: bytes::Bytes::from_static(b"0123456789"),
            info: DeliveryInfo {
                stream: "DOCUMENT_EVENTS".into(),
                consumer: "w".into(),
                stream_sequence: 7,
                consumer_sequence: 1,
                delivered: 1,
                published: stored(),
                resumed: None,
            },
        };
        let store = Arc::new(Store {
            refused,
            kept: Mutex::new(Vec::new()),
        });
        let layer = DeadLetter {
            inner: Fails,
            letters: Letters {
                publisher: store.clone(),
                subject: Subject::new("dlq.set.w").unwrap(),
                handler: "set-w".into(),
            },
        };
        let mut msg = Message::new(&raw, raw.envelope());
        let outcome = layer.dispatch(&mut msg).await;
        let kept = store.kept.lock().unwrap().clone();
        (outcome, kept)
    }

    fn too_large(m: &OutboundMessage) -> Option<TransportError> {
        (!m.payload.is_empty()).then_some(TransportError::PayloadTooLarge { size: 2, max: 1 })
    }

    #[tokio::test]
    async fn a_letter_over_the_limit_is_stored_without_payload() {
        let (outcome, kept) = dead_letter(too_large).await;
        assert!(matches!(outcome, Outcome::DeadLettered { .. }), "{outcome:?}");
        let h = &kept[0].headers;
        assert!(kept[0].payload.is_empty());
        assert_eq!(h.get(DEAD_LETTER_PAYLOAD_OMITTED), Some("10"));
        assert_eq!(h.get("X-Tenant"), Some("acme"));
        assert_eq!(
            (h.get(DEAD_LETTER_STREAM), h.get(DEAD_LETTER_SEQUENCE)),
            (Some("DOCUMENT_EVENTS"), Some("7"))
        );
        // The original's stored time, to the nanosecond: with stream and sequence it names it.
        let stored: Timestamp = h.get(DEAD_LETTER_STORED).expect("stored").parse().expect("RFC 3339");
        assert_eq!(stored, self::stored());
    }

    #[tokio::test]
    async fn refused_headers_are_left_out_too() {
        let (outcome, kept) = dead_letter(|m| {
            too_large(m).or_else(|| {
                m.headers
                    .get("X-Tenant")
                    .map(|_| TransportError::Invalid("header".into()))
            })
        })
        .await;
        assert!(matches!(outcome, Outcome::DeadLettered { .. }), "{outcome:?}");
        let h = &kept[0].headers;
        assert_eq!(h.get("X-Tenant"), None);
        assert_eq!(h.get(DEAD_LETTER_HEADERS_OMITTED), Some("1"));
        assert_eq!(h.get(DEAD_LETTER_SEQUENCE), Some("7"));
    }

    #[tokio::test]
    async fn a_letter_never_storable_terminates_and_an_unreachable_store_defers() {
        let (outcome, kept) = dead_letter(|_| Some(TransportError::Invalid("subject".into()))).await;
        assert!(kept.is_empty());
        match outcome {
            Outcome::DeadLettered { reason, .. } => assert!(reason.contains("DOCUMENT_EVENTS #7"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let (outcome, _) = dead_letter(|_| {
            Some(TransportError::NoStream {
                subject: "dlq.set.w".into(),
            })
        })
        .await;
        assert!(
            matches!(
                outcome,
                Outcome::Deferred {
                    cause: Deferral::Unavailable,
                    ..
                }
            ),
            "{outcome:?}"
        );
    }
}
