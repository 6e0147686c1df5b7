//! Domain events: versioned JSON payloads that decode from any known version and upcast to the
//! current one.
//!
//! An event's payload is a JSON object holding the event's fields beside a version tag, exactly
//! the shape of a `#[serde(tag = "version")]` enum with `#[serde(rename = "2.0")]` variants:
//!
//! ```json
//! {"version":"2.0","document_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","title":"Q3 report"}
//! ```
//!
//! Every version of an event is its own frozen struct implementing [`PayloadVersion`]; the current
//! one also implements [`Versioned`] (the version history, [`encode`](Versioned::encode) and
//! [`decode`](Versioned::decode)) and [`DomainEvent`] (the subject). Older versions become newer
//! ones through `From` impls, one per step of the chain. The `#[domain_event]` macro of the
//! `cim-integrate` facade writes all of this; the impls below are what it expands into, and they
//! can be written by hand:
//!
//! ```
//! use cim_integrate_runtime::event::{self, DecodeError, DomainEvent, PayloadVersion, Versioned};
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! struct DocumentCreatedV1 { title: String }
//!
//! #[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
//! struct DocumentCreated { title: String, pages: u32 }
//!
//! impl From<DocumentCreatedV1> for DocumentCreated {
//!     fn from(v1: DocumentCreatedV1) -> Self { Self { title: v1.title, pages: 0 } }
//! }
//!
//! impl PayloadVersion for DocumentCreatedV1 { const VERSION: &'static str = "1.0"; }
//! impl PayloadVersion for DocumentCreated { const VERSION: &'static str = "2.0"; }
//! impl Versioned for DocumentCreated {
//!     const TYPE_NAME: &'static str = "DocumentCreated";
//!     const VERSIONS: &'static [&'static str] = &["1.0", "2.0"];
//!     fn decode_version(version: &str, payload: &[u8]) -> Result<Option<Self>, DecodeError> {
//!         let oldest = event::decode_oldest::<DocumentCreatedV1>("1.0", Self::TYPE_NAME, version, payload)?;
//!         event::decode_step::<DocumentCreatedV1, Self>(oldest, "2.0", Self::TYPE_NAME, version, payload)
//!     }
//! }
//! impl DomainEvent for DocumentCreated { const SUBJECT: &'static str = "document.created"; }
//!
//! let current = DocumentCreated { title: "Q3".into(), pages: 12 };
//! assert_eq!(&current.encode()?[..], br#"{"version":"2.0","title":"Q3","pages":12}"#);
//! let upcast = DocumentCreated::decode(br#"{"version":"1.0","title":"Q3"}"#)?;
//! assert_eq!(upcast, DocumentCreated { title: "Q3".into(), pages: 0 });
//! let err = DocumentCreated::decode(br#"{"version":"9.0"}"#).unwrap_err();
//! assert_eq!(err.to_string(), r#"cannot decode `DocumentCreated`: unknown version "9.0"; known versions: "1.0", "2.0""#);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Decoding reads the payload twice: once with a small borrowing scanner that finds the version
//! tag ([`read_version_tag`]), then straight into the frozen struct of that version
//! ([`decode_as`]). This avoids serde's internally-tagged-enum path, which buffers the whole object
//! into an intermediate tree before deserialising it, so decoding an old version costs about the
//! same as decoding the current one plus its upcasts.

use crate::envelope::Envelope;
use crate::id::Identity;
use crate::subject::{self, Subject};
use bytes::Bytes;
use serde::Serialize;
use serde::de::{self, DeserializeOwned, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt;

/// The name of the JSON field holding the version: `"version"`.
pub const VERSION_TAG: &str = "version";

/// One wire shape of a versioned type, with its version tag: the current version of an event or
/// a frozen older one.
///
/// The version is `MAJOR.MINOR` in decimal (`"1.0"`, `"2.13"`); see [`parse_version`]. A frozen
/// version must never change: payloads of that version are stored in streams and must keep
/// decoding.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a version of an event",
    label = "not marked `#[domain_event(version = \"...\")]`",
    note = "mark each older version `#[domain_event(version = \"1.0\")]` and list it, oldest first, in the current version's `previous = [...]`"
)]
pub trait PayloadVersion: Serialize + DeserializeOwned {
    /// The version tag of this shape, e.g. `"1.0"`.
    const VERSION: &'static str;

    /// `visitor.visit::<Self>()`, for the `visit_versions` that `#[domain_event]` and `#[command]`
    /// write. Named as `<V as PayloadVersion>::__visit`, like `<V as PayloadVersion>::VERSION`
    /// beside it, so an entry of `previous` that is not a version is reported once. Never call
    /// or override it.
    #[doc(hidden)]
    fn __visit<Vis: VersionVisitor>(visitor: &mut Vis) {
        visitor.visit::<Self>();
    }
}

/// The current version of a type with a version history: it encodes as its own
/// [`VERSION`](PayloadVersion::VERSION) and decodes from every version in
/// [`VERSIONS`](Versioned::VERSIONS), upcasting older ones.
///
/// `#[domain_event]` implements it; a later `#[command]` shares it.
pub trait Versioned: PayloadVersion {
    /// The type name carried in the `X-Event-Type` header and in errors, e.g. `"DocumentCreated"`.
    const TYPE_NAME: &'static str;

    /// Every version this type decodes, oldest first; the last is
    /// [`VERSION`](PayloadVersion::VERSION).
    const VERSIONS: &'static [&'static str];

    /// Decodes `payload`, whose tag said `version`, into the current version: `Ok(None)` if
    /// `version` is not one of [`VERSIONS`](Versioned::VERSIONS).
    ///
    /// Implementations chain [`decode_oldest`] and [`decode_step`], one call per version, oldest
    /// first.
    fn decode_version(version: &str, payload: &[u8]) -> Result<Option<Self>, DecodeError>;

    /// Calls `visitor` once per version type, oldest first, ending with `Self`: the frozen
    /// structs of the history and the current one. `#[domain_event]` and `#[command]` list every
    /// version of `previous`; the default visits `Self` only (a hand-written impl may override
    /// it). The wire snapshots of `testing::snapshot` describe each version through it.
    fn visit_versions<Vis: VersionVisitor>(visitor: &mut Vis) {
        visitor.visit::<Self>();
    }

    /// Encodes the value as `{"version":"<VERSION>", ...fields}`.
    fn encode(&self) -> Result<Bytes, EncodeError> {
        encode_tagged(Self::TYPE_NAME, Self::VERSION, self)
    }

    /// Decodes a payload of any known version and upcasts it to the current one. Never panics:
    /// every malformed input is a [`DecodeError`].
    fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        // What this crate's encoder writes, read in one pass; anything else (or a failure) goes
        // the general way, which also gives every error.
        if let Some(version) = leading_version_tag(payload)
            && let Ok(Some(value)) = Self::decode_version(version, payload)
        {
            return Ok(value);
        }
        let version = read_version_tag(Self::TYPE_NAME, Self::VERSIONS, payload)?;
        match Self::decode_version(&version, payload)? {
            Some(value) => Ok(value),
            None => Err(DecodeError::UnknownVersion {
                type_name: Self::TYPE_NAME,
                version: version.into_owned(),
                known: Self::VERSIONS,
            }),
        }
    }
}

/// Something done with each version type of a [`Versioned`] history, through
/// [`Versioned::visit_versions`]: the types themselves, not values, so a generic method.
pub trait VersionVisitor {
    /// Called with one version type `V` (its tag is `V::VERSION`).
    fn visit<V: PayloadVersion>(&mut self);
}

/// An event published on a concrete subject: the current version of a `#[domain_event]` type.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a domain event",
    label = "not the current version of a `#[domain_event]`",
    note = "declare it with `#[domain_event(subject = \"document.created\", version = \"1.0\")]`; a frozen older version cannot be published, publish the current one"
)]
pub trait DomainEvent: Versioned + Send + Sync + 'static {
    /// The subject the event is published on, e.g. `"document.created"`: concrete, checked at
    /// compile time by [`subject::check_subject`], and `const` so that subscriptions can check
    /// their patterns against it with [`subject::pattern_matches`].
    const SUBJECT: &'static str;

    /// `true` only in the stub impl `#[domain_event]` emits beside a compile error in the
    /// declaration, so that uses of the type do not report more errors. Never set it yourself.
    #[doc(hidden)]
    const __STUB: bool = false;

    /// [`SUBJECT`](DomainEvent::SUBJECT) as a [`Subject`].
    fn subject() -> Subject {
        const {
            assert!(
                subject::is_valid_subject(Self::SUBJECT),
                "DomainEvent::SUBJECT must be a concrete subject such as `document.created`"
            )
        };
        // A literal: nothing allocated, no reference count taken by its clones.
        Subject::__from_checked_literal(Self::SUBJECT)
    }

    /// A root envelope (fresh identity) carrying the encoded event, typed with
    /// [`TYPE_NAME`](Versioned::TYPE_NAME) and [`VERSION`](PayloadVersion::VERSION).
    fn to_envelope(&self) -> Result<Envelope, EncodeError> {
        Ok(Envelope::root(Self::subject(), self.encode()?).typed_static(Self::TYPE_NAME, Self::VERSION))
    }

    /// An envelope for an event published while handling the message with identity `parent`:
    /// same correlation id, `parent`'s message id as causation id.
    fn to_envelope_caused_by(&self, parent: &Identity) -> Result<Envelope, EncodeError> {
        Ok(Envelope::caused_by(parent, Self::subject(), self.encode()?).typed_static(Self::TYPE_NAME, Self::VERSION))
    }

    /// Decodes the payload of a received envelope ([`Versioned::decode`]).
    fn from_envelope(envelope: &Envelope) -> Result<Self, DecodeError> {
        Self::decode(envelope.payload())
    }
}

/// [`DomainEvent`] where a handler takes the event: the same bound (every `DomainEvent` is one),
/// with a compile error that speaks of handlers when a type is not an event.
#[diagnostic::on_unimplemented(
    message = "a handler cannot take `{Self}`: it is not the current version of a `#[domain_event]`",
    label = "not an event a handler can take",
    note = "a handler takes the current version of an event, the one declared with a `subject` (it also receives the older versions, upcast); if `{Self}` is a frozen older version, take the current version that lists it in `previous`; if it is the context, it comes first: `(ctx: &Context, event: DocumentCreated)`"
)]
pub trait HandledEvent: DomainEvent {}

#[diagnostic::do_not_recommend]
impl<E: DomainEvent> HandledEvent for E {}

/// [`DomainEvent`] where an event is published: the same bound (every `DomainEvent` is one), with
/// a compile error that speaks of publishing when a type is not an event.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published: it is not the current version of a `#[domain_event]`",
    label = "not an event that can be published",
    note = "publish the current version of an event, the one declared with a `subject`; a frozen older version is only ever decoded, so convert it with `From` into the current one, and declare a new event with `#[domain_event(subject = \"domain.event\", version = \"1.0\")]`"
)]
pub trait PublishedEvent: DomainEvent {}

#[diagnostic::do_not_recommend]
impl<E: DomainEvent> PublishedEvent for E {}

/// A [`PublishedEvent`] as an object: how [`Context::publish`](crate::handler::Context::publish),
/// [`emit`](crate::handler::Context::emit) and
/// [`publish_root`](crate::handler::Context::publish_root) take their event. They are not
/// generic, so that passing something that is not the current version of an event is one compile
/// error, on the argument, instead of one more for the returned future at each `.await` and `?`.
/// Every `PublishedEvent` is `Publishable`; there is nothing to implement.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be published: it is not the current version of a `#[domain_event]`",
    label = "not an event that can be published",
    note = "publish the current version of an event, the one declared with a `subject`; a frozen older version is only ever decoded, so convert it with `From` into the current one, and declare a new event with `#[domain_event(subject = \"domain.event\", version = \"1.0\")]`"
)]
pub trait Publishable {
    /// The subject the event is published on ([`DomainEvent::subject`]).
    fn published_subject(&self) -> Subject;
    /// The event's type name ([`Versioned::TYPE_NAME`]).
    fn published_type(&self) -> &'static str;
    /// The event's wire version ([`PayloadVersion::VERSION`]).
    fn published_version(&self) -> &'static str;
    /// The payload ([`Versioned::encode`]).
    ///
    /// # Errors
    /// As [`Versioned::encode`].
    fn encode_published(&self) -> Result<Bytes, EncodeError>;
}

#[diagnostic::do_not_recommend]
impl<E: PublishedEvent> Publishable for E {
    fn published_subject(&self) -> Subject {
        E::subject()
    }

    fn published_type(&self) -> &'static str {
        E::TYPE_NAME
    }

    fn published_version(&self) -> &'static str {
        <E as PayloadVersion>::VERSION
    }

    fn encode_published(&self) -> Result<Bytes, EncodeError> {
        self.encode()
    }
}

/// Why a payload could not be decoded. Every variant names the type and, where one was read, the
/// version seen; a consumer treats all of them as permanent (dead-letter, do not retry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The payload is not a single well-formed JSON object.
    #[error("cannot decode `{type_name}`{}: invalid JSON: {reason}", seen(.version))]
    InvalidJson {
        /// The type being decoded.
        type_name: &'static str,
        /// The version tag, if one was read before the JSON went wrong.
        version: Option<String>,
        /// What the JSON parser said, with line and column.
        reason: String,
    },
    /// The object has no `"version"` field.
    #[error("cannot decode `{type_name}`: the payload has no `\"version\"` tag; known versions: {}", list(.known))]
    MissingVersion {
        /// The type being decoded.
        type_name: &'static str,
        /// The versions the type knows, oldest first.
        known: &'static [&'static str],
    },
    /// The `"version"` field is not a string (e.g. the number `2.0`).
    #[error("cannot decode `{type_name}`: the `\"version\"` tag is {found}, not a string; known versions: {}", list(.known))]
    NonStringVersion {
        /// The type being decoded.
        type_name: &'static str,
        /// What the tag holds instead, e.g. `the number 2.0`.
        found: String,
        /// The versions the type knows, oldest first.
        known: &'static [&'static str],
    },
    /// The version tag names no version this type knows (newer publisher, or a foreign payload).
    #[error("cannot decode `{type_name}`: unknown version {version:?}; known versions: {}", list(.known))]
    UnknownVersion {
        /// The type being decoded.
        type_name: &'static str,
        /// The version seen, cut to 64 characters.
        version: String,
        /// The versions the type knows, oldest first.
        known: &'static [&'static str],
    },
    /// The fields do not match the version the tag names (missing field, wrong type, ...).
    #[error("cannot decode `{type_name}` version {version:?}: {reason}")]
    InvalidFields {
        /// The type being decoded.
        type_name: &'static str,
        /// The version seen.
        version: String,
        /// What serde said, e.g. ``missing field `title` at line 1 column 20``.
        reason: String,
    },
}

impl DecodeError {
    /// The type that was being decoded.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::InvalidJson { type_name, .. }
            | Self::MissingVersion { type_name, .. }
            | Self::NonStringVersion { type_name, .. }
            | Self::UnknownVersion { type_name, .. }
            | Self::InvalidFields { type_name, .. } => type_name,
        }
    }

    /// The version tag seen, if the payload had a readable one.
    pub fn version(&self) -> Option<&str> {
        match self {
            Self::InvalidJson { version, .. } => version.as_deref(),
            Self::UnknownVersion { version, .. } | Self::InvalidFields { version, .. } => Some(version),
            Self::MissingVersion { .. } | Self::NonStringVersion { .. } => None,
        }
    }
}

fn seen(version: &Option<String>) -> String {
    match version {
        Some(v) => format!(" version {v:?}"),
        None => String::new(),
    }
}

fn list(known: &[&str]) -> String {
    let quoted: Vec<String> = known.iter().map(|v| format!("{v:?}")).collect();
    quoted.join(", ")
}

fn cut(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Why a value could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// serde refused the value (e.g. a map with non-string keys).
    #[error("cannot encode `{type_name}`: {reason}")]
    Serialize {
        /// The type being encoded.
        type_name: &'static str,
        /// What serde said.
        reason: String,
    },
    /// The value does not serialise as a JSON object, so there is nowhere to put the version tag.
    #[error("cannot encode `{type_name}`: it serialises as `{found}`, not a JSON object; an event needs named fields")]
    NotAnObject {
        /// The type being encoded.
        type_name: &'static str,
        /// The start of what it serialised as.
        found: String,
    },
}

/// Encodes `value` as `{"version":"<version>", ...fields}`, byte for byte what
/// `#[serde(tag = "version")]` writes. `value` must serialise as a JSON object.
///
/// ```
/// #[derive(serde::Serialize)]
/// struct Renamed { title: String }
/// let json = cim_integrate_runtime::event::encode_tagged("Renamed", "1.0", &Renamed { title: "x".into() })?;
/// assert_eq!(&json[..], br#"{"version":"1.0","title":"x"}"#);
/// # Ok::<(), cim_integrate_runtime::event::EncodeError>(())
/// ```
pub fn encode_tagged<T: Serialize + ?Sized>(
    type_name: &'static str,
    version: &str,
    value: &T,
) -> Result<Bytes, EncodeError> {
    // Written into this thread's scratch buffer, then copied into an allocation of exactly the
    // payload's size: one allocation per event, none of it spare capacity (a payload is kept for
    // as long as its stream keeps it). A nested call (a `Serialize` impl that encodes another
    // event), or one while the thread is being torn down, writes into a buffer of its own.
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    /// A scratch buffer grown past this (a large event) is not kept for the next one.
    const KEPT: usize = 64 * 1024;
    let own = || {
        let mut out = Vec::with_capacity(256);
        write_tagged(&mut out, type_name, version, value).map(|()| Bytes::from(out))
    };
    SCRATCH
        .try_with(|scratch| {
            let Ok(mut out) = scratch.try_borrow_mut() else {
                return own();
            };
            out.clear();
            let encoded = write_tagged(&mut out, type_name, version, value).map(|()| Bytes::copy_from_slice(&out));
            if out.capacity() > KEPT {
                *out = Vec::new();
            }
            encoded
        })
        .unwrap_or_else(|_| own())
}

/// Writes `{"version":"<version>", ...fields}` into `out` (empty).
fn write_tagged<T: Serialize + ?Sized>(
    out: &mut Vec<u8>,
    type_name: &'static str,
    version: &str,
    value: &T,
) -> Result<(), EncodeError> {
    let failed = |e: serde_json::Error| EncodeError::Serialize {
        type_name,
        reason: e.to_string(),
    };
    out.extend_from_slice(b"{\"version\":");
    crate::json::write_str(out, version).map_err(failed)?;
    let body = out.len();
    crate::json::to_writer(out, value).map_err(failed)?;
    if out.get(body) != Some(&b'{') {
        let found = String::from_utf8_lossy(&out[body..]);
        return Err(EncodeError::NotAnObject {
            type_name,
            found: cut(&found),
        });
    }
    if out.len() - body == 2 {
        // `{}`: the tag is the only field
        out.truncate(body);
        out.push(b'}');
    } else {
        out[body] = b',';
    }
    Ok(())
}

/// Encodes any version, e.g. a frozen older one (for fixtures and tests), as
/// `{"version":"<V::VERSION>", ...fields}`.
pub fn encode_version<V: PayloadVersion>(value: &V) -> Result<Bytes, EncodeError> {
    encode_tagged(std::any::type_name::<V>(), V::VERSION, value)
}

/// Reads the version tag of a payload without deserialising its fields: one pass over the JSON
/// that borrows the tag when it has no escapes. Checks that the payload is exactly one JSON
/// object with at most one `"version"` field holding a string.
///
/// `type_name` and `known` only go into errors.
pub fn read_version_tag<'a>(
    type_name: &'static str,
    known: &'static [&'static str],
    payload: &'a [u8],
) -> Result<Cow<'a, str>, DecodeError> {
    let mut tag = None;
    let mut de = serde_json::Deserializer::from_slice(payload);
    let scanned = TagScanner { tag: &mut tag }
        .deserialize(&mut de)
        .and_then(|()| de.end());
    let invalid = |tag: Option<Tag<'_>>, e: serde_json::Error| DecodeError::InvalidJson {
        type_name,
        version: match tag {
            Some(Tag::Str(v)) => Some(cut(&v)),
            _ => None,
        },
        reason: e.to_string(),
    };
    match (scanned, tag) {
        (Err(e), tag) => Err(invalid(tag, e)),
        (Ok(()), None) => Err(DecodeError::MissingVersion { type_name, known }),
        (Ok(()), Some(Tag::Other(found))) => Err(DecodeError::NonStringVersion {
            type_name,
            found,
            known,
        }),
        (Ok(()), Some(Tag::Str(version))) => Ok(version),
    }
}

/// The version tag of a payload shaped as [`encode_tagged`] writes it, when reading it there is
/// all [`read_version_tag`] would do: the payload starts with `{"version":"<tag>"`, the tag has
/// no escape, and nothing after it could be a second `version` key (no other `"version"`, no
/// escape at all, so no escaped key). Decoding the payload as the tag's version then checks the
/// rest of the JSON exactly as the general path does. `None`: use [`read_version_tag`].
fn leading_version_tag(payload: &[u8]) -> Option<&str> {
    const PREFIX: &[u8] = b"{\"version\":\"";
    let rest = payload.strip_prefix(PREFIX)?;
    let end = memchr::memchr2(b'"', b'\\', rest)?;
    if rest[end] != b'"' {
        return None;
    }
    let after = &rest[end + 1..];
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"version\""));
    if memchr::memchr(b'\\', after).is_some() || KEY.find(after).is_some() {
        return None;
    }
    std::str::from_utf8(&rest[..end]).ok()
}

/// Deserialises the whole payload as the frozen version `V` (the `"version"` field is ignored, as
/// unknown fields are). `version` is the tag already read, for errors.
pub fn decode_as<V: DeserializeOwned>(
    type_name: &'static str,
    version: &str,
    payload: &[u8],
) -> Result<V, DecodeError> {
    crate::json::from_slice(payload).map_err(|e| DecodeError::InvalidFields {
        type_name,
        version: cut(version),
        reason: e.to_string(),
    })
}

/// First link of a [`Versioned::decode_version`] chain: if the tag `seen` is `version` (the
/// oldest version's [`VERSION`](PayloadVersion::VERSION)), decodes the payload as that version
/// `V`; else `Ok(None)`.
///
/// The version is passed in, rather than read from a `V: PayloadVersion` bound, so that a type
/// missing its `#[domain_event]` is reported once, where generated code names
/// `<V as PayloadVersion>::VERSION`.
pub fn decode_oldest<V: DeserializeOwned>(
    version: &str,
    type_name: &'static str,
    seen: &str,
    payload: &[u8],
) -> Result<Option<V>, DecodeError> {
    if seen == version {
        decode_as::<V>(type_name, seen, payload).map(Some)
    } else {
        Ok(None)
    }
}

/// Next link of a [`Versioned::decode_version`] chain: upcasts what an older link decoded into
/// `Next`; or else, if the tag `seen` is `version` (`Next`'s), decodes the payload as `Next`; or
/// else `Ok(None)`.
pub fn decode_step<Prev, Next>(
    older: Option<Prev>,
    version: &str,
    type_name: &'static str,
    seen: &str,
    payload: &[u8],
) -> Result<Option<Next>, DecodeError>
where
    Prev: UpcastInto<Next>,
    Next: DeserializeOwned,
{
    match older {
        Some(prev) => Ok(Some(prev.upcast())),
        None => decode_oldest::<Next>(version, type_name, seen, payload),
    }
}

/// One step of an upcast chain: an older version that becomes the next newer one. Implemented for
/// every pair with a `From` impl; write `impl From<Older> for Newer` to provide it.
#[diagnostic::on_unimplemented(
    message = "no upcast from `{Self}` to `{Next}`",
    label = "`{Self}` cannot become `{Next}`",
    note = "every older version needs a way to become the next newer one: add `impl From<{Self}> for {Next}` that fills in what `{Next}` added"
)]
pub trait UpcastInto<Next> {
    /// Converts this version into the next one.
    fn upcast(self) -> Next;
}

#[diagnostic::do_not_recommend]
impl<Prev, Next: From<Prev>> UpcastInto<Next> for Prev {
    fn upcast(self) -> Next {
        Next::from(self)
    }
}

/// Parses a `MAJOR.MINOR` version (`"2.0"`, `"1.13"`): decimal numbers of at most 9 digits,
/// without signs or leading zeros. `None` for anything else. `const`, so that generated code can
/// check version order at compile time.
///
/// ```
/// use cim_integrate_runtime::event::parse_version;
/// assert_eq!(parse_version("2.13"), Some((2, 13)));
/// assert_eq!(parse_version("2"), None);
/// assert_eq!(parse_version("v2.0"), None);
/// assert_eq!(parse_version("02.0"), None);
/// ```
pub const fn parse_version(s: &str) -> Option<(u32, u32)> {
    let b = s.as_bytes();
    let mut dot = 0;
    while dot < b.len() && b[dot] != b'.' {
        dot += 1;
    }
    if dot == b.len() {
        return None;
    }
    match (number(b, 0, dot), number(b, dot + 1, b.len())) {
        (Some(major), Some(minor)) => Some((major, minor)),
        _ => None,
    }
}

const fn number(b: &[u8], start: usize, end: usize) -> Option<u32> {
    let len = end - start;
    if len == 0 || len > 9 || (len > 1 && b[start] == b'0') {
        return None;
    }
    let mut n = 0u32;
    let mut i = start;
    while i < end {
        if !b[i].is_ascii_digit() {
            return None;
        }
        n = n * 10 + (b[i] - b'0') as u32;
        i += 1;
    }
    Some(n)
}

/// Compares two versions numerically (`"1.9" < "1.10"`); `None` if either is not `MAJOR.MINOR`.
/// `const`, for the compile-time order checks of generated code.
pub const fn compare_versions(a: &str, b: &str) -> Option<Ordering> {
    match (parse_version(a), parse_version(b)) {
        (Some((a1, a2)), Some((b1, b2))) => Some(if a1 < b1 || (a1 == b1 && a2 < b2) {
            Ordering::Less
        } else if a1 == b1 && a2 == b2 {
            Ordering::Equal
        } else {
            Ordering::Greater
        }),
        _ => None,
    }
}

/// The compile-time order check of two consecutive versions of a `#[domain_event]`: fails the
/// `const` that calls it with `equal` when they are the same version and with `descending` when
/// `older` is not lower (or either is not `MAJOR.MINOR`). Not public API: generated code calls it,
/// so that each check expands to one call instead of two `panic!`s.
#[doc(hidden)]
#[track_caller]
pub const fn check_version_order(older: &str, newer: &str, equal: &str, descending: &str) {
    match compare_versions(older, newer) {
        Some(Ordering::Less) => {}
        Some(Ordering::Equal) => panic!("{}", equal),
        _ => panic!("{}", descending),
    }
}

/// The version tag as found: a string (borrowed when it has no escapes) or a description of what
/// was there instead.
enum Tag<'de> {
    Str(Cow<'de, str>),
    Other(String),
}

/// Walks one JSON object, keeping the `"version"` field and skipping the rest without building
/// anything. Stores the tag in `tag` as soon as it is read, so that an error later in the
/// document can still report it.
struct TagScanner<'s, 'de> {
    tag: &'s mut Option<Tag<'de>>,
}

impl<'de> DeserializeSeed<'de> for TagScanner<'_, 'de> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for TagScanner<'_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object with a \"version\" field")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(is_tag) = map.next_key_seed(IsTagKey)? {
            if !is_tag {
                map.next_value::<IgnoredAny>()?;
            } else if self.tag.is_some() {
                return Err(de::Error::duplicate_field(VERSION_TAG));
            } else {
                *self.tag = Some(map.next_value_seed(TagValue)?);
            }
        }
        Ok(())
    }
}

/// A map key, reduced to "is it `version`?" without allocating.
struct IsTagKey;

impl<'de> DeserializeSeed<'de> for IsTagKey {
    type Value = bool;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for IsTagKey {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<bool, E> {
        Ok(key == VERSION_TAG)
    }
}

/// The value of the `version` field.
struct TagValue;

impl<'de> DeserializeSeed<'de> for TagValue {
    type Value = Tag<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Tag<'de>, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TagValue {
    type Value = Tag<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a version string such as \"1.0\"")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Tag<'de>, E> {
        Ok(Tag::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Tag<'de>, E> {
        Ok(Tag::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Tag<'de>, E> {
        Ok(Tag::Str(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Tag<'de>, E> {
        Ok(Tag::Other(format!("the boolean {v}")))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Tag<'de>, E> {
        Ok(Tag::Other(format!("the number {v}")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Tag<'de>, E> {
        Ok(Tag::Other(format!("the number {v}")))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Tag<'de>, E> {
        Ok(Tag::Other(format!("the number {v:?}")))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Tag<'de>, E> {
        Ok(Tag::Other("null".to_owned()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Tag<'de>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Tag::Other("an array".to_owned()))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tag<'de>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Tag::Other("an object".to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A float in a payload comes back as the very value that was written, not one a unit in
    /// the last place away (serde_json's default float parser is not exact: without its
    /// `float_roundtrip` feature, `2.1844674407370954` read back as `2.184467440737095`; found by
    /// the `saga_record` fuzz target, twenty-fourth session).
    #[test]
    fn floats_come_back_exactly() {
        #[derive(Serialize, serde::Deserialize)]
        struct Price {
            amount: f64,
            rates: Vec<f64>,
        }
        let amount: f64 = "2.1844674407370954".parse().expect("float");
        let rates: Vec<f64> = ["1.1844674407370955e20", "0.1", "1e-300", "123456.789"]
            .iter()
            .map(|r| r.parse().expect("float"))
            .collect();
        let encoded = encode_tagged(
            "Price",
            "1.0",
            &Price {
                amount,
                rates: rates.clone(),
            },
        )
        .expect("encode");
        let back: Price = decode_as("Price", "1.0", &encoded).expect("decode");
        assert_eq!(
            back.amount.to_bits(),
            amount.to_bits(),
            "{}",
            String::from_utf8_lossy(&encoded)
        );
        assert_eq!(
            back.rates.iter().map(|r| r.to_bits()).collect::<Vec<_>>(),
            rates.iter().map(|r| r.to_bits()).collect::<Vec<_>>()
        );
    }
    use proptest::prelude::*;

    /// Serialises by encoding another event: a nested `encode_tagged` while the thread's scratch
    /// buffer is in use, which writes into a buffer of its own.
    struct Nesting(V1);

    impl Serialize for Nesting {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            use serde::ser::SerializeStruct;
            let inner = encode_tagged("V1", "1.0", &self.0).map_err(serde::ser::Error::custom)?;
            let mut st = s.serialize_struct("Nesting", 1)?;
            st.serialize_field("inner", std::str::from_utf8(&inner).map_err(serde::ser::Error::custom)?)?;
            st.end()
        }
    }

    #[test]
    fn an_encode_inside_an_encode_and_a_large_event_come_out_whole() {
        let nested = encode_tagged("Nesting", "2.0", &Nesting(V1 { title: "t".into() })).expect("encode");
        assert_eq!(
            &nested[..],
            br#"{"version":"2.0","inner":"{\"version\":\"1.0\",\"title\":\"t\"}"}"#
        );
        // Larger than the scratch buffer kept between events; the next one is still right.
        let big = V1 {
            title: "x".repeat(100_000),
        };
        assert_eq!(encode_tagged("V1", "1.0", &big).expect("encode").len(), 100_000 + 28);
        assert_eq!(
            &encode_tagged("V1", "1.0", &V1 { title: "y".into() }).expect("encode")[..],
            br#"{"version":"1.0","title":"y"}"#
        );
    }

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct V1 {
        title: String,
    }

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct V2 {
        title: String,
        pages: u32,
    }

    #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
    struct Current {
        title: String,
        pages: u32,
        tags: Vec<String>,
    }

    impl From<V1> for V2 {
        fn from(v: V1) -> Self {
            Self {
                title: v.title,
                pages: 0,
            }
        }
    }
    impl From<V2> for Current {
        fn from(v: V2) -> Self {
            Self {
                title: v.title,
                pages: v.pages,
                tags: Vec::new(),
            }
        }
    }
    impl PayloadVersion for V1 {
        const VERSION: &'static str = "1.0";
    }
    impl PayloadVersion for V2 {
        const VERSION: &'static str = "2.0";
    }
    impl PayloadVersion for Current {
        const VERSION: &'static str = "2.1";
    }
    impl Versioned for Current {
        const TYPE_NAME: &'static str = "Current";
        const VERSIONS: &'static [&'static str] = &["1.0", "2.0", "2.1"];
        fn decode_version(version: &str, payload: &[u8]) -> Result<Option<Self>, DecodeError> {
            let v = decode_oldest::<V1>(V1::VERSION, Self::TYPE_NAME, version, payload)?;
            let v = decode_step::<V1, V2>(v, V2::VERSION, Self::TYPE_NAME, version, payload)?;
            decode_step::<V2, Self>(v, Self::VERSION, Self::TYPE_NAME, version, payload)
        }
    }
    impl DomainEvent for Current {
        const SUBJECT: &'static str = "document.created";
    }

    #[test]
    fn encodes_like_serde_internal_tagging() {
        #[derive(serde::Serialize)]
        #[serde(tag = "version")]
        enum Reference<'a> {
            #[serde(rename = "2.1")]
            Current(&'a Current),
        }
        let c = Current {
            title: "a\"b".into(),
            pages: 3,
            tags: vec!["x".into()],
        };
        assert_eq!(
            c.encode().unwrap(),
            serde_json::to_vec(&Reference::Current(&c)).unwrap()
        );
        #[derive(serde::Serialize)]
        struct Empty {}
        assert_eq!(
            &encode_tagged("Empty", "1.0", &Empty {}).unwrap()[..],
            br#"{"version":"1.0"}"#
        );
        assert!(matches!(
            encode_tagged("N", "1.0", &5u8),
            Err(EncodeError::NotAnObject { .. })
        ));
        let keys = std::collections::HashMap::from([((1, 2), 3)]);
        assert!(matches!(
            encode_tagged("M", "1.0", &keys),
            Err(EncodeError::Serialize { .. })
        ));
    }

    #[test]
    fn decodes_every_version_and_upcasts() {
        let cur = Current::decode(br#"{"title":"t","version":"2.1","pages":2,"tags":["a"]}"#).unwrap();
        assert_eq!(
            cur,
            Current {
                title: "t".into(),
                pages: 2,
                tags: vec!["a".into()]
            }
        );
        let v2 = Current::decode(br#"{"version":"2.0","title":"t","pages":2}"#).unwrap();
        assert_eq!(
            v2,
            Current {
                title: "t".into(),
                pages: 2,
                tags: vec![]
            }
        );
        let v1 = Current::decode(br#"{"version":"1.\u0030","title":"t"}"#).unwrap();
        assert_eq!(
            v1,
            Current {
                title: "t".into(),
                pages: 0,
                tags: vec![]
            }
        );
    }

    #[test]
    fn typed_errors() {
        let err = |p: &[u8]| Current::decode(p).unwrap_err();
        assert!(matches!(err(b"{"), DecodeError::InvalidJson { version: None, .. }));
        assert!(matches!(err(b"[\"1.0\"]"), DecodeError::InvalidJson { .. }));
        assert!(matches!(
            err(br#"{"version":"1.0"} x"#),
            DecodeError::InvalidJson { .. }
        ));
        let e = err(br#"{"version":"2.0","x":tru}"#);
        assert_eq!(e.version(), Some("2.0"));
        assert!(
            e.to_string()
                .starts_with(r#"cannot decode `Current` version "2.0": invalid JSON"#),
            "{e}"
        );
        assert!(matches!(
            err(br#"{"version":"1.0","version":"1.0"}"#),
            DecodeError::InvalidJson { .. }
        ));
        assert_eq!(
            err(br#"{"title":"t"}"#).to_string(),
            r#"cannot decode `Current`: the payload has no `"version"` tag; known versions: "1.0", "2.0", "2.1""#
        );
        assert_eq!(
            err(br#"{"version":2.0}"#).to_string(),
            r#"cannot decode `Current`: the `"version"` tag is the number 2.0, not a string; known versions: "1.0", "2.0", "2.1""#
        );
        assert!(matches!(
            err(br#"{"version":{"a":[1]}}"#),
            DecodeError::NonStringVersion { .. }
        ));
        assert!(matches!(
            err(br#"{"version":"3.0"}"#),
            DecodeError::UnknownVersion { .. }
        ));
        let e = err(br#"{"version":"2.0","title":"t"}"#);
        assert_eq!(
            e.to_string(),
            r#"cannot decode `Current` version "2.0": missing field `pages` at line 1 column 29"#
        );
        assert_eq!((e.type_name(), e.version()), ("Current", Some("2.0")));
    }

    #[test]
    fn envelopes_are_typed() {
        let c = Current {
            title: "t".into(),
            pages: 1,
            tags: vec![],
        };
        let root = c.to_envelope().unwrap();
        assert_eq!(root.subject().as_str(), "document.created");
        assert_eq!(
            (root.event_type(), root.event_version()),
            (Some("Current"), Some("2.1"))
        );
        assert!(root.identity().is_root());
        let child = c.to_envelope_caused_by(root.identity()).unwrap();
        assert_eq!(child.correlation_id(), root.correlation_id());
        assert_eq!(Current::from_envelope(&child).unwrap(), c);
    }

    #[test]
    fn version_rules() {
        assert_eq!(compare_versions("1.9", "1.10"), Some(Ordering::Less));
        assert_eq!(compare_versions("2.0", "2.0"), Some(Ordering::Equal));
        assert_eq!(compare_versions("10.0", "9.99"), Some(Ordering::Greater));
        assert_eq!(compare_versions("1.0", "x"), None);
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1.0.0",
            "-1.0",
            "+1.0",
            "1.0 ",
            "1234567890.0",
            "١.٠",
        ] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
        assert_eq!(parse_version("999999999.0"), Some((999_999_999, 0)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = Current::decode(&payload);
        }

        #[test]
        fn arbitrary_objects_never_panic(
            version in prop_oneof![Just("\"1.0\"".to_owned()), Just("\"2.0\"".to_owned()), Just("\"2.1\"".to_owned()), "\\PC{0,8}"],
            rest in "\\PC{0,40}",
        ) {
            let payload = format!("{{\"version\":{version},{rest}");
            let _ = Current::decode(payload.as_bytes());
        }
    }
}
