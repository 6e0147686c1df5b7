//! Event correlation: rules over events sharing a key, evaluated as they arrive, with a window
//! after which a timed-out outcome is emitted. Buffers are persisted (they survive restarts) and
//! bounded.
//!
//! ```ignore
//! let review = Correlator::new("document_review")
//!     .on::<ReviewRequested>(|e| e.document_id.to_string())
//!     .on::<ReviewApproved>(|e| e.document_id.to_string())
//!     .window(Duration::from_secs(3600))
//!     .max_buffer(64)
//!     .rule(|key, buffer, ctx| {
//!         if buffer.count::<ReviewApproved>() >= 2 {
//!             ctx.publish(&DocumentApproved { document_id: key.parse()? })?;
//!             return Ok(Verdict::Done);
//!         }
//!         Ok(Verdict::Wait)
//!     })
//!     .on_timeout(|key, buffer, ctx| {
//!         ctx.publish(&ReviewTimedOut { document_id: key.parse()?, approvals: buffer.count::<ReviewApproved>() as u32 })?;
//!         Ok(())
//!     })
//!     .open(transport.clone())
//!     .await?;
//! ```
//!
//! The window starts with the first event of a key. A rule returning [`Verdict::Done`] closes
//! the correlation (its buffer is deleted once the outcome is sent); when the window passes
//! first, the timeout callback runs and the correlation closes. An event for a closed key opens
//! a new correlation. The buffer keeps the latest `max_buffer` events; older ones are dropped
//! (counted in [`Buffer::dropped`]). Timeouts fire through the process engine's deadline scanner
//! ([`CorrelatorRunner::spawn_timers`]), also after a restart.

use crate::event::{DecodeError, DomainEvent};
use crate::handler::{BoxError, HandlerError, HandlerOptions};
use crate::id::MessageId;
use crate::process::{
    Deadline, Machine, OnDeadline, ProcessContext, ProcessError, ProcessOptions, StepFuture, Subscription, TimerHandle,
    Transition, handlers_of,
};
use crate::transport::Transport;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

/// The deadline name of a correlation's window.
pub const WINDOW_DEADLINE: &str = "window";

/// One buffered event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffered {
    /// Its type name.
    pub event_type: String,
    /// Its message id.
    pub message_id: MessageId,
    /// Its payload (JSON text).
    pub payload: String,
}

/// The events correlated under one key so far.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Buffer {
    /// The buffered events, oldest first.
    pub events: Vec<Buffered>,
    /// How many older events were dropped to keep the buffer bounded.
    pub dropped: u64,
}

impl Buffer {
    /// The buffered events of type `E`, decoded, oldest first (undecodable ones are skipped).
    pub fn all<E: DomainEvent>(&self) -> Vec<E> {
        self.events
            .iter()
            .filter(|b| b.event_type == E::TYPE_NAME)
            .filter_map(|b| E::decode(b.payload.as_bytes()).ok())
            .collect()
    }
    /// The latest buffered event of type `E`.
    pub fn latest<E: DomainEvent>(&self) -> Option<Result<E, DecodeError>> {
        self.events
            .iter()
            .rev()
            .find(|b| b.event_type == E::TYPE_NAME)
            .map(|b| E::decode(b.payload.as_bytes()))
    }
    /// How many events of type `E` are buffered.
    pub fn count<E: DomainEvent>(&self) -> usize {
        self.events.iter().filter(|b| b.event_type == E::TYPE_NAME).count()
    }
    /// `true` if an event of type `E` is buffered.
    pub fn has<E: DomainEvent>(&self) -> bool {
        self.count::<E>() > 0
    }
    /// Number of buffered events.
    pub fn len(&self) -> usize {
        self.events.len()
    }
    /// `true` if nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

/// What a rule decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Keep collecting.
    Wait,
    /// The correlation is complete: close it (after what the rule queued is sent).
    Done,
}

type RuleFn = dyn Fn(&str, &Buffer, &mut ProcessContext) -> Result<Verdict, BoxError> + Send + Sync;
type TimeoutFn = dyn Fn(&str, &Buffer, &mut ProcessContext) -> Result<(), BoxError> + Send + Sync;

/// A correlation declaration.
pub struct Correlator {
    name: &'static str,
    /// The correlated events; each gets its [`Arrive`] transition once the rule is known.
    subscriptions: Vec<Subscription>,
    window: Duration,
    max_buffer: usize,
    rule: Option<Arc<RuleFn>>,
    on_timeout: Option<Arc<TimeoutFn>>,
    options: ProcessOptions,
}

impl fmt::Debug for Correlator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Correlator")
            .field("name", &self.name)
            .field("subscriptions", &self.subscriptions)
            .field("window", &self.window)
            .field("max_buffer", &self.max_buffer)
            .finish_non_exhaustive()
    }
}

/// Why a correlator could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CorrelatorError {
    /// No rule was given.
    #[error("correlator `{0}` has no rule; call `.rule(...)`")]
    NoRule(&'static str),
    /// No event type is correlated.
    #[error("correlator `{0}` correlates no events; call `.on::<E>(...)`")]
    NoEvents(&'static str),
    /// A zero buffer bound or window.
    #[error("correlator `{0}`: the window and the buffer bound must be positive")]
    Invalid(&'static str),
    /// Opening the buckets failed.
    #[error(transparent)]
    Process(#[from] ProcessError),
}

struct Arrive {
    event_type: &'static str,
    payload: Bytes,
    window: Duration,
    max_buffer: usize,
    rule: Arc<RuleFn>,
}

impl Transition<Buffer> for Arrive {
    fn run<'a>(&'a self, state: &'a mut Buffer, ctx: &'a mut ProcessContext) -> StepFuture<'a> {
        Box::pin(async move {
            if ctx.is_new() {
                ctx.schedule(WINDOW_DEADLINE, self.window);
            }
            state.events.push(Buffered {
                event_type: self.event_type.to_owned(),
                message_id: ctx.identity().message_id,
                payload: String::from_utf8_lossy(&self.payload).into_owned(),
            });
            if state.events.len() > self.max_buffer {
                let excess = state.events.len() - self.max_buffer;
                state.events.drain(..excess);
                state.dropped += excess as u64;
                tracing::warn!(
                    key = ctx.key(),
                    dropped = state.dropped,
                    "correlation buffer full; dropped the oldest events"
                );
            }
            let key = ctx.key().to_owned();
            match (self.rule)(&key, state, ctx).map_err(HandlerError::Permanent)? {
                Verdict::Wait => {}
                Verdict::Done => ctx.end(),
            }
            Ok(())
        })
    }
}

/// The window's deadline passed: the timeout callback, if one was given, then the end.
struct Expire {
    on_timeout: Option<Arc<TimeoutFn>>,
}

impl Transition<Buffer> for Expire {
    fn run<'a>(&'a self, state: &'a mut Buffer, ctx: &'a mut ProcessContext) -> StepFuture<'a> {
        Box::pin(async move {
            let key = ctx.key().to_owned();
            tracing::info!(key, buffered = state.len(), "correlation window passed");
            if let Some(f) = &self.on_timeout {
                f(&key, state, ctx).map_err(HandlerError::Permanent)?;
            }
            ctx.end();
            Ok(())
        })
    }
}

impl Correlator {
    /// A correlator named `name` (`[A-Za-z0-9_-]+`; its bucket is `cim_pm_{name}`), with a
    /// one-hour window and a buffer of 256 events.
    pub fn new(name: &'static str) -> Self {
        Self {
            name,
            subscriptions: Vec::new(),
            window: Duration::from_secs(3600),
            max_buffer: 256,
            rule: None,
            on_timeout: None,
            options: ProcessOptions::default(),
        }
    }

    /// Correlates events of type `E`, keyed by `key` (the shared field, as text).
    pub fn on<E: DomainEvent>(mut self, key: impl Fn(&E) -> String + Send + Sync + 'static) -> Self {
        self.subscriptions.push(Subscription::of::<E>(E::TYPE_NAME, key));
        self
    }

    /// How long after its first event a correlation times out.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Most events buffered per key; older ones are dropped beyond it.
    pub fn max_buffer(mut self, n: usize) -> Self {
        self.max_buffer = n;
        self
    }

    /// The rule, evaluated on every arrival with the key, the buffer (the new event included)
    /// and a context to queue outcomes in.
    pub fn rule(
        mut self,
        rule: impl Fn(&str, &Buffer, &mut ProcessContext) -> Result<Verdict, BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.rule = Some(Arc::new(rule));
        self
    }

    /// What to emit when the window passes before the rule said [`Verdict::Done`].
    pub fn on_timeout(
        mut self,
        f: impl Fn(&str, &Buffer, &mut ProcessContext) -> Result<(), BoxError> + Send + Sync + 'static,
    ) -> Self {
        self.on_timeout = Some(Arc::new(f));
        self
    }

    /// Options of the event handlers.
    pub fn handler_options(mut self, options: HandlerOptions) -> Self {
        self.options.handler = options;
        self
    }

    /// How often the timeout scanner looks for passed windows (default 1 s): how late a timeout
    /// may be emitted. Not zero: [`open`](Self::open) refuses it
    /// ([`ProcessError::Settings`]).
    pub fn timer_interval(mut self, interval: Duration) -> Self {
        self.options.timer_interval = interval;
        self
    }

    /// Checks the declaration and opens its buckets on `transport`.
    pub async fn open<T: Transport>(self, transport: T) -> Result<CorrelatorRunner<T>, CorrelatorError> {
        let rule = self.rule.ok_or(CorrelatorError::NoRule(self.name))?;
        if self.subscriptions.is_empty() {
            return Err(CorrelatorError::NoEvents(self.name));
        }
        if self.window.is_zero() || self.max_buffer == 0 {
            return Err(CorrelatorError::Invalid(self.name));
        }
        let (window, max_buffer) = (self.window, self.max_buffer);
        let handlers = handlers_of(self.subscriptions, move |event_type, payload| {
            Box::new(Arrive {
                event_type,
                payload,
                window,
                max_buffer,
                rule: rule.clone(),
            })
        });
        let on_timeout = self.on_timeout;
        let expire = OnDeadline::Run(Arc::new(move |_: Deadline| -> Box<dyn Transition<Buffer>> {
            Box::new(Expire {
                on_timeout: on_timeout.clone(),
            })
        }));
        let machine = Machine::open(&transport, "correlator", self.name, handlers, expire, self.options).await?;
        Ok(CorrelatorRunner { machine })
    }
}

/// An opened [`Correlator`]: register it on a [`Service`](crate::service::Service) and start its
/// timeout scanner with [`spawn_timers`](Self::spawn_timers).
pub struct CorrelatorRunner<T: Transport> {
    machine: Machine<T, Buffer>,
}

impl<T: Transport> CorrelatorRunner<T> {
    pub(crate) fn deadline_observer(&self) -> &crate::pipeline::step::Observer {
        self.machine.deadline_observer()
    }

    /// The buffer of `key`, if a correlation is open for it.
    pub async fn buffer(&self, key: &str) -> Result<Option<Buffer>, ProcessError> {
        self.machine.load(key).await
    }

    /// Starts the timeout scanner (see [`ProcessRunner::spawn_timers`](crate::process::ProcessRunner::spawn_timers)).
    pub fn spawn_timers(&self) -> TimerHandle {
        self.machine.spawn_timers()
    }
}

crate::process::runs_machine!([T: Transport] CorrelatorRunner<T>);
