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
//! [`Envelope::to_compact_headers`] (opt-in) writes only `Nats-Msg-Id` and `X-Event-Type` for a
//! root message (correlation = causation = message id): the rules below rebuild the same
//! identity from them.
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

use crate::headers::{self, Headers, Stamp, Text};
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
#[non_exhaustive]
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
    event_type: Option<Text>,
    event_version: Option<Text>,
    occurred_at: Timestamp,
    headers: Headers,
    payload: Bytes,
    derived: bool,
}

impl Envelope {
    /// A root message: fresh message id, equal correlation and causation ids.
    pub fn root(subject: Subject, payload: impl Into<Bytes>) -> Self {
        let (id, now) = fresh_id();
        Self::with_identity_at(Identity::root_from(id), subject, payload, now)
    }

    /// A message published while handling `parent`: same correlation id, `parent`'s message id as
    /// causation id.
    pub fn caused_by(parent: &Identity, subject: Subject, payload: impl Into<Bytes>) -> Self {
        let (id, now) = fresh_id();
        Self::with_identity_at(parent.child_with(id), subject, payload, now)
    }

    /// A message with an explicit identity.
    pub fn with_identity(identity: Identity, subject: Subject, payload: impl Into<Bytes>) -> Self {
        Self::with_identity_at(identity, subject, payload, Timestamp::now())
    }

    /// [`with_identity`](Self::with_identity) occurred at `now` (no clock read).
    pub(crate) fn with_identity_at(
        identity: Identity,
        subject: Subject,
        payload: impl Into<Bytes>,
        now: Timestamp,
    ) -> Self {
        Self {
            identity,
            subject,
            event_type: None,
            event_version: None,
            occurred_at: now,
            headers: Headers::new(),
            payload: payload.into(),
            derived: false,
        }
    }

    /// Sets the event type name and payload version.
    pub fn typed(mut self, event_type: impl Into<Arc<str>>, version: impl Into<Arc<str>>) -> Self {
        self.event_type = Some(Text::Shared(event_type.into()));
        self.event_version = Some(Text::Shared(version.into()));
        self
    }

    /// [`typed`](Self::typed) with names known at compile time: nothing is allocated.
    pub(crate) fn typed_static(mut self, event_type: &'static str, version: &'static str) -> Self {
        self.event_type = Some(Text::Static(event_type));
        self.event_version = Some(Text::Static(version));
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
    ///
    /// The identity headers are kept as values and formatted only when read as text (a NATS
    /// publish reads them; the embedded transport hands them to
    /// [`from_received`](Self::from_received) as they are).
    pub fn to_headers(&self) -> Headers {
        let stamp = Stamp::new(
            self.identity,
            self.event_type.clone(),
            self.event_version.clone(),
            self.occurred_at,
        );
        Headers::stamped(stamp, &self.headers)
    }

    /// [`to_headers`](Self::to_headers), the subject and the payload, the envelope consumed: a
    /// publish of an envelope it no longer needs moves them instead of sharing them (no reference
    /// count taken and dropped per publish, and a payload stored as it was encoded).
    pub(crate) fn into_wire(self) -> (Subject, Headers, Bytes) {
        let Self {
            identity,
            subject,
            event_type,
            event_version,
            occurred_at,
            headers,
            payload,
            derived: _,
        } = self;
        let stamp = Stamp::new(identity, event_type, event_version, occurred_at);
        (subject, Headers::stamped_owned(stamp, headers), payload)
    }

    /// The headers of the opt-in *compact identity*: a root message (correlation id and causation
    /// id both equal to its message id, as [`Envelope::root`] makes them) carries only
    /// `Nats-Msg-Id` and `X-Event-Type` (if known), then its extra headers; any other message
    /// carries the full [`to_headers`](Self::to_headers). What a receiver rebuilds is the same
    /// identity ([`from_received`](Self::from_received): no correlation or causation header
    /// means a root), with two differences: the version is read from the payload's `version`
    /// field only (no `X-Event-Version`), and the time is the one the stream stored the message
    /// (no `X-Occurred-At`). See [`OutboundMessage::compact`](crate::transport::OutboundMessage::compact).
    pub fn to_compact_headers(&self) -> Headers {
        let id = self.identity.message_id;
        if self.identity.correlation_id != id.into() || self.identity.causation_id != id.into() {
            return self.to_headers();
        }
        Headers::stamped(Stamp::compact(self.identity, self.event_type.clone()), &self.headers)
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
        Ok(Self::from_received_subject(subject, headers, payload, from))
    }

    /// [`from_received`](Self::from_received) for a subject already known to be valid (a
    /// transport that stored a [`Subject`]).
    ///
    /// Headers written by [`to_headers`](Self::to_headers) and not changed since carry the
    /// identity as values: they are taken as they are when reading their text back would give
    /// the same values (every id a real one, type and version without surrounding blanks, the
    /// time within the years RFC 3339 spells), so nothing is formatted or parsed.
    pub(crate) fn from_received_subject(
        subject: Subject,
        headers: &Headers,
        payload: Bytes,
        from: &ReceivedFrom,
    ) -> Self {
        match Self::from_stamped(subject, headers, payload) {
            Ok(envelope) => envelope,
            Err((subject, payload)) => Self::from_text(subject, headers, payload, from),
        }
    }

    /// The envelope of stamped headers ([`from_stamp`](Self::from_stamp)); subject and payload
    /// back if the headers must be read as text. Takes no [`ReceivedFrom`]: a stamp needs
    /// nothing derived, so a transport builds one only for the text path.
    pub(crate) fn from_stamped(subject: Subject, headers: &Headers, payload: Bytes) -> Result<Self, (Subject, Bytes)> {
        match headers.stamp() {
            Some(stamp) => Self::from_stamp(subject, stamp, headers, payload),
            None => Err((subject, payload)),
        }
    }

    /// [`from_received_subject`](Self::from_received_subject) reading the headers' text.
    pub(crate) fn from_text(subject: Subject, headers: &Headers, payload: Bytes, from: &ReceivedFrom) -> Self {
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
        let text = |name| headers.get(name).map(|v| Text::Shared(Arc::<str>::from(v.trim())));
        let occurred_at = headers
            .get(headers::OCCURRED_AT)
            .and_then(|v| v.trim().parse().ok())
            .or(from.published)
            .unwrap_or_else(Timestamp::now);
        let mut extra = Headers::new();
        for (n, v) in headers.iter().filter(|(n, _)| !headers::IDENTITY_HEADERS.contains(n)) {
            extra.push_received(n.to_owned(), v.to_owned());
        }
        Self {
            identity,
            subject,
            event_type: text(headers::EVENT_TYPE),
            event_version: text(headers::EVENT_VERSION),
            occurred_at,
            headers: extra,
            payload,
            derived,
        }
    }

    /// The envelope stamped headers describe, if reading their text would give exactly it;
    /// `Err` (with subject and payload back) sends the caller down the text path.
    fn from_stamp(
        subject: Subject,
        stamp: &Stamp,
        headers: &Headers,
        payload: Bytes,
    ) -> Result<Self, (Subject, Bytes)> {
        if stamp.compact {
            // Read as its text, as any transport delivers it (version and time not carried).
            return Err((subject, payload));
        }
        let id = &stamp.identity;
        // What `trim` would cut: whitespace at either end (one char each, not a scan).
        let untrimmed = |t: &Option<Text>| {
            t.as_ref().is_some_and(|t| {
                t.chars().next().is_some_and(char::is_whitespace)
                    || t.chars().next_back().is_some_and(char::is_whitespace)
            })
        };
        let year = stamp.occurred_at.as_offset_date_time().year();
        if !names_a_message(id.message_id.as_uuid())
            || !names_a_message(id.correlation_id.as_uuid())
            || !names_a_message(id.causation_id.as_uuid())
            || untrimmed(&stamp.event_type)
            || untrimmed(&stamp.event_version)
            || !(0..=9999).contains(&year)
        {
            return Err((subject, payload));
        }
        let extra = headers.unstamped();
        if extra.iter().any(|(n, _)| headers::IDENTITY_HEADERS.contains(&n)) {
            return Err((subject, payload));
        }
        Ok(Self {
            identity: *id,
            subject,
            event_type: stamp.event_type.clone(),
            event_version: stamp.event_version.clone(),
            occurred_at: stamp.occurred_at,
            headers: extra,
            payload,
            derived: false,
        })
    }
}

/// A fresh message id and the time it was made, from one read of the clock: the id's
/// millisecond is the message's occurrence time.
fn fresh_id() -> (MessageId, Timestamp) {
    let now = Timestamp::now();
    let millis = u64::try_from(now.unix_millis()).unwrap_or(0);
    (MessageId::from_uuid(crate::id::new_v7_at(millis)), now)
}

/// `false` for the nil and the max UUID: placeholders (a foreign publisher's unset field) that
/// would make unrelated messages one, not ids.
pub(crate) fn names_a_message(id: &Uuid) -> bool {
    !id.is_nil() && !id.is_max()
}

/// The id an identity header carries: a UUID that [names a message](names_a_message).
fn id_in(value: &str) -> Option<Uuid> {
    Uuid::try_parse(value.trim()).ok().filter(names_a_message)
}

/// `true` for the nil or the max UUID: a value that names no message.
fn is_placeholder(value: &str) -> bool {
    Uuid::try_parse(value.trim()).is_ok_and(|u| !names_a_message(&u))
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

    #[test]
    fn a_new_message_is_stamped_with_the_millisecond_of_its_id() {
        let subject = Subject::new("document.created").unwrap();
        let root = Envelope::root(subject.clone(), Bytes::new());
        let child = Envelope::caused_by(root.identity(), subject, Bytes::new());
        for env in [&root, &child] {
            let (secs, nanos) = env.message_id().as_uuid().get_timestamp().unwrap().to_unix();
            let id_millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert_eq!(i64::try_from(id_millis).unwrap(), env.occurred().unix_millis());
        }
        assert_eq!(child.identity().correlation_id, root.identity().correlation_id);
        assert_eq!(child.identity().causation_id.into_uuid(), root.message_id().into_uuid());
    }

    fn from_stream(seq: u64) -> ReceivedFrom {
        ReceivedFrom {
            stream: Some("DOCUMENT_EVENTS".into()),
            stream_sequence: Some(seq),
            published: Some(Timestamp::now()),
        }
    }

    /// A typed root with an extra header, and a message it caused.
    fn root_and_child() -> [Envelope; 2] {
        let root = Envelope::root(crate::subject!("document.created"), &b"{}"[..])
            .typed("DocumentCreated", "2.0")
            .header("X-Tenant", "acme")
            .unwrap();
        let child = Envelope::caused_by(root.identity(), crate::subject!("workflow.started"), &b"{}"[..]);
        [root, child]
    }

    #[test]
    fn headers_round_trip() {
        for env in root_and_child() {
            let h = env.to_headers();
            assert_eq!(h.get(headers::NATS_MSG_ID), Some(env.message_id().to_string().as_str()));
            let back =
                Envelope::from_received(env.subject().as_str(), &h, env.payload().clone(), &from_stream(1)).unwrap();
            assert_eq!(back, env);
            assert!(!back.is_derived());
        }
    }

    #[test]
    fn into_wire_writes_what_to_headers_writes() {
        for env in root_and_child() {
            let headers = env.to_headers();
            let (subject, moved, payload) = env.clone().into_wire();
            assert_eq!(subject, *env.subject());
            assert_eq!(payload, *env.payload());
            let text = |h: &Headers| h.iter().map(|(n, v)| (n.to_owned(), v.to_owned())).collect::<Vec<_>>();
            assert_eq!(text(&moved), text(&headers));
            let back = Envelope::from_received(subject.as_str(), &moved, payload, &from_stream(1)).unwrap();
            assert_eq!(back, env);
        }
    }

    /// The headers an envelope writes, rebuilt as plain text.
    fn as_text(h: &Headers) -> Headers {
        let mut text = Headers::new();
        for (n, v) in h.iter() {
            text.push_received(n.to_owned(), v.to_owned());
        }
        text
    }

    #[test]
    fn stamped_headers_read_like_text() {
        let env = Envelope::root(crate::subject!("document.created"), &b"{}"[..])
            .typed_static("DocumentCreated", "1.0")
            .header("X-Tenant", "acme")
            .unwrap();
        let stamped = env.to_headers();
        let text = as_text(&stamped);
        assert!(stamped.stamp().is_some() && text.stamp().is_none());
        assert_eq!(stamped, text);
        assert_eq!((stamped.len(), stamped.is_empty()), (8, false));
        assert_eq!(stamped.get(headers::MESSAGE_ID), text.get(headers::MESSAGE_ID));
        assert_eq!(stamped.get("X-Tenant"), Some("acme"));
        assert_eq!(
            stamped.get_all(headers::EVENT_TYPE).collect::<Vec<_>>(),
            ["DocumentCreated"]
        );
        assert_eq!(format!("{stamped:?}"), format!("{text:?}"));
        let from = from_stream(1);
        let fast = Envelope::from_received("document.created", &stamped, env.payload().clone(), &from).unwrap();
        let slow = Envelope::from_received("document.created", &text, env.payload().clone(), &from).unwrap();
        assert_eq!(fast, slow);
        assert_eq!(fast, env);
        // A write turns the stamp into text.
        let mut written = stamped.clone();
        written.insert("X-Other", "1").unwrap();
        assert!(written.stamp().is_none());
        assert_eq!(written.len(), 9);
        assert_eq!(
            written.get(headers::CORRELATION_ID),
            stamped.get(headers::CORRELATION_ID)
        );
        assert!(written.remove(headers::NATS_MSG_ID));
        assert_eq!(written.get(headers::NATS_MSG_ID), None);
    }

    #[test]
    fn stamps_whose_text_reads_otherwise_take_the_text_path() {
        let subject = || crate::subject!("a.b");
        let long_ago = Timestamp::from_unix_nanos(-63_000_000_000 * 1_000_000_000).unwrap();
        for env in [
            Envelope::with_identity(
                Identity::root_from(MessageId::from_uuid(Uuid::nil())),
                subject(),
                Bytes::new(),
            ),
            Envelope::with_identity(
                Identity::root_from(MessageId::from_uuid(Uuid::max())),
                subject(),
                Bytes::new(),
            ),
            Envelope::root(subject(), Bytes::new()).typed(" Padded ", "1.0 "),
            Envelope::root(subject(), Bytes::new()).occurred_at(long_ago),
        ] {
            let stamped = env.to_headers();
            let text = as_text(&stamped);
            assert_eq!(stamped, text);
            let from = from_stream(4);
            let fast = Envelope::from_received("a.b", &stamped, Bytes::new(), &from).unwrap();
            let slow = Envelope::from_received("a.b", &text, Bytes::new(), &from).unwrap();
            assert_eq!(fast, slow, "{env:?}");
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
        // Valid RFC 3339 whose UTC year has five digits: read as no time given (it panicked the
        // parse, and the consuming loop with it, before the twenty-second session).
        h.insert(headers::OCCURRED_AT, "9999-12-31T23:59:59-23:59").unwrap();
        let e = Envelope::from_received("a.b", &h, Bytes::new(), &from).unwrap();
        assert_eq!(e.occurred(), published);
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
