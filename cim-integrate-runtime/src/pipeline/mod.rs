//! The per-message pipeline: one stack of layers, one concern each, that every message kind goes
//! through (events, commands, saga starts, process transitions), ending in one `settle`.
//!
//! ```text
//! pull ─► trace ─► record ─► [your layers] ─► dead letter ─► type filter ─► dedup ─► ordered
//!       ─► attempts ─► breaker ─► catch panic + progress ─► decode + invoke      ⇒ Outcome
//! settle(Outcome): ack · nak(delay) · term (after the dead letter is stored) · reply (commands)
//! ```
//!
//! A layer ([`Layer`]) wraps the rest of the stack ([`Dispatch`]) and produces or transforms one
//! [`Outcome`]. The stack of each handler is composed once, when the service starts, by generic
//! nesting (as tower's `ServiceBuilder` composes services), so a message pays for no boxing per
//! layer. Commands run through the same layers with their own terminal (decode + invoke of the
//! command handler) and their own settle (a reply); the event-only layers (type filter, dedup
//! marks, dead letters) are left out of their stack, the result cache takes the place of dedup.
//!
//! Users add layers of their own with [`ServiceBuilder::layer`](crate::service::ServiceBuilder::layer);
//! they sit below outcome recording, so what they do is traced and counted like the rest. A layer
//! can read the received headers and [`propagate`](Message::propagate) some of them into every
//! message the handler publishes, for example a tenant header carried through a cascade:
//!
//! ```
//! use cim_integrate_runtime::handler::{Context, HandlerError, Registration};
//! use cim_integrate_runtime::pipeline::{Dispatch, Layer, Message, Outcome};
//! use cim_integrate_runtime::service::Service;
//! use cim_integrate_runtime::transport::memory::MemoryTransport;
//! use cim_integrate_runtime::transport::{Consumer, ConsumerSpec, StreamSpec, Transport};
//! use cim_integrate_runtime::{Envelope, Subject, SubjectPattern};
//! use std::time::Duration;
//!
//! /// Carries `X-Tenant` from every handled message into everything its handler publishes.
//! #[derive(Clone, Copy, Debug)]
//! struct Tenant;
//!
//! struct TenantDispatch<D>(D);
//!
//! impl<D: Dispatch> Layer<D> for Tenant {
//!     type Dispatch = TenantDispatch<D>;
//!     fn layer(&self, inner: D) -> TenantDispatch<D> {
//!         TenantDispatch(inner)
//!     }
//! }
//!
//! impl<D: Dispatch> Dispatch for TenantDispatch<D> {
//!     async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
//!         if let Some(tenant) = msg.header("X-Tenant").map(str::to_owned)
//!             && msg.propagate("X-Tenant", tenant).is_err()
//!         {
//!             return Outcome::dead_letter_permanent("invalid X-Tenant header");
//!         }
//!         self.0.dispatch(msg).await
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let t = MemoryTransport::new();
//! for domain in ["document", "workflow"] {
//!     t.ensure_stream(&StreamSpec::for_domain(domain, None)?).await?;
//! }
//! // document.created -> (workflow handler publishes) workflow.started
//! let start = Registration::new(
//!     "start",
//!     SubjectPattern::new("document.created")?,
//!     "DocumentCreated",
//!     |b: &[u8]| Ok::<_, std::convert::Infallible>(b.to_vec()),
//!     |ctx: Context, _: Vec<u8>| async move {
//!         let subject = Subject::new("workflow.started").map_err(HandlerError::permanent)?;
//!         ctx.publish_bytes(&subject, "WorkflowStarted", "1.0", "{}").await?;
//!         Ok(())
//!     },
//! );
//! let service = Service::builder(t.clone(), "tenants").layer(Tenant).handler("workflow", start).start().await?;
//!
//! let created = Envelope::root(Subject::new("document.created")?, "{}").header("X-Tenant", "acme")?;
//! t.publish_and_wait(created.into()).await?;
//!
//! // The follow-up carries the tenant without the handler knowing about it.
//! let spec = ConsumerSpec::new("WORKFLOW_EVENTS", "check", SubjectPattern::new("workflow.>")?);
//! let mut consumer = t.consumer(&spec).await?;
//! let started = tokio::time::timeout(Duration::from_secs(5), consumer.next()).await??;
//! assert_eq!(started.headers().get("X-Tenant"), Some("acme"));
//! # service.shutdown(Duration::from_secs(1)).await;
//! # Ok(())
//! # }
//! ```

pub(crate) mod attempts;
pub(crate) mod breaker;
pub(crate) mod catch_panic;
pub(crate) mod command;
pub(crate) mod dead_letter;
pub(crate) mod dedup;
pub(crate) mod filter;
pub(crate) mod invoke;
mod message;
pub(crate) mod ordered;
pub(crate) mod record;
pub(crate) mod run;
pub(crate) mod settle;
pub(crate) mod step;
#[cfg(test)]
pub(crate) mod test_raw;
pub(crate) mod trace;

pub use attempts::Attempts;
pub use breaker::Breaker;
pub use catch_panic::CatchPanic;
pub use command::{CommandInvoke, ResultCache};
pub use dead_letter::DeadLetter;
pub use dedup::Dedup;
pub use filter::Filter;
pub use invoke::Invoke;
pub use message::{Message, Received};
pub use ordered::Ordered;
pub use record::{HandlerCounters, HandlerStats, Record};
pub use trace::Trace;

use crate::monitor::DeadLetterReason;
use std::future::Future;
use std::time::Duration;

/// What became of one message, as a layer sees it on the way back up the stack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Handled: acknowledge (commands: reply `accepted`).
    Succeeded,
    /// Handled before by this handler: acknowledge without running it again (commands: reply
    /// with the remembered answer).
    Duplicate,
    /// Not this handler's event type (a wide pattern): acknowledge without running.
    Skipped,
    /// The handler failed transiently or panicked. The attempts layer turns it into
    /// [`Outcome::Retry`] or, once the attempts are spent, a dead letter.
    Failed {
        /// What went wrong.
        reason: String,
        /// Do not retry sooner than this (a breaker that just opened sets it).
        retry_after: Duration,
    },
    /// Run again after `delay` (redelivery, or in place for ordered handlers).
    Retry {
        /// What went wrong.
        reason: String,
        /// When to try again.
        delay: Duration,
    },
    /// Not run now, and not an attempt: try again after `delay`.
    Deferred {
        /// Why.
        reason: String,
        /// When to try again.
        delay: Duration,
        /// What deferred it.
        cause: Deferral,
    },
    /// Will never succeed: to be dead-lettered (the dead-letter layer stores it).
    DeadLetter {
        /// The reason's class (a metric label).
        kind: DeadLetterReason,
        /// The reason, for the dead letter's header.
        reason: String,
    },
    /// Stored in the dead-letter stream: terminate the original.
    DeadLettered {
        /// The reason's class.
        kind: DeadLetterReason,
        /// The reason.
        reason: String,
    },
    /// A command handler refused the command (a business answer, final).
    Rejected {
        /// Why, for the sender.
        reason: String,
    },
}

impl Outcome {
    /// A permanent failure with `reason`: dead-lettered at once.
    pub fn dead_letter_permanent(reason: impl Into<String>) -> Self {
        Self::DeadLetter {
            kind: DeadLetterReason::Permanent,
            reason: reason.into(),
        }
    }

    /// The outcome's label in metrics and logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Duplicate => "duplicate",
            Self::Skipped => "skipped",
            Self::Failed { .. } | Self::Retry { .. } => "retried",
            Self::Deferred { .. } => "deferred",
            Self::DeadLetter { .. } | Self::DeadLettered { .. } => "dead_lettered",
            Self::Rejected { .. } => "rejected",
        }
    }
}

/// What deferred a message. More causes may come (the third, `Stopping`, did): a `match` on it
/// outside this crate needs a wildcard arm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Deferral {
    /// A circuit breaker is open.
    Breaker,
    /// Infrastructure the pipeline needs (the dedup store, the dead-letter stream, the result
    /// cache) is unavailable. Transient: never dead-lettered.
    Unavailable,
    /// The service stopped while the message waited before its handler (its dedup mark read,
    /// a place among the handler's runs): given back to the stream unstarted.
    Stopping,
}

/// The rest of a stack, from one layer down: handles a message and says what became of it.
///
/// Implement it with `async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome`.
pub trait Dispatch: Send + Sync {
    /// Handles `msg`.
    fn dispatch<'a>(&'a self, msg: &'a mut Message<'_>) -> impl Future<Output = Outcome> + Send + 'a;
}

/// Wraps the rest of a stack in one concern (tower's `Layer`).
pub trait Layer<D> {
    /// The wrapped stack.
    type Dispatch: Dispatch;
    /// Wraps `inner`.
    fn layer(&self, inner: D) -> Self::Dispatch;
}

/// The layer that adds nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

impl<D: Dispatch> Layer<D> for Passthrough {
    type Dispatch = D;
    fn layer(&self, inner: D) -> D {
        inner
    }
}

/// Two layers, `outer` around `inner` (tower's `Stack`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Stack<Inner, Outer> {
    inner: Inner,
    outer: Outer,
}

impl<Inner, Outer> Stack<Inner, Outer> {
    /// `outer` wrapped around `inner`.
    pub fn new(inner: Inner, outer: Outer) -> Self {
        Self { inner, outer }
    }
}

impl<D, Inner: Layer<D>, Outer: Layer<Inner::Dispatch>> Layer<D> for Stack<Inner, Outer> {
    type Dispatch = Outer::Dispatch;
    fn layer(&self, inner: D) -> Self::Dispatch {
        self.outer.layer(self.inner.layer(inner))
    }
}
