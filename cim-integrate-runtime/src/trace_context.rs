//! W3C trace context across NATS: the `traceparent` and `tracestate` headers.
//!
//! With the feature `otel`, every message the runtime publishes (events, commands, dead-letter
//! redrives keep the original's) carries `traceparent` (and `tracestate` when the trace has
//! one) of the current `tracing` span, as `tracing-opentelemetry` sees it; and every delivery's
//! `handle` span takes the `traceparent` it carries as its remote parent. So one trace follows
//! a conversation through handlers, commands, saga steps and process transitions across
//! domains. Work that starts from stored state rather than from the message in hand is linked,
//! not parented: a redriven dead letter's `handle` span has a span link to the trace it first
//! ran in.
//!
//! How this maps to the CIM identity: the correlation id names the conversation and the
//! causation id the message that caused this one, both business facts that survive storage,
//! replay and redrive; the trace id and parent span id name the execution that is tracing it
//! (a redrive is a new execution of an old conversation: same correlation id, new trace,
//! linked). The two are independent: the runtime never derives one from the other, and a
//! message without `traceparent` (a foreign publisher, the feature off) is handled as before.
//!
//! Without the feature, nothing is written or read; the parser and formatter here are always
//! compiled (they have no dependency) and are what the feature uses.

use std::fmt;

/// The `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

/// A parsed `traceparent` header (W3C Trace Context, version `00`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (16 bytes, not all zero).
    pub trace_id: [u8; 16],
    /// The parent span id (8 bytes, not all zero).
    pub parent_id: [u8; 8],
    /// The trace flags (bit 0: sampled).
    pub flags: u8,
}

/// Why a `traceparent` value was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TraceParentError {
    /// Not `version-traceid-parentid-flags` with the lengths of version `00`.
    #[error("malformed traceparent: expected `00-<32 hex>-<16 hex>-<2 hex>`")]
    Malformed,
    /// Upper-case or non-hex digits.
    #[error("traceparent fields must be lower-case hex")]
    NotLowerHex,
    /// Version `ff` is forbidden.
    #[error("traceparent version `ff` is invalid")]
    InvalidVersion,
    /// An all-zero trace id or parent id.
    #[error("traceparent has an all-zero trace id or parent id")]
    ZeroId,
}

impl TraceParent {
    /// Parses a `traceparent` value. Version `00` must be exactly 55 characters; a later
    /// version is read by its first four fields (it may append more, as the specification
    /// asks receivers to allow).
    ///
    /// # Errors
    /// What is wrong with it.
    pub fn parse(value: &str) -> Result<Self, TraceParentError> {
        let bytes = value.as_bytes();
        if bytes.len() < 55 || bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return Err(TraceParentError::Malformed);
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff {
            return Err(TraceParentError::InvalidVersion);
        }
        if (version == 0 && bytes.len() != 55) || (version != 0 && bytes.len() > 55 && bytes[55] != b'-') {
            return Err(TraceParentError::Malformed);
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut parent_id = [0u8; 8];
        for (i, b) in parent_id.iter_mut().enumerate() {
            *b = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || parent_id == [0; 8] {
            return Err(TraceParentError::ZeroId);
        }
        Ok(Self {
            trace_id,
            parent_id,
            flags,
        })
    }

    /// Whether the sampled flag is set.
    pub fn sampled(&self) -> bool {
        self.flags & 1 == 1
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("00-")?;
        for b in self.trace_id {
            write!(f, "{b:02x}")?;
        }
        f.write_str("-")?;
        for b in self.parent_id {
            write!(f, "{b:02x}")?;
        }
        write!(f, "-{:02x}", self.flags)
    }
}

fn hex_byte(pair: &[u8]) -> Result<u8, TraceParentError> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(TraceParentError::NotLowerHex),
    };
    Ok(digit(pair[0])? << 4 | digit(pair[1])?)
}

#[cfg(feature = "otel")]
pub(crate) use otel::{adopt, inject};

/// The `traceparent` of the current span, to store beside state that work will later resume
/// from (a saga record); `None` without the feature `otel` or outside a traced span.
pub(crate) fn current() -> Option<String> {
    #[cfg(feature = "otel")]
    {
        otel::current().map(|p| p.to_string())
    }
    #[cfg(not(feature = "otel"))]
    {
        None
    }
}

/// Links `span` to the stored `traceparent` when the span runs in another trace than the one
/// stored (work resumed from stored state after a restart or by another runner); nothing when
/// it continues the same trace, or without the feature `otel`.
pub(crate) fn link_stored(span: &tracing::Span, stored: Option<&str>) {
    #[cfg(feature = "otel")]
    otel::link_stored(span, stored);
    #[cfg(not(feature = "otel"))]
    let _ = (span, stored);
}

#[cfg(feature = "otel")]
mod otel {
    use super::{TRACEPARENT, TRACESTATE, TraceParent};
    use crate::headers::Headers;
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    /// The current span's trace context, if valid.
    pub(crate) fn current() -> Option<TraceParent> {
        current_span_context().map(|sc| parent_of(&sc))
    }

    /// The current span's span context, if valid (an OpenTelemetry layer, inside a span).
    fn current_span_context() -> Option<SpanContext> {
        let sc = tracing::Span::current().context().span().span_context().clone();
        sc.is_valid().then_some(sc)
    }

    /// The `traceparent` naming `sc`.
    fn parent_of(sc: &SpanContext) -> TraceParent {
        TraceParent {
            trace_id: sc.trace_id().to_bytes(),
            parent_id: sc.span_id().to_bytes(),
            flags: sc.trace_flags().to_u8(),
        }
    }

    /// The remote span context `parent` names.
    fn remote(parent: &TraceParent, state: TraceState) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(parent.trace_id),
            SpanId::from_bytes(parent.parent_id),
            TraceFlags::new(parent.flags),
            true,
            state,
        )
    }

    /// See [`super::link_stored`].
    pub(crate) fn link_stored(span: &tracing::Span, stored: Option<&str>) {
        let Some(stored) = stored.and_then(|s| TraceParent::parse(s).ok()) else {
            return;
        };
        let here = span.context();
        let same_trace = here.span().span_context().trace_id().to_bytes() == stored.trace_id;
        if !same_trace {
            span.add_link(remote(&stored, TraceState::default()));
        }
    }

    /// Writes the current span's trace context into `headers` (replacing any there: a message
    /// belongs to the execution that publishes it). Nothing if there is no valid span context
    /// (no OpenTelemetry layer, or outside any span), so headers copied from elsewhere stay.
    pub(crate) fn inject(headers: &mut Headers) {
        let Some(sc) = current_span_context() else {
            return;
        };
        headers.put_unstamped(TRACEPARENT, parent_of(&sc).to_string());
        let state = sc.trace_state().header();
        if state.is_empty() {
            headers.drop_unstamped(TRACESTATE);
        } else {
            headers.put_unstamped(TRACESTATE, state);
        }
    }

    /// The remote span context `headers` carry, if their `traceparent` is valid (an invalid
    /// `tracestate` is dropped, the parent kept).
    fn extract(headers: &Headers) -> Option<SpanContext> {
        let parent = TraceParent::parse(headers.get(TRACEPARENT)?).ok()?;
        let state = headers
            .get(TRACESTATE)
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        Some(remote(&parent, state))
    }

    /// Makes the trace context `headers` carry the parent of `span` (a delivery continues the
    /// trace of the publish), or, for work started from stored state (`linked`: a redriven dead
    /// letter), a span link to it in a trace of its own. A delivery without a valid
    /// `traceparent` starts a trace of its own too, rather than joining whatever span the
    /// consuming loop runs in.
    pub(crate) fn adopt(span: &tracing::Span, headers: &Headers, linked: bool) {
        let parent = match extract(headers) {
            Some(sc) if linked => {
                span.add_link(sc);
                opentelemetry::Context::new()
            }
            Some(sc) => opentelemetry::Context::new().with_remote_span_context(sc),
            None => opentelemetry::Context::new(),
        };
        // Only fails without an OpenTelemetry layer, where there is nothing to parent.
        let _ = span.set_parent(parent);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_specification_example() {
        let p = TraceParent::parse(VALID).expect("valid");
        assert!(p.sampled());
        assert_eq!(p.to_string(), VALID);
    }

    #[test]
    fn rejects_what_the_specification_rejects() {
        let cases = [
            ("", TraceParentError::Malformed),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
                TraceParentError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
                TraceParentError::Malformed,
            ),
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceParentError::NotLowerHex,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::InvalidVersion,
            ),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceParentError::ZeroId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceParentError::ZeroId,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceParentError::Malformed,
            ),
        ];
        for (value, error) in cases {
            assert_eq!(TraceParent::parse(value), Err(error), "{value:?}");
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra";
        assert!(TraceParent::parse(later).is_ok());
    }

    #[test]
    fn never_panics_on_arbitrary_input() {
        let mut s = String::new();
        for c in VALID.chars().chain("é-zZ0\u{0}".chars()).cycle().take(200) {
            s.push(c);
            let _ = TraceParent::parse(&s);
            // Multi-byte characters at the offsets the parser slices.
            let _ = TraceParent::parse(&format!("é{s}"));
        }
    }
}
