//! Typed identifiers: the message identity triple and the [`typed_id!`](crate::typed_id!) macro
//! for domain ids such as `DocumentId` and `UserId`.
//!
//! Every id is a UUID. Fresh ids are version 7 (time-ordered). Derived ids (the same inputs
//! always give the same id, so a re-sent message is a duplicate JetStream drops) all come from
//! one function, [`derived_uuid`]: a name-based (v5) UUID in [`DERIVED_ID_NAMESPACE`] over its
//! parts joined by NUL bytes. [`Identity::derived_child`] reshapes such a UUID into the v7 layout.
//!
//! # Derived id formats
//!
//! These are persisted (in process records and saga records) or on the wire (`Nats-Msg-Id`), so
//! they never change; the unit test `derived_ids_are_golden` pins them.
//!
//! | id | parts given to [`derived_uuid`] | layout |
//! | --- | --- | --- |
//! | message published by a handler through its context ([`Identity::stable_child`]) | `{parent message id}`, `{scope}`, `{n}` | v7, timestamp = the one in the parent's id (v7, v6, v1), else the Unix epoch |
//! | process outboxes, saga lifecycle events ([`Identity::derived_child`]; saga: scope `saga/{saga}/{id}`, `n` = event number) | `{parent message id}`, `{scope}`, `{n}` | v7, timestamp = the parent's occurrence (saga: its start); both are stored in the record with the queued message |
//! | a foreign message's id from its `Nats-Msg-Id` ([`crate::envelope`]) | `nats-msg-id`, `{Nats-Msg-Id}` | v5 |
//! | a foreign message's id from its stream position | `stream`, `{stream}`, `{sequence}` | v5 |
//! | a foreign core-NATS message's id | `core`, `{subject}`, `{payload bytes}` | v5 |
//! | a process deadline firing (its message id) | `{process}`, `{storage key}`, `deadline:{name}:{due millis}` | v5 |
//! | an aggregation's outcome | `aggregation`, `{aggregation}`, `{key}` | v5 |
//! | a dead letter (its `Nats-Msg-Id`) | `dlq`, `{set}.{handler}`, `{stream}`, `{sequence}` | v5 |

use sha1::{Digest, Sha1};
use std::fmt;
use uuid::Uuid;

/// Namespace of every derived (name-based, v5) id: see [`derived_uuid`].
pub const DERIVED_ID_NAMESPACE: Uuid = Uuid::from_u128(0x6b1d_4c2a_8f3e_5d70_9a61_c0de_0000_0001);

/// A fresh, time-ordered id (UUID v7, RFC 9562): the Unix time in milliseconds, a 12-bit counter
/// that keeps the ids made by one thread in order within a millisecond (method 1 of the RFC,
/// started at a random value below 2048 each millisecond), and 62 random bits.
///
/// The random bits come from a generator per thread (wyrand), seeded once per thread from the
/// operating system's randomness through std's `RandomState`. `Uuid::now_v7` asks the operating
/// system for every id (a `getrandom` system call each), which cost more than the rest of a
/// publish on the embedded transport. The ids are unique, not secret: nothing here relies on
/// an id being unpredictable.
///
/// A process that forks copies its threads' generators. The generator checks the process id at
/// each new millisecond and reseeds in a child, so only the ids of the millisecond of the fork
/// itself can repeat between parent and child.
pub fn new_v7() -> Uuid {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    new_v7_at(now)
}

/// [`new_v7`] with the time read already (a new envelope reads the clock once for its id and
/// its occurrence time); a time before the thread's last id counts as that id's millisecond.
pub(crate) fn new_v7_at(unix_millis: u64) -> Uuid {
    use std::cell::Cell;
    thread_local! {
        static V7: Cell<V7State> = Cell::new(V7State::seeded());
    }
    V7.with(|cell| {
        let mut state = cell.get();
        let id = state.next(unix_millis);
        cell.set(state);
        id
    })
}

/// The per-thread state of [`new_v7`].
#[derive(Debug, Clone, Copy)]
struct V7State {
    /// The generator's state.
    rng: u64,
    /// The millisecond of the last id (never goes back, also when the clock does).
    millis: u64,
    /// The counter of the last id, 12 bits.
    counter: u16,
    /// The process that seeded the generator (a forked child reseeds).
    pid: u32,
}

impl V7State {
    fn seeded() -> Self {
        Self {
            rng: crate::fast_hash::random_seed(),
            millis: 0,
            counter: 0,
            pid: std::process::id(),
        }
    }

    /// wyrand: 64 random bits.
    fn random(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0xa076_1d64_78bd_642f);
        let t = u128::from(self.rng) * u128::from(self.rng ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    }

    fn next(&mut self, now_millis: u64) -> Uuid {
        const MAX_MILLIS: u64 = (1 << 48) - 1;
        let now = now_millis.min(MAX_MILLIS);
        if now > self.millis {
            let pid = std::process::id();
            if pid != self.pid {
                let millis = self.millis;
                *self = Self::seeded();
                self.millis = millis;
            }
            self.millis = now;
            self.counter = (self.random() >> 53) as u16; // below 2048: room to count up
        } else if self.counter < 0xfff {
            self.counter += 1;
        } else {
            // 4096 ids in one millisecond: borrow the next one, as the RFC allows.
            self.millis = (self.millis + 1).min(MAX_MILLIS);
            self.counter = 0;
        }
        let high = (self.millis << 16) | 0x7000 | u64::from(self.counter);
        let low = (self.random() >> 2) | 0x8000_0000_0000_0000;
        Uuid::from_u64_pair(high, low)
    }
}

/// The UUID `text` spells exactly as this crate writes ids (hyphenated, lower case), if it does:
/// such text can be kept as the value and rendered back unchanged.
///
/// A table read per byte: lower-case hex digits and hyphens in their four places, nothing else
/// (upper case, braces, a URN prefix or the simple form are not canonical).
pub(crate) fn canonical_uuid(text: &str) -> Option<Uuid> {
    let b: &[u8; 36] = text.as_bytes().try_into().ok()?;
    if b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut halves = [0u64; 2];
    let mut invalid = 0u8;
    for (half, positions) in halves.iter_mut().zip(HEX_POSITIONS.chunks_exact(16)) {
        for &p in positions {
            let nibble = LOWER_HEX[usize::from(b[p])];
            invalid |= nibble;
            *half = *half << 4 | u64::from(nibble);
        }
    }
    (invalid < 16).then(|| Uuid::from_u64_pair(halves[0], halves[1]))
}

/// Where the 32 hex digits of a hyphenated UUID are.
const HEX_POSITIONS: [usize; 32] = [
    0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 11, 12, 14, 15, 16, 17, 19, 20, 21, 22, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34,
    35,
];

/// A lower-case hex digit's value; `0xff` for every other byte.
const LOWER_HEX: [u8; 256] = {
    let mut t = [0xff; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// The one function for derived ids: a name-based (v5) UUID in [`DERIVED_ID_NAMESPACE`] over
/// `parts` joined by NUL bytes. The same parts always give the same id; the formats in use are
/// listed in the [module documentation](self).
pub fn derived_uuid(parts: &[&[u8]]) -> Uuid {
    v5(name_hash(parts))
}

/// SHA-1 over [`DERIVED_ID_NAMESPACE`] and `parts` joined by NUL bytes, open for more (an empty
/// last part ends the name with a NUL, to be continued).
fn name_hash(parts: &[&[u8]]) -> Sha1 {
    let mut hash = Sha1::new();
    hash.update(DERIVED_ID_NAMESPACE.as_bytes());
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            hash.update([0]);
        }
        hash.update(part);
    }
    hash
}

/// The name-based (v5) UUID of what `hash` was given: the namespace's bytes, then the name (as
/// [`Uuid::new_v5`] hashes them). The `sha1` crate, not the one `uuid` uses: the same digest,
/// with the CPU's SHA instructions where it has them (about a tenth of the time per block).
fn v5(hash: Sha1) -> Uuid {
    let digest = hash.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_sha1_bytes(bytes).into_uuid()
}

/// Derives the children of one message in one scope, numbered
/// ([`Identity::derived_children`]): the same ids as [`Identity::derived_child`], with the hash
/// of their common part made once.
#[derive(Clone)]
pub(crate) struct DerivedChildren {
    parent: Identity,
    millis: u64,
    /// SHA-1 of the namespace, the parent's id, `0`, the scope, `0`.
    prefix: Sha1,
}

impl fmt::Debug for DerivedChildren {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DerivedChildren")
            .field("parent", &self.parent)
            .finish_non_exhaustive()
    }
}

impl DerivedChildren {
    /// Child number `n`.
    pub(crate) fn child(&self, n: u32) -> Identity {
        let mut hash = self.prefix.clone();
        hash.update(itoa::Buffer::new().format(n).as_bytes());
        let v5 = v5(hash);
        let mut random = [0u8; 10];
        random.copy_from_slice(&v5.as_bytes()[6..16]);
        let id = uuid::Builder::from_unix_timestamp_millis(self.millis, &random).into_uuid();
        Identity {
            message_id: MessageId::from_uuid(id),
            correlation_id: self.parent.correlation_id,
            causation_id: self.parent.message_id.into(),
        }
    }
}

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {type_name} `{input}`: {reason}; expected a UUID such as `0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071`")]
pub struct IdParseError {
    /// The id type that was being parsed, e.g. `DocumentId`.
    pub type_name: &'static str,
    /// The rejected input, cut to 64 characters.
    pub input: String,
    /// What the UUID parser said.
    pub reason: String,
}

impl IdParseError {
    #[doc(hidden)]
    pub fn new(type_name: &'static str, input: &str, err: uuid::Error) -> Self {
        let input: String = input.chars().take(64).collect();
        Self {
            type_name,
            input,
            reason: err.to_string(),
        }
    }
}

/// Declares a typed id: a `Copy` newtype over a UUID that serialises as a bare UUID string,
/// displays as one, parses with [`FromStr`](std::str::FromStr) (error: [`IdParseError`]) and
/// generates fresh UUID v7 values.
///
/// ```
/// cim_integrate_runtime::typed_id! {
///     /// Identifies a document across every domain.
///     pub struct DocumentId;
/// }
/// let id = DocumentId::new();
/// let text = id.to_string();
/// assert_eq!(text.parse::<DocumentId>().unwrap(), id);
/// assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{text}\""));
/// let err = "nope".parse::<DocumentId>().unwrap_err();
/// assert!(err.to_string().starts_with("invalid DocumentId `nope`"));
/// ```
#[macro_export]
macro_rules! typed_id {
    ($(#[$meta:meta])* $vis:vis struct $name:ident;) => {
        $(#[$meta])*
        #[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(transparent)]
        $vis struct $name($crate::__private::uuid::Uuid);

        #[allow(clippy::new_without_default)]
        impl $name {
            /// A fresh, time-ordered (UUID v7) id.
            pub fn new() -> Self {
                Self($crate::__private::new_v7())
            }
            /// Wraps an existing UUID.
            pub const fn from_uuid(uuid: $crate::__private::uuid::Uuid) -> Self {
                Self(uuid)
            }
            /// The underlying UUID.
            pub const fn as_uuid(&self) -> &$crate::__private::uuid::Uuid {
                &self.0
            }
            /// The underlying UUID, by value.
            pub const fn into_uuid(self) -> $crate::__private::uuid::Uuid {
                self.0
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Display for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::fmt::Display::fmt(&self.0.hyphenated(), f)
            }
        }

        #[automatically_derived]
        impl ::core::fmt::Debug for $name {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                ::core::write!(f, "{}({})", ::core::stringify!($name), self.0.hyphenated())
            }
        }

        #[automatically_derived]
        impl ::core::str::FromStr for $name {
            type Err = $crate::id::IdParseError;
            fn from_str(s: &str) -> ::core::result::Result<Self, Self::Err> {
                $crate::__private::uuid::Uuid::parse_str(s)
                    .map(Self)
                    .map_err(|e| $crate::id::IdParseError::new(::core::stringify!($name), s, e))
            }
        }

        #[automatically_derived]
        impl ::core::convert::From<$crate::__private::uuid::Uuid> for $name {
            fn from(uuid: $crate::__private::uuid::Uuid) -> Self {
                Self(uuid)
            }
        }

        #[automatically_derived]
        impl ::core::convert::From<$name> for $crate::__private::uuid::Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        #[automatically_derived]
        impl $crate::__private::serde::Serialize for $name {
            fn serialize<S: $crate::__private::serde::Serializer>(
                &self,
                s: S,
            ) -> ::core::result::Result<S::Ok, S::Error> {
                $crate::__private::serde::Serialize::serialize(&self.0, s)
            }
        }

        #[automatically_derived]
        impl<'de> $crate::__private::serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__private::serde::Deserializer<'de>>(
                d: D,
            ) -> ::core::result::Result<Self, D::Error> {
                <$crate::__private::uuid::Uuid as $crate::__private::serde::Deserialize<'de>>::deserialize(d).map(Self)
            }
        }
    };
}

typed_id! {
    /// Identifies one message. Also its JetStream de-duplication id (`Nats-Msg-Id`).
    pub struct MessageId;
}

typed_id! {
    /// Shared by every message of one conversation: a root message's own id, inherited by
    /// everything published while handling it.
    pub struct CorrelationId;
}

typed_id! {
    /// The id of the message whose handling caused this one (for a root message, its own id).
    pub struct CausationId;
}

impl From<MessageId> for CorrelationId {
    fn from(id: MessageId) -> Self {
        Self(id.0)
    }
}

impl From<MessageId> for CausationId {
    fn from(id: MessageId) -> Self {
        Self(id.0)
    }
}

/// The identity triple of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Identity {
    /// This message's id.
    pub message_id: MessageId,
    /// The conversation it belongs to.
    pub correlation_id: CorrelationId,
    /// The message that caused it.
    pub causation_id: CausationId,
}

impl Identity {
    /// A root identity: a fresh message id, which is also its correlation and causation id.
    pub fn root() -> Self {
        Self::root_from(MessageId::new())
    }

    /// A root identity for a given message id.
    pub fn root_from(message_id: MessageId) -> Self {
        Self {
            message_id,
            correlation_id: message_id.into(),
            causation_id: message_id.into(),
        }
    }

    /// The identity of a message published while handling this one: a fresh message id, the same
    /// correlation id, and this message's id as causation id.
    pub fn child(&self) -> Self {
        self.child_with(MessageId::new())
    }

    /// [`child`](Self::child) with the new message's id given.
    pub(crate) fn child_with(&self, message_id: MessageId) -> Self {
        Self {
            message_id,
            correlation_id: self.correlation_id,
            causation_id: self.message_id.into(),
        }
    }

    /// Like [`child`](Self::child), but the message id is derived from this message's id,
    /// `scope` (e.g. a handler name) and `n` (the n-th message that scope publishes for this
    /// one), so re-running the same handler for the same message yields the same ids and
    /// JetStream's duplicate window drops the re-publish. The id keeps the UUID v7 layout, with
    /// `at` (the parent's occurrence time) as its timestamp.
    pub fn derived_child(&self, scope: &str, n: u32, at: crate::Timestamp) -> Self {
        self.derived_child_at(scope, n, u64::try_from(at.unix_millis()).unwrap_or(0))
    }

    /// Like [`derived_child`](Self::derived_child), but everything in the id comes from this
    /// message's id, `scope` and `n`, nothing from when or how it was delivered: the timestamp
    /// of the UUID v7 layout is the one in this message's id (a v7, v6 or v1 id), else the Unix
    /// epoch (a v4 or derived v5 id carries no time). Two deliveries of one message, even two
    /// stored copies of it with different stream times and no `X-Occurred-At`, give the same
    /// child ids, so JetStream's duplicate window drops the second publish.
    pub fn stable_child(&self, scope: &str, n: u32) -> Self {
        let millis = self.message_id.as_uuid().get_timestamp().map_or(0, |t| {
            let (secs, nanos) = t.to_unix();
            secs.saturating_mul(1000).saturating_add(u64::from(nanos / 1_000_000))
        });
        self.derived_child_at(scope, n, millis)
    }

    fn derived_child_at(&self, scope: &str, n: u32, millis: u64) -> Self {
        self.children_at(scope, millis).child(n)
    }

    /// The children of this message in `scope` derived as [`derived_child`](Self::derived_child)
    /// derives them, the hash of what they share (this id and `scope`) computed once.
    pub(crate) fn derived_children(&self, scope: &str, at: crate::Timestamp) -> DerivedChildren {
        self.children_at(scope, u64::try_from(at.unix_millis()).unwrap_or(0))
    }

    /// [`derived_uuid`] of (this id, `scope`, n) for every n, as hashed up to n; the ids carry
    /// `millis` as their time.
    fn children_at(&self, scope: &str, millis: u64) -> DerivedChildren {
        let mut parent = Uuid::encode_buffer();
        let parent = self.message_id.as_uuid().hyphenated().encode_lower(&mut parent);
        DerivedChildren {
            parent: *self,
            millis,
            // (parent, scope, n) with n still to come.
            prefix: name_hash(&[parent.as_bytes(), scope.as_bytes(), b""]),
        }
    }

    /// `true` if this identity starts a conversation (all three ids equal).
    pub fn is_root(&self) -> bool {
        self.message_id.0 == self.correlation_id.0 && self.message_id.0 == self.causation_id.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition the fast reader replaces: parse, write back, compare.
    fn canonical_by_reference(text: &str) -> Option<Uuid> {
        let id = Uuid::try_parse(text).ok()?;
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        (id.hyphenated().encode_lower(&mut buf).as_bytes() == text.as_bytes()).then_some(id)
    }

    #[test]
    fn canonical_uuids_are_exactly_the_lower_case_hyphenated_ones() {
        let id = Uuid::now_v7();
        let text = id.hyphenated().to_string();
        let mut variants = vec![
            text.clone(),
            text.to_uppercase(),
            id.simple().to_string(),
            id.urn().to_string(),
            id.braced().to_string(),
            Uuid::nil().hyphenated().to_string(),
            Uuid::max().hyphenated().to_string(),
            String::new(),
        ];
        for i in 0..text.len() {
            for c in ['0', '9', 'a', 'f', 'g', 'A', 'F', '-', ' ', 'é'] {
                let mut v: Vec<char> = text.chars().collect();
                v[i] = c;
                variants.push(v.into_iter().collect());
            }
        }
        for v in variants {
            assert_eq!(canonical_uuid(&v), canonical_by_reference(&v), "{v:?}");
        }
    }

    #[test]
    fn derived_children_are_derived_child() {
        let parent = Identity::root();
        let at = crate::Timestamp::now();
        let children = parent.derived_children("saga/shop/o-1", at);
        for n in [0, 1, 9, 10, 12_345, u32::MAX] {
            assert_eq!(children.child(n), parent.derived_child("saga/shop/o-1", n, at));
        }
        let long = "s".repeat(200);
        assert_eq!(
            parent.derived_children(&long, at).child(3),
            parent.derived_child(&long, 3, at)
        );
    }

    #[test]
    fn fresh_ids_are_v7_in_order_and_distinct() {
        let ids: Vec<Uuid> = (0..20_000).map(|_| new_v7()).collect();
        for id in &ids {
            assert_eq!(id.get_version_num(), 7, "{id}");
            assert_eq!(id.get_variant(), uuid::Variant::RFC4122, "{id}");
        }
        // One thread's ids are strictly increasing (the counter orders those of one millisecond).
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        let (secs, nanos) = ids[0].get_timestamp().unwrap().to_unix();
        let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(millis <= now && now - millis < 60_000, "{millis} vs {now}");
        // Threads have generators of their own.
        let other: Vec<Uuid> = std::thread::spawn(|| (0..20_000).map(|_| new_v7()).collect())
            .join()
            .unwrap();
        let all: std::collections::HashSet<Uuid> = ids.iter().chain(&other).copied().collect();
        assert_eq!(all.len(), 40_000);
    }

    #[test]
    fn the_counter_borrows_the_next_millisecond_and_the_clock_never_goes_back() {
        let mut s = V7State {
            rng: 1,
            millis: 0,
            counter: 0,
            pid: std::process::id(),
        };
        let first = s.next(1_000);
        let mut last = first;
        for _ in 0..5_000 {
            let id = s.next(1_000);
            assert!(id > last);
            last = id;
        }
        assert_eq!(s.millis, 1_001, "4096 ids in one millisecond borrow the next");
        let back = s.next(10);
        assert!(back > last, "a clock that went back does not reorder ids");
        assert_eq!(s.millis, 1_001);
        // Another process (a forked child): reseeded at its next millisecond, still in order.
        s.pid = s.pid.wrapping_add(1);
        let rng = s.rng;
        let after = s.next(2_000);
        assert!(after > back);
        assert_eq!(s.pid, std::process::id());
        assert_ne!(
            s.rng,
            rng.wrapping_add(0xa076_1d64_78bd_642f_u64.wrapping_mul(2)),
            "reseeded"
        );
    }

    #[test]
    fn root_and_child() {
        let root = Identity::root();
        assert!(root.is_root());
        assert_eq!(root.message_id.as_uuid().get_version_num(), 7);
        let child = root.child();
        assert!(!child.is_root());
        assert_eq!(child.correlation_id, root.correlation_id);
        assert_eq!(child.causation_id.into_uuid(), root.message_id.into_uuid());
        assert_ne!(child.message_id, root.message_id);
        let grandchild = child.child();
        assert_eq!(grandchild.correlation_id, root.correlation_id);
        assert_eq!(grandchild.causation_id.into_uuid(), child.message_id.into_uuid());
    }

    #[test]
    fn derived_children_are_stable_v7() {
        let root = Identity::root();
        let at = crate::Timestamp::now();
        let a = root.derived_child("workflow-on_created", 0, at);
        assert_eq!(a, root.derived_child("workflow-on_created", 0, at));
        assert_ne!(
            a.message_id,
            root.derived_child("workflow-on_created", 1, at).message_id
        );
        assert_ne!(a.message_id, root.derived_child("search-on_created", 0, at).message_id);
        assert_eq!(a.message_id.as_uuid().get_version_num(), 7);
        assert_eq!(a.correlation_id, root.correlation_id);
        assert_eq!(a.causation_id.into_uuid(), root.message_id.into_uuid());
    }

    #[test]
    fn stable_children_ignore_delivery_time() {
        let root = Identity::root();
        let a = root.stable_child("workflow-on_created", 0);
        assert_eq!(a, root.stable_child("workflow-on_created", 0));
        assert_ne!(a.message_id, root.stable_child("workflow-on_created", 1).message_id);
        assert_eq!(a.message_id.as_uuid().get_version_num(), 7);
        // The child's timestamp is the parent's (a v7 id).
        assert_eq!(
            a.message_id.as_uuid().get_timestamp(),
            root.message_id.as_uuid().get_timestamp()
        );
        // A parent id without a time (a derived v5 id): the epoch, still stable.
        let foreign = Identity::root_from(MessageId::from_uuid(derived_uuid(&[b"stream", b"S", b"1"])));
        let b = foreign.stable_child("h", 0);
        assert_eq!(b, foreign.stable_child("h", 0));
        assert_eq!(b.message_id.as_uuid().get_version_num(), 7);
        assert_eq!(b.causation_id.into_uuid(), foreign.message_id.into_uuid());
    }

    /// [`derived_uuid`] hashes with the `sha1` crate; `uuid`'s own v5 (another SHA-1) is the
    /// reference.
    #[test]
    fn derived_uuid_is_uuid_v5() {
        let long = "x".repeat(200);
        for parts in [
            &[][..],
            &[&b""[..]][..],
            &[&b"a"[..], b"b"][..],
            &[b"redrive", long.as_bytes(), &7u64.to_be_bytes()][..],
        ] {
            assert_eq!(
                derived_uuid(parts),
                Uuid::new_v5(&DERIVED_ID_NAMESPACE, &parts.join(&0u8)),
                "{parts:?}"
            );
        }
    }

    /// Derived ids are persisted (process and saga records) and on the wire (`Nats-Msg-Id`):
    /// these values were computed by the hand-made formats before they went through
    /// [`derived_uuid`], and must never change.
    #[test]
    fn derived_ids_are_golden() {
        let m: MessageId = "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071".parse().unwrap();
        let c: CorrelationId = "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6072".parse().unwrap();
        let root = Identity {
            message_id: m,
            correlation_id: c,
            causation_id: m.into(),
        };
        let at = crate::Timestamp::from_unix_nanos(1_795_530_000_000i128 * 1_000_000).unwrap();
        let id = |u: Uuid| u.to_string();
        // Handler publishes, process outboxes, saga lifecycle events (`saga/{saga}/{id}`, seq).
        assert_eq!(
            root.derived_child("saga/fulfil/abc", 3, at).message_id.to_string(),
            "01a20ded-8680-7438-939c-87e271b5ceaf"
        );
        let (msg_id, deadline) =
            crate::process::deadline_identity("onboarding", "k1", "expire", 1_795_530_000_000, None);
        assert_eq!(msg_id, "deadline:expire:1795530000000");
        assert_eq!(deadline.message_id.to_string(), "02da984e-4663-5d9d-b4e0-6dce5e85a13f");
        assert_eq!(
            crate::aggregate::outcome_identity("workflow_ready", "w-1", &root)
                .message_id
                .to_string(),
            "25e87854-4c8e-507f-878a-9564dbb01570"
        );
        assert_eq!(
            id(crate::pipeline::dead_letter::letter_id("billing.on_x", "EVENTS", 42)),
            "4a8c0fb9-ab14-5de7-b992-91517b92d380"
        );
        let subject = crate::Subject::new("orders.created").unwrap();
        let payload = br#"{"a":1}"#;
        let from = crate::envelope::ReceivedFrom::default();
        let mut with_msg_id = crate::Headers::new();
        with_msg_id.insert(crate::headers::NATS_MSG_ID, "abc").unwrap();
        assert_eq!(
            id(crate::envelope::derive_id(&subject, &with_msg_id, payload, &from)),
            "3f68a04c-e8ed-5ec3-81ad-8b2e0467df05"
        );
        let stored = crate::envelope::ReceivedFrom {
            stream: Some("EVENTS".into()),
            stream_sequence: Some(7),
            ..Default::default()
        };
        let none = crate::Headers::new();
        assert_eq!(
            id(crate::envelope::derive_id(&subject, &none, payload, &stored)),
            "f329be9b-540f-511e-bc48-d5a1cf2a5056"
        );
        assert_eq!(
            id(crate::envelope::derive_id(&subject, &none, payload, &from)),
            "096e7d24-7294-5828-86e8-3fa2763de26f"
        );
    }

    #[test]
    fn ids_are_time_ordered() {
        let a = MessageId::new();
        let b = MessageId::new();
        assert!(a < b);
    }

    #[test]
    fn parse_errors_are_clear() {
        let e = "0192f3c4-zzzz".parse::<MessageId>().unwrap_err();
        assert_eq!(e.type_name, "MessageId");
        assert!(e.to_string().contains("invalid MessageId `0192f3c4-zzzz`"), "{e}");
        let long = "x".repeat(500);
        let e = long.parse::<CorrelationId>().unwrap_err();
        assert_eq!(e.input.len(), 64);
    }

    #[test]
    fn serde_is_a_bare_uuid() {
        let id = CausationId::new();
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<CausationId>(&json).unwrap(), id);
        assert!(serde_json::from_str::<CausationId>("\"nope\"").is_err());
        assert!(serde_json::from_str::<CausationId>("42").is_err());
    }
}
