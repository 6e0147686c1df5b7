//! Subjects and subject patterns.
//!
//! A [`Subject`] is concrete: it names where one message is published, e.g. `document.created`.
//! A [`SubjectPattern`] may contain wildcards and is what consumers and streams filter on:
//! `*` matches exactly one token, and a final `>` matches one or more tokens.
//!
//! Tokens are `[A-Za-z0-9_-]+`, separated by single dots. This is stricter than NATS itself (which
//! allows most printable characters), on purpose: subjects built from run-time values must never
//! smuggle in a `.`, `*`, `>` or whitespace (subject injection), and the rules must be cheap enough
//! to evaluate in `const` context so that macros can check literals at compile time.
//!
//! The rules are `const fn`s ([`check_subject`], [`check_pattern`], [`pattern_matches`],
//! [`patterns_overlap`]); the [`subject!`](crate::subject!) and
//! [`subject_pattern!`](crate::subject_pattern!) macros use them to reject a bad literal at compile
//! time:
//!
//! ```
//! use cim_integrate_runtime::{subject, subject_pattern};
//! let created = subject!("document.created");
//! let all_documents = subject_pattern!("document.>");
//! assert!(all_documents.matches(&created));
//! ```
//!
//! ```compile_fail
//! // a wildcard is not allowed in a concrete subject: this fails to compile
//! let s = cim_integrate_runtime::subject!("document.*");
//! ```

use crate::headers::Text;
use std::fmt;
use std::sync::Arc;

/// The longest subject or pattern accepted, in bytes.
pub const MAX_SUBJECT_LEN: usize = 512;

/// Why a subject, pattern or token is invalid. `at` is a byte offset into the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectError {
    /// The input is empty.
    #[error("subject is empty; expected tokens like `document.created`")]
    Empty,
    /// The input is longer than [`MAX_SUBJECT_LEN`].
    #[error("subject is {len} bytes long; the limit is {max}", max = MAX_SUBJECT_LEN)]
    TooLong {
        /// The input's length in bytes.
        len: usize,
    },
    /// Two dots in a row, or a leading or trailing dot.
    #[error("empty token at byte {at}: subjects are dot-separated non-empty tokens")]
    EmptyToken {
        /// Byte offset of the empty token.
        at: usize,
    },
    /// A character outside `[A-Za-z0-9_-]`.
    #[error("invalid character at byte {at}: tokens may contain only A-Z, a-z, 0-9, `_` and `-`")]
    InvalidChar {
        /// Byte offset of the character.
        at: usize,
    },
    /// A `*` or `>` where a concrete subject is required.
    #[error(
        "wildcard at byte {at}: a concrete subject (for publishing) cannot contain `*` or `>`; use a SubjectPattern to subscribe"
    )]
    Wildcard {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// A wildcard that is not a whole token, e.g. `doc*`.
    #[error("wildcard at byte {at} must be a whole token (`a.*.c`, `a.>`), not part of one")]
    PartialWildcard {
        /// Byte offset of the wildcard.
        at: usize,
    },
    /// A `>` that is not the last token.
    #[error("`>` at byte {at} must be the last token (`document.>`)")]
    FullWildcardNotLast {
        /// Byte offset of the `>`.
        at: usize,
    },
}

impl SubjectError {
    /// A static description, usable in `const` panics.
    pub const fn as_static_str(&self) -> &'static str {
        match self {
            Self::Empty => "subject is empty",
            Self::TooLong { .. } => "subject is longer than 512 bytes",
            Self::EmptyToken { .. } => "subject has an empty token (two dots, or a leading or trailing dot)",
            Self::InvalidChar { .. } => "subject has a character outside A-Z, a-z, 0-9, `_`, `-`",
            Self::Wildcard { .. } => "a concrete subject cannot contain `*` or `>`",
            Self::PartialWildcard { .. } => "a wildcard must be a whole token",
            Self::FullWildcardNotLast { .. } => "`>` must be the last token",
        }
    }
}

const fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Checks a single token (no dots, no wildcards): the rule for run-time values put into subjects.
pub const fn check_token(s: &str) -> Result<(), SubjectError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(SubjectError::EmptyToken { at: 0 });
    }
    if b.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong { len: b.len() });
    }
    let mut i = 0;
    while i < b.len() {
        if !is_token_byte(b[i]) {
            return Err(match b[i] {
                b'*' | b'>' => SubjectError::Wildcard { at: i },
                _ => SubjectError::InvalidChar { at: i },
            });
        }
        i += 1;
    }
    Ok(())
}

const fn check(s: &str, wildcards: bool) -> Result<(), SubjectError> {
    let b = s.as_bytes();
    if b.is_empty() {
        return Err(SubjectError::Empty);
    }
    if b.len() > MAX_SUBJECT_LEN {
        return Err(SubjectError::TooLong { len: b.len() });
    }
    let mut start = 0;
    while start <= b.len() {
        let mut end = start;
        while end < b.len() && b[end] != b'.' {
            end += 1;
        }
        if end == start {
            return Err(SubjectError::EmptyToken { at: start });
        }
        let single = end - start == 1;
        let mut i = start;
        while i < end {
            let c = b[i];
            if c == b'*' || c == b'>' {
                if !wildcards {
                    return Err(SubjectError::Wildcard { at: i });
                }
                if !single {
                    return Err(SubjectError::PartialWildcard { at: i });
                }
                if c == b'>' && end != b.len() {
                    return Err(SubjectError::FullWildcardNotLast { at: i });
                }
            } else if !is_token_byte(c) {
                return Err(SubjectError::InvalidChar { at: i });
            }
            i += 1;
        }
        start = end + 1;
    }
    Ok(())
}

/// Checks a concrete subject: dot-separated `[A-Za-z0-9_-]+` tokens, no wildcards.
pub const fn check_subject(s: &str) -> Result<(), SubjectError> {
    check(s, false)
}

/// Checks a subject pattern: like a subject, plus whole-token `*` anywhere and `>` as last token.
pub const fn check_pattern(s: &str) -> Result<(), SubjectError> {
    check(s, true)
}

/// `true` if `s` is a valid concrete subject ([`check_subject`]).
pub const fn is_valid_subject(s: &str) -> bool {
    check_subject(s).is_ok()
}

/// `true` if `s` is a valid subject pattern ([`check_pattern`]).
pub const fn is_valid_pattern(s: &str) -> bool {
    check_pattern(s).is_ok()
}

/// Returns the end (exclusive) of the token starting at `start`.
const fn token_end(b: &[u8], start: usize) -> usize {
    let mut end = start;
    while end < b.len() && b[end] != b'.' {
        end += 1;
    }
    end
}

const fn token_eq(a: &[u8], a0: usize, a1: usize, b: &[u8], b0: usize, b1: usize) -> bool {
    if a1 - a0 != b1 - b0 {
        return false;
    }
    let mut i = 0;
    while i < a1 - a0 {
        if a[a0 + i] != b[b0 + i] {
            return false;
        }
        i += 1;
    }
    true
}

const fn is_wild(b: &[u8], start: usize, end: usize, w: u8) -> bool {
    end - start == 1 && b[start] == w
}

/// `true` if the concrete `subject` matches `pattern`. Both must be valid; invalid input gives
/// `false`, never a panic.
pub const fn pattern_matches(pattern: &str, subject: &str) -> bool {
    if !is_valid_pattern(pattern) || !is_valid_subject(subject) {
        return false;
    }
    matches_valid(pattern, subject)
}

/// [`pattern_matches`] for inputs already known to be valid (no re-validation).
const fn matches_valid(pattern: &str, subject: &str) -> bool {
    match_tokens(pattern.as_bytes(), subject.as_bytes(), false)
}

/// [`pattern_matches`] for a `pattern` already known to be valid (the literal of a handler,
/// checked by its macro), in one pass over `subject`: a subject token equal to a literal token
/// of the pattern is valid as that one is, so only the tokens under `*` and `>` are checked.
/// The compile-time check of every handler runs it in the const interpreter, where each pass
/// over the bytes counts.
pub(crate) const fn valid_pattern_matches(pattern: &str, subject: &str) -> bool {
    subject.len() <= MAX_SUBJECT_LEN && match_tokens(pattern.as_bytes(), subject.as_bytes(), true)
}

/// Matches a valid pattern `p` against subject `s` token by token; with `check_subject`, the
/// subject tokens under `*` and `>` must be valid too (the others equal the pattern's).
const fn match_tokens(p: &[u8], s: &[u8], check_subject: bool) -> bool {
    let (mut pi, mut si) = (0, 0);
    loop {
        let pe = token_end(p, pi);
        let se = token_end(s, si);
        if is_wild(p, pi, pe, b'>') {
            // `>` is last; the subject has at least this token, and all of the rest is valid.
            return !check_subject || (si < s.len() && tokens_valid(s, si));
        }
        let matched = if is_wild(p, pi, pe, b'*') {
            !check_subject || token_valid(s, si, se)
        } else {
            token_eq(p, pi, pe, s, si, se)
        };
        if !matched {
            return false;
        }
        let p_done = pe == p.len();
        let s_done = se == s.len();
        if p_done || s_done {
            return p_done && s_done;
        }
        pi = pe + 1;
        si = se + 1;
    }
}

/// The token `b[start..end]` is non-empty and of token bytes only.
const fn token_valid(b: &[u8], start: usize, end: usize) -> bool {
    if end == start {
        return false;
    }
    let mut i = start;
    while i < end {
        if !is_token_byte(b[i]) {
            return false;
        }
        i += 1;
    }
    true
}

/// Every token of `b` from `start` (a token's start) to the end is valid.
const fn tokens_valid(b: &[u8], start: usize) -> bool {
    let mut start = start;
    loop {
        let end = token_end(b, start);
        if !token_valid(b, start, end) {
            return false;
        }
        if end == b.len() {
            return true;
        }
        start = end + 1;
    }
}

/// `true` if some concrete subject matches both patterns. Streams whose subjects overlap are
/// rejected by JetStream; start-up uses this to check a layout before the server does.
pub const fn patterns_overlap(a: &str, b: &str) -> bool {
    if !is_valid_pattern(a) || !is_valid_pattern(b) {
        return false;
    }
    let x = a.as_bytes();
    let y = b.as_bytes();
    let (mut xi, mut yi) = (0, 0);
    loop {
        let xe = token_end(x, xi);
        let ye = token_end(y, yi);
        if is_wild(x, xi, xe, b'>') || is_wild(y, yi, ye, b'>') {
            return true;
        }
        let any = is_wild(x, xi, xe, b'*') || is_wild(y, yi, ye, b'*');
        if !any && !token_eq(x, xi, xe, y, yi, ye) {
            return false;
        }
        let x_done = xe == x.len();
        let y_done = ye == y.len();
        if x_done || y_done {
            return x_done && y_done;
        }
        xi = xe + 1;
        yi = ye + 1;
    }
}

/// A validated, concrete subject (no wildcards). Cheap to clone: a literal of the program (an
/// event's own subject, [`subject!`](crate::subject!)) is copied, text made at run time is shared.
/// A message's subject is cloned several times on its way (stored, delivered, its envelope, its
/// handler's context), and for a literal none of those takes a reference count.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Subject(Text);

impl Subject {
    /// Validates and wraps `s`.
    pub fn new(s: impl AsRef<str>) -> Result<Self, SubjectError> {
        let s = s.as_ref();
        check_subject(s)?;
        Ok(Self(Text::Shared(Arc::from(s))))
    }

    /// Builds a subject from tokens, validating each one: the way to put run-time values (ids,
    /// names) into a subject without risking subject injection.
    ///
    /// ```
    /// use cim_integrate_runtime::subject::Subject;
    /// let s = Subject::from_tokens(["document", "approved", "42"]).unwrap();
    /// assert_eq!(s.as_str(), "document.approved.42");
    /// assert!(Subject::from_tokens(["document", "a.b"]).is_err());
    /// assert!(Subject::from_tokens(["document", ">"]).is_err());
    /// ```
    pub fn from_tokens<I, T>(tokens: I) -> Result<Self, SubjectError>
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        let mut out = String::new();
        for (i, t) in tokens.into_iter().enumerate() {
            let t = t.as_ref();
            check_token(t).map_err(|e| shift(e, out.len() + usize::from(i > 0)))?;
            if i > 0 {
                out.push('.');
            }
            out.push_str(t);
        }
        Self::new(out)
    }

    /// Appends one validated token: `document.created` + `42` = `document.created.42`.
    pub fn join(&self, token: &str) -> Result<Self, SubjectError> {
        check_token(token).map_err(|e| shift(e, self.0.len() + 1))?;
        Self::new(format!("{}.{token}", self.0))
    }

    /// Prepends a deployment prefix (itself a valid subject): `prod` + `document.created` =
    /// `prod.document.created`.
    pub fn with_prefix(&self, prefix: &Subject) -> Result<Self, SubjectError> {
        Self::new(format!("{prefix}.{}", self.0))
    }

    /// This subject under an optional deployment prefix: [`with_prefix`](Self::with_prefix), or
    /// a clone without one.
    pub fn under(&self, prefix: Option<&Subject>) -> Result<Self, SubjectError> {
        prefix.map_or_else(|| Ok(self.clone()), |p| self.with_prefix(p))
    }

    #[doc(hidden)]
    /// Wraps a literal already checked at compile time by [`subject!`](crate::subject!).
    pub fn __from_checked_literal(s: &'static str) -> Self {
        debug_assert!(is_valid_subject(s));
        Self(Text::Static(s))
    }

    /// The subject as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The tokens of the subject.
    pub fn tokens(&self) -> impl Iterator<Item = &str> {
        self.0.split('.')
    }

    /// The first token: by convention the domain (`document` in `document.created`).
    pub fn first_token(&self) -> &str {
        self.tokens().next().unwrap_or_default()
    }
}

fn shift(e: SubjectError, by: usize) -> SubjectError {
    match e {
        SubjectError::EmptyToken { at } => SubjectError::EmptyToken { at: at + by },
        SubjectError::InvalidChar { at } => SubjectError::InvalidChar { at: at + by },
        SubjectError::Wildcard { at } => SubjectError::Wildcard { at: at + by },
        SubjectError::PartialWildcard { at } => SubjectError::PartialWildcard { at: at + by },
        SubjectError::FullWildcardNotLast { at } => SubjectError::FullWildcardNotLast { at: at + by },
        other => other,
    }
}

/// A validated subject pattern: tokens, whole-token `*`, and an optional final `>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubjectPattern(Text);

impl SubjectPattern {
    /// Validates and wraps `s`.
    pub fn new(s: impl AsRef<str>) -> Result<Self, SubjectError> {
        let s = s.as_ref();
        check_pattern(s)?;
        Ok(Self(Text::Shared(Arc::from(s))))
    }

    #[doc(hidden)]
    /// Wraps a literal already checked at compile time by [`subject_pattern!`](crate::subject_pattern!).
    pub fn __from_checked_literal(s: &'static str) -> Self {
        debug_assert!(is_valid_pattern(s));
        Self(Text::Static(s))
    }

    /// The pattern as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `true` if `subject` matches this pattern.
    pub fn matches(&self, subject: &Subject) -> bool {
        pattern_matches(&self.0, &subject.0)
    }

    /// `true` if `subject` (an unvalidated string, e.g. received from a foreign publisher)
    /// matches; invalid subjects never match.
    pub fn matches_str(&self, subject: &str) -> bool {
        pattern_matches(&self.0, subject)
    }

    /// `true` if `subject`, known to be a valid subject (it came from a [`Subject`]), matches.
    /// Skips re-validating it; a transport's hot path uses this for stored subjects.
    ///
    /// The common shapes are compared as bytes: a literal pattern, and `prefix.>` with a literal
    /// prefix; anything else token by token.
    pub(crate) fn matches_valid(&self, subject: &str) -> bool {
        debug_assert!(is_valid_subject(subject));
        let p: &str = &self.0;
        let wild = |s: &str| s.bytes().any(|b| b == b'*' || b == b'>');
        if !wild(p) {
            return p == subject;
        }
        if let Some(prefix) = p.strip_suffix('>')
            && prefix.ends_with('.')
            && !wild(prefix)
        {
            return subject.len() > prefix.len() && subject.starts_with(prefix);
        }
        matches_valid(p, subject)
    }

    /// `true` if some concrete subject matches both patterns.
    pub fn overlaps(&self, other: &SubjectPattern) -> bool {
        patterns_overlap(&self.0, &other.0)
    }

    /// `true` if the pattern has no wildcard.
    pub fn is_literal(&self) -> bool {
        !self.0.split('.').any(|t| t == "*" || t == ">")
    }

    /// Prepends a deployment prefix.
    pub fn with_prefix(&self, prefix: &Subject) -> Result<Self, SubjectError> {
        Self::new(format!("{prefix}.{}", self.0))
    }

    /// This pattern under an optional deployment prefix.
    pub fn under(&self, prefix: Option<&Subject>) -> Result<Self, SubjectError> {
        prefix.map_or_else(|| Ok(self.clone()), |p| self.with_prefix(p))
    }
}

impl From<Subject> for SubjectPattern {
    fn from(s: Subject) -> Self {
        Self(s.0)
    }
}

macro_rules! string_like {
    ($ty:ident, $what:literal) => {
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({:?})", stringify!($ty), &*self.0)
            }
        }
        impl AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
        impl std::str::FromStr for $ty {
            type Err = SubjectError;
            fn from_str(s: &str) -> Result<Self, SubjectError> {
                Self::new(s)
            }
        }
        impl TryFrom<&str> for $ty {
            type Error = SubjectError;
            fn try_from(s: &str) -> Result<Self, SubjectError> {
                Self::new(s)
            }
        }
        impl TryFrom<String> for $ty {
            type Error = SubjectError;
            fn try_from(s: String) -> Result<Self, SubjectError> {
                Self::new(s)
            }
        }
        impl serde::Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> serde::Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
                Self::new(&*s).map_err(|e| serde::de::Error::custom(format_args!("invalid {} `{}`: {e}", $what, s)))
            }
        }
    };
}
string_like!(Subject, "subject");
string_like!(SubjectPattern, "subject pattern");

/// A concrete [`Subject`] from a string literal, checked at compile time.
#[macro_export]
macro_rules! subject {
    ($lit:literal) => {{
        const _: () = match $crate::subject::check_subject($lit) {
            ::core::result::Result::Ok(()) => (),
            ::core::result::Result::Err(e) => ::core::panic!("{}", e.as_static_str()),
        };
        $crate::subject::Subject::__from_checked_literal($lit)
    }};
}

/// A [`SubjectPattern`] from a string literal, checked at compile time.
#[macro_export]
macro_rules! subject_pattern {
    ($lit:literal) => {{
        const _: () = match $crate::subject::check_pattern($lit) {
            ::core::result::Result::Ok(()) => (),
            ::core::result::Result::Err(e) => ::core::panic!("{}", e.as_static_str()),
        };
        $crate::subject::SubjectPattern::__from_checked_literal($lit)
    }};
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_literal_subject_is_the_same_subject_as_one_made_at_run_time() {
        use std::collections::{BTreeSet, HashSet};
        let literal = crate::subject!("document.created");
        let made = Subject::new(String::from("document.") + "created").unwrap();
        assert_eq!(literal, made);
        assert_eq!(literal.cmp(&made), std::cmp::Ordering::Equal);
        assert!(HashSet::from([made.clone()]).contains(&literal));
        assert_eq!(BTreeSet::from([literal.clone(), made.clone()]).len(), 1);
        assert!(literal < Subject::new("document.deleted").unwrap());
        assert_eq!(format!("{literal} {literal:?}"), format!("{made} {made:?}"));
        assert_eq!(
            serde_json::to_string(&literal).unwrap(),
            serde_json::to_string(&made).unwrap()
        );
        let pattern = crate::subject_pattern!("document.>");
        assert_eq!(pattern, SubjectPattern::new("document.>").unwrap());
        assert!(pattern.matches(&literal) && pattern.matches(&made));
        assert_eq!(
            SubjectPattern::from(literal),
            SubjectPattern::new("document.created").unwrap()
        );
    }

    /// The reference: split on dots, compare token by token. Obviously right, not const.
    fn reference_valid(s: &str, wildcards: bool) -> bool {
        if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
            return false;
        }
        let tokens: Vec<&str> = s.split('.').collect();
        tokens.iter().enumerate().all(|(i, t)| {
            if wildcards && *t == "*" {
                return true;
            }
            if wildcards && *t == ">" {
                return i == tokens.len() - 1;
            }
            !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        })
    }

    fn reference_match(p: &[&str], s: &[&str]) -> bool {
        match (p.split_first(), s.split_first()) {
            (Some((&">", _)), Some(_)) => true,
            (Some((pt, pr)), Some((st, sr))) => (*pt == "*" || pt == st) && reference_match(pr, sr),
            (None, None) => true,
            _ => false,
        }
    }

    fn reference_overlap(a: &[&str], b: &[&str]) -> bool {
        match (a.split_first(), b.split_first()) {
            (Some((&">", _)), Some(_)) | (Some(_), Some((&">", _))) => true,
            (Some((at, ar)), Some((bt, br))) => (*at == "*" || *bt == "*" || at == bt) && reference_overlap(ar, br),
            (None, None) => true,
            _ => false,
        }
    }

    fn arb_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(
            prop_oneof![
                Just("a"),
                Just("b"),
                Just("."),
                Just("*"),
                Just(">"),
                Just("-"),
                Just("_"),
                Just(" "),
                Just("é"),
                Just("Z9"),
                Just("\0"),
            ],
            0..10,
        )
        .prop_map(|v| v.concat())
    }

    fn arb_pattern() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("*")], 1..5).prop_flat_map(|toks| {
            (Just(toks), any::<bool>()).prop_map(|(t, tail)| {
                let mut s = t.join(".");
                if tail {
                    s.push_str(".>");
                }
                s
            })
        })
    }

    fn arb_subject() -> impl Strategy<Value = String> {
        proptest::collection::vec(prop_oneof![Just("a"), Just("b"), Just("c")], 1..6).prop_map(|t| t.join("."))
    }

    proptest! {
        #[test]
        fn validation_agrees_with_reference(s in arb_text()) {
            prop_assert_eq!(is_valid_subject(&s), reference_valid(&s, false));
            prop_assert_eq!(is_valid_pattern(&s), reference_valid(&s, true));
            prop_assert_eq!(Subject::new(&s).is_ok(), reference_valid(&s, false));
        }

        #[test]
        fn matching_agrees_with_reference(p in arb_pattern(), s in arb_subject()) {
            let pt: Vec<&str> = p.split('.').collect();
            let st: Vec<&str> = s.split('.').collect();
            prop_assert_eq!(pattern_matches(&p, &s), reference_match(&pt, &st));
        }

        #[test]
        fn one_pass_matching_agrees(p in arb_pattern(), s in arb_text(), s2 in arb_subject()) {
            // For a valid pattern, whatever the subject (valid or not).
            prop_assert_eq!(valid_pattern_matches(&p, &s), pattern_matches(&p, &s));
            prop_assert_eq!(valid_pattern_matches(&p, &s2), pattern_matches(&p, &s2));
        }

        #[test]
        fn matching_arbitrary_text_never_panics(p in arb_text(), s in arb_text()) {
            let m = pattern_matches(&p, &s);
            if m {
                prop_assert!(is_valid_pattern(&p) && is_valid_subject(&s));
            }
        }

        #[test]
        fn overlap_agrees_with_reference(a in arb_pattern(), b in arb_pattern()) {
            let at: Vec<&str> = a.split('.').collect();
            let bt: Vec<&str> = b.split('.').collect();
            prop_assert_eq!(patterns_overlap(&a, &b), reference_overlap(&at, &bt));
            prop_assert_eq!(patterns_overlap(&a, &b), patterns_overlap(&b, &a));
        }

        #[test]
        fn overlap_is_witnessed(a in arb_pattern(), b in arb_pattern(), s in arb_subject()) {
            // any subject matching both proves overlap
            if pattern_matches(&a, &s) && pattern_matches(&b, &s) {
                prop_assert!(patterns_overlap(&a, &b));
            }
        }

        #[test]
        fn tokens_never_inject(t in arb_text()) {
            if let Ok(s) = Subject::from_tokens(["document", t.as_str()]) {
                prop_assert_eq!(s.tokens().count(), 2);
            }
        }
    }

    #[test]
    fn errors_point_at_the_offending_byte() {
        assert_eq!(check_subject(""), Err(SubjectError::Empty));
        assert_eq!(check_subject("a..b"), Err(SubjectError::EmptyToken { at: 2 }));
        assert_eq!(check_subject("a."), Err(SubjectError::EmptyToken { at: 2 }));
        assert_eq!(check_subject(".a"), Err(SubjectError::EmptyToken { at: 0 }));
        assert_eq!(check_subject("a.b c"), Err(SubjectError::InvalidChar { at: 3 }));
        assert_eq!(check_subject("a.*"), Err(SubjectError::Wildcard { at: 2 }));
        assert_eq!(check_pattern("a.b*"), Err(SubjectError::PartialWildcard { at: 3 }));
        assert_eq!(check_pattern("a.>.b"), Err(SubjectError::FullWildcardNotLast { at: 2 }));
        assert_eq!(check_pattern(">"), Ok(()));
        let long = "a".repeat(MAX_SUBJECT_LEN + 1);
        assert_eq!(
            check_subject(&long),
            Err(SubjectError::TooLong {
                len: MAX_SUBJECT_LEN + 1
            })
        );
        assert_eq!(
            Subject::from_tokens(["document", "x y"]),
            Err(SubjectError::InvalidChar { at: 10 })
        );
    }

    #[test]
    fn matching_examples() {
        assert!(pattern_matches("document.>", "document.created"));
        assert!(pattern_matches("document.>", "document.created.v2"));
        assert!(!pattern_matches("document.>", "document"));
        assert!(pattern_matches("*.created", "document.created"));
        assert!(!pattern_matches("*.created", "document.created.x"));
        assert!(pattern_matches(">", "a"));
        assert!(!pattern_matches("document.created", "document.created.x"));
        assert!(patterns_overlap("document.*", "*.created"));
        assert!(!patterns_overlap("document.>", "dlq.>"));
        assert!(!patterns_overlap("a.*", "a.b.c"));
    }

    #[test]
    fn const_checks_work_in_const_context() {
        const OK: bool = pattern_matches("document.*", "document.created");
        const _: () = assert!(OK);
        let s = crate::subject!("document.created");
        assert_eq!(s.first_token(), "document");
        let p = crate::subject_pattern!("document.>");
        assert!(p.matches(&s));
    }

    #[test]
    fn serde_validates() {
        let s: Subject = serde_json::from_str("\"document.created\"").unwrap();
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"document.created\"");
        let e = serde_json::from_str::<Subject>("\"document.*\"").unwrap_err();
        assert!(e.to_string().contains("invalid subject"), "{e}");
    }
}
