//! What the server refused this connection: a publish to a subject the user may not publish to
//! is not answered (nats-server drops it and sends `-ERR 'Permissions Violation for Publish to
//! "<subject>"'`, which async-nats hands to the connection's event callback, not to the
//! publish). The callback records the subject here, so that a publish or a JetStream request
//! that then times out is reported as [`PermissionDenied`](crate::transport::TransportError::PermissionDenied)
//! instead of a timeout, and not sent again.

use crate::throttle::{Throttle, monotonic_ms};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// How many refused subjects are kept (the most recent).
const KEPT: usize = 64;

/// How often, at most, a refusal is logged at `WARN` (the rest at `DEBUG`), in milliseconds.
const WARN_EVERY_MS: u64 = 10_000;

/// The subjects the server recently refused this connection to publish to.
#[derive(Debug, Default)]
pub(crate) struct Denials {
    /// Set by the first refusal: until then a timed-out publish looks no further.
    any: AtomicBool,
    /// `(when, subject)`, oldest first, in [`monotonic_ms`].
    recent: Mutex<VecDeque<(u64, Box<str>)>>,
    warning: Throttle,
}

impl Denials {
    /// Notes a server error; `true` if it was a refused publish.
    pub(crate) fn record(&self, error: &str) -> bool {
        let Some(subject) = refused_publish(error) else {
            return false;
        };
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == KEPT {
                recent.pop_front();
            }
            recent.push_back((monotonic_ms(), Box::from(subject)));
        }
        self.any.store(true, Ordering::Release);
        if self.warning.pass(WARN_EVERY_MS) {
            tracing::warn!(
                subject,
                "NATS refused a publish: the connection's user may not publish to this subject (one such warning every 10 s)"
            );
        } else {
            tracing::debug!(subject, "NATS refused a publish");
        }
        true
    }

    /// Whether the server refused a publish to `subject` at or after `since` (in
    /// [`monotonic_ms`]).
    pub(crate) fn refused(&self, subject: &str, since: u64) -> bool {
        self.find(since, |s| s == subject).is_some()
    }

    /// The refused subject ending in `tail` (a key-value write's `$KV.<bucket>.<key>`, which
    /// async-nats may prefix), if the server refused one at or after `since`.
    pub(crate) fn refused_ending(&self, tail: &str, since: u64) -> Option<String> {
        self.find(since, |s| s.ends_with(tail))
    }

    /// The latest subject refused at or after `since` that `wanted` accepts.
    fn find(&self, since: u64, wanted: impl Fn(&str) -> bool) -> Option<String> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let recent = self.recent.lock().ok()?;
        recent
            .iter()
            .rev()
            .take_while(|(at, _)| *at >= since)
            .find(|(_, s)| wanted(s))
            .map(|(_, s)| s.to_string())
    }
}

/// The subject of a `Permissions Violation for Publish to "<subject>"` server error.
fn refused_publish(error: &str) -> Option<&str> {
    const PREFIX: &str = "permissions violation for publish to ";
    let at = error.to_ascii_lowercase().find(PREFIX)?;
    let rest = error.get(at + PREFIX.len()..)?.trim();
    let subject = rest.trim_matches(|c| c == '"' || c == '\'');
    (!subject.is_empty() && !subject.contains(char::is_whitespace)).then_some(subject)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_refused_subject_as_servers_write_it() {
        for (text, subject) in [
            (
                r#"Permissions Violation for Publish to "search.indexed""#,
                Some("search.indexed"),
            ),
            (
                r#"permissions violation for publish to "$JS.API.STREAM.CREATE.X""#,
                Some("$JS.API.STREAM.CREATE.X"),
            ),
            (
                "Permissions Violation for Publish to search.indexed",
                Some("search.indexed"),
            ),
            (r#"Permissions Violation for Subscription to "_INBOX.>""#, None),
            ("Permissions Violation for Publish to \"\"", None),
            ("maximum payload violation", None),
        ] {
            assert_eq!(refused_publish(text), subject, "{text}");
        }
    }

    #[test]
    fn a_refusal_counts_from_when_it_was_recorded() {
        let d = Denials::default();
        let before = monotonic_ms();
        assert!(!d.refused("a.b", 0));
        assert!(d.record(r#"Permissions Violation for Publish to "a.b""#));
        assert!(d.refused("a.b", before));
        assert!(!d.refused("a.c", before));
        assert!(
            !d.refused("a.b", monotonic_ms() + 1),
            "a later publish is not refused by it"
        );
        for i in 0..KEPT {
            d.record(&format!(r#"Permissions Violation for Publish to "x.{i}""#));
        }
        assert!(!d.refused("a.b", before), "only the last {KEPT} are kept");
    }
}
