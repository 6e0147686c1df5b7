//! Typed identifiers: the message identity triple and the [`typed_id!`](crate::typed_id!) macro
//! for domain ids such as `DocumentId` and `UserId`.
//!
//! Every id is a UUID. Fresh ids are version 7 (time-ordered). Ids derived for messages from
//! foreign publishers that carry no id of their own are version 5 (name-based), so they stay the
//! same on every redelivery; see [`crate::envelope`].

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
                Self($crate::__private::uuid::Uuid::now_v7())
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
        Self {
            message_id: MessageId::new(),
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
        let name = format!("{}\0{scope}\0{n}", self.message_id);
        let hash = uuid::Uuid::new_v5(&crate::envelope::DERIVED_ID_NAMESPACE, name.as_bytes());
        let mut random = [0u8; 10];
        random.copy_from_slice(&hash.as_bytes()[6..16]);
        let millis = u64::try_from(at.unix_millis()).unwrap_or(0);
        let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
        Self {
            message_id: MessageId::from_uuid(id),
            correlation_id: self.correlation_id,
            causation_id: self.message_id.into(),
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
