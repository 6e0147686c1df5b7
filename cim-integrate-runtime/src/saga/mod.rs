//! Sagas: steps run in order, each success records its compensation, a failure runs the
//! compensations of the completed steps in reverse, and every transition is persisted so that a
//! crash never leaves a saga half done.
//!
//! A saga type implements [`Saga`]: its persisted data type, its name and its step table (the
//! `#[saga]` macro of the `cim-integrate` facade writes this impl from an `impl` block; it can be
//! written by hand). A [`SagaRunner`] drives instances of it:
//!
//! - **Persisted log.** Each instance is one [`SagaRecord`] in the key-value bucket
//!   `cim_saga_{name}`, keyed by the saga id: status, data, one [`StepRecord`] per step (state,
//!   attempts, last error), the lifecycle events not yet published (an outbox), the owning runner
//!   and its lease. The runner writes it before every step attempt (intent) and after it
//!   (outcome), and likewise around every compensation, always with revision compare-and-set: a
//!   runner whose write loses a race stops at once ([`SagaOutcome::Lost`]), so two runners never
//!   drive one saga.
//! - **Reverse compensation.** When a step fails for good (a permanent error, or its retries are
//!   spent), the compensations of the completed steps run from the last to the first, each with
//!   its own timeout and retries. Steps declared without compensation are skipped.
//! - **Needs attention.** A compensation that keeps failing puts the saga in
//!   [`SagaStatus::NeedsAttention`]: it stays in the bucket, is listed by
//!   [`SagaRunner::needs_attention`], is left alone by [`SagaRunner::resume`], and is driven on by
//!   [`SagaRunner::retry_compensation`] once someone fixed the cause.
//! - **Idempotency keys.** Every step and compensation sees a key that does not change between
//!   attempts or runs ([`StepContext::idempotency_key`]), and events it publishes through
//!   [`StepContext::context`] get message ids derived from that key; a step re-run after a crash
//!   uses them to avoid repeating a side effect that already happened.
//! - **Lifecycle events.** `saga.{name}.{kind}` on the `SAGA_EVENTS` stream ([`SagaEvent`]),
//!   carrying the correlation id of the message that started the saga, with deterministic message
//!   ids so that a re-publish after a crash is dropped by JetStream's duplicate window.
//! - **Resume.** [`SagaRunner::resume_concurrently`] finds every unfinished instance in the bucket
//!   and drives it to completed or fully compensated, a bounded number at once
//!   ([`SagaRunner::resume`] with [`DEFAULT_RESUME_CONCURRENCY`]);
//!   [`SagaRunner::resume_in_background`] runs that beside a consuming service, so start-up never
//!   waits for it.
//! - **Bounded labels.** Publishes of steps are labelled `{saga}.{step}` in metrics and spans,
//!   never by saga id.
//!
//! ```
//! use cim_integrate_runtime::handler::HandlerError;
//! use cim_integrate_runtime::saga::{Saga, SagaOutcome, SagaRunner, Step, StepContext, StepFuture};
//! use cim_integrate_runtime::transport::memory::MemoryTransport;
//!
//! #[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
//! struct Publishing { published: bool }
//!
//! struct DocumentPublishing;
//!
//! impl DocumentPublishing {
//!     async fn publish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
//!         ctx.data_mut().published = true;
//!         Ok(())
//!     }
//!     async fn unpublish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
//!         ctx.data_mut().published = false;
//!         Ok(())
//!     }
//! }
//!
//! impl Saga for DocumentPublishing {
//!     type Data = Publishing;
//!     const NAME: &'static str = "document_publishing";
//!     fn steps() -> Vec<Step<Self>> {
//!         fn publish<'a>(s: &'a DocumentPublishing, c: &'a mut StepContext<Publishing>) -> StepFuture<'a> {
//!             Box::pin(s.publish(c))
//!         }
//!         fn unpublish<'a>(s: &'a DocumentPublishing, c: &'a mut StepContext<Publishing>) -> StepFuture<'a> {
//!             Box::pin(s.unpublish(c))
//!         }
//!         vec![Step::new("publish", publish).compensate("unpublish", unpublish)]
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let runner = SagaRunner::builder(MemoryTransport::new(), DocumentPublishing).build().await?;
//! let outcome = runner.start("doc-1", Publishing::default()).await?;
//! assert_eq!(outcome, SagaOutcome::Completed);
//! assert!(runner.status("doc-1").await?.expect("persisted").data.published);
//! # Ok::<(), cim_integrate_runtime::saga::SagaError>(())
//! # }).unwrap();
//! ```

mod context;
mod events;
pub(crate) mod record;
mod runner;
mod settling;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "testing")]
pub mod fixture;

pub use context::StepContext;
pub use events::{LifecycleEvents, SAGA_EVENT_TYPE, SAGA_EVENT_VERSION, SAGA_EVENTS_DOMAIN, SagaEvent, SagaEventKind};
pub use record::{RECORD_FORMAT, RecordFormat, SagaRecord, SagaStatus, StepRecord, StepState};
#[cfg(feature = "testing")]
pub use runner::{CrashPoint, FaultHook, Moment, Write};
pub use runner::{
    DEFAULT_LEASE, DEFAULT_RESCAN_INTERVAL, DEFAULT_RESUME_CONCURRENCY, DEFAULT_SETTLED_RETENTION, ResumeReport,
    SagaError, SagaOutcome, SagaRunner, SagaRunnerBuilder,
};

// For `ops` (NATS only).
#[cfg(feature = "nats")]
pub(crate) use record::decode as decode_record;
#[cfg(feature = "nats")]
pub(crate) use runner::emit as emit_event;

use crate::handler::{HandlerError, RetryPolicy};
use futures::future::BoxFuture;
use std::time::Duration;

/// The future of a step or compensation.
pub type StepFuture<'a> = BoxFuture<'a, Result<(), HandlerError>>;

/// A step or compensation, as a plain function pointer: the saga (its dependencies) and the
/// step's context (the saga's data, ids, publishing).
pub type StepFn<S> = for<'a> fn(&'a S, &'a mut StepContext<<S as Saga>::Data>) -> StepFuture<'a>;

/// A saga type: persisted data, a name, and an ordered table of steps.
///
/// Generated by `#[saga]`; the loop that runs the table lives in [`SagaRunner`].
pub trait Saga: Send + Sync + Sized + 'static {
    /// The saga's state, persisted with every transition (serde, JSON).
    type Data: serde::Serialize + serde::de::DeserializeOwned + Clone + Send + Sync + 'static;
    /// The saga's name: `[A-Za-z0-9_-]+`; names the bucket (`cim_saga_{NAME}`) and the lifecycle
    /// subjects (`saga.{NAME}.*`). Persisted instances are found by it, so keep it stable.
    const NAME: &'static str;
    /// The steps, in the order they run.
    fn steps() -> Vec<Step<Self>>;
}

/// How long one attempt may take and how often it is retried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepPolicy {
    /// An attempt that takes longer fails (transiently) and is retried.
    pub timeout: Duration,
    /// Attempts and back-off. Attempts interrupted by a crash count.
    pub retry: RetryPolicy,
}

impl StepPolicy {
    /// The default for steps: 30 s per attempt, 3 attempts, 1 s then 2 s apart.
    pub fn step_default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::attempts(3).backoff(Duration::from_secs(1), 2, Duration::from_secs(30)),
        }
    }
    /// The default for compensations: 30 s per attempt, 5 attempts, 1 s doubling to 30 s apart.
    pub fn compensation_default() -> Self {
        Self {
            timeout: Duration::from_secs(30),
            retry: RetryPolicy::attempts(5).backoff(Duration::from_secs(1), 2, Duration::from_secs(30)),
        }
    }
}

/// What undoes a step.
pub enum Compensation<S: Saga> {
    /// Not declared: a [`SagaRunner`] refuses such a table ([`SagaError::Definition`]).
    Undeclared,
    /// Undone by this function.
    By {
        /// The compensation's name (its method's name).
        name: &'static str,
        /// The function.
        run: StepFn<S>,
    },
    /// Needs no compensation, for this reason (a read-only step, a final pivot step).
    None {
        /// Why.
        reason: &'static str,
    },
}

impl<S: Saga> Clone for Compensation<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Undeclared => Self::Undeclared,
            Self::By { name, run } => Self::By { name, run: *run },
            Self::None { reason } => Self::None { reason },
        }
    }
}

impl<S: Saga> std::fmt::Debug for Compensation<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Undeclared => f.write_str("Undeclared"),
            Self::By { name, .. } => f.debug_struct("By").field("name", name).finish_non_exhaustive(),
            Self::None { reason } => f.debug_struct("None").field("reason", reason).finish(),
        }
    }
}

/// One row of a saga's step table.
pub struct Step<S: Saga> {
    pub(crate) name: &'static str,
    pub(crate) run: StepFn<S>,
    pub(crate) compensation: Compensation<S>,
    pub(crate) policy: StepPolicy,
    pub(crate) compensation_policy: StepPolicy,
}

impl<S: Saga> Clone for Step<S> {
    fn clone(&self) -> Self {
        Self {
            name: self.name,
            run: self.run,
            compensation: self.compensation.clone(),
            policy: self.policy.clone(),
            compensation_policy: self.compensation_policy.clone(),
        }
    }
}

impl<S: Saga> std::fmt::Debug for Step<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Step")
            .field("name", &self.name)
            .field("compensation", &self.compensation)
            .field("policy", &self.policy)
            .field("compensation_policy", &self.compensation_policy)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> Step<S> {
    /// A step named `name` (`[A-Za-z0-9_-]+`, unique in the saga) running `run`, with the default
    /// policies and no compensation declared yet.
    pub fn new(name: &'static str, run: StepFn<S>) -> Self {
        Self {
            name,
            run,
            compensation: Compensation::Undeclared,
            policy: StepPolicy::step_default(),
            compensation_policy: StepPolicy::compensation_default(),
        }
    }
    /// Undone by `run`, named `name`.
    pub fn compensate(mut self, name: &'static str, run: StepFn<S>) -> Self {
        self.compensation = Compensation::By { name, run };
        self
    }
    /// Needs no compensation, for `reason`.
    pub fn no_compensation(mut self, reason: &'static str) -> Self {
        self.compensation = Compensation::None { reason };
        self
    }
    /// Sets the timeout of one attempt. It counts from the attempt's first wait: a step that
    /// finishes without waiting (its first poll) is never timed out, and one that first runs
    /// blocking code has it counted from its first `.await` that is pending.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.policy.timeout = timeout;
        self
    }
    /// Sets the retry policy.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.policy.retry = retry;
        self
    }
    /// Sets the number of attempts (keeping the back-off).
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.policy.retry.max_attempts = attempts.max(1);
        self
    }
    /// Sets the timeout of one compensation attempt.
    pub fn compensation_timeout(mut self, timeout: Duration) -> Self {
        self.compensation_policy.timeout = timeout;
        self
    }
    /// Sets the compensation's retry policy.
    pub fn compensation_retry(mut self, retry: RetryPolicy) -> Self {
        self.compensation_policy.retry = retry;
        self
    }
    /// Sets the number of compensation attempts (keeping the back-off).
    pub fn compensation_attempts(mut self, attempts: u32) -> Self {
        self.compensation_policy.retry.max_attempts = attempts.max(1);
        self
    }
    /// The step's name.
    pub fn name(&self) -> &'static str {
        self.name
    }
    /// What undoes it.
    pub fn compensation(&self) -> &Compensation<S> {
        &self.compensation
    }
    /// Its timeout and retries.
    pub fn policy(&self) -> &StepPolicy {
        &self.policy
    }
    /// Its compensation's timeout and retries.
    pub fn compensation_policy(&self) -> &StepPolicy {
        &self.compensation_policy
    }
}
