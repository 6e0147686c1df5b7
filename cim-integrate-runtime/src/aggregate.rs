//! Event aggregation: declare the events that must all arrive, by correlation key, before an
//! outcome event is published; progress is persisted and the outcome is published exactly once.
//!
//! ```ignore
//! let ready = Aggregation::<WorkflowReady>::new("workflow_ready")
//!     .require::<DocumentsAttached>(|e| e.workflow_id.to_string())
//!     .require::<ApproversAssigned>(|e| e.workflow_id.to_string())
//!     .require::<ScheduleSet>(|e| e.workflow_id.to_string())
//!     .outcome(|key, parts| {
//!         let docs = parts.get::<DocumentsAttached>()?;
//!         Ok(WorkflowReady { workflow_id: docs.workflow_id, documents: docs.documents.len() as u32 })
//!     })
//!     .open(transport.clone())
//!     .await?;
//! let service = Service::builder(transport, "workflow").register(ready).start().await?;
//! ```
//!
//! It runs on the process-manager engine ([`crate::process`]): one record per key in the bucket
//! `cim_pm_{name}`, written with compare-and-set. The step that completes the set commits the
//! outcome to the record's outbox together with `completed = true`, so of two events racing to
//! complete it only one commits the outcome; the other re-reads and finds it completed. The
//! outcome's message id is derived from (aggregation, key) alone, so even a re-sent outcome is a
//! duplicate that JetStream drops. Duplicate and late deliveries after completion change nothing.
//! Completed records are kept (so late events do not restart the aggregation) until the
//! bucket's TTL ([`Aggregation::retain_for`]) removes them.

use crate::event::{DecodeError, DomainEvent};
use crate::handler::{BoxError, HandlerError, HandlerOptions};
use crate::id::{Identity, MessageId, derived_uuid};
use crate::process::{
    Machine, OnDeadline, ProcessContext, ProcessError, ProcessOptions, StepFuture, Subscription, Transition,
    handlers_of,
};
use crate::transport::Transport;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The progress of one aggregation key: the payload of each required event received so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Event type name -> payload (JSON text) of the first event of that type.
    pub parts: BTreeMap<String, String>,
    /// `true` once the outcome was committed.
    pub completed: bool,
}

/// The events collected for one key, handed to the outcome function.
#[derive(Debug)]
pub struct Parts<'a> {
    parts: &'a BTreeMap<String, String>,
}

/// Why a part could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PartError {
    /// The event type is not among the collected ones (not required by this aggregation).
    #[error("no `{0}` was collected; `require` it")]
    Missing(&'static str),
    /// The stored payload does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
}

impl Parts<'_> {
    /// The collected event of type `E`.
    pub fn get<E: DomainEvent>(&self) -> Result<E, PartError> {
        let payload = self.parts.get(E::TYPE_NAME).ok_or(PartError::Missing(E::TYPE_NAME))?;
        Ok(E::decode(payload.as_bytes())?)
    }
    /// `true` if an `E` was collected.
    pub fn has<E: DomainEvent>(&self) -> bool {
        self.parts.contains_key(E::TYPE_NAME)
    }
}

type OutcomeFn<O> = dyn Fn(&str, &Parts<'_>) -> Result<O, BoxError> + Send + Sync;

/// An aggregation declaration: a name, the required events with their key, and the outcome.
pub struct Aggregation<O: DomainEvent> {
    name: &'static str,
    required: Vec<&'static str>,
    /// The required events; each gets its [`Collect`] transition once the outcome is known.
    subscriptions: Vec<Subscription>,
    outcome: Option<Arc<OutcomeFn<O>>>,
    options: ProcessOptions,
}

impl<O: DomainEvent> fmt::Debug for Aggregation<O> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregation")
            .field("name", &self.name)
            .field("required", &self.required)
            .field("outcome", &O::TYPE_NAME)
            .finish_non_exhaustive()
    }
}

/// Why an aggregation could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AggregationError {
    /// No `outcome` was given.
    #[error("aggregation `{0}` has no outcome; call `.outcome(...)`")]
    NoOutcome(&'static str),
    /// No event is required.
    #[error("aggregation `{0}` requires no events; call `.require::<E>(...)`")]
    NothingRequired(&'static str),
    /// The same event type is required twice.
    #[error("aggregation `{name}` requires `{event}` twice")]
    DuplicateRequirement {
        /// The aggregation.
        name: &'static str,
        /// The event type.
        event: &'static str,
    },
    /// Opening the buckets failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

struct Collect<O: DomainEvent> {
    aggregation: &'static str,
    event_type: &'static str,
    payload: Bytes,
    required: Arc<Vec<&'static str>>,
    outcome: Arc<OutcomeFn<O>>,
}

/// The outcome's identity: a message id that depends only on (aggregation, key), in the causal
/// chain of the completing event (see [`crate::id`]).
pub(crate) fn outcome_identity(aggregation: &str, key: &str, cause: &Identity) -> Identity {
    let id = derived_uuid(&[b"aggregation", aggregation.as_bytes(), key.as_bytes()]);
    Identity {
        message_id: MessageId::from_uuid(id),
        correlation_id: cause.correlation_id,
        causation_id: cause.message_id.into(),
    }
}

impl<O: DomainEvent> Transition<Progress> for Collect<O> {
    fn run<'a>(&'a self, state: &'a mut Progress, ctx: &'a mut ProcessContext) -> StepFuture<'a> {
        Box::pin(async move {
            if state.completed {
                tracing::debug!(
                    aggregation = self.aggregation,
                    key = ctx.key(),
                    event = self.event_type,
                    "already complete; late or duplicate event ignored"
                );
                return Ok(());
            }
            state
                .parts
                .entry(self.event_type.to_owned())
                .or_insert_with(|| String::from_utf8_lossy(&self.payload).into_owned());
            if !self.required.iter().all(|t| state.parts.contains_key(*t)) {
                return Ok(());
            }
            let key = ctx.key().to_owned();
            let outcome = (self.outcome)(&key, &Parts { parts: &state.parts }).map_err(HandlerError::Permanent)?;
            let identity = outcome_identity(self.aggregation, &key, ctx.identity());
            ctx.publish_as(identity, &outcome).map_err(HandlerError::permanent)?;
            state.completed = true;
            tracing::info!(
                aggregation = self.aggregation,
                key,
                outcome = O::TYPE_NAME,
                "aggregation complete"
            );
            Ok(())
        })
    }
}

impl<O: DomainEvent> Aggregation<O> {
    /// An aggregation named `name` (`[A-Za-z0-9_-]+`; its bucket is `cim_pm_{name}`).
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            required: Vec::new(),
            subscriptions: Vec::new(),
            outcome: None,
            options: ProcessOptions::default(),
        }
    }

    /// Requires an event of type `E`, keyed by `key` (the correlation field, as text).
    pub fn require<E: DomainEvent>(mut self, key: impl Fn(&E) -> String + Send + Sync + 'static) -> Self {
        self.required.push(E::TYPE_NAME);
        self.subscriptions.push(Subscription::of::<E>(E::TYPE_NAME, key));
        self
    }

    /// The outcome, built from the collected events once all arrived.
    pub fn outcome(mut self, f: impl Fn(&str, &Parts<'_>) -> Result<O, BoxError> + Send + Sync + 'static) -> Self {
        self.outcome = Some(Arc::new(f));
        self
    }

    /// Options of the event handlers (retries, concurrency, durable names).
    pub fn handler_options(mut self, options: HandlerOptions) -> Self {
        self.options.handler = options;
        self
    }

    /// Keeps records (completed or not) for `ttl`, then forgets them: bounds the bucket. A
    /// duplicate arriving after that would start the aggregation again.
    pub fn retain_for(mut self, ttl: Duration) -> Self {
        self.options.ttl = Some(ttl);
        self
    }

    /// Checks the declaration and opens its bucket on `transport`.
    pub async fn open<T: Transport>(self, transport: T) -> Result<AggregationRunner<T>, AggregationError> {
        let outcome = self.outcome.ok_or(AggregationError::NoOutcome(self.name))?;
        if self.required.is_empty() {
            return Err(AggregationError::NothingRequired(self.name));
        }
        for (i, t) in self.required.iter().enumerate() {
            if self.required[..i].contains(t) {
                return Err(AggregationError::DuplicateRequirement {
                    name: self.name,
                    event: t,
                });
            }
        }
        let required = Arc::new(self.required);
        let name = self.name;
        let handlers = handlers_of(self.subscriptions, move |event_type, payload| {
            Box::new(Collect::<O> {
                aggregation: name,
                event_type,
                payload,
                required: required.clone(),
                outcome: outcome.clone(),
            })
        });
        // An aggregation sets no deadlines.
        let machine = Machine::open(
            &transport,
            "aggregation",
            name,
            handlers,
            OnDeadline::Never,
            self.options,
        )
        .await?;
        Ok(AggregationRunner { machine })
    }
}

/// An opened [`Aggregation`]: register it on a [`Service`](crate::service::Service).
pub struct AggregationRunner<T: Transport> {
    machine: Machine<T, Progress>,
}

impl<T: Transport> AggregationRunner<T> {
    /// The progress of `key`, if any event arrived for it.
    pub async fn progress(&self, key: &str) -> Result<Option<Progress>, ProcessError> {
        self.machine.load(key).await
    }
}

crate::process::runs_machine!([T: Transport] AggregationRunner<T>);
