//! [`Envelope`]: one message with its identity, as it travels.
//!
//! On the wire an envelope is a NATS message: its subject, its payload bytes (JSON for events),
//! and headers. [`Envelope::to_headers`] writes the identity headers:
//!
//! | header | value |
//! | --- | --- |
//! | `Nats-Msg-Id` | message id (JetStream de-duplication) |
//! | `X-Message-ID` | message id |
//! | `X-Correlation-ID` | correlation id |
//! | `X-Causation-ID` | causation id |
//! | `X-Event-Type` | event type name (if known) |
//! | `X-Event-Version` | payload version (if known) |
//! | `X-Occurred-At` | RFC 3339 |
//!
//! [`Envelope::from_received`] reads them back and never fails on missing or garbage headers,
//! because a message from another client must still be handled. The rules, in order:
//!
//! - message id: `X-Message-ID` if it is a UUID; else `Nats-Msg-Id` if it is a UUID; else, if
//!   `Nats-Msg-Id` is present but not a UUID, a UUID v5 derived from it (two messages the server
//!   treated as one keep one id); else a UUID v5 derived from the stream name and stream
//!   sequence, which every redelivery repeats; else (a core message outside any stream) a UUID v5
//!   derived from subject and payload. Derived ids are never random, so handler de-duplication
//!   stays stable across redeliveries. Their UUID version (5, never 7) marks them as derived.
//!   The nil UUID (`00000000-0000-0000-0000-000000000000`) and the max UUID (`ffffffff-...`) are
//!   placeholders (a foreign publisher's unset field), not ids: a header carrying one counts as
//!   absent, so unrelated messages carrying it are not taken for copies of one message.
//! - correlation id and causation id: the header if it is a UUID (not nil or max), else the
//!   message id (the message is treated as a root).
//! - event type and version: the header if present, else `None`.
//! - occurred at: the header if it is RFC 3339, else the time the stream stored the message, else
//!   the time it was received.
//!
//! [`Envelope::is_derived`] tells whether any identity field was derived rather than read.

use crate::headers::{self, Headers};
use crate::id::{CausationId, CorrelationId, Identity, MessageId, derived_uuid};
use crate::subject::{Subject, SubjectError};
use crate::timestamp::Timestamp;
use bytes::Bytes;
use std::sync::Arc;
use uuid::Uuid;

/// Namespace of the name-based (v5) ids derived for messages without identity headers (and of
/// every other derived id: see [`crate::id::derived_uuid`]).
pub use crate::id::DERIVED_ID_NAMESPACE;

/// Where a received message came from: what the transport knows beside headers and payload.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReceivedFrom {
    /// The stream that stored it, if any.
    pub stream: Option<Arc<str>>,
    /// Its sequence in that stream.
    pub stream_sequence: Option<u64>,
    /// When the stream stored it.
    pub published: Option<Timestamp>,
}

/// Why a received message cannot become an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// The subject is not valid under this crate's rules (e.g. a foreign publisher used `é`).
    #[error("received subject `{subject}` is not valid here: {error}")]
    InvalidSubject {
        /// The subject as received, cut to 128 characters.
        subject: String,
        /// What is wrong with it.
        error: SubjectError,
    },
}

/// One message: identity, subject, type and version, occurrence time, extra headers, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    identity: Identity,
    subject: Subject,
    event_type: Option<Arc<str>>,
    event_version: Option<Arc<str>>,
    occurred_at: Timestamp,
    headers: Headers,
    payload: Bytes,
    derived: bool,
}

impl Envelope {
    /// A root message: fresh message id, equal correlation and causation ids.
    pub fn root(subject: Subject, payload: impl Into<Bytes>) -> Self {
        Self::with_identity(Identity::root(), subject, payload)
    }

    /// A message published while handling `parent`: same correlation id, `parent`'s message id as
    /// causation id.
    pub fn caused_by(parent: &Identity, subject: Subject, payload: impl Into<Bytes>) -> Self {
        Self::with_identity(parent.child(), subject, payload)
    }

    /// A message with an explicit identity.
    pub fn with_identity(identity: Identity, subject: Subject, payload: impl Into<Bytes>) -> Self {
        Self {
            identity,
            subject,
            event_type: None,
            event_version: None,
            occurred_at: Timestamp::now(),
            headers: Headers::new(),
            payload: payload.into(),
            derived: false,
        }
    }

    /// Sets the event type name and payload version.
    pub fn typed(mut self, event_type: impl Into<Arc<str>>, version: impl Into<Arc<str>>) -> Self {
        self.event_type = Some(event_type.into());
        self.event_version = Some(version.into());
        self
    }

    /// Sets the occurrence time.
    pub fn occurred_at(mut self, at: Timestamp) -> Self {
        self.occurred_at = at;
        self
    }

    /// Adds an extra header. Identity header names are refused: the envelope owns them.
    pub fn header(mut self, name: &str, value: impl Into<String>) -> Result<Self, headers::HeaderError> {
        if headers::IDENTITY_HEADERS.contains(&name) {
            return Err(headers::HeaderError::InvalidName(format!(
                "{name} (an identity header, set by the envelope itself)"
            )));
        }
        self.headers.append(name, value)?;
        Ok(self)
    }

    /// The identity triple.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// The message id.
    pub fn message_id(&self) -> MessageId {
        self.identity.message_id
    }
    /// The correlation id.
    pub fn correlation_id(&self) -> CorrelationId {
        self.identity.correlation_id
    }
    /// The causation id.
    pub fn causation_id(&self) -> CausationId {
        self.identity.causation_id
    }
    /// The subject.
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
    /// The event type name, if known.
    pub fn event_type(&self) -> Option<&str> {
        self.event_type.as_deref()
    }
    /// The payload version, if known.
    pub fn event_version(&self) -> Option<&str> {
        self.event_version.as_deref()
    }
    /// When the event occurred.
    pub fn occurred(&self) -> Timestamp {
        self.occurred_at
    }
    /// Extra (non-identity) headers.
    pub fn extra_headers(&self) -> &Headers {
        &self.headers
    }
    /// The payload bytes.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }
    /// `true` if any identity field was derived because its header was missing or invalid.
    pub fn is_derived(&self) -> bool {
        self.derived
    }

    /// All headers for the wire: identity headers, then extra headers.
    pub fn to_headers(&self) -> Headers {
        let mut h = Headers::with_capacity(7 + self.headers.len());
        let id = self.identity.message_id.to_string();
        let mut put = |name: &str, value: String| h.push_received(name.to_owned(), value);
        put(headers::NATS_MSG_ID, id.clone());
        put(headers::MESSAGE_ID, id);
        put(headers::CORRELATION_ID, self.identity.correlation_id.to_string());
        put(headers::CAUSATION_ID, self.identity.causation_id.to_string());
        if let Some(t) = &self.event_type {
            put(headers::EVENT_TYPE, t.to_string());
        }
        if let Some(v) = &self.event_version {
            put(headers::EVENT_VERSION, v.to_string());
        }
        put(headers::OCCURRED_AT, self.occurred_at.to_rfc3339());
        for (n, v) in self.headers.iter() {
            h.push_received(n.to_owned(), v.to_owned());
        }
        h
    }

    /// Rebuilds an envelope from a received message. Missing or garbage identity headers are
    /// derived as the [module documentation](self) describes; only an invalid subject is an error.
    pub fn from_received(
        subject: &str,
        headers: &Headers,
        payload: Bytes,
        from: &ReceivedFrom,
    ) -> Result<Self, EnvelopeError> {
        let subject = Subject::new(subject).map_err(|error| EnvelopeError::InvalidSubject {
            subject: subject.chars().take(128).collect(),
            error,
        })?;
        let uuid_header = |name| headers.get(name).and_then(id_in);
        let mut derived = false;
        let message_id = match uuid_header(headers::MESSAGE_ID).or_else(|| uuid_header(headers::NATS_MSG_ID)) {
            Some(id) => MessageId::from_uuid(id),
            None => {
                derived = true;
                MessageId::from_uuid(derive_id(&subject, headers, &payload, from))
            }
        };
        let correlation_id = uuid_header(headers::CORRELATION_ID).map(CorrelationId::from_uuid);
        let causation_id = uuid_header(headers::CAUSATION_ID).map(CausationId::from_uuid);
        derived |= correlation_id.is_none() || causation_id.is_none();
        let identity = Identity {
            message_id,
            correlation_id: correlation_id.unwrap_or(message_id.into()),
            causation_id: causation_id.unwrap_or(message_id.into()),
        };
        let text = |name| headers.get(name).map(|v| Arc::<str>::from(v.trim()));
        let occurred_at = headers
            .get(headers::OCCURRED_AT)
            .and_then(|v| v.trim().parse().ok())
            .or(from.published)
            .unwrap_or_else(Timestamp::now);
        let mut extra = Headers::new();
        for (n, v) in headers.iter().filter(|(n, _)| !headers::IDENTITY_HEADERS.contains(n)) {
            extra.push_received(n.to_owned(), v.to_owned());
        }
        Ok(Self {
            identity,
            subject,
            event_type: text(headers::EVENT_TYPE),
            event_version: text(headers::EVENT_VERSION),
            occurred_at,
            headers: extra,
            payload,
            derived,
        })
    }
}

/// The id an identity header carries: a UUID, but neither the nil nor the max UUID, which are
/// placeholders (a foreign publisher's unset field) and would make unrelated messages one.
fn id_in(value: &str) -> Option<Uuid> {
    Uuid::try_parse(value.trim())
        .ok()
        .filter(|u| !u.is_nil() && !u.is_max())
}

/// `true` for the nil or the max UUID: a value that names no message.
fn is_placeholder(value: &str) -> bool {
    Uuid::try_parse(value.trim()).is_ok_and(|u| u.is_nil() || u.is_max())
}

/// The id of a foreign message without one (a wire contract: the formats are listed in
/// [`crate::id`]).
pub(crate) fn derive_id(subject: &Subject, headers: &Headers, payload: &[u8], from: &ReceivedFrom) -> Uuid {
    // A nil or max UUID names no message: as if there were no `Nats-Msg-Id`.
    if let Some(msg_id) = headers.get(headers::NATS_MSG_ID).filter(|v| !is_placeholder(v)) {
        return derived_uuid(&[b"nats-msg-id", msg_id.as_bytes()]);
    }
    if let (Some(stream), Some(seq)) = (&from.stream, from.stream_sequence) {
        return derived_uuid(&[b"stream", stream.as_bytes(), seq.to_string().as_bytes()]);
    }
    derived_uuid(&[b"core", subject.as_str().as_bytes(), payload])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn from_stream(seq: u64) -> ReceivedFrom {
        ReceivedFrom {
            stream: Some("DOCUMENT_EVENTS".into()),
            stream_sequence: Some(seq),
            published: Some(Timestamp::now()),
        }
    }

    #[test]
    fn headers_round_trip() {
        let root = Envelope::root(crate::subject!("document.created"), &b"{}"[..])
            .typed("DocumentCreated", "2.0")
            .header("X-Tenant", "acme")
            .unwrap();
        let child = Envelope::caused_by(root.identity(), crate::subject!("workflow.started"), &b"{}"[..]);
        for env in [root, child] {
            let h = env.to_headers();
            assert_eq!(h.get(headers::NATS_MSG_ID), Some(env.message_id().to_string().as_str()));
            let back =
                Envelope::from_received(env.subject().as_str(), &h, env.payload().clone(), &from_stream(1)).unwrap();
            assert_eq!(back, env);
            assert!(!back.is_derived());
        }
    }

    #[test]
    fn identity_headers_cannot_be_overridden() {
        let e = Envelope::root(crate::subject!("a.b"), Bytes::new()).header(headers::CORRELATION_ID, "x");
        assert!(e.is_err());
    }

    #[test]
    fn missing_headers_derive_stable_ids() {
        let h = Headers::new();
        let a = Envelope::from_received("document.created", &h, Bytes::from_static(b"{}"), &from_stream(7)).unwrap();
        let b = Envelope::from_received("document.created", &h, Bytes::from_static(b"{}"), &from_stream(7)).unwrap();
        let c = Envelope::from_received("document.created", &h, Bytes::from_static(b"{}"), &from_stream(8)).unwrap();
        assert!(a.is_derived());
        assert_eq!(a.message_id(), b.message_id());
        assert_ne!(a.message_id(), c.message_id());
        assert!(a.identity().is_root());
        assert_eq!(a.message_id().as_uuid().get_version_num(), 5);
        assert_eq!(a.event_type(), None);
    }

    #[test]
    fn foreign_msg_id_is_hashed_not_randomised() {
        let mut h = Headers::new();
        h.insert(headers::NATS_MSG_ID, "order-42").unwrap();
        let a = Envelope::from_received("a.b", &h, Bytes::new(), &from_stream(1)).unwrap();
        let b = Envelope::from_received("a.b", &h, Bytes::new(), &from_stream(2)).unwrap();
        assert_eq!(a.message_id(), b.message_id());
    }

    #[test]
    fn garbage_headers_give_defined_results() {
        let mut h = Headers::new();
        h.insert(headers::MESSAGE_ID, "not-a-uuid").unwrap();
        h.insert(headers::CORRELATION_ID, "").unwrap();
        h.insert(headers::OCCURRED_AT, "yesterday").unwrap();
        let published = Timestamp::from_unix_nanos(1_700_000_000_000_000_000).unwrap();
        let from = ReceivedFrom {
            published: Some(published),
            ..from_stream(3)
        };
        let e = Envelope::from_received("a.b", &h, Bytes::new(), &from).unwrap();
        assert!(e.is_derived());
        assert_eq!(e.occurred(), published);
        assert_eq!(e.correlation_id().into_uuid(), e.message_id().into_uuid());
    }

    #[test]
    fn nil_and_max_ids_count_as_absent() {
        for placeholder in [Uuid::nil(), Uuid::max()] {
            let mut h = Headers::new();
            h.insert(headers::MESSAGE_ID, placeholder.to_string()).unwrap();
            h.insert(headers::NATS_MSG_ID, placeholder.to_string()).unwrap();
            h.insert(headers::CORRELATION_ID, placeholder.to_string()).unwrap();
            let a = Envelope::from_received("a.b", &h, Bytes::new(), &from_stream(1)).unwrap();
            let b = Envelope::from_received("a.b", &h, Bytes::new(), &from_stream(2)).unwrap();
            assert!(a.is_derived());
            assert_ne!(
                a.message_id(),
                b.message_id(),
                "{placeholder}: two stored messages, two ids"
            );
            assert_ne!(a.message_id().into_uuid(), placeholder);
            assert_eq!(a.correlation_id().into_uuid(), a.message_id().into_uuid());
            let none = Envelope::from_received("a.b", &Headers::new(), Bytes::new(), &from_stream(1)).unwrap();
            assert_eq!(
                a.message_id(),
                none.message_id(),
                "derived as for a message without an id"
            );
        }
    }

    #[test]
    fn invalid_subject_is_an_error() {
        let e = Envelope::from_received("dokument.créé", &Headers::new(), Bytes::new(), &ReceivedFrom::default());
        assert!(matches!(e, Err(EnvelopeError::InvalidSubject { .. })));
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic(
            subject in "[a-z.*> ]{0,12}",
            pairs in proptest::collection::vec(
                (prop_oneof![Just(headers::MESSAGE_ID.to_owned()), Just(headers::NATS_MSG_ID.to_owned()),
                    Just(headers::CORRELATION_ID.to_owned()), Just(headers::OCCURRED_AT.to_owned()), "[A-Za-z-]{1,8}"],
                 "\\PC{0,40}"), 0..6),
            payload in proptest::collection::vec(any::<u8>(), 0..64),
            seq in proptest::option::of(any::<u64>()),
        ) {
            let mut h = Headers::new();
            for (n, v) in pairs { h.push_received(n, v); }
            let from = ReceivedFrom { stream: seq.map(|_| "S".into()), stream_sequence: seq, published: None };
            let first = Envelope::from_received(&subject, &h, Bytes::from(payload.clone()), &from);
            let again = Envelope::from_received(&subject, &h, Bytes::from(payload), &from);
            match (first, again) {
                (Ok(a), Ok(b)) => prop_assert_eq!(a.message_id(), b.message_id()),
                (Err(a), Err(b)) => prop_assert_eq!(a, b),
                _ => prop_assert!(false, "derivation is not deterministic"),
            }
        }
    }
}
