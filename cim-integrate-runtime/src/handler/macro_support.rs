//! What `#[subscribe]` and `#[handlers]` expand into. Not public API: the macros call these
//! through `::cim_integrate::__private`, so expansions stay small and the logic stays here.

use super::{HandlerError, HandlerOptions, Registration};
use crate::event::{DecodeError, HandledEvent};
use crate::handler::Context;
use crate::subject::SubjectPattern;
use std::future::Future;
use std::time::Duration;

/// What a handler needs of its event type, read once in a `const` that the macro spans on the
/// event parameter: the one place `E: DomainEvent` is required, so a type that is not an event
/// gives exactly one error, there.
pub struct EventInfo<E> {
    /// `Versioned::TYPE_NAME`.
    pub type_name: &'static str,
    /// `DomainEvent::SUBJECT`.
    pub subject: &'static str,
    /// `Versioned::decode`.
    pub decode: fn(&[u8]) -> Result<E, DecodeError>,
    /// `DomainEvent::__STUB`: the type's declaration failed to compile (its error is reported
    /// there), so checks against its subject are skipped.
    pub stub: bool,
}

/// The compile-time check that a handler on `pattern` can receive `E`: fails the `const` that
/// calls it with `message` when the event's subject can never match (never for the stub of an
/// event whose declaration has an error, so that the error is not repeated per handler). One
/// call per handler instead of an `assert!`.
///
/// `pattern` is a literal the macro has already checked with the same rule as
/// [`check_pattern`](crate::subject::check_pattern), so it is not checked again here: this runs
/// in the compile-time interpreter once per handler, where each pass over a subject counts. The
/// subject is still checked (an `impl DomainEvent` written by hand may carry any string), in the
/// same pass as the match.
#[track_caller]
pub const fn check_can_match<E>(pattern: &str, event: &EventInfo<E>, message: &str) {
    if !event.stub && !crate::subject::valid_pattern_matches(pattern, event.subject) {
        panic!("{}", message)
    }
}

/// The [`EventInfo`] of `E`.
pub const fn event_info<E: HandledEvent>() -> EventInfo<E> {
    EventInfo {
        type_name: E::TYPE_NAME,
        subject: E::SUBJECT,
        decode: E::decode,
        stub: E::__STUB,
    }
}

/// One handler on a pattern literal the macro has already checked.
pub fn registration<E, F, Fut>(
    name: &'static str,
    pattern: &'static str,
    event: &EventInfo<E>,
    options: HandlerOptions,
    f: F,
) -> Registration
where
    E: Send + 'static,
    F: Fn(Context, E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Registration::new(
        name,
        SubjectPattern::__from_checked_literal(pattern),
        event.type_name,
        event.decode,
        f,
    )
    .with_options(options)
    .only_event(event.subject)
}

/// A duration from milliseconds (the macro parses `"500ms"`, `"2s"`, `"1m"` at compile time).
pub const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
