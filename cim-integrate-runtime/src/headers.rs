//! Message headers, independent of any transport, and the names of the identity headers.

use crate::id::Identity;
use crate::timestamp::Timestamp;

/// JetStream de-duplication id; equals the message id.
pub const NATS_MSG_ID: &str = "Nats-Msg-Id";
/// The message id (bare UUID).
pub const MESSAGE_ID: &str = "X-Message-ID";
/// The correlation id (bare UUID).
pub const CORRELATION_ID: &str = "X-Correlation-ID";
/// The causation id (bare UUID).
pub const CAUSATION_ID: &str = "X-Causation-ID";
/// The event (or command) type name, e.g. `DocumentCreated`.
pub const EVENT_TYPE: &str = "X-Event-Type";
/// The payload's version, e.g. `2.0`.
pub const EVENT_VERSION: &str = "X-Event-Version";
/// When the event occurred, RFC 3339.
pub const OCCURRED_AT: &str = "X-Occurred-At";

/// The identity headers that [`Envelope`](crate::Envelope) writes itself. Extra headers with
/// these names are ignored when an envelope is built.
pub const IDENTITY_HEADERS: [&str; 7] = [
    NATS_MSG_ID,
    MESSAGE_ID,
    CORRELATION_ID,
    CAUSATION_ID,
    EVENT_TYPE,
    EVENT_VERSION,
    OCCURRED_AT,
];

/// The place of `name` in [`IDENTITY_HEADERS`], if it is an identity header (names compare
/// exactly, as NATS compares them).
#[cfg_attr(not(feature = "nats"), allow(dead_code))] // read by the NATS transport
pub(crate) fn identity_index(name: &str) -> Option<usize> {
    Some(match name {
        NATS_MSG_ID => 0,
        MESSAGE_ID => 1,
        CORRELATION_ID => 2,
        CAUSATION_ID => 3,
        EVENT_TYPE => 4,
        EVENT_VERSION => 5,
        OCCURRED_AT => 6,
        _ => return None,
    })
}

/// Why a header name or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// Names are non-empty printable ASCII without `:` or whitespace.
    #[error("invalid header name `{0}`: use printable ASCII without `:` or spaces")]
    InvalidName(String),
    /// Values may not contain CR or LF (they would end the header block on the wire).
    #[error("invalid value for header `{0}`: values may not contain CR or LF")]
    InvalidValue(String),
}

/// An ordered multimap of header names to values. Names compare exactly, as NATS does.
///
/// Cloning is cheap (the entries are shared and copied on the first write), because every
/// delivery and envelope carries a copy.
///
/// Headers written by [`Envelope::to_headers`](crate::Envelope::to_headers) keep the identity
/// headers as values (ids, type, version, time) and render them as text only when a header is
/// read as text: the embedded transport hands them to [`Envelope::from_received`](crate::Envelope::from_received)
/// without formatting or parsing a string. They read, compare and iterate exactly like the same
/// headers written as text.
#[derive(Clone, Default)]
pub struct Headers {
    /// Identity headers kept as values: logically before `entries`. `None` once anything was
    /// written (the headers are then all text).
    stamp: Option<std::sync::Arc<Stamp>>,
    entries: List,
}

/// The identity headers of an envelope as values, rendered as text on first demand, in the
/// order [`Envelope::to_headers`](crate::Envelope::to_headers) documents.
pub(crate) struct Stamp {
    pub(crate) identity: Identity,
    pub(crate) event_type: Option<Text>,
    pub(crate) event_version: Option<Text>,
    pub(crate) occurred_at: Timestamp,
    /// The compact identity of a root message: only `Nats-Msg-Id` and `X-Event-Type` are
    /// headers ([`Envelope::to_compact_headers`](crate::Envelope::to_compact_headers)).
    pub(crate) compact: bool,
    rendered: std::sync::OnceLock<Vec<(String, String)>>,
}

impl Stamp {
    pub(crate) fn new(
        identity: Identity,
        event_type: Option<Text>,
        event_version: Option<Text>,
        occurred_at: Timestamp,
    ) -> Self {
        Self {
            identity,
            event_type,
            event_version,
            occurred_at,
            compact: false,
            rendered: std::sync::OnceLock::new(),
        }
    }

    /// The compact identity of a root message: `Nats-Msg-Id` and `X-Event-Type` only (its time
    /// is not carried).
    pub(crate) fn compact(identity: Identity, event_type: Option<Text>) -> Self {
        Self {
            compact: true,
            ..Self::new(identity, event_type, None, Timestamp::UNIX_EPOCH)
        }
    }

    /// The headers the stamp stands for, in order, as values: the one list that rendering,
    /// counting, sizing and the NATS publish all read.
    pub(crate) fn parts(&self) -> impl Iterator<Item = (&'static str, Part<'_>)> {
        let full = !self.compact;
        let id = Part::Id(*self.identity.message_id.as_uuid());
        [
            Some((NATS_MSG_ID, id)),
            full.then_some((MESSAGE_ID, id)),
            full.then(|| (CORRELATION_ID, Part::Id(*self.identity.correlation_id.as_uuid()))),
            full.then(|| (CAUSATION_ID, Part::Id(*self.identity.causation_id.as_uuid()))),
            self.event_type.as_ref().map(|t| (EVENT_TYPE, Part::Text(t))),
            self.event_version.as_ref().map(|v| (EVENT_VERSION, Part::Text(v))),
            full.then_some((OCCURRED_AT, Part::Time(self.occurred_at))),
        ]
        .into_iter()
        .flatten()
    }

    /// The identity headers as text.
    fn rendered(&self) -> &[(String, String)] {
        self.rendered
            .get_or_init(|| self.parts().map(|(n, p)| (n.to_owned(), p.render())).collect())
    }

    /// How many headers the stamp renders.
    fn count(&self) -> usize {
        self.parts().count()
    }

    /// An upper bound of the rendered headers' wire size (`name: value\r\n` each), without
    /// rendering them.
    fn max_wire_len(&self) -> usize {
        self.parts().map(|(n, p)| n.len() + p.max_len() + 4).sum()
    }
}

/// One identity header of a [`Stamp`], as a value.
#[derive(Clone, Copy)]
pub(crate) enum Part<'a> {
    /// An id (hyphenated, lower case).
    Id(uuid::Uuid),
    /// A type or version name.
    Text(&'a Text),
    /// A time (RFC 3339).
    Time(Timestamp),
}

impl Part<'_> {
    /// The header's text.
    pub(crate) fn render(&self) -> String {
        match self {
            Self::Id(id) => String::from(id.hyphenated().encode_lower(&mut [0u8; uuid::fmt::Hyphenated::LENGTH])),
            Self::Text(t) => String::from(&***t),
            Self::Time(t) => t.to_rfc3339(),
        }
    }

    /// The longest the text can be.
    fn max_len(&self) -> usize {
        match self {
            Self::Id(_) => uuid::fmt::Hyphenated::LENGTH,
            Self::Text(t) => t.len(),
            // `9999-12-31T23:59:59.999999999Z`
            Self::Time(_) => 30,
        }
    }
}

/// A header value that is usually a `'static` name (an event type, a version), or a subject's
/// text: shared without allocating, and a literal without a reference count. Compared, ordered and
/// hashed as the text, whichever variant it is.
#[derive(Clone)]
pub(crate) enum Text {
    Static(&'static str),
    Shared(std::sync::Arc<str>),
}

impl std::ops::Deref for Text {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Self::Static(s) => s,
            Self::Shared(s) => s,
        }
    }
}

impl PartialEq for Text {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl Eq for Text {}

impl std::hash::Hash for Text {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (**self).hash(state);
    }
}

impl PartialOrd for Text {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Text {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (**self).cmp(&**other)
    }
}

impl std::fmt::Display for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self)
    }
}

impl std::fmt::Debug for Text {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&**self, f)
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        struct Entries<'a>(&'a Headers);
        impl std::fmt::Debug for Entries<'_> {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_list().entries(self.0.iter()).finish()
            }
        }
        f.debug_struct("Headers").field("entries", &Entries(self)).finish()
    }
}

impl PartialEq for Headers {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Headers {}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn valid_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// The text headers of [`Headers`]: shared, copied on the first write. Empty is `None`, so that
/// the empty headers of most deliveries and envelopes allocate nothing and touch no reference
/// count (a count shared by every thread's empty headers would be a cache line that all of them
/// write, for every message).
#[derive(Clone, Default)]
struct List(Option<std::sync::Arc<Vec<(String, String)>>>);

impl List {
    fn of(entries: Vec<(String, String)>) -> Self {
        Self((!entries.is_empty()).then(|| std::sync::Arc::new(entries)))
    }

    /// The entries to write (copied first if shared).
    fn make_mut(&mut self) -> &mut Vec<(String, String)> {
        std::sync::Arc::make_mut(self.0.get_or_insert_with(Default::default))
    }
}

impl std::ops::Deref for List {
    type Target = [(String, String)];
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// The identity headers of `stamp` (as values), then `extra`'s headers.
    pub(crate) fn stamped(stamp: Stamp, extra: &Headers) -> Self {
        Self::stamped_owned(stamp, extra.clone())
    }

    /// [`stamped`](Self::stamped), taking `extra` (no reference count taken on its entries).
    pub(crate) fn stamped_owned(stamp: Stamp, mut extra: Headers) -> Self {
        extra.materialize();
        Self {
            stamp: Some(std::sync::Arc::new(stamp)),
            entries: extra.entries,
        }
    }

    /// The identity headers kept as values, if these headers were written by an envelope and
    /// not changed since.
    pub(crate) fn stamp(&self) -> Option<&Stamp> {
        self.stamp.as_deref()
    }

    /// The headers after the stamp's (all of them without a stamp), without a stamp.
    pub(crate) fn unstamped(&self) -> Self {
        Self {
            stamp: None,
            entries: self.entries.clone(),
        }
    }

    /// An upper bound of the headers' wire size (`name: value\r\n` each) that renders nothing;
    /// exact without a stamp.
    pub(crate) fn max_wire_len(&self) -> usize {
        self.stamp.as_ref().map_or(0, |s| s.max_wire_len())
            + self.entries.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>()
    }

    /// Turns stamped identity headers into text entries, before a write.
    fn materialize(&mut self) {
        if let Some(stamp) = self.stamp.take() {
            let mut all = stamp.rendered().to_vec();
            all.extend(self.entries.iter().cloned());
            self.entries = List::of(all);
        }
    }

    /// Sets `name` (a header that is not an identity header, with a valid value: the caller's
    /// promise) to `value` among the headers after the stamp, keeping the stamp unrendered.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) fn put_unstamped(&mut self, name: &'static str, value: String) {
        let entries = self.entries.make_mut();
        entries.retain(|(n, _)| n != name);
        entries.push((name.to_owned(), value));
    }

    /// Removes `name` (not an identity header) from the headers after the stamp.
    #[cfg_attr(not(feature = "otel"), allow(dead_code))]
    pub(crate) fn drop_unstamped(&mut self, name: &'static str) {
        if self.entries.iter().any(|(n, _)| n == name) {
            self.entries.make_mut().retain(|(n, _)| n != name);
        }
    }

    /// Sets `name` to `value`, replacing every earlier value of that name.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) -> Result<(), HeaderError> {
        let value = value.into();
        Self::check(name, &value)?;
        self.materialize();
        let entries = self.entries.make_mut();
        entries.retain(|(n, _)| n != name);
        entries.push((name.to_owned(), value));
        Ok(())
    }

    /// Adds a value for `name`, keeping earlier ones.
    pub fn append(&mut self, name: &str, value: impl Into<String>) -> Result<(), HeaderError> {
        let value = value.into();
        Self::check(name, &value)?;
        self.materialize();
        self.entries.make_mut().push((name.to_owned(), value));
        Ok(())
    }

    fn check(name: &str, value: &str) -> Result<(), HeaderError> {
        if !valid_name(name) {
            return Err(HeaderError::InvalidName(name.chars().take(64).collect()));
        }
        if !valid_value(value) {
            return Err(HeaderError::InvalidValue(name.to_owned()));
        }
        Ok(())
    }

    /// Room for `additional` received headers (one allocation instead of a growing list).
    #[cfg_attr(not(feature = "nats"), allow(dead_code))] // read by the NATS transport
    pub(crate) fn reserve_received(&mut self, additional: usize) {
        self.materialize();
        self.entries.make_mut().reserve(additional);
    }

    /// Appends without validation, for headers received from a transport (already framed).
    pub(crate) fn push_received(&mut self, name: String, value: String) {
        self.materialize();
        self.entries.make_mut().push((name, value));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        if let Some(stamp) = &self.stamp
            && IDENTITY_HEADERS.contains(&name)
        {
            // A stamp renders every identity header there is; the entries hold none.
            return stamp
                .rendered()
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str());
        }
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.iter().filter(move |(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Removes every value of `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        if !self.iter().any(|(n, _)| n == name) {
            return false;
        }
        self.materialize();
        self.entries.make_mut().retain(|(n, _)| n != name);
        true
    }

    /// All (name, value) pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        let stamped = self.stamp.as_ref().map_or(&[][..], |s| s.rendered());
        stamped
            .iter()
            .chain(self.entries.iter())
            .map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of (name, value) pairs.
    pub fn len(&self) -> usize {
        self.stamp.as_ref().map_or(0, |s| s.count()) + self.entries.len()
    }

    /// `true` if there are no headers.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<'a> IntoIterator for &'a Headers {
    type Item = (&'a str, &'a str);
    type IntoIter = Box<dyn Iterator<Item = (&'a str, &'a str)> + 'a>;
    fn into_iter(self) -> Self::IntoIter {
        Box::new(self.iter())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_index_is_the_place_in_identity_headers() {
        for (i, name) in IDENTITY_HEADERS.iter().enumerate() {
            assert_eq!(identity_index(name), Some(i));
        }
        assert_eq!(identity_index("x-message-id"), None);
        assert_eq!(identity_index("X-Tenant"), None);
    }

    #[test]
    fn insert_replaces_append_keeps() {
        let mut h = Headers::new();
        h.insert("A", "1").unwrap();
        h.append("A", "2").unwrap();
        assert_eq!(h.get_all("A").collect::<Vec<_>>(), ["1", "2"]);
        h.insert("A", "3").unwrap();
        assert_eq!(h.get_all("A").collect::<Vec<_>>(), ["3"]);
        assert!(h.remove("A"));
        assert!(h.is_empty());
    }

    #[test]
    fn refuses_what_would_break_framing() {
        let mut h = Headers::new();
        assert!(matches!(h.insert("Bad Name", "x"), Err(HeaderError::InvalidName(_))));
        assert!(matches!(h.insert("A:B", "x"), Err(HeaderError::InvalidName(_))));
        assert!(matches!(h.insert("", "x"), Err(HeaderError::InvalidName(_))));
        assert!(matches!(h.insert("X", "a\r\nB: c"), Err(HeaderError::InvalidValue(_))));
        assert!(h.is_empty());
    }
}
