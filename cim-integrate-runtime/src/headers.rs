//! Message headers, independent of any transport, and the names of the identity headers.

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

/// Why a header name or value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    entries: std::sync::Arc<Vec<(String, String)>>,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic() && b != b':')
}

fn valid_value(value: &str) -> bool {
    !value.bytes().any(|b| b == b'\r' || b == b'\n')
}

/// One shared empty list: empty headers (most received messages' extra headers) allocate nothing.
static EMPTY: std::sync::LazyLock<std::sync::Arc<Vec<(String, String)>>> =
    std::sync::LazyLock::new(|| std::sync::Arc::new(Vec::new()));

impl Default for Headers {
    fn default() -> Self {
        Self { entries: EMPTY.clone() }
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `name` to `value`, replacing every earlier value of that name.
    pub fn insert(&mut self, name: &str, value: impl Into<String>) -> Result<(), HeaderError> {
        let value = value.into();
        Self::check(name, &value)?;
        let entries = std::sync::Arc::make_mut(&mut self.entries);
        entries.retain(|(n, _)| n != name);
        entries.push((name.to_owned(), value));
        Ok(())
    }

    /// Adds a value for `name`, keeping earlier ones.
    pub fn append(&mut self, name: &str, value: impl Into<String>) -> Result<(), HeaderError> {
        let value = value.into();
        Self::check(name, &value)?;
        std::sync::Arc::make_mut(&mut self.entries).push((name.to_owned(), value));
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

    /// No headers, with room for `n` without reallocating.
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            entries: std::sync::Arc::new(Vec::with_capacity(n)),
        }
    }

    /// Appends without validation, for headers received from a transport (already framed).
    pub(crate) fn push_received(&mut self, name: String, value: String) {
        std::sync::Arc::make_mut(&mut self.entries).push((name, value));
    }

    /// The first value of `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }

    /// Every value of `name`, in order.
    pub fn get_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Removes every value of `name`; returns whether there was one.
    pub fn remove(&mut self, name: &str) -> bool {
        if !self.entries.iter().any(|(n, _)| n == name) {
            return false;
        }
        std::sync::Arc::make_mut(&mut self.entries).retain(|(n, _)| n != name);
        true
    }

    /// All (name, value) pairs, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// Number of (name, value) pairs.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` if there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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
