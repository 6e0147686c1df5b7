//! Process managers: state keyed by a correlation field of the events they handle, persisted in
//! a key-value bucket with compare-and-set, reacting to events from several domains by sending
//! commands and publishing events, with deadlines that survive restarts, and an explicit end.
//!
//! The user writes a state type and its handlers (`#[process]` on an `impl` block generates the
//! [`ProcessManager`] impl); [`ProcessRunner`] runs them:
//!
//! - Each handled event type gets a durable consumer through [`Service`](crate::service::Service)
//!   (the runner is a [`HandlerSet`](crate::handler::HandlerSet)), with its de-duplication,
//!   retries and dead letters.
//! - Per event: read the record of its key, run the handler on the state, and write the record
//!   back only if nobody wrote it in between (revision compare-and-set). On a conflict the
//!   handler runs again on the fresh state: concurrent events for one process never lose an
//!   update.
//! - Handlers do not send or publish directly: [`ProcessContext::send`] and
//!   [`ProcessContext::publish`] queue the messages in the record's *outbox*, written in the same
//!   compare-and-set as the state. They are sent after the write, with identities derived from
//!   the handled message (so a re-sent message keeps its id: JetStream and the command result
//!   cache drop duplicates), and removed from the outbox once sent. A crash in between sends them
//!   again on redelivery. A handler that lost a conflict therefore never sent anything.
//! - The record remembers the last message ids it applied, so a redelivered event is not applied
//!   twice even when its handler de-duplication mark was lost.
//! - [`ProcessContext::schedule`] sets a named deadline, persisted in the record and indexed in
//!   a second bucket; [`ProcessRunner::spawn_timers`] scans the index and fires due deadlines
//!   through [`ProcessManager::on_deadline`], on any instance, also after a restart.
//! - [`ProcessContext::end`] ends the process: once its outbox is sent, its record is deleted.
//!
//! Buckets: `cim_pm_{name}` (records) and `cim_pm_{name}_timers` (deadline index).
//!
//! The same engine runs [aggregations](crate::aggregate) and [correlators](crate::correlate):
//! each is a set of event handlers whose transitions are its own types (a process handler, a
//! collecting step, a correlation arrival), plus what it does when a deadline is due
//! ([`ProcessManager::on_deadline`], a correlation window's expiry, or nothing for an
//! aggregation, which sets none). The three runners share one machine (registrations, state
//! reads, deadline scanner). The outbox protocol (`outbox.rs`) is shared with sagas; the clock is
//! [`crate::clock`] and the derived ids come from [`crate::id::derived_uuid`].

use crate::command::{Command, CommandAck, CommandBus};
use crate::envelope::Envelope;
use crate::event::{DecodeError, DomainEvent, EncodeError, Versioned};
use crate::handler::context::DynPublish;
use crate::handler::{Context, HandlerError, HandlerOptions, Registration};
use crate::id::{CorrelationId, Identity, MessageId, derived_uuid};
use crate::outbox::{self, Queued};
use crate::pipeline::Outcome;
use crate::pipeline::step::Observer;
use crate::settings::SettingsError;
use crate::subject::{Subject, SubjectPattern};
use crate::timestamp::Timestamp;
use crate::transport::{KeyValue, KvError, KvSpec, OutboundMessage, Transport, check_key};
use bytes::Bytes;
/// The boxed future of process handlers (named by generated code).
pub use futures::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// Longest a deadline transition (read, handler, compare-and-set, outbox) may take before it is
/// abandoned and fired again on the next scan.
const DEADLINE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many applied message ids a record remembers.
const APPLIED_MEMORY: usize = 256;
/// Most attempts to send one queued message before it is given up.
const MAX_EFFECT_ATTEMPTS: u32 = 20;
/// The deadline scanner sweeps every record (index repair, left-over outboxes) every this many
/// ticks.
const SWEEP_EVERY: u32 = 30;
/// Most compare-and-set attempts for one event before it is retried later.
const MAX_CONFLICT_RETRIES: u32 = 64;

/// The wall clock in Unix milliseconds, advancing with tokio's clock (the runtime's one clock,
/// [`crate::clock`]).
pub use crate::clock::now_millis;

/// What a process manager's state must be: stored as JSON (`Serialize` and `Deserialize`) and
/// started from `Default`. Every such type is one (a blanket impl); there is nothing to
/// implement. It is one trait, not three supertraits of [`ProcessManager`], so that a state
/// missing its derives is one compile error naming them all, not one per missing trait.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be the state of a process manager: it must be `Default`, `Serialize` and `Deserialize`",
    label = "a process state is stored as JSON and starts from `Default`",
    note = "derive them on the state: `#[derive(Default, serde::Serialize, serde::Deserialize)]`"
)]
pub trait ProcessState: Sized {
    /// The state as JSON (its `Serialize`). Called by the runtime.
    ///
    /// # Errors
    /// The serializer's.
    #[doc(hidden)]
    fn __serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error>;
    /// The state from JSON (its `Deserialize`). Called by the runtime.
    ///
    /// # Errors
    /// The deserializer's.
    #[doc(hidden)]
    fn __deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error>;
    /// The state of a new process (its `Default`). Called by the runtime.
    #[doc(hidden)]
    fn __initial() -> Self;
}

#[diagnostic::do_not_recommend]
impl<T: Serialize + DeserializeOwned + Default> ProcessState for T {
    fn __serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        self.serialize(serializer)
    }

    fn __deserialize<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        T::deserialize(deserializer)
    }

    fn __initial() -> Self {
        T::default()
    }
}

/// `serialize_with` of a record's state.
fn serialize_state<S: ProcessState, Ser: serde::Serializer>(state: &S, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
    state.__serialize(serializer)
}

/// `deserialize_with` of a record's state.
fn deserialize_state<'de, S: ProcessState, D: serde::Deserializer<'de>>(deserializer: D) -> Result<S, D::Error> {
    S::__deserialize(deserializer)
}

/// A process manager: its state type, name, handlers and deadline reaction. `#[process]` on the
/// state's `impl` block implements it.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a process manager",
    note = "mark its `impl` block with `#[process(name = \"...\", key = field)]`"
)]
pub trait ProcessManager: ProcessState + Send + Sync + 'static {
    /// The process's name (`[A-Za-z0-9_-]+`): buckets, durable names.
    const NAME: &'static str;

    /// The event handlers.
    fn handlers() -> Vec<ProcessHandler<Self>>;

    /// Reacts to a due deadline set with [`ProcessContext::schedule`]. The default logs it.
    fn on_deadline<'a>(
        &'a mut self,
        ctx: &'a mut ProcessContext,
        deadline: Deadline,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        let _ = ctx;
        tracing::info!(process = Self::NAME, deadline = %deadline.name, "deadline passed (no on_deadline handler)");
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A deadline that came due.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deadline {
    /// The name given to [`ProcessContext::schedule`].
    pub name: String,
    /// When it was due (Unix milliseconds).
    pub due_millis: i64,
}

/// A handler function of a process: `async fn(&mut State, &mut ProcessContext, Event)`.
pub type ProcessHandlerFn<S, E> =
    for<'a> fn(&'a mut S, &'a mut ProcessContext, E) -> BoxFuture<'a, Result<(), HandlerError>>;

/// How a handled event yields its process key (the correlation field, as text).
pub type KeyFn<E> = fn(&E) -> String;

/// Decodes a payload and returns its process key.
type PayloadKeyFn = dyn Fn(&[u8]) -> Result<String, DecodeError> + Send + Sync;
/// Makes the transition of one received payload.
type TransitionFactory<S> = dyn Fn(Bytes) -> Box<dyn Transition<S>> + Send + Sync;
/// Makes the transition of one due deadline.
type DeadlineFactory<S> = dyn Fn(Deadline) -> Box<dyn Transition<S>> + Send + Sync;

/// What a handler consumes: an event type, its subject pattern and how its process key is read.
/// It has no transition yet: the aggregation and correlation builders collect subscriptions and
/// give each its transition when the declaration is complete ([`Subscription::then`]).
#[derive(Clone)]
pub(crate) struct Subscription {
    name: &'static str,
    pattern: SubjectPattern,
    event_type: &'static str,
    key: Arc<PayloadKeyFn>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("name", &self.name)
            .field("pattern", &self.pattern)
            .field("event_type", &self.event_type)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    /// Events `E`, handled under `name`, keyed by `key`.
    pub(crate) fn of<E: DomainEvent>(name: &'static str, key: impl Fn(&E) -> String + Send + Sync + 'static) -> Self {
        Self {
            name,
            pattern: SubjectPattern::new(E::SUBJECT).unwrap_or_else(|_| SubjectPattern::__from_checked_literal(">")),
            event_type: E::TYPE_NAME,
            key: Arc::new(move |payload| E::decode(payload).map(|e| key(&e))),
        }
    }

    /// The handler: each received payload runs the transition `make` builds from it.
    pub(crate) fn then<S>(
        self,
        make: impl Fn(Bytes) -> Box<dyn Transition<S>> + Send + Sync + 'static,
    ) -> ProcessHandler<S> {
        ProcessHandler {
            subscription: self,
            transition: Arc::new(make),
        }
    }
}

/// The handlers of `subscriptions`, each running the transition `make` builds from its event type
/// and a received payload (how the aggregation and correlation builders complete theirs).
pub(crate) fn handlers_of<S>(
    subscriptions: Vec<Subscription>,
    make: impl Fn(&'static str, Bytes) -> Box<dyn Transition<S>> + Send + Sync + 'static,
) -> Vec<ProcessHandler<S>> {
    let make = Arc::new(make);
    subscriptions
        .into_iter()
        .map(|sub| {
            let (event_type, make) = (sub.event_type, make.clone());
            sub.then(move |payload| make(event_type, payload))
        })
        .collect()
}

/// One event handler of a process, type-erased over the event.
pub struct ProcessHandler<S> {
    subscription: Subscription,
    transition: Arc<TransitionFactory<S>>,
}

impl<S> Clone for ProcessHandler<S> {
    fn clone(&self) -> Self {
        Self {
            subscription: self.subscription.clone(),
            transition: self.transition.clone(),
        }
    }
}

impl<S> fmt::Debug for ProcessHandler<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProcessHandler").field(&self.subscription).finish()
    }
}

/// [`DomainEvent`] where a process handler takes the event: the same bound (every `DomainEvent`
/// is one), with a compile error that speaks of process handlers when a type is not an event.
#[diagnostic::on_unimplemented(
    message = "a process handler cannot take `{Self}`: it is not the current version of a `#[domain_event]`",
    label = "not an event a process can handle",
    note = "a process handler is `async fn name(&mut self, ctx: &mut ProcessContext, event: MyEvent) -> Result<(), HandlerError>` with the current version of a `#[domain_event]` last; a method taking `Deadline` is marked `#[deadline]`"
)]
pub trait ProcessEvent: DomainEvent {}

#[diagnostic::do_not_recommend]
impl<E: DomainEvent> ProcessEvent for E {}

impl<S: Send + 'static> ProcessHandler<S> {
    /// A handler named `name` of events `E`, keyed by `key`, running `handler`.
    pub fn new<E: ProcessEvent>(name: &'static str, key: KeyFn<E>, handler: ProcessHandlerFn<S, E>) -> Self {
        Subscription::of::<E>(name, key).then(move |payload| Box::new(EventTransition { payload, handler }))
    }

    /// The handler's name.
    pub fn name(&self) -> &'static str {
        self.subscription.name
    }
    /// The handled event type.
    pub fn event_type(&self) -> &'static str {
        self.subscription.event_type
    }
}

/// The future of one transition.
pub(crate) type StepFuture<'a> = BoxFuture<'a, Result<(), HandlerError>>;

/// One step on a process's state: runs (possibly several times, on conflicts) on the current
/// state with a fresh context.
pub(crate) trait Transition<S>: Send + Sync {
    fn run<'a>(&'a self, state: &'a mut S, ctx: &'a mut ProcessContext) -> StepFuture<'a>;
}

struct EventTransition<S, E> {
    payload: Bytes,
    handler: ProcessHandlerFn<S, E>,
}

impl<S: Send, E: DomainEvent> Transition<S> for EventTransition<S, E> {
    fn run<'a>(&'a self, state: &'a mut S, ctx: &'a mut ProcessContext) -> StepFuture<'a> {
        match E::decode(&self.payload) {
            Ok(event) => (self.handler)(state, ctx, event),
            Err(e) => Box::pin(std::future::ready(Err(HandlerError::permanent(e)))),
        }
    }
}

struct DeadlineTransition<S> {
    deadline: Deadline,
    _state: PhantomData<fn(S)>,
}

impl<S: ProcessManager> Transition<S> for DeadlineTransition<S> {
    fn run<'a>(&'a self, state: &'a mut S, ctx: &'a mut ProcessContext) -> StepFuture<'a> {
        state.on_deadline(ctx, self.deadline.clone())
    }
}

/// A message queued by a handler, sent after the state is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Effect {
    kind: EffectKind,
    subject: String,
    type_name: String,
    version: String,
    /// The encoded payload (JSON text).
    payload: String,
    identity: Identity,
    /// Failed attempts to send it so far.
    #[serde(default)]
    attempts: u32,
    /// The `traceparent` of the transition that queued it (feature `otel`): sent later in
    /// another trace (the scanner, after a crash), its `process_outbox` span links to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    trace: Option<String>,
}

impl Queued for Effect {
    fn message_id(&self) -> MessageId {
        self.identity.message_id
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum EffectKind {
    Publish,
    Send,
}

/// What a process handler can do besides changing the state: queue commands and events, set
/// and cancel deadlines, end the process.
#[derive(Debug)]
pub struct ProcessContext {
    key: String,
    identity: Identity,
    scope: String,
    occurred: Timestamp,
    now: i64,
    effects: Vec<Effect>,
    schedule: Vec<(String, i64)>,
    cancel: Vec<String>,
    end: bool,
    first: bool,
}

impl ProcessContext {
    fn new(key: &str, identity: Identity, scope: String, occurred: Timestamp, first: bool) -> Self {
        Self {
            key: key.to_owned(),
            identity,
            scope,
            occurred,
            now: now_millis(),
            effects: Vec::new(),
            schedule: Vec::new(),
            cancel: Vec::new(),
            end: false,
            first,
        }
    }

    /// The process key (the correlation field's value).
    pub fn key(&self) -> &str {
        &self.key
    }
    /// The identity of the handled message (for a deadline: one derived from the process).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// `true` if this step starts the process (no state was stored yet).
    pub fn is_new(&self) -> bool {
        self.first
    }
    /// The current time in Unix milliseconds ([`now_millis`]).
    pub fn now_millis(&self) -> i64 {
        self.now
    }

    fn next_identity(&self) -> Identity {
        let n = u32::try_from(self.effects.len()).unwrap_or(u32::MAX);
        self.identity.derived_child(&self.scope, n, self.occurred)
    }

    /// Queues `message` with `identity` (or the next derived one).
    fn queue<M: Versioned>(
        &mut self,
        identity: Option<Identity>,
        kind: EffectKind,
        subject: Subject,
        message: &M,
    ) -> Result<(), EncodeError> {
        let payload = message.encode()?;
        let identity = identity.unwrap_or_else(|| self.next_identity());
        self.push(identity, kind, subject, M::TYPE_NAME, M::VERSION, &payload);
        Ok(())
    }

    fn push(
        &mut self,
        identity: Identity,
        kind: EffectKind,
        subject: Subject,
        type_name: &str,
        version: &str,
        payload: &[u8],
    ) {
        self.effects.push(Effect {
            kind,
            subject: subject.to_string(),
            type_name: type_name.to_owned(),
            version: version.to_owned(),
            payload: String::from_utf8_lossy(payload).into_owned(),
            identity,
            attempts: 0,
            trace: crate::trace_context::current(),
        });
    }

    /// Queues `event` with an explicit identity (a deterministic one, for outcomes that must be
    /// published once).
    pub(crate) fn publish_as<E: DomainEvent>(&mut self, identity: Identity, event: &E) -> Result<(), EncodeError> {
        self.queue(Some(identity), EffectKind::Publish, E::subject(), event)
    }

    /// Queues `command`: sent once the new state is stored, caused by the handled message.
    pub fn send<C: Command>(&mut self, command: &C) -> Result<(), EncodeError> {
        self.queue(None, EffectKind::Send, C::subject(), command)
    }

    /// Queues `event`: published once the new state is stored, caused by the handled message.
    pub fn publish<E: crate::event::PublishedEvent>(&mut self, event: &E) -> Result<(), EncodeError> {
        self.queue(None, EffectKind::Publish, E::subject(), event)
    }

    /// Sets (or moves) the deadline `name` to `after` from now. It fires once, through
    /// [`ProcessManager::on_deadline`], unless cancelled or the process ends first.
    pub fn schedule(&mut self, name: impl Into<String>, after: Duration) {
        let due = self
            .now
            .saturating_add(i64::try_from(after.as_millis()).unwrap_or(i64::MAX));
        self.schedule.push((name.into(), due));
    }

    /// Cancels the deadline `name`, if set.
    pub fn cancel(&mut self, name: impl Into<String>) {
        self.cancel.push(name.into());
    }

    /// Ends the process: once its queued messages are sent, its state is deleted. An event for
    /// the same key afterwards starts a new process.
    pub fn end(&mut self) {
        self.end = true;
    }
}

/// The stored record of one process instance.
#[derive(Debug, Serialize, Deserialize)]
#[serde(bound = "S: ProcessState")]
pub(crate) struct Record<S> {
    #[serde(serialize_with = "serialize_state", deserialize_with = "deserialize_state")]
    pub(crate) state: S,
    /// The process key as given (the storage key may be its hex form).
    #[serde(default)]
    key: String,
    #[serde(default)]
    correlation: Option<CorrelationId>,
    #[serde(default)]
    applied: VecDeque<String>,
    #[serde(default)]
    outbox: Vec<Effect>,
    #[serde(default)]
    deadlines: BTreeMap<String, i64>,
    #[serde(default)]
    ended: bool,
}

impl<S: ProcessState> Default for Record<S> {
    fn default() -> Self {
        Self {
            state: S::__initial(),
            key: String::new(),
            correlation: None,
            applied: VecDeque::new(),
            outbox: Vec::new(),
            deadlines: BTreeMap::new(),
            ended: false,
        }
    }
}

/// Why a process step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProcessError {
    /// The key-value store failed.
    #[error(transparent)]
    KeyValue(#[from] KvError),
    /// A stored record does not decode as the state type.
    #[error("stored state of `{process}` key `{key}` does not decode: {reason}")]
    Corrupt {
        /// The process.
        process: String,
        /// The key.
        key: String,
        /// What serde said.
        reason: String,
    },
    /// Too many concurrent writers.
    #[error("`{process}` key `{key}`: gave up after {attempts} write conflicts; will retry")]
    Contended {
        /// The process.
        process: String,
        /// The key.
        key: String,
        /// Attempts made.
        attempts: u32,
    },
    /// A queued message could not be sent.
    #[error("sending the queued messages of `{process}` key `{key}`: {reason}")]
    Outbox {
        /// The process.
        process: String,
        /// The key.
        key: String,
        /// What failed.
        reason: String,
    },
    /// The handler failed.
    #[error(transparent)]
    Handler(#[from] HandlerError),
    /// A deadline's transition failed, panicked or timed out; it fires again on the next scan.
    #[error("deadline of `{process}` key `{key}` not applied: {reason}")]
    Deadline {
        /// The process.
        process: String,
        /// The key.
        key: String,
        /// The pipeline's outcome.
        reason: String,
    },
    /// A [`ProcessOptions`] value the runner cannot work with (reported when it opens).
    #[error(transparent)]
    Settings(#[from] SettingsError),
}

impl From<ProcessError> for HandlerError {
    fn from(e: ProcessError) -> Self {
        match e {
            ProcessError::Handler(h) => h,
            ProcessError::Corrupt { .. } | ProcessError::Settings(_) => HandlerError::permanent(e),
            other => HandlerError::transient(other),
        }
    }
}

/// A key-value-safe form of a process key: as is when it is a valid key, else hex.
pub fn storage_key(key: &str) -> String {
    if check_key(key).is_ok() && !key.starts_with("h_") {
        key.to_owned()
    } else {
        let mut out = String::with_capacity(2 + key.len() * 2);
        out.push_str("h_");
        for b in key.bytes() {
            out.push_str(&format!("{b:02x}"));
        }
        out.truncate(1024);
        out
    }
}

/// The persistence and outbox engine shared by process managers, aggregations and correlators.
pub(crate) struct Engine<T: Transport, S> {
    name: String,
    records: T::KeyValue,
    timers: T::KeyValue,
    /// [`ProcessOptions::tombstone_age`].
    tombstone_age: Duration,
    publisher: Arc<dyn DynPublish>,
    bus: CommandBus,
    /// Deadline transitions run through the pipeline (span, counters, metrics, panics caught).
    deadlines: Observer,
    /// One write of a record at a time in this process (see [`KeyLocks`]).
    writing: KeyLocks,
    /// One drain of a record's outbox at a time in this process: a drain started while another
    /// is sending reads the record once that one has cleared what it sent, so a queued message
    /// is not sent twice by one process (taken before `writing`, never inside it).
    sending: KeyLocks,
    _state: PhantomData<fn() -> S>,
}

/// Serializes this process's read-modify-write cycles on one record.
///
/// Compare-and-set alone is not enough on a cluster: nats-server 2.9 (2.9.10 among others)
/// checks `Nats-Expected-Last-Subject-Sequence` before proposing a write, not in the replicated
/// apply (nats-io/nats-server#4320), so two writes expecting the same revision, in flight at once,
/// may both be stored; the fix tracks writes in flight on the leader only, which forgets them when
/// the leader changes. A step and a drain of the same process racing that way lost a queued
/// message (the drain cleared an outbox it had read before the step queued into it). Writes of
/// one record from one process are therefore never in flight together; writes from other
/// processes still rely on compare-and-set. Entries are removed when their last holder leaves.
#[derive(Default)]
struct KeyLocks {
    keys: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// Holds a key of [`KeyLocks`]; releases it (and forgets an unused key) when dropped.
struct KeyGuard<'a> {
    locks: &'a KeyLocks,
    key: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl KeyLocks {
    fn map(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>> {
        self.keys.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let mutex = self.map().entry(key.to_owned()).or_default().clone();
        KeyGuard {
            locks: self,
            key: key.to_owned(),
            guard: Some(mutex.lock_owned().await),
        }
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        let mut map = self.locks.map();
        // Released under the map's lock, so the count below sees every other holder or waiter
        // that got the key from the map.
        drop(self.guard.take());
        if map.get(&self.key).is_some_and(|m| Arc::strong_count(m) == 1) {
            map.remove(&self.key);
        }
    }
}

impl<T: Transport, S> fmt::Debug for Engine<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn min_due(deadlines: &BTreeMap<String, i64>) -> Option<i64> {
    deadlines.values().copied().min()
}

impl<S> Record<S> {
    /// Folds what a transition decided (`ctx`) for message `msg_id` into the record; `true` if
    /// it queued messages.
    fn apply(&mut self, ctx: ProcessContext, msg_id: &str) -> bool {
        self.correlation.get_or_insert(ctx.identity.correlation_id);
        if self.key.is_empty() {
            self.key = ctx.key;
        }
        self.applied.push_back(msg_id.to_owned());
        while self.applied.len() > APPLIED_MEMORY {
            self.applied.pop_front();
        }
        let queued = !ctx.effects.is_empty();
        self.outbox.extend(ctx.effects);
        for name in ctx.cancel {
            self.deadlines.remove(&name);
        }
        self.deadlines.extend(ctx.schedule);
        if ctx.end {
            self.ended = true;
            self.deadlines.clear();
        }
        queued
    }
}

/// The identity of the firing of deadline `name`, due `at`, of the record at `skey`: derived
/// (see [`crate::id`]), so every scanner firing it gives it one message id.
pub(crate) fn deadline_identity(
    process: &str,
    skey: &str,
    name: &str,
    at: i64,
    correlation: Option<CorrelationId>,
) -> (String, Identity) {
    let msg_id = format!("deadline:{name}:{at}");
    let message_id = MessageId::from_uuid(derived_uuid(&[process.as_bytes(), skey.as_bytes(), msg_id.as_bytes()]));
    let identity = Identity {
        message_id,
        correlation_id: correlation.unwrap_or(message_id.into()),
        causation_id: message_id.into(),
    };
    (msg_id, identity)
}

impl<T: Transport, S: ProcessState + Send + 'static> Engine<T, S> {
    /// Opens the buckets `cim_pm_{name}` and `cim_pm_{name}_timers`.
    pub(crate) async fn open(transport: &T, name: &str, options: &ProcessOptions) -> Result<Self, KvError> {
        let mut spec = KvSpec::new(format!("cim_pm_{name}"));
        if let Some(ttl) = options.ttl {
            spec = spec.max_age(ttl);
        }
        let timers_spec = KvSpec::new(format!("cim_pm_{name}_timers"));
        // Together: on a cluster each bucket is a replicated group that elects its leader.
        let (records, timers) =
            futures::future::try_join(transport.key_value(&spec), transport.key_value(&timers_spec)).await?;
        Ok(Self {
            name: name.to_owned(),
            records,
            timers,
            tombstone_age: options.tombstone_age,
            publisher: crate::handler::context::publisher(transport.clone()),
            bus: CommandBus::new(transport.clone()).timeout(options.command_timeout),
            deadlines: Observer::new("deadline", name, format!("{name}.deadline"), "process_deadline"),
            writing: KeyLocks::default(),
            sending: KeyLocks::default(),
            _state: PhantomData,
        })
    }

    fn decode(&self, key: &str, bytes: &[u8]) -> Result<Record<S>, ProcessError> {
        crate::json::from_slice(bytes).map_err(|e| ProcessError::Corrupt {
            process: self.name.clone(),
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    fn encode(&self, key: &str, record: &Record<S>) -> Result<Bytes, ProcessError> {
        crate::json::to_vec(record)
            .map(Bytes::from)
            .map_err(|e| ProcessError::Corrupt {
                process: self.name.clone(),
                key: key.to_owned(),
                reason: e.to_string(),
            })
    }

    fn contended(&self, key: &str) -> ProcessError {
        ProcessError::Contended {
            process: self.name.clone(),
            key: key.to_owned(),
            attempts: MAX_CONFLICT_RETRIES,
        }
    }

    /// Reads the state of `key` (for tests, tools and queries): `None` if no process runs.
    pub(crate) async fn load(&self, key: &str) -> Result<Option<S>, ProcessError> {
        let skey = storage_key(key);
        match self.records.get(&skey).await? {
            Some(entry) => Ok(Some(self.decode(key, &entry.value)?.state)),
            None => Ok(None),
        }
    }

    /// Applies `transition` for message `msg_id` to the process `key`, with compare-and-set and
    /// retries, then sends the outbox. `fired` is the deadline (name, due) this step fires, if
    /// any: it is removed unless the transition moved it.
    pub(crate) async fn step(
        &self,
        key: &str,
        msg_id: &str,
        identity: Identity,
        occurred: Timestamp,
        transition: &dyn Transition<S>,
        fired: Option<(&str, i64)>,
    ) -> Result<(), ProcessError> {
        let skey = storage_key(key);
        for _attempt in 0..MAX_CONFLICT_RETRIES {
            let writing = self.writing.lock(&skey).await;
            let entry = self.records.get(&skey).await?;
            let (mut record, revision) = match &entry {
                Some(e) => (self.decode(key, &e.value)?, Some(e.revision)),
                None => (Record::default(), None),
            };
            if record.applied.iter().any(|id| id == msg_id) {
                tracing::debug!(process = %self.name, key, msg_id, "already applied; sending what is still queued");
                drop(writing);
                return self.drain(&skey).await;
            }
            let scope = format!("{}:{key}", self.name);
            let mut ctx = ProcessContext::new(key, identity, scope, occurred, revision.is_none());
            transition.run(&mut record.state, &mut ctx).await?;
            if let Some((name, at)) = fired
                && record.deadlines.get(name) == Some(&at)
            {
                record.deadlines.remove(name);
            }
            let queued = record.apply(ctx, msg_id);
            // The index first: a crash after it leaves an early index entry, which the scanner
            // tolerates; the other order could lose a deadline.
            if let Some(due) = min_due(&record.deadlines) {
                self.timers.put(&skey, Bytes::from(due.to_string())).await?;
            }
            let value = self.encode(key, &record)?;
            let written = match revision {
                None => self.records.create(&skey, value).await,
                Some(rev) => self.records.update(&skey, value, rev).await,
            };
            match written {
                Ok(_) => {}
                Err(KvError::Conflict { .. } | KvError::AlreadyExists { .. }) => {
                    tracing::debug!(process = %self.name, key, "write conflict; applying again on the fresh state");
                    continue;
                }
                Err(e) => return Err(e.into()),
            }
            drop(writing);
            if record.deadlines.is_empty() {
                let _ = self.timers.delete(&skey, None).await;
            }
            if queued || record.ended {
                return self.drain(&skey).await;
            }
            return Ok(());
        }
        Err(self.contended(key))
    }

    /// Sends the queued messages of the record at `skey` (storage form) through the
    /// [outbox](crate::outbox), then removes the sent ones (and deletes an ended record).
    pub(crate) async fn drain(&self, skey: &str) -> Result<(), ProcessError> {
        let _sending = self.sending.lock(skey).await;
        let Some(entry) = self.records.get(skey).await? else {
            return Ok(());
        };
        let record = self.decode(skey, &entry.value)?;
        // Each message is tried on its own: one that cannot be delivered (no handler running)
        // does not hold back the others. It is tried again on the next drain, and given up
        // (logged as an error) after `MAX_EFFECT_ATTEMPTS`.
        let delivery = outbox::deliver(&record.outbox, |effect| self.execute(skey, effect)).await;
        let mut entry = Some(entry);
        for _ in 0..MAX_CONFLICT_RETRIES {
            let _writing = self.writing.lock(skey).await;
            let current = match entry.take() {
                Some(e) => e,
                None => match self.records.get(skey).await? {
                    Some(e) => e,
                    None => return Ok(()),
                },
            };
            let mut record = self.decode(skey, &current.value)?;
            delivery.clear_sent(&mut record.outbox);
            self.count_failures(skey, &mut record.outbox, &delivery);
            let result = if record.ended && record.outbox.is_empty() {
                let r = self.records.delete(skey, Some(current.revision)).await;
                if r.is_ok() {
                    let _ = self.timers.delete(skey, None).await;
                    tracing::info!(process = %self.name, key = skey, "process ended");
                }
                r.map(|_| 0)
            } else {
                let value = self.encode(skey, &record)?;
                self.records.update(skey, value, current.revision).await
            };
            match result {
                Ok(_) => return delivery.into_result(),
                Err(KvError::Conflict { .. }) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        Err(self.contended(skey))
    }

    /// Counts a failed attempt on each message `delivery` failed to send; gives up those that
    /// reached `MAX_EFFECT_ATTEMPTS`.
    fn count_failures<E>(&self, key: &str, queued: &mut Vec<Effect>, delivery: &outbox::Delivery<E>) {
        for effect in queued.iter_mut() {
            if delivery.failed(&*effect) {
                effect.attempts += 1;
            }
        }
        queued.retain(|e| {
            let give_up = e.attempts >= MAX_EFFECT_ATTEMPTS;
            if give_up {
                tracing::error!(process = %self.name, key, message = %e.type_name, subject = %e.subject, attempts = e.attempts, "giving up sending a queued message");
            }
            !give_up
        });
    }

    async fn execute(&self, key: &str, effect: &Effect) -> Result<(), ProcessError> {
        let fail = |reason: String| ProcessError::Outbox {
            process: self.name.clone(),
            key: key.to_owned(),
            reason,
        };
        let subject = Subject::new(&effect.subject).map_err(|e| fail(e.to_string()))?;
        let payload = Bytes::from(effect.payload.clone().into_bytes());
        let span = tracing::info_span!(
            "process_outbox",
            process = %self.name,
            subject = %subject,
            message_id = %effect.identity.message_id,
            correlation_id = %effect.identity.correlation_id,
        );
        crate::trace_context::link_stored(&span, effect.trace.as_deref());
        self.send_effect(key, effect, subject, payload, fail)
            .instrument(span)
            .await
    }

    async fn send_effect(
        &self,
        key: &str,
        effect: &Effect,
        subject: Subject,
        payload: Bytes,
        fail: impl Fn(String) -> ProcessError,
    ) -> Result<(), ProcessError> {
        match effect.kind {
            EffectKind::Publish => {
                let envelope = Envelope::with_identity(effect.identity, subject, payload)
                    .typed(effect.type_name.as_str(), effect.version.as_str());
                self.publisher
                    .publish_and_wait(OutboundMessage::from(&envelope))
                    .await
                    .map_err(|e| fail(e.to_string()))?;
            }
            EffectKind::Send => {
                let ack = self
                    .bus
                    .send_encoded::<()>(
                        effect.identity,
                        &subject,
                        &effect.type_name,
                        &effect.version,
                        payload,
                        self.bus.default_timeout(),
                    )
                    .await
                    .map_err(|e| fail(e.to_string()))?;
                if let CommandAck::Rejected { reason } = ack {
                    tracing::warn!(process = %self.name, key, command = %effect.type_name, %reason, "command rejected");
                }
            }
        }
        Ok(())
    }

    /// Keys with a deadline due by `now` according to the index.
    async fn due_keys(&self, now: i64) -> Result<Vec<String>, KvError> {
        let mut due = Vec::new();
        for skey in self.timers.keys().await? {
            if let Some(entry) = self.timers.get(&skey).await? {
                let at = std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|s| s.parse::<i64>().ok())
                    .unwrap_or(0);
                if at <= now {
                    due.push(skey);
                }
            }
        }
        Ok(due)
    }

    /// Removes the tombstones of finished instances and fired deadlines, once
    /// [`ProcessOptions::tombstone_age`] old: the deadline index is listed every
    /// `timer_interval`, and would otherwise read one entry per deadline ever fired. A failure is
    /// logged; the next sweep tries again.
    async fn sweep_tombstones(&self) {
        for (bucket, kv) in [("records", &self.records), ("timers", &self.timers)] {
            match kv.purge_tombstones(self.tombstone_age).await {
                Ok(0) => {}
                Ok(removed) => tracing::debug!(process = %self.name, bucket, removed, "tombstones removed"),
                Err(e) => tracing::warn!(process = %self.name, bucket, error = %e, "cannot remove tombstones now"),
            }
        }
    }

    /// Every stored key (storage form) with deadlines: the repair sweep of the index.
    async fn reindex(&self) -> Result<(), ProcessError> {
        for skey in self.records.keys().await? {
            let Some(entry) = self.records.get(&skey).await? else {
                continue;
            };
            let record = match crate::json::from_slice::<Record<S>>(&entry.value) {
                Ok(record) => record,
                Err(e) => {
                    // An event for it is dead-lettered with the reason (`ProcessError::Corrupt`).
                    tracing::warn!(process = %self.name, key = %skey, error = %e, "a stored record cannot be read; its deadlines are not indexed");
                    continue;
                }
            };
            if let Some(due) = min_due(&record.deadlines) {
                self.timers.put(&skey, Bytes::from(due.to_string())).await?;
            }
            if !record.outbox.is_empty() {
                // Left over by a crash: send it now rather than on the next event.
                if let Err(e) = self.drain(&skey).await {
                    tracing::warn!(process = %self.name, key = %skey, error = %e, "sending a left-over outbox failed");
                }
            }
        }
        Ok(())
    }

    /// Fires the due deadlines of one key (storage form): one step per deadline, oldest first.
    /// The subject a deadline transition is traced under: `deadline.{process}` (no message
    /// travels on it).
    fn deadline_subject(&self) -> Subject {
        Subject::from_tokens(["deadline", self.name.as_str()])
            .unwrap_or_else(|_| Subject::__from_checked_literal("deadline"))
    }

    async fn fire_due(&self, skey: &str, make: &DeadlineFactory<S>) -> Result<(), ProcessError> {
        let now = now_millis();
        let Some(entry) = self.records.get(skey).await? else {
            let _ = self.timers.delete(skey, None).await;
            return Ok(());
        };
        let record = self.decode(skey, &entry.value)?;
        let mut due: Vec<(String, i64)> = record
            .deadlines
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(n, at)| (n.clone(), *at))
            .collect();
        due.sort_by_key(|(_, at)| *at);
        if due.is_empty() {
            match min_due(&record.deadlines) {
                Some(at) => {
                    self.timers.put(skey, Bytes::from(at.to_string())).await?;
                }
                None => {
                    let _ = self.timers.delete(skey, None).await;
                }
            }
            return Ok(());
        }
        let key = if record.key.is_empty() {
            skey
        } else {
            record.key.as_str()
        };
        for (name, at) in &due {
            let (msg_id, identity) = deadline_identity(&self.name, skey, name, *at, record.correlation);
            let transition = make(Deadline {
                name: name.clone(),
                due_millis: *at,
            });
            let occurred = Timestamp::from_unix_nanos(i128::from(*at) * 1_000_000).unwrap_or_else(Timestamp::now);
            tracing::info!(process = %self.name, key = skey, deadline = %name, "deadline due");
            let envelope = Envelope::with_identity_at(identity, self.deadline_subject(), Bytes::new(), occurred);
            let step = self.step(key, &msg_id, identity, occurred, &*transition, Some((name, *at)));
            let outcome = self
                .deadlines
                .run("process_deadline", envelope, DEADLINE_TIMEOUT, async {
                    step.await.map(drop).map_err(HandlerError::from)
                })
                .await;
            if outcome != Outcome::Succeeded {
                // Left in the record: the next scan fires it again (a deadline is never lost).
                return Err(ProcessError::Deadline {
                    process: self.name.clone(),
                    key: key.to_owned(),
                    reason: format!("{outcome:?}"),
                });
            }
        }
        Ok(())
    }
}

/// What a machine does when one of its deadlines is due: explicit, since an aggregation sets
/// none.
pub(crate) enum OnDeadline<S> {
    /// It sets no deadlines (an aggregation): its scanner only sweeps left-over outboxes.
    Never,
    /// Each due deadline runs the transition this makes (a process's
    /// [`on_deadline`](ProcessManager::on_deadline), a correlation window's expiry).
    Run(Arc<DeadlineFactory<S>>),
}

impl<S> Clone for OnDeadline<S> {
    fn clone(&self) -> Self {
        match self {
            Self::Never => Self::Never,
            Self::Run(make) => Self::Run(make.clone()),
        }
    }
}

/// One declaration running on the engine: its event handlers (each with its own transition
/// type), what its deadlines do and its options. [`ProcessRunner`],
/// [`AggregationRunner`](crate::aggregate::AggregationRunner) and
/// [`CorrelatorRunner`](crate::correlate::CorrelatorRunner) each wrap one.
pub(crate) struct Machine<T: Transport, S> {
    name: &'static str,
    engine: Arc<Engine<T, S>>,
    handlers: Vec<ProcessHandler<S>>,
    on_deadline: OnDeadline<S>,
    options: ProcessOptions,
}

impl<T: Transport, S> fmt::Debug for Machine<T, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Machine")
            .field("name", &self.name)
            .field("handlers", &self.handlers)
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, S: ProcessState + Send + Sync + 'static> Machine<T, S> {
    /// Opens the buckets of `name` on `transport`; `kind` names what it runs in a refused
    /// setting's message (`process`, `aggregation`, `correlator`).
    pub(crate) async fn open(
        transport: &T,
        kind: &str,
        name: &'static str,
        handlers: Vec<ProcessHandler<S>>,
        on_deadline: OnDeadline<S>,
        options: ProcessOptions,
    ) -> Result<Self, ProcessError> {
        options.check(kind, name)?;
        let engine = Engine::open(transport, name, &options).await?;
        Ok(Self {
            name,
            engine: Arc::new(engine),
            handlers,
            on_deadline,
            options,
        })
    }

    /// The declaration's name.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The counters of its deadline transitions, for the host's stats view.
    pub(crate) fn deadline_observer(&self) -> &Observer {
        &self.engine.deadlines
    }

    /// The state of `key`, if any.
    pub(crate) async fn load(&self, key: &str) -> Result<Option<S>, ProcessError> {
        self.engine.load(key).await
    }

    /// One [`Registration`] per handler: decode the key, then one engine step.
    pub(crate) fn registrations(&self) -> Vec<Registration> {
        self.handlers
            .iter()
            .map(|h| {
                let engine = self.engine.clone();
                let key_of = h.subscription.key.clone();
                let decode = move |payload: &[u8]| -> Result<(String, Bytes), DecodeError> {
                    Ok((key_of(payload)?, Bytes::copy_from_slice(payload)))
                };
                let transition = h.transition.clone();
                let sub = &h.subscription;
                Registration::new(
                    sub.name,
                    sub.pattern.clone(),
                    sub.event_type,
                    decode,
                    move |ctx: Context, (key, payload): (String, Bytes)| {
                        let engine = engine.clone();
                        let transition = transition(payload);
                        async move {
                            let msg_id = ctx.message_id().to_string();
                            let (identity, occurred) = (*ctx.identity(), ctx.occurred());
                            engine
                                .step(&key, &msg_id, identity, occurred, &*transition, None)
                                .await
                                .map_err(HandlerError::from)
                        }
                    },
                )
                .with_options(self.options.handler.clone())
            })
            .collect()
    }

    /// Starts the deadline scanner: at start a sweep of every record (repairs the index, sends
    /// outboxes left by a crash), then every `timer_interval` the due deadlines. Several
    /// instances may scan at once: each deadline fires once (compare-and-set).
    pub(crate) fn spawn_timers(&self) -> TimerHandle {
        let engine = self.engine.clone();
        let on_deadline = self.on_deadline.clone();
        let interval = self.options.timer_interval;
        let task = tokio::spawn(async move {
            let mut tick = 0u32;
            loop {
                if tick.is_multiple_of(SWEEP_EVERY) {
                    if let Err(e) = engine.reindex().await {
                        tracing::warn!(process = %engine.name, error = %e, "sweep of the records failed");
                    }
                    // After the repair: a first sweep of many old tombstones takes a while.
                    engine.sweep_tombstones().await;
                }
                tick = tick.wrapping_add(1);
                if let OnDeadline::Run(make) = &on_deadline {
                    fire_all_due(&engine, &**make).await;
                }
                tokio::time::sleep(interval).await;
            }
        });
        TimerHandle { task }
    }
}

/// One scan: fires every due deadline the index lists.
async fn fire_all_due<T: Transport, S: ProcessState + Send + 'static>(
    engine: &Engine<T, S>,
    make: &DeadlineFactory<S>,
) {
    match engine.due_keys(now_millis()).await {
        Ok(keys) => {
            for skey in keys {
                if let Err(e) = engine.fire_due(&skey, make).await {
                    tracing::warn!(process = %engine.name, key = %skey, error = %e, "firing a deadline failed; retrying later");
                }
            }
        }
        Err(e) => tracing::warn!(process = %engine.name, error = %e, "reading the deadline index failed"),
    }
}

/// Implements [`HandlerSet`](crate::handler::HandlerSet) and `Debug` for a runner that wraps a
/// [`Machine`] in its field `machine`.
macro_rules! runs_machine {
    ([$($generics:tt)*] $name:ident $($args:tt)*) => {
        impl<$($generics)*> $crate::handler::HandlerSet for $name $($args)* {
            fn set_name(&self) -> &str {
                self.machine.name()
            }
            fn registrations(self: ::std::sync::Arc<Self>) -> ::std::vec::Vec<$crate::handler::Registration> {
                self.machine.registrations()
            }
        }

        impl<$($generics)*> ::std::fmt::Debug for $name $($args)* {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.debug_tuple(::std::stringify!($name)).field(&self.machine).finish()
            }
        }
    };
}
pub(crate) use runs_machine;

/// Options of a [`ProcessRunner`].
#[derive(Debug, Clone)]
pub struct ProcessOptions {
    /// Options of every event handler (durable names, retries, concurrency).
    pub handler: HandlerOptions,
    /// How long a command sent by a handler or a deadline may take before it is sent again
    /// (default [`DEFAULT_COMMAND_TIMEOUT`](crate::command::DEFAULT_COMMAND_TIMEOUT)). Not zero:
    /// opening the runner refuses it ([`ProcessError::Settings`]).
    pub command_timeout: Duration,
    /// How often the deadline scanner looks for due deadlines (default 1 s): how late a
    /// deadline may fire. Not zero: opening the runner refuses it ([`ProcessError::Settings`]).
    pub timer_interval: Duration,
    /// Expire records after this long (a safety net for processes that never end).
    pub ttl: Option<Duration>,
    /// How long the tombstone of a finished instance's record, or of a fired deadline, is kept
    /// before the deadline scanner's sweep (when it starts, then every 30 scans) removes it;
    /// default [`TOMBSTONE_AGE`](crate::transport::TOMBSTONE_AGE). Without the removal, the
    /// buckets, and the scanner's listing of the deadline index every `timer_interval`, would
    /// grow with every instance and deadline ever handled.
    pub tombstone_age: Duration,
}

impl ProcessOptions {
    /// The settings that would make the runner spin or fail every command: a zero
    /// `timer_interval` (the scanner would list the deadline index back to back, one listing
    /// after another on the server) or a zero `command_timeout` (every command would time out
    /// before its answer could come, and be sent again for ever), refused as settings of the
    /// `kind` (`process`, `aggregation`, `correlator`) `name`.
    fn check(&self, kind: &str, name: &str) -> Result<(), SettingsError> {
        let refuse = |setting, reason: String| Err(SettingsError::new(format!("{kind} `{name}`"), setting, reason));
        if self.timer_interval.is_zero() {
            return refuse(
                "timer_interval",
                format!(
                    "it is zero: the deadline scanner would list its index back to back; set it to how late a deadline may fire (default {:?})",
                    Self::default().timer_interval
                ),
            );
        }
        if self.command_timeout.is_zero() {
            return refuse(
                "command_timeout",
                format!(
                    "it is zero: every command would time out before its answer; set it to how long a command may take (default {:?})",
                    Self::default().command_timeout
                ),
            );
        }
        Ok(())
    }
}

impl Default for ProcessOptions {
    fn default() -> Self {
        Self {
            handler: HandlerOptions::default(),
            command_timeout: crate::command::DEFAULT_COMMAND_TIMEOUT,
            timer_interval: Duration::from_secs(1),
            ttl: None,
            tombstone_age: crate::transport::TOMBSTONE_AGE,
        }
    }
}

/// Runs a [`ProcessManager`]: register it on a [`Service`](crate::service::Service) as a
/// [`HandlerSet`](crate::handler::HandlerSet) for its events, and call [`spawn_timers`](Self::spawn_timers) for its deadlines.
pub struct ProcessRunner<T: Transport, P: ProcessManager> {
    machine: Arc<Machine<T, P>>,
}

impl<T: Transport, P: ProcessManager> Clone for ProcessRunner<T, P> {
    fn clone(&self) -> Self {
        Self {
            machine: self.machine.clone(),
        }
    }
}

impl<T: Transport, P: ProcessManager> ProcessRunner<T, P> {
    /// Opens the process's buckets on `transport` with default options.
    pub async fn open(transport: T) -> Result<Self, ProcessError> {
        Self::with_options(transport, ProcessOptions::default()).await
    }

    /// Opens the process's buckets on `transport`.
    pub async fn with_options(transport: T, options: ProcessOptions) -> Result<Self, ProcessError> {
        let on_deadline = OnDeadline::Run(Arc::new(|deadline: Deadline| -> Box<dyn Transition<P>> {
            Box::new(DeadlineTransition::<P> {
                deadline,
                _state: PhantomData,
            })
        }));
        let machine = Machine::open(&transport, "process", P::NAME, P::handlers(), on_deadline, options).await?;
        Ok(Self {
            machine: Arc::new(machine),
        })
    }

    pub(crate) fn deadline_observer(&self) -> &Observer {
        self.machine.deadline_observer()
    }

    /// The state of the process `key`, if it runs.
    pub async fn state(&self, key: &str) -> Result<Option<P>, ProcessError> {
        self.machine.load(key).await
    }

    /// Starts the deadline scanner: at start a sweep of every record (repairs the index, sends
    /// outboxes left by a crash), then every `timer_interval` the due deadlines. Several
    /// instances may scan at once: each deadline fires once (compare-and-set).
    pub fn spawn_timers(&self) -> TimerHandle {
        self.machine.spawn_timers()
    }
}

runs_machine!([T: Transport, P: ProcessManager] ProcessRunner<T, P>);

/// The running deadline scanner; dropping it stops the scanner.
#[derive(Debug)]
pub struct TimerHandle {
    task: tokio::task::JoinHandle<()>,
}

impl TimerHandle {
    /// Stops the scanner.
    pub fn stop(self) {}
}

impl Drop for TimerHandle {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Both keys have one type (checked by `#[process]` across its handlers).
#[doc(hidden)]
#[diagnostic::on_unimplemented(
    message = "the process key has type `{Self}` on one handled event and `{K}` on another",
    label = "this event's key is `{Self}`, the first handler's is `{K}`",
    note = "every event a process handles must carry its correlation key with one type (e.g. `PersonId` everywhere)"
)]
pub trait SameKey<K: ?Sized> {}
impl<K: ?Sized> SameKey<K> for K {}

/// Checks that two key fields have one type (called by `#[process]`).
#[doc(hidden)]
pub fn __same_key<K: ?Sized, Other: ?Sized + SameKey<K>>(_: &K, _: &Other) {}

/// Renders a correlation field as a process key: what `#[process(key = field)]` calls.
pub fn key_of<K: fmt::Display + ?Sized>(value: &K) -> String {
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh transition of process `p-1` that queued one message of `kind` on `subject`.
    fn queued(kind: EffectKind, subject: &str, type_name: &str) -> ProcessContext {
        let mut ctx = ProcessContext::new(
            "p-1",
            Identity::root(),
            "onboarding:p-1".to_owned(),
            Timestamp::now(),
            true,
        );
        let identity = ctx.next_identity();
        ctx.push(
            identity,
            kind,
            Subject::new(subject).unwrap(),
            type_name,
            "1.0",
            b"{\"version\":\"1.0\"}",
        );
        ctx
    }

    /// Two drains of one record at once (a step's, and a second event's or the start-up sweep's)
    /// send a queued command once: the second reads the record after the first cleared it.
    #[tokio::test(start_paused = true)]
    async fn concurrent_drains_send_a_queued_message_once() {
        use crate::transport::Reply;
        use crate::transport::Transport;
        use std::sync::atomic::{AtomicUsize, Ordering};

        // A subscriber of this thread's own: the `process_outbox` spans made here, with none,
        // would have tracing cache that nobody wants them, and the span-recording test beside
        // this one could then miss its own.
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry());
        let t = crate::transport::memory::MemoryTransport::new();
        let engine = Engine::<_, BTreeMap<String, u32>>::open(&t, "onboarding", &ProcessOptions::default())
            .await
            .expect("engine");
        let mut responder = t
            .serve(
                &crate::subject::SubjectPattern::new("commands.people.greet").unwrap(),
                "greet",
            )
            .await
            .expect("serve");
        let served = Arc::new(AtomicUsize::new(0));
        tokio::spawn({
            let served = served.clone();
            async move {
                while let Some(request) = responder.next().await {
                    served.fetch_add(1, Ordering::SeqCst);
                    // A handler that takes a while: the other drain runs meanwhile.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    let payload = Bytes::from_static(br#"{"status":"accepted"}"#);
                    let _ = request
                        .respond(Reply {
                            payload,
                            ..Reply::default()
                        })
                        .await;
                }
            }
        });
        let ctx = queued(EffectKind::Send, "commands.people.greet", "Greet");
        let mut record = Record::<BTreeMap<String, u32>>::default();
        record.apply(ctx, "m-1");
        let skey = storage_key("p-1");
        let value = engine.encode("p-1", &record).expect("encode");
        engine.records.create(&skey, value).await.expect("create");

        let (a, b) = futures::join!(engine.drain(&skey), engine.drain(&skey));
        a.expect("first drain");
        b.expect("second drain");
        assert_eq!(served.load(Ordering::SeqCst), 1, "the queued command was sent once");
        let stored = engine.records.get(&skey).await.expect("get").expect("record");
        assert!(engine.decode("p-1", &stored.value).expect("decode").outbox.is_empty());
    }

    /// An outbox sent later in another trace (the scanner, after a crash) links to the
    /// transition that queued it; sent in the transition's own trace, it links to nothing.
    #[cfg(feature = "otel")]
    #[tokio::test]
    async fn a_late_outbox_links_to_the_transition_that_queued_it() {
        use crate::transport::{StreamSpec, Transport};
        use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
        use tracing_opentelemetry::OpenTelemetrySpanExt;
        use tracing_subscriber::layer::SubscriberExt;

        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        let _default = tracing::subscriber::set_default(subscriber);

        let t = crate::transport::memory::MemoryTransport::new();
        t.ensure_stream(&StreamSpec::for_domain("people", None).expect("spec"))
            .await
            .expect("stream");
        let engine = Engine::<_, BTreeMap<String, u32>>::open(&t, "onboarding", &ProcessOptions::default())
            .await
            .expect("engine");
        let queue = || {
            queued(EffectKind::Publish, "people.onboarded", "Onboarded")
                .effects
                .pop()
                .expect("queued")
        };
        let transition = tracing::info_span!("transition");
        let (effect, stored) = transition.in_scope(|| {
            let cx = tracing::Span::current().context();
            (queue(), cx.span().span_context().clone())
        });
        assert!(
            effect.trace.is_some(),
            "the transition's traceparent is stored with the effect"
        );
        // Sent in the transition's trace: no link.
        engine
            .execute("p-1", &effect)
            .instrument(tracing::info_span!(parent: &transition, "send_now"))
            .await
            .expect("sent");
        drop(transition);
        // Sent by the scanner, in a trace of its own: linked.
        engine
            .execute("p-1", &effect)
            .instrument(tracing::info_span!("scanner"))
            .await
            .expect("sent");
        let spans = exporter.get_finished_spans().expect("spans");
        let outboxes: Vec<_> = spans.iter().filter(|s| s.name == "process_outbox").collect();
        assert_eq!(outboxes.len(), 2);
        let (same, other): (Vec<_>, Vec<_>) = outboxes
            .into_iter()
            .partition(|s| s.span_context.trace_id() == stored.trace_id());
        assert_eq!((same.len(), other.len()), (1, 1));
        assert!(same[0].links.is_empty());
        let links: Vec<_> = other[0]
            .links
            .iter()
            .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
            .collect();
        assert_eq!(links, [(stored.trace_id(), stored.span_id())]);
    }

    fn golden_record() -> Record<BTreeMap<String, u32>> {
        let m: MessageId = "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071".parse().unwrap();
        let root = Identity::root_from(m);
        let at = Timestamp::from_unix_nanos(1_795_530_000_000i128 * 1_000_000).unwrap();
        let mut ctx = ProcessContext::new("p-1", root, "onboarding:p-1".to_owned(), at, true);
        let subject = Subject::new("people.onboarded").unwrap();
        let identity = ctx.next_identity();
        ctx.push(
            identity,
            EffectKind::Publish,
            subject,
            "Onboarded",
            "1.0",
            b"{\"id\":1}",
        );
        ctx.schedule.push(("expire".to_owned(), 1_795_530_060_000));
        let mut record = Record::<BTreeMap<String, u32>>::default();
        record.state.insert("steps".to_owned(), 2);
        record.apply(ctx, &m.to_string());
        record
    }

    /// The stored form of a process record (what `cim_pm_{name}` holds) must not change.
    #[test]
    fn record_json_is_golden() {
        const GOLDEN: &str = concat!(
            r#"{"state":{"steps":2},"key":"p-1","correlation":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","#,
            r#""applied":["0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071"],"outbox":[{"kind":"publish","#,
            r#""subject":"people.onboarded","type_name":"Onboarded","version":"1.0","payload":"{\"id\":1}","#,
            r#""identity":{"message_id":"01a20ded-8680-7e3a-a16e-028cfc7c2e7e","#,
            r#""correlation_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","#,
            r#""causation_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071"},"attempts":0}],"#,
            r#""deadlines":{"expire":1795530060000},"ended":false}"#
        );
        let json = serde_json::to_string(&golden_record()).unwrap();
        assert_eq!(json, GOLDEN);
        let back: Record<BTreeMap<String, u32>> = serde_json::from_str(GOLDEN).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), GOLDEN);
    }
}
