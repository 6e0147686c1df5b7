//! What `#[subscribe]` and `#[handlers]` expand into. Not public API: the macros call these
//! through `::cim_integrate::__private`, so expansions stay small and the logic stays here.

use super::{HandlerError, HandlerOptions, Registration};
use crate::event::DomainEvent;
use crate::handler::Context;
use crate::subject::SubjectPattern;
use std::future::Future;
use std::time::Duration;

/// One handler of event type `E` on a pattern literal the macro has already checked.
pub fn registration<E, F, Fut>(name: &'static str, pattern: &'static str, options: HandlerOptions, f: F) -> Registration
where
    E: DomainEvent,
    F: Fn(Context, E) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    Registration::new(name, SubjectPattern::__from_checked_literal(pattern), E::TYPE_NAME, E::decode, f)
        .with_options(options)
}

/// Pins a handler's future output to `Result<(), HandlerError>` (the macro spans this call on
/// the handler's return type, so a wrong one is reported there).
pub fn handler_output<F: Future<Output = Result<(), HandlerError>>>(f: F) -> F {
    f
}

/// Requires `E: DomainEvent` (spanned on the handler's event parameter).
pub const fn assert_event<E: DomainEvent>() {}

/// A duration from milliseconds (the macro parses `"500ms"`, `"2s"`, `"1m"` at compile time).
pub const fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}
