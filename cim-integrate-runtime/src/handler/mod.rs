//! Event handlers: what a handler returns, how it is configured, and how it is registered.
//!
//! A handler is an async function from a [`Context`] and a decoded event to
//! `Result<(), HandlerError>`. [`Registration`] type-erases one handler (its name, its subject
//! pattern, its decoder, its options); a [`HandlerSet`] hands a group of them to a
//! [`Service`](crate::service::Service). The `#[subscribe]` macro generates exactly these calls;
//! the dispatch loop itself lives in [`crate::service`].

pub(crate) mod context;
#[doc(hidden)]
pub mod macro_support;

pub use context::{Context, PublishError};

use crate::breaker::BreakerSettings;
use crate::subject::SubjectPattern;
use crate::topology::EventRef;
use crate::transport::DeliverPolicy;
use bytes::Bytes;
use futures::future::BoxFuture;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// A boxed error, as handlers return them.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How a handler failed, which decides what happens to the message.
///
/// Exhaustive on purpose: retry or never is the whole contract between a handler and the
/// pipeline, so a `match` on it needs no wildcard arm.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    /// Worth retrying (a timeout, an unavailable dependency): the message is redelivered after
    /// the retry policy's back-off, until the attempts are spent; then it is dead-lettered.
    #[error("transient: {0}")]
    Transient(#[source] BoxError),
    /// Will never succeed (invalid data, a broken invariant): dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(#[source] BoxError),
}

impl HandlerError {
    /// A transient failure.
    pub fn transient(e: impl Into<BoxError>) -> Self {
        Self::Transient(e.into())
    }
    /// A permanent failure.
    pub fn permanent(e: impl Into<BoxError>) -> Self {
        Self::Permanent(e.into())
    }
    /// `true` for [`HandlerError::Permanent`].
    pub fn is_permanent(&self) -> bool {
        matches!(self, Self::Permanent(_))
    }
}

impl From<PublishError> for HandlerError {
    /// A publish that can never succeed (an event that cannot be encoded, an invalid subject, a
    /// payload over the limit, an invalid header: see [`TransportError::is_permanent`]) is
    /// permanent: dead-lettered at once. Any other failed publish is transient: the handler is
    /// retried, and its derived message ids make the retried publishes idempotent.
    ///
    /// [`TransportError::is_permanent`]: crate::transport::TransportError::is_permanent
    fn from(e: PublishError) -> Self {
        let permanent = match &e {
            PublishError::Encode { .. } | PublishError::Subject(_) => true,
            PublishError::Transport(t) => t.is_permanent(),
        };
        if permanent {
            Self::Permanent(Box::new(e))
        } else {
            Self::Transient(Box::new(e))
        }
    }
}

impl From<crate::event::EncodeError> for HandlerError {
    /// A value that cannot be encoded never will be: permanent. This lets a process handler
    /// write `ctx.send(&command)?` and `ctx.publish(&event)?` (they only queue, so the one way
    /// they fail is encoding).
    fn from(e: crate::event::EncodeError) -> Self {
        Self::Permanent(Box::new(e))
    }
}

/// Marks the error of a `Result` as transient or permanent: `repo.save(x).await.transient()?`.
pub trait ResultExt<T> {
    /// Maps the error to [`HandlerError::Transient`].
    fn transient(self) -> Result<T, HandlerError>;
    /// Maps the error to [`HandlerError::Permanent`].
    fn permanent(self) -> Result<T, HandlerError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn transient(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::transient)
    }
    fn permanent(self) -> Result<T, HandlerError> {
        self.map_err(HandlerError::permanent)
    }
}

/// How often and how patiently a failing handler is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Most runs of the handler for one message (first run included); then dead letter.
    pub max_attempts: u32,
    /// Delay before the second attempt.
    pub initial_backoff: Duration,
    /// Each further delay is multiplied by this.
    pub multiplier: u32,
    /// Upper bound of a delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 1 s, 2 s, 4 s, 8 s apart.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            initial_backoff: Duration::from_secs(1),
            multiplier: 2,
            max_backoff: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// `attempts` attempts with the default back-off.
    pub fn attempts(max_attempts: u32) -> Self {
        Self {
            max_attempts: max_attempts.max(1),
            ..Self::default()
        }
    }
    /// Sets the back-off: `initial`, multiplied by `multiplier` each time, at most `max`.
    pub fn backoff(mut self, initial: Duration, multiplier: u32, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.multiplier = multiplier.max(1);
        self.max_backoff = max.max(initial);
        self
    }
    /// The delay after the `attempt`-th failed attempt (1-based).
    pub fn delay(&self, attempt: u64) -> Duration {
        let exp = u32::try_from(attempt.saturating_sub(1)).unwrap_or(u32::MAX).min(32);
        let factor = self.multiplier.checked_pow(exp).unwrap_or(u32::MAX);
        self.initial_backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }
}

/// Per-handler settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerOptions {
    /// Durable consumer name; default `{set}-{handler}` (stable across releases as long as
    /// the names are).
    pub durable: Option<String>,
    /// Retries and back-off.
    pub retry: RetryPolicy,
    /// Most runs of the handler at once (at least 1). A message whose handler succeeded no
    /// longer counts while its dedup mark is written and it is acknowledged, nor does one while
    /// its mark is read from a store over the network or while it waits for a copy of its id in
    /// flight (unless `ordered`; reads and copies count with `spawn`); those wait beside up to
    /// the prefetch, 8 x `concurrency` in all.
    pub concurrency: usize,
    /// Where a new durable starts.
    pub deliver: DeliverPolicy,
    /// Keep per-subject order: one message at a time, and a transient failure is retried in
    /// place (blocking later messages) instead of being redelivered after later ones.
    pub ordered: bool,
    /// How long one run may take before the message is considered lost and redelivered. Long
    /// runs are kept alive with progress signals, so this bounds a crashed process, not a slow
    /// handler. It also bounds how long a delivery may wait in this process's prefetch (8 x
    /// `concurrency`, plus up to one and a half pull batches) before it is delivered again: over
    /// a backlog, a handler slower than about `ack_wait / 20` per message (1.5 s at the default)
    /// needs a longer `ack_wait` (redeliveries are absorbed by dedup, but cost work).
    pub ack_wait: Duration,
    /// A circuit breaker of this handler's own (see [`crate::breaker`]): its transient failures and
    /// panics count as failures; while it is open, messages are not run but naked with the rest
    /// of the cool-down as delay, and such deferrals do not count as attempts. `None` (the
    /// default): no breaker.
    pub breaker: Option<BreakerSettings>,
    /// What the handler publishes, for the [topology](crate::topology) (publishes seen at run
    /// time are recorded too; declaring them makes the topology complete before they happen).
    pub publishes: Vec<EventRef>,
    /// Run each message as its own task instead of polling it in the consumer's loop: for
    /// CPU-heavy handlers, so that several messages use several cores. Default `false` (no task
    /// per message).
    pub spawn: bool,
}

impl Default for HandlerOptions {
    fn default() -> Self {
        Self {
            durable: None,
            retry: RetryPolicy::default(),
            concurrency: 16,
            deliver: DeliverPolicy::All,
            ordered: false,
            ack_wait: Duration::from_secs(30),
            breaker: None,
            publishes: Vec::new(),
            spawn: false,
        }
    }
}

/// A handler's future.
pub type HandlerFuture = BoxFuture<'static, Result<(), HandlerError>>;
type Invoke = dyn Fn(Context, &Bytes) -> Result<HandlerFuture, String> + Send + Sync;

/// One handler, type-erased: name, subject pattern, event type, decoder + function, options.
#[derive(Clone)]
pub struct Registration {
    pub(crate) name: String,
    pub(crate) pattern: SubjectPattern,
    pub(crate) event_type: &'static str,
    /// For typed handlers: the event's own subject (see [`Registration::only_event`]).
    pub(crate) event_subject: Option<&'static str>,
    pub(crate) options: HandlerOptions,
    pub(crate) invoke: Arc<Invoke>,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("event_type", &self.event_type)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// A handler named `name` (`[A-Za-z0-9_-]+`) for messages matching `pattern`, decoding the
    /// payload with `decode` into `E` and running `handler`. A payload `decode` rejects is
    /// dead-lettered with the decoder's message as reason.
    pub fn new<E, D, DE, F, Fut>(
        name: impl Into<String>,
        pattern: SubjectPattern,
        event_type: &'static str,
        decode: D,
        handler: F,
    ) -> Self
    where
        E: Send + 'static,
        D: Fn(&[u8]) -> Result<E, DE> + Send + Sync + 'static,
        DE: fmt::Display,
        F: Fn(Context, E) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
    {
        let invoke = move |ctx: Context, payload: &Bytes| -> Result<HandlerFuture, String> {
            let event = decode(payload).map_err(|e| e.to_string())?;
            Ok(Box::pin(handler(ctx, event)))
        };
        Self {
            name: name.into(),
            pattern,
            event_type,
            event_subject: None,
            options: HandlerOptions::default(),
            invoke: Arc::new(invoke),
        }
    }

    /// Makes the handler typed: it runs only for messages on `subject` (its event's own subject,
    /// without deployment prefix) or whose `X-Event-Type` header names its event type. Other
    /// messages its pattern matches (`document.*` also matches `document.deleted`) are
    /// acknowledged without running and counted as skipped, instead of failing to decode and
    /// being dead-lettered. `#[subscribe]` sets this for every handler.
    pub fn only_event(mut self, subject: &'static str) -> Self {
        self.event_subject = Some(subject);
        self
    }

    /// `true` if this handler should run for a message on `subject` (prefix removed) carrying
    /// `event_type` (the `X-Event-Type` header, if any). Untyped handlers take everything.
    pub fn accepts(&self, subject: &str, event_type: Option<&str>) -> bool {
        match self.event_subject {
            None => true,
            Some(own) => subject == own || event_type.is_some_and(|t| t == self.event_type),
        }
    }

    /// Replaces the options.
    pub fn with_options(mut self, options: HandlerOptions) -> Self {
        self.options = options;
        self
    }

    /// Declares that the handler publishes `event` (added to
    /// [`HandlerOptions::publishes`]; call it after [`with_options`](Self::with_options)).
    pub fn publishes(mut self, event: EventRef) -> Self {
        self.options.publishes.push(event);
        self
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The subscribed pattern.
    pub fn pattern(&self) -> &SubjectPattern {
        &self.pattern
    }
    /// The handled event type's name.
    pub fn event_type(&self) -> &'static str {
        self.event_type
    }
    /// The options.
    pub fn options(&self) -> &HandlerOptions {
        &self.options
    }
}

/// A group of handlers, usually the methods of one domain service, registered together.
/// `#[subscribe]` on the methods of an `impl` block generates this.
pub trait HandlerSet: Send + Sync + 'static {
    /// The set's name, usually its domain (`workflow`): the prefix of durable names.
    fn set_name(&self) -> &str;
    /// The handlers.
    fn registrations(self: Arc<Self>) -> Vec<Registration>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy::attempts(10).backoff(Duration::from_millis(100), 3, Duration::from_secs(2));
        let d: Vec<_> = (1..=6).map(|a| p.delay(a).as_millis()).collect();
        assert_eq!(d, [100, 300, 900, 2000, 2000, 2000]);
        assert_eq!(p.delay(u64::MAX), Duration::from_secs(2));
    }

    #[test]
    fn an_encode_error_is_permanent() {
        fn send() -> Result<(), HandlerError> {
            Err(crate::event::EncodeError::NotAnObject {
                type_name: "Tuple",
                found: "[1,2]".into(),
            })?;
            Ok(())
        }
        let e = send().unwrap_err();
        assert!(e.is_permanent());
        assert!(e.to_string().contains("`Tuple`"), "{e}");
    }

    #[test]
    fn result_ext_classifies() {
        let r: Result<(), std::io::Error> = Err(std::io::Error::other("db down"));
        assert!(!r.transient().unwrap_err().is_permanent());
        let r: Result<(), &str> = Err("bad");
        assert!(r.permanent().unwrap_err().is_permanent());
    }
}
