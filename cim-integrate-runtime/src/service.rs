//! [`Service`]: the host. One builder takes event handler sets, command handler sets, process
//! managers, aggregations, correlators and sagas; one `start` provisions and starts them all; one
//! [`shutdown`](Service::shutdown) stops them; one [`stats`](Service::stats) view counts them.
//!
//! Every message, of every kind, goes through the [`pipeline`](crate::pipeline): a stack of
//! layers composed once per handler at start, ending in one settle. An event handler's stack:
//!
//! 1. `trace`: a `handle` span with the message's identity;
//! 2. `record`: counters and metrics, from the final outcome;
//! 3. your layers ([`ServiceBuilder::layer`]);
//! 4. `dead letter`: what cannot be handled is stored on `dlq.{set}.{handler}` (original payload
//!    and headers, plus `X-Dead-Letter-*` headers: reason, handler, subject, stream, sequence,
//!    delivery count, time) before the original is terminated; if it cannot be stored for now,
//!    the message is redelivered later; if it never can be as it is (a copy over the payload
//!    limit), it is stored without the payload (`X-Dead-Letter-Payload-Omitted`: its size),
//!    pointing at the original by stream and sequence;
//! 5. `type filter`: a typed handler skips other event types its pattern matches; a message
//!    without a valid envelope is dead-lettered;
//! 6. `dedup`: a message this handler already handled is acknowledged without running it (the
//!    store unreachable: redelivered later, never a blind run); after a successful run the mark is
//!    written before the acknowledgement, retried in place while the store is unreachable;
//! 7. `ordered`: an ordered handler retries in place, so later messages wait;
//! 8. `attempts`: deliveries deferred by a breaker or an outage are not attempts, nor are
//!    deliveries that reached no run (an attempt after the first is recorded in the dedup store
//!    before it runs, and a redelivery counts as at most one more than recorded); a message
//!    whose attempts the policy has used up in earlier runs that never finished is
//!    dead-lettered; a failure is retried with the policy's back-off, then dead-lettered;
//! 9. `breaker`: while the handler's breaker is open, messages are deferred for the rest of the
//!    cool-down;
//! 10. `catch panic`: a panic is a failed attempt; a slow run keeps its delivery alive with
//!     progress signals;
//! 11. `invoke`: decode (undecodable: dead letter) and run the handler.
//!
//! Then settle: ack, nak with the delay, or term after the dead letter was stored. Nothing is
//! acknowledged before it is handled and its mark written, or dead-lettered.
//!
//! Command handlers run through trace, record, your layers, a result cache (the commands' dedup:
//! a repeated send gets the remembered answer), ordered retry in place, attempts, breaker, catch
//! panic and their own invoke; their settle is the reply.
//!
//! Shutdown stops pulling, gives back what was pulled but not started, lets in-flight handlers
//! finish within a grace period, and flushes; what did not finish is redelivered.

use crate::aggregate::AggregationRunner;
use crate::breaker::{BreakerState, CircuitBreaker};
use crate::command::{CommandHandlerSet, CommandRegistration, queue_group};
use crate::correlate::CorrelatorRunner;
use crate::dedup::DedupCheck;
use crate::dedup::{DEFAULT_DEDUP_TTL, DedupStore, KvDedup};
use crate::handler::{HandlerOptions, HandlerSet, Registration, RetryPolicy};
use crate::monitor::{self, HandlerMetrics};
use crate::pipeline::attempts::{Attempts, Budget, Ledger, Starts};
use crate::pipeline::breaker::Breaker;
use crate::pipeline::catch_panic::CatchPanic;
use crate::pipeline::command::{CommandInvoke, Reply, ResultCache};
use crate::pipeline::dead_letter::{DeadLetter, Letters};
use crate::pipeline::dedup::{Dedup, DurableSince};
use crate::pipeline::filter::Filter;
use crate::pipeline::invoke::{ContextParts, Invoke, Runner};
use crate::pipeline::ordered::Ordered;
use crate::pipeline::record::{HandlerCounters, Record};
use crate::pipeline::run::{self, ConsumerSource};
use crate::pipeline::settle::Ack;
use crate::pipeline::step::Observer;
use crate::pipeline::trace::Trace;
use crate::pipeline::{Layer, Passthrough, Stack};
use crate::process::{ProcessManager, ProcessRunner, TimerHandle};
use crate::saga::{Saga, SagaRunner};
use crate::settings::SettingsError;
use crate::subject::{Subject, SubjectError, SubjectPattern};
use crate::topology::{ParticipantKind, PublishLog, Topology};
use crate::transport::{Consumer, ConsumerSpec, KvError, KvSpec, StreamSpec, Transport, TransportError};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinSet;

pub mod status;
pub use status::{DEFAULT_STATUS_INTERVAL, HOSTS_BUCKET, HostHandler, HostStatus, MAX_STATUS_INTERVAL};

pub use crate::pipeline::record::HandlerStats;

/// Header: why the message was dead-lettered.
pub const DEAD_LETTER_REASON: &str = "X-Dead-Letter-Reason";
/// Header: which handler dead-lettered it.
pub const DEAD_LETTER_HANDLER: &str = "X-Dead-Letter-Handler";
/// Header: the subject it was published on.
pub const DEAD_LETTER_SUBJECT: &str = "X-Dead-Letter-Subject";
/// Header: the stream it was stored in.
pub const DEAD_LETTER_STREAM: &str = "X-Dead-Letter-Stream";
/// Header: its sequence in that stream.
pub const DEAD_LETTER_SEQUENCE: &str = "X-Dead-Letter-Sequence";
/// Header: when that stream stored it (RFC 3339, to the nanosecond). With `-Stream` and
/// `-Sequence` it names the original exactly: a redrive carries it on as
/// [`REDRIVE_STORED`], so that the handler's de-duplication mark of the redriven copy also
/// covers the original (see [`dedup`](crate::dedup)).
pub const DEAD_LETTER_STORED: &str = "X-Dead-Letter-Stored";
/// Header: how many times it had been delivered.
pub const DEAD_LETTER_DELIVERIES: &str = "X-Delivery-Count";
/// Header: when it was dead-lettered (RFC 3339).
pub const DEAD_LETTER_AT: &str = "X-Dead-Letter-At";
/// Header: the original `Nats-Msg-Id`, if it had one (the dead letter gets its own).
pub const DEAD_LETTER_ORIGINAL_MSG_ID: &str = "X-Dead-Letter-Original-Msg-Id";
/// Header: the dead letter carries no payload, because the original's payload with the dead
/// letter's headers is over the server's limit; the value is the payload's size in bytes. The
/// original stays in its stream: [`DEAD_LETTER_STREAM`], [`DEAD_LETTER_SEQUENCE`].
pub const DEAD_LETTER_PAYLOAD_OMITTED: &str = "X-Dead-Letter-Payload-Omitted";
/// Header: the dead letter carries none of the original's headers either (they alone could not
/// be stored); the value is how many there were.
pub const DEAD_LETTER_HEADERS_OMITTED: &str = "X-Dead-Letter-Headers-Omitted";

/// The dead-letter stream's name (before any deployment prefix).
pub const DEAD_LETTER_STREAM_NAME: &str = "DEAD_LETTERS";
/// Dead-letter header: the failure kind, as the `reason` label of `cim_dead_letters_total`
/// (`permanent`, `undecodable`, `exhausted`, `invalid_envelope`).
pub const DEAD_LETTER_KIND: &str = "X-Dead-Letter-Kind";
/// Header of a redriven message (see [`ops`](crate::ops)): how often it has been redriven. A
/// handler always reads the de-duplication mark of a message that carries it.
pub const REDRIVE_COUNT: &str = "X-Redrive-Count";
/// Header of a redriven message: the original's subject, which the handler sees again.
pub const REDRIVE_SUBJECT: &str = "X-Redrive-Subject";
/// Header of a redriven message: the original's stream.
pub const REDRIVE_STREAM: &str = "X-Redrive-Stream";
/// Header of a redriven message: the original's sequence in its stream.
pub const REDRIVE_SEQUENCE: &str = "X-Redrive-Sequence";
/// Header of a redriven message: when the original's stream stored it (RFC 3339, to the
/// nanosecond), from the letter's [`DEAD_LETTER_STORED`]. Once the handler has handled the
/// redriven copy, its de-duplication mark names the original too (stream, sequence and this
/// time), so that the original delivered again as a first delivery (a durable created again)
/// is recognised without a read by message id.
pub const REDRIVE_STORED: &str = "X-Redrive-Stored";
/// The last token of the subject on which a handler's redrives arrive:
/// `dlq.{set}.{handler}.redrive`, read by the handler's redrive consumer.
pub const REDRIVE_TOKEN: &str = "redrive";
/// The first token of dead-letter subjects.
pub const DEAD_LETTER_TOKEN: &str = "dlq";

/// Why a service could not start.
///
/// Its `Debug` shows the variant and the message (`DuplicateHandler: two handlers use ...`), so
/// that `?` out of `main` prints the fix, not only the variant's fields.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// Two handlers would share one durable consumer.
    #[error("two handlers use the durable name `{0}`; give one of them another name or `durable = \"...\"`")]
    DuplicateHandler(String),
    /// Two command handlers in one service handle the same command.
    #[error(
        "two handlers for the command `{command}` (`{subject}`): `{first}` and `{second}`; a command is handled by exactly one handler"
    )]
    DuplicateCommandHandler {
        /// The command type.
        command: String,
        /// Its subject.
        subject: String,
        /// The first handler (`set.name`).
        first: String,
        /// The second handler.
        second: String,
    },
    /// A name is not usable in subjects or durable names.
    #[error("invalid name `{name}`: {reason}")]
    InvalidName {
        /// The name.
        name: String,
        /// Why.
        reason: String,
    },
    /// A subscription's first token is a wildcard, so its domain stream is unknown.
    #[error(
        "handler `{handler}` subscribes to `{pattern}`: the first token must name the domain (`document.*`, not `*.created`)"
    )]
    PatternWithoutDomain {
        /// The handler.
        handler: String,
        /// Its pattern.
        pattern: String,
    },
    /// Provisioning streams or consumers failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A setting that would defeat what it is for, e.g. de-duplication marks that expire before
    /// a handler's redeliveries come.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Opening the de-duplication bucket or the command result cache failed.
    #[error(transparent)]
    KeyValue(#[from] KvError),
    /// A subject could not be built.
    #[error(transparent)]
    Subject(#[from] SubjectError),
}

impl std::fmt::Debug for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let variant = match self {
            Self::DuplicateHandler(_) => "DuplicateHandler",
            Self::DuplicateCommandHandler { .. } => "DuplicateCommandHandler",
            Self::InvalidName { .. } => "InvalidName",
            Self::PatternWithoutDomain { .. } => "PatternWithoutDomain",
            Self::Settings(_) => "Settings",
            Self::Transport(_) => "Transport",
            Self::KeyValue(_) => "KeyValue",
            Self::Subject(_) => "Subject",
        };
        write!(f, "{variant}: {self}")
    }
}

/// The core of an event handler's stack, below your layers.
pub type EventCore = DeadLetter<Filter<Dedup<Ordered<Attempts<Breaker<CatchPanic<Invoke>>>>>>>;
/// The core of a command handler's stack, below your layers (`K`: the result cache's bucket).
pub type CommandCore<K> = ResultCache<Ordered<Attempts<Breaker<CatchPanic<CommandInvoke>>>>, K>;

/// Layers that can wrap both kinds of stack: any `L` with `impl<D: Dispatch> Layer<D> for L`.
pub trait HostLayer<T: Transport>: Layer<EventCore> + Layer<CommandCore<T::KeyValue>> + Send + Sync + 'static {}

impl<T: Transport, L> HostLayer<T> for L where
    L: Layer<EventCore> + Layer<CommandCore<T::KeyValue>> + Send + Sync + 'static
{
}

/// Settings of the command handlers of a service.
#[derive(Debug, Clone)]
struct CommandSettings {
    concurrency: usize,
    result_ttl: Option<Duration>,
    retry: RetryPolicy,
    breaker: Option<crate::breaker::BreakerSettings>,
}

/// Something the host runs beside the handlers (deadline timers, saga resumes), stopped at
/// shutdown.
enum Background {
    Timers(TimerHandle),
    Task(tokio::task::JoinHandle<()>),
    /// The host status heartbeat: told to stop, it deletes its document before it ends.
    Heartbeat {
        task: tokio::task::JoinHandle<()>,
        stop: tokio::sync::oneshot::Sender<()>,
    },
}

type Starter = Box<dyn FnOnce() -> Background + Send>;

/// Builds and starts a [`Service`].
pub struct ServiceBuilder<T: Transport, L = Passthrough> {
    transport: T,
    name: String,
    dedup: Option<Arc<dyn DedupStore>>,
    dedup_ttl: Duration,
    dedup_check: DedupCheck,
    dedup_clock_margin: Duration,
    handlers: Vec<(String, Registration)>,
    commands: Vec<(String, CommandRegistration)>,
    command_settings: CommandSettings,
    background: Vec<Starter>,
    /// Handlers counted elsewhere (saga steps), shown in the stats view.
    counted: Vec<HandlerEntry>,
    topology: Topology,
    /// How often the host status is written ([`status`]); `None`: never.
    status_interval: Option<Duration>,
    layers: L,
}

impl<T: Transport, L> std::fmt::Debug for ServiceBuilder<T, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("name", &self.name)
            .field("handlers", &self.handlers)
            .field("commands", &self.commands)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, L> ServiceBuilder<T, L> {
    /// Adds a layer to every handler's stack (event and command handlers), below tracing and
    /// outcome recording and above the built-in layers. Layers added first are outermost. See
    /// [`crate::pipeline`] for an example.
    pub fn layer<N>(self, layer: N) -> ServiceBuilder<T, Stack<N, L>> {
        ServiceBuilder {
            transport: self.transport,
            name: self.name,
            dedup: self.dedup,
            dedup_ttl: self.dedup_ttl,
            dedup_check: self.dedup_check,
            dedup_clock_margin: self.dedup_clock_margin,
            handlers: self.handlers,
            commands: self.commands,
            command_settings: self.command_settings,
            background: self.background,
            counted: self.counted,
            topology: self.topology,
            status_interval: self.status_interval,
            layers: Stack::new(layer, self.layers),
        }
    }

    /// Registers a set of handlers (usually generated by `#[subscribe]`).
    pub fn register<S: HandlerSet>(self, set: S) -> Self {
        self.register_arc(Arc::new(set))
    }

    /// Registers a shared set of handlers.
    pub fn register_arc<S: HandlerSet>(mut self, set: Arc<S>) -> Self {
        let name = set.set_name().to_owned();
        for r in set.registrations() {
            self.handlers.push((name.clone(), r));
        }
        self
    }

    /// Registers one handler under the set name `set`.
    pub fn handler(mut self, set: &str, registration: Registration) -> Self {
        self.handlers.push((set.to_owned(), registration));
        self
    }

    /// Registers a set of command handlers (usually generated by `#[command]` on an `impl`
    /// block). Every instance of the service joins one queue group per command, so instances
    /// share the load and each command is handled once.
    pub fn commands<S: CommandHandlerSet>(self, set: S) -> Self {
        self.commands_arc(Arc::new(set))
    }

    /// Registers a shared set of command handlers.
    pub fn commands_arc<S: CommandHandlerSet>(mut self, set: Arc<S>) -> Self {
        let name = set.set_name().to_owned();
        for r in set.command_registrations() {
            self.commands.push((name.clone(), r));
        }
        self
    }

    /// Registers one command handler under the set name `set`.
    pub fn command_handler(mut self, set: &str, registration: CommandRegistration) -> Self {
        self.commands.push((set.to_owned(), registration));
        self
    }

    /// Most commands handled at once per command handler (default 16).
    pub fn command_concurrency(mut self, n: usize) -> Self {
        self.command_settings.concurrency = n.max(1);
        self
    }

    /// How long command answers are remembered, so that a repeated send (same message id) is
    /// answered without running the handler again (default
    /// [`DEFAULT_RESULT_TTL`](crate::command::DEFAULT_RESULT_TTL)). `None` remembers nothing.
    pub fn result_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.command_settings.result_ttl = ttl;
        self
    }

    /// How a failing or panicking command handler is retried in place before the command is
    /// answered `failed` (default: 3 attempts, 50 ms apart, doubling; keep it well inside the
    /// senders' timeout).
    pub fn command_retry(mut self, retry: RetryPolicy) -> Self {
        self.command_settings.retry = retry;
        self
    }

    /// A circuit breaker for each command handler (default none): while it is open, commands are
    /// answered `failed` at once, without running the handler.
    pub fn command_breaker(mut self, settings: crate::breaker::BreakerSettings) -> Self {
        self.command_settings.breaker = Some(settings);
        self
    }

    /// Registers a process manager: its handlers, and its deadline timers, which run while the
    /// service runs; its deadline transitions are counted in the stats as `{process}.deadline`.
    pub fn process<P: ProcessManager>(mut self, runner: ProcessRunner<T, P>) -> Self {
        self.counted.push(HandlerEntry::observed(runner.deadline_observer()));
        let timers = runner.clone();
        self.register(runner)
            .background(move || Background::Timers(timers.spawn_timers()))
    }

    /// How often the service writes its [host status](status) (handlers' counters, breaker
    /// states, topology) to the bucket [`HOSTS_BUCKET`] for operators' tools; default
    /// `Some(`[`DEFAULT_STATUS_INTERVAL`]`)`, `None` writes nothing. One put per interval; a
    /// failing put never affects message handling. [`shutdown`](Service::shutdown) deletes the
    /// document, so that a host stopped cleanly is not listed as live.
    ///
    /// More than zero and at most [`MAX_STATUS_INTERVAL`] (10 s): [`start`](Self::start) refuses
    /// zero, which would write back to back, and a longer one, with which a document (kept
    /// [`HOSTS_MAX_AGE`](status::HOSTS_MAX_AGE) after its last put) could vanish after one missed
    /// put while its host runs ([`ServiceError::Settings`]).
    pub fn status_interval(mut self, interval: Option<Duration>) -> Self {
        self.status_interval = interval;
        self
    }

    /// Registers an aggregation.
    pub fn aggregation(self, runner: AggregationRunner<T>) -> Self {
        self.register(runner)
    }

    /// Registers a correlator: its handlers, and its window timers, which run while the service
    /// runs.
    pub fn correlator(mut self, runner: CorrelatorRunner<T>) -> Self {
        self.counted.push(HandlerEntry::observed(runner.deadline_observer()));
        let runner = Arc::new(runner);
        let timers = runner.clone();
        self.register_arc(runner)
            .background(move || Background::Timers(timers.spawn_timers()))
    }

    /// Hosts a saga: once the service has started, its unfinished instances are resumed in the
    /// background, at most [`DEFAULT_RESUME_CONCURRENCY`](crate::saga::DEFAULT_RESUME_CONCURRENCY)
    /// at once, while the handlers consume (start-up does not wait for them); its steps' counters
    /// join the stats view. Sagas started by events are registered with
    /// [`handler`](Self::handler) and [`SagaRunner::start_on`].
    pub fn saga<S: Saga>(mut self, runner: SagaRunner<S, T>) -> Self {
        self.counted.extend(runner.observers().map(HandlerEntry::observed));
        self.topology.add_participant(S::NAME, ParticipantKind::Saga);
        self.spawn_on_start(move || async move {
            match runner
                .resume_concurrently(crate::saga::DEFAULT_RESUME_CONCURRENCY)
                .await
            {
                Ok(report) => tracing::info!(saga = S::NAME, ?report, "unfinished sagas resumed"),
                Err(e) => tracing::warn!(saga = S::NAME, error = %e, "resuming sagas failed"),
            }
            // Then, every rescan interval, the sagas whose lease ran out (a dead runner's, or
            // released by an operator's retry).
            let Some(every) = runner.rescan_interval() else {
                return;
            };
            loop {
                tokio::time::sleep(every).await;
                match runner.rescan().await {
                    Ok(report) => tracing::debug!(saga = S::NAME, ?report, "sagas rescanned"),
                    Err(e) => {
                        tracing::debug!(saga = S::NAME, error = %e, "rescanning sagas failed; trying again later")
                    }
                }
            }
        })
    }

    /// Runs `task` beside the handlers once the service has started; it is aborted at
    /// shutdown (for example a saga resume: `runner.resume_in_background(16)`).
    pub fn spawn_on_start<F>(self, task: impl FnOnce() -> F + Send + 'static) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.background(move || Background::Task(tokio::spawn(task())))
    }

    fn background(mut self, start: impl FnOnce() -> Background + Send + 'static) -> Self {
        self.background.push(Box::new(start));
        self
    }

    /// Uses `store` for de-duplication marks instead of the default key-value bucket
    /// `cim_dedup_{service}` on the service's transport.
    pub fn dedup_store(mut self, store: impl DedupStore) -> Self {
        self.dedup = Some(Arc::new(store));
        self
    }

    /// When handlers read their de-duplication mark before running (default
    /// [`DedupCheck::MaybeSeen`]: only when the handler may have seen the message before; see
    /// [`crate::dedup`]).
    pub fn dedup_check(mut self, check: DedupCheck) -> Self {
        self.dedup_check = check;
        self
    }

    /// How far the clocks of the servers, and of this host, may disagree (default
    /// [`CLOCK_MARGIN`](crate::dedup::CLOCK_MARGIN), 5 s): under [`DedupCheck::MaybeSeen`] a
    /// message stored less than this after its durable was created, or after the consumer last
    /// resumed pulling (by this host's clock), is checked like one stored before. Raise it for
    /// a cluster whose clocks drift further apart.
    pub fn dedup_clock_margin(mut self, margin: Duration) -> Self {
        self.dedup_clock_margin = margin;
        self
    }

    /// TTL of de-duplication marks in the default bucket (default 24 h). It must be longer than
    /// every handler's [`ack_wait`](crate::handler::HandlerOptions::ack_wait) (or
    /// [`start`](Self::start) refuses it, [`ServiceError::Settings`]): a message handled and
    /// marked whose acknowledgement was lost comes back an `ack_wait` later, and must find its
    /// mark. Keep it well beyond: a copy of a message published again after a crash upstream
    /// comes up to that handler's `ack_wait` later still.
    pub fn dedup_ttl(mut self, ttl: Duration) -> Self {
        self.dedup_ttl = ttl;
        self
    }

    /// Declares the event type `E` in the service's [topology](crate::topology), so that
    /// subscriptions to it are known to match something even before anyone publishes it.
    pub fn declare_event<E: crate::event::DomainEvent>(mut self) -> Self {
        self.topology.declare_event::<E>();
        self
    }

    /// Adds to the service's [topology](crate::topology) what the registrations cannot tell:
    /// publishers outside the service, sagas, events of other services.
    pub fn describe(mut self, f: impl FnOnce(&mut Topology)) -> Self {
        f(&mut self.topology);
        self
    }

    /// The transport the service will run on (to build its saga and process runners on).
    pub fn transport(&self) -> &T {
        &self.transport
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topology the service will have when started, before anything is observed: its
    /// handler sets and their subscriptions and declared publications, its command handler
    /// sets, and what was added with [`declare_event`](Self::declare_event) and
    /// [`describe`](Self::describe). Needs no transport call, so a test can snapshot it.
    pub fn topology(&self) -> Topology {
        let mut t = self.topology.clone();
        for (set, reg) in &self.handlers {
            t.add_participant(set.clone(), ParticipantKind::HandlerSet);
            t.add_subscription(set, &reg.name, reg.pattern.as_str(), Some(reg.event_type));
            for e in &reg.options.publishes {
                t.add_publication(set, Some(&reg.name), e.clone());
            }
        }
        for (set, reg) in &self.commands {
            t.add_command_handler(set, reg.name(), reg.subject().as_str(), Some(reg.command_type()));
        }
        t
    }
}

/// The least time a shutdown gives the final flush of published messages, and the most it
/// waits for the host status heartbeat to delete its document.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(2);

/// How many redriven messages one handler holds at once.
const REDRIVE_PREFETCH: usize = 16;

/// What a process holds ahead of a handler, per place of its `concurrency`. The pull batch is
/// the smaller of twice the prefetch and `NatsOptions::pull_batch` (200), and async-nats asks
/// for the next batch when half of one has arrived: at 4 per place and a batch of the prefetch
/// (64 at concurrency 16) the next pull was asked for too late to keep a fast handler fed
/// (0.82-0.88x the raw pull consumer, by `cim-integrate-bench --only consume`); at 8 and a batch
/// of 100, 0.92-0.97x on one machine and 0.75-0.95x (median 0.83) on another, where a batch of
/// 200 (twice the prefetch) measured 1.00x in three runs. A process with concurrency 1 holds
/// about 30 deliveries, not a batch of 200.
const PREFETCH_PER_PLACE: usize = 8;

/// A handler's redrive consumer: `{durable}-redrive` on the dead-letter stream, filtered to
/// `dlq.{set}.{handler}.redrive`.
fn redrive_consumer(dead_letters: &str, plan: &EventPlan) -> Result<ConsumerSpec, ServiceError> {
    let filter = SubjectPattern::new(format!(
        "{DEAD_LETTER_TOKEN}.{}.{}.{REDRIVE_TOKEN}",
        plan.set, plan.registration.name
    ))?;
    Ok(ConsumerSpec::new(
        dead_letters.to_owned(),
        format!("{}-{REDRIVE_TOKEN}", plan.durable),
        filter,
    )
    .ack_wait(plan.registration.options.ack_wait)
    .max_ack_pending(plan.spec.max_ack_pending)
    .prefetch(REDRIVE_PREFETCH))
}

/// The redrive consumer as a source: each message is given back the subject it was first
/// delivered on (`X-Redrive-Subject`), so the handler sees what it saw the first time.
struct RedriveSource<T: Transport>(ConsumerSource<T>);

impl<T: Transport> run::Source for RedriveSource<T> {
    type Item = <ConsumerSource<T> as run::Source>::Item;

    async fn next(&mut self) -> Option<Self::Item> {
        let d = self.0.next().await?;
        Some(first_subject(d))
    }

    fn in_process(&self) -> bool {
        self.0.in_process()
    }

    fn try_next(&mut self) -> Option<Self::Item> {
        self.0.try_next().map(first_subject)
    }
}

/// A redriven delivery with the subject it was first delivered on.
fn first_subject<A: crate::transport::Acker>(d: crate::transport::Delivery<A>) -> crate::transport::Delivery<A> {
    match d.headers().get(REDRIVE_SUBJECT).map(Subject::new) {
        Some(Ok(subject)) => d.with_subject(subject),
        // Not made by `ops` (or damaged): the handler's filter and envelope decide.
        _ => d,
    }
}

/// The durable name of a handler: `{set}-{name}`, or the one its options give.
fn durable_of(set: &str, reg: &Registration) -> String {
    reg.options
        .durable
        .clone()
        .unwrap_or_else(|| format!("{set}-{}", reg.name))
}

/// What one event handler needs to run, decided before anything starts.
struct EventPlan {
    set: String,
    registration: Registration,
    durable: String,
    domain: String,
    stream: StreamSpec,
    spec: ConsumerSpec,
    /// What this process holds ahead of the handler (also the spec's `prefetch`).
    prefetch: usize,
}

impl<T: Transport, L: HostLayer<T>> ServiceBuilder<T, L> {
    /// Checks names, provisions streams, the dead-letter stream, the de-duplication bucket, one
    /// durable consumer per event handler and one queue subscription per command, then starts
    /// dispatching and the background tasks (deadline timers, saga resumes).
    pub async fn start(mut self) -> Result<Service, ServiceError> {
        check_token(&self.name)?;
        monitor::describe();
        let topology = self.topology();
        for w in topology.warnings() {
            tracing::info!(service = %self.name, "topology: {w}");
        }
        let plans = self.plan_events()?;
        self.check_dedup_ttl()?;
        self.check_status_interval()?;
        self.check_commands()?;
        let provisioner = crate::transport::Provisioner::new(self.transport.clone());
        // Every domain the host says it publishes events into has its stream before anything
        // runs; domains first seen at publish time get theirs then.
        let mut domains: Vec<&str> = topology
            .publications()
            .filter(|p| p.kind == crate::topology::MessageKind::Event)
            .map(|p| p.subject.split('.').next().unwrap_or_default())
            .collect();
        domains.sort_unstable();
        domains.dedup();
        // Together, as the handlers' durables below (one replicated group each on a cluster).
        futures::future::try_join_all(domains.into_iter().map(|domain| provisioner.domain(domain))).await?;
        let parts = ContextParts {
            publisher: Arc::new(provisioner),
            log: Arc::new(PublishLog::default()),
        };
        let (stop, stop_rx) = watch::channel(false);
        let mut host = Host {
            tasks: JoinSet::new(),
            handlers: self.counted.drain(..).collect(),
            served: Vec::new(),
            stop: stop_rx,
        };
        if !plans.is_empty() {
            self.start_events(plans, &parts, &mut host).await?;
        }
        if !self.commands.is_empty() {
            self.start_commands(&parts, &mut host).await?;
        }
        let mut background: Vec<Background> = self.background.into_iter().map(|start| start()).collect();
        if let Some(every) = self.status_interval {
            let source = status::Source::of(&self.name, &host.handlers, &topology, &parts.log);
            let transport = self.transport.clone();
            let (stop, stopped) = tokio::sync::oneshot::channel();
            background.push(Background::Heartbeat {
                task: tokio::spawn(status::heartbeat(transport, source, every, stopped)),
                stop,
            });
        }
        Ok(Service {
            name: self.name,
            stop,
            tasks: host.tasks,
            handlers: host.handlers,
            served: host.served,
            background,
            flush: publisher_flush(self.transport),
            topology,
            log: parts.log,
        })
    }

    /// The durable consumers the service will read, as `(stream, durable)`: one per event
    /// handler and one for its redrives. The names are checked as [`start`](ServiceBuilder::start)
    /// checks them.
    #[cfg(feature = "testing")]
    pub(crate) fn consumers(&self) -> Result<Vec<(String, String)>, ServiceError> {
        let dead_letters = dead_letter_stream()?;
        let mut out = Vec::new();
        for plan in self.plan_events()? {
            let redrive = redrive_consumer(&dead_letters.name, &plan)?;
            out.push((plan.spec.stream, plan.spec.durable));
            out.push((redrive.stream, redrive.durable));
        }
        Ok(out)
    }

    /// Refuses a TTL of the default dedup bucket's marks that is not longer than a handler's
    /// `ack_wait`: a message handled and marked whose acknowledgement was lost (a crash, a
    /// connection dropped) is redelivered an `ack_wait` after its delivery, and a mark gone by
    /// then lets the handler run it twice. (A store of the user's, `dedup_store`, keeps marks as
    /// it chooses.)
    fn check_dedup_ttl(&self) -> Result<(), ServiceError> {
        if self.dedup.is_some() {
            return Ok(());
        }
        let longest = self
            .handlers
            .iter()
            .map(|(set, reg)| (reg.options.ack_wait, set, &reg.name))
            .max_by_key(|(ack_wait, ..)| *ack_wait);
        match longest {
            Some((ack_wait, set, name)) if self.dedup_ttl <= ack_wait => Err(self.refused(
                "dedup_ttl",
                format!(
                    "marks kept {:?} would expire before the redeliveries of handler `{set}.{name}` (ack_wait {ack_wait:?}) come, and a message handled once could run again; keep marks well beyond the longest ack_wait (the default is {:?})",
                    self.dedup_ttl,
                    crate::dedup::DEFAULT_DEDUP_TTL
                ),
            )),
            _ => Ok(()),
        }
    }

    /// `setting` of this service refused for `reason`.
    fn refused(&self, setting: &'static str, reason: String) -> ServiceError {
        SettingsError::new(format!("service `{}`", self.name), setting, reason).into()
    }

    /// Refuses a zero status interval (puts back to back) and one longer than
    /// [`MAX_STATUS_INTERVAL`] (a running host's document gone after one missed put).
    fn check_status_interval(&self) -> Result<(), ServiceError> {
        let refuse = |reason: String| Err(self.refused("status_interval", reason));
        match self.status_interval {
            Some(every) if every.is_zero() => refuse(format!(
                "it is zero, which would write the host status back to back; give a period (default {DEFAULT_STATUS_INTERVAL:?}), or `None` to write none"
            )),
            Some(every) if every > MAX_STATUS_INTERVAL => refuse(format!(
                "{every:?} is longer than {MAX_STATUS_INTERVAL:?}: a host's document is kept {:?} after its last put, so one missed put would make this host look gone while it runs; give at most {MAX_STATUS_INTERVAL:?} (default {DEFAULT_STATUS_INTERVAL:?})",
                status::HOSTS_MAX_AGE
            )),
            _ => Ok(()),
        }
    }

    fn plan_events(&self) -> Result<Vec<EventPlan>, ServiceError> {
        let mut durables = HashSet::new();
        let mut plans = Vec::with_capacity(self.handlers.len());
        for (set, reg) in &self.handlers {
            check_token(set)?;
            check_token(&reg.name)?;
            let durable = durable_of(set, reg);
            crate::transport::check_name("durable", &durable).map_err(|e| ServiceError::InvalidName {
                name: durable.clone(),
                reason: e.to_string(),
            })?;
            if !durables.insert(durable.clone()) {
                return Err(ServiceError::DuplicateHandler(durable));
            }
            let domain = reg.pattern.as_str().split('.').next().unwrap_or_default().to_owned();
            if domain == "*" || domain == ">" {
                return Err(ServiceError::PatternWithoutDomain {
                    handler: reg.name.clone(),
                    pattern: reg.pattern.to_string(),
                });
            }
            let stream = StreamSpec::for_domain(&domain, None)?;
            // The bound is the durable's, shared by every process reading it: the deployment's,
            // not a multiple of this process's concurrency (that would cap scale-out).
            let max_ack_pending = self.transport.deployment().ack_pending();
            // What this process holds ahead of its handlers: a few rounds of its own concurrency,
            // so that other processes on the durable get their share. The pull asks for no more
            // (a client batch larger than this would hold the difference out of their reach,
            // and start its ack wait, while this process is busy).
            let prefetch = concurrency_of(&reg.options)
                .saturating_mul(PREFETCH_PER_PLACE)
                .min(max_ack_pending as usize);
            let spec = ConsumerSpec::new(stream.name.clone(), durable.clone(), reg.pattern.clone())
                .deliver(reg.options.deliver)
                .ack_wait(reg.options.ack_wait)
                .max_ack_pending(max_ack_pending)
                .prefetch(prefetch);
            plans.push(EventPlan {
                set: set.clone(),
                registration: reg.clone(),
                durable,
                domain,
                stream,
                spec,
                prefetch,
            });
        }
        Ok(plans)
    }

    fn check_commands(&self) -> Result<(), ServiceError> {
        let mut by_subject: HashMap<&str, String> = HashMap::new();
        for (set, reg) in &self.commands {
            check_token(set)?;
            check_token(reg.name())?;
            let full = format!("{set}.{}", reg.name());
            if let Some(first) = by_subject.insert(reg.subject().as_str(), full.clone()) {
                return Err(ServiceError::DuplicateCommandHandler {
                    command: reg.command_type().to_owned(),
                    subject: reg.subject().to_string(),
                    first,
                    second: full,
                });
            }
        }
        Ok(())
    }

    async fn start_events(
        &self,
        plans: Vec<EventPlan>,
        parts: &ContextParts,
        host: &mut Host,
    ) -> Result<(), ServiceError> {
        let t = &self.transport;
        let dead_letters = dead_letter_stream()?;
        // Provisioning is a request per stream, bucket and durable. On a cluster each creates a
        // replicated group and waits for its leader (0.2-0.7 s each on three 2.9.10 nodes: ten
        // seconds for a service of eight handlers when sent one after another), so they are
        // sent together: first the streams and the bucket, then every durable.
        let mut streams: Vec<&StreamSpec> = Vec::new();
        for plan in &plans {
            if plan.stream.name != dead_letters.name && !streams.iter().any(|s| s.name == plan.stream.name) {
                streams.push(&plan.stream);
            }
        }
        let ensure_dead_letters = async { t.ensure_stream(&dead_letters).await.map_err(ServiceError::from) };
        let ensure_streams = futures::future::try_join_all(streams.into_iter().map(|stream| async move {
            match t.ensure_stream(stream).await {
                // The publishing domain owns its stream; other settings there are its business.
                Err(TransportError::StreamConflict { stream, detail }) => {
                    tracing::info!(%stream, %detail, "subscribing to an existing stream with other settings");
                    Ok(())
                }
                other => other.map_err(ServiceError::from),
            }
        }));
        let dedup_store = async {
            match &self.dedup {
                Some(d) => Ok(d.clone()),
                None => {
                    let spec = KvSpec::new(format!("cim_dedup_{}", self.name)).max_age(self.dedup_ttl);
                    let kv = t.key_value(&spec).await?;
                    Ok::<_, ServiceError>(Arc::new(KvDedup::new(kv)) as Arc<dyn DedupStore>)
                }
            }
        };
        let (_, _, dedup) = futures::future::try_join3(ensure_dead_letters, ensure_streams, dedup_store).await?;
        let consumers = futures::future::try_join_all(plans.iter().map(|plan| {
            let dead_letters = &dead_letters;
            async move {
                let redrive_spec = redrive_consumer(&dead_letters.name, plan)?;
                let (consumer, redrive) =
                    futures::future::try_join(t.consumer(&plan.spec), t.consumer(&redrive_spec)).await?;
                Ok::<_, ServiceError>((consumer, redrive, redrive_spec))
            }
        }))
        .await?;
        for (plan, (consumer, redrive, redrive_spec)) in plans.into_iter().zip(consumers) {
            let options = plan.registration.options.clone();
            let prefetch = plan.prefetch;
            let dlq = Subject::from_tokens([DEAD_LETTER_TOKEN, plan.set.as_str(), plan.registration.name.as_str()])?;
            tracing::info!(handler = %plan.durable, filter = %plan.spec.filter, stream = %plan.spec.stream, "handler started");
            let ledger = Arc::new(Ledger::default());
            let durable = Arc::new(DurableSince::new(
                self.dedup_check,
                self.dedup_clock_margin,
                consumer.created(),
            ));
            // The dead-letter layer's, and the loops' for a message that panics outside the handler.
            let letters = Letters {
                publisher: parts.publisher.clone(),
                subject: dlq,
                handler: Arc::from(plan.durable.as_str()),
            };
            let (stack, counters, breaker) = self.event_stack(
                plan.set.as_str(),
                &plan,
                letters.clone(),
                (dedup.clone(), durable.clone()),
                parts,
                ledger.clone(),
            );
            let handler = letters.handler.clone();
            // The loops count the panics they contain where the record layer counts the rest.
            let counted = Some((counters.clone(), stack.inner.metrics.clone()));
            host.handlers.push(HandlerEntry {
                name: plan.durable,
                counters,
                breaker,
            });
            // Redriven dead letters (see `ops`) arrive on their own durable and run through the
            // same stack: one count, one breaker, one single-flight per handler.
            let redrive_source = RedriveSource(ConsumerSource {
                transport: self.transport.clone(),
                stream: dead_letters.clone(),
                spec: redrive_spec,
                consumer: redrive,
                // Never read: a redriven message always has its mark read.
                durable: Arc::new(DurableSince::new(DedupCheck::Always, self.dedup_clock_margin, None)),
            });
            let source = ConsumerSource {
                transport: self.transport.clone(),
                stream: plan.stream,
                spec: plan.spec,
                consumer,
                durable,
            };
            let last_resort = run::LastResort {
                budget: Budget {
                    retry: options.retry.clone(),
                    ledger: ledger.clone(),
                    starts: Some(Starts {
                        store: dedup.clone(),
                        handler: handler.clone(),
                    }),
                },
                letters,
            };
            let (stack, ack) = (Arc::new(stack), Arc::new(Ack { ledger }));
            host.tasks.spawn(run::run(
                run::Handler {
                    name: handler.clone(),
                    counted: counted.clone(),
                    last_resort: Some(last_resort.clone()),
                },
                source,
                stack.clone(),
                ack.clone(),
                run::Limits {
                    concurrency: concurrency_of(&options),
                    prefetch,
                    spawn: options.spawn,
                },
                host.stop.clone(),
            ));
            host.tasks.spawn(run::run(
                run::Handler {
                    name: Arc::from(format!("{handler} (redrives)")),
                    counted,
                    last_resort: Some(last_resort),
                },
                redrive_source,
                stack,
                ack,
                run::Limits {
                    concurrency: concurrency_of(&options).min(REDRIVE_PREFETCH),
                    prefetch: REDRIVE_PREFETCH,
                    spawn: options.spawn,
                },
                host.stop.clone(),
            ));
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn event_stack(
        &self,
        set: &str,
        plan: &EventPlan,
        letters: Letters,
        (dedup, durable): (Arc<dyn DedupStore>, Arc<DurableSince>),
        parts: &ContextParts,
        ledger: Arc<Ledger>,
    ) -> (
        Trace<Record<<L as Layer<EventCore>>::Dispatch>>,
        Arc<HandlerCounters>,
        Option<CircuitBreaker>,
    ) {
        let reg = &plan.registration;
        let options = &reg.options;
        let handler = letters.handler.clone();
        let breaker = options.breaker.clone().map(|settings| {
            let labels = [
                ("source_domain", plan.domain.as_str()),
                ("target_domain", set),
                ("handler", &reg.name),
            ]
            .map(|(k, v)| (k.to_owned(), v.to_owned()));
            CircuitBreaker::with_labels(plan.durable.clone(), settings, labels.to_vec())
        });
        let invoke = Invoke {
            registration: reg.clone(),
            runner: Runner::new(parts, set, &reg.name, handler.clone()),
        };
        let core = DeadLetter {
            inner: Filter {
                inner: Dedup {
                    inner: Ordered {
                        inner: Attempts {
                            inner: Breaker {
                                inner: CatchPanic {
                                    inner: invoke,
                                    ack_wait: options.ack_wait,
                                },
                                breaker: breaker.clone(),
                            },
                            budget: Budget {
                                retry: options.retry.clone(),
                                ledger,
                                starts: Some(Starts {
                                    store: dedup.clone(),
                                    handler: handler.clone(),
                                }),
                            },
                        },
                        ordered: options.ordered,
                        ack_wait: options.ack_wait,
                        max_wait: None,
                    },
                    store: dedup,
                    key: handler.clone(),
                    ack_wait: options.ack_wait,
                    in_flight: crate::pipeline::dedup::InFlight::with_capacity(concurrency_of(options)),
                    durable,
                    outside_place: !options.ordered,
                },
                registration: reg.clone(),
            },
            letters,
        };
        let counters = Arc::new(HandlerCounters::default());
        let metrics = Arc::new(HandlerMetrics::new(&plan.domain, set, &plan.durable, reg.event_type));
        let stack = Trace {
            inner: Record {
                inner: self.layers.layer(core),
                counters: counters.clone(),
                metrics,
            },
            kind: "event",
            handler,
            delivery: true,
        };
        (stack, counters, breaker)
    }

    async fn start_commands(&self, parts: &ContextParts, host: &mut Host) -> Result<(), ServiceError> {
        let settings = &self.command_settings;
        let results = match settings.result_ttl {
            Some(ttl) => {
                let spec = KvSpec::new(format!("cim_commands_{}", self.name)).max_age(ttl);
                let t = &self.transport;
                Some(Arc::new(t.key_value(&spec).await?))
            }
            None => None,
        };
        for (set, reg) in &self.commands {
            let subject = reg.subject().clone();
            let group = queue_group(&subject);
            let responder = self
                .transport
                .serve(&SubjectPattern::new(subject.as_str())?, &group)
                .await?;
            let scope = format!("{set}-{}", reg.name());
            let handler: Arc<str> = Arc::from(scope.as_str());
            let breaker = settings.breaker.clone().map(|s| {
                let labels = vec![("command".to_owned(), reg.command_type().to_owned())];
                CircuitBreaker::with_labels(scope.clone(), s, labels)
            });
            let core = ResultCache {
                inner: Ordered {
                    inner: Attempts {
                        inner: Breaker {
                            inner: CatchPanic {
                                inner: CommandInvoke {
                                    registration: reg.clone(),
                                    runner: Runner::new(parts, set, reg.name(), handler.clone()),
                                },
                                ack_wait: Duration::from_secs(30),
                            },
                            breaker: breaker.clone(),
                        },
                        budget: Budget {
                            retry: settings.retry.clone(),
                            ledger: Arc::new(Ledger::default()),
                            starts: None,
                        },
                    },
                    ordered: true,
                    ack_wait: Duration::from_secs(30),
                    max_wait: Some(COMMAND_MAX_WAIT),
                },
                kv: results.clone(),
                scope: handler.clone(),
            };
            let counters = Arc::new(HandlerCounters::default());
            let domain = reg.subject().as_str().split('.').nth(1).unwrap_or_default();
            let stack = Trace {
                inner: Record {
                    inner: self.layers.layer(core),
                    counters: counters.clone(),
                    metrics: Arc::new(HandlerMetrics::new(domain, set, &scope, reg.command_type())),
                },
                kind: "command",
                handler,
                delivery: true,
            };
            tracing::info!(handler = %scope, %subject, %group, "command handler started");
            host.served.push(subject.to_string());
            let handler = run::Handler {
                name: Arc::from(scope.as_str()),
                counted: Some((counters.clone(), stack.inner.metrics.clone())),
                last_resort: None,
            };
            host.handlers.push(HandlerEntry {
                name: scope,
                counters,
                breaker,
            });
            host.tasks.spawn(run::run(
                handler,
                responder,
                Arc::new(stack),
                Arc::new(Reply),
                run::Limits {
                    concurrency: settings.concurrency,
                    prefetch: settings.concurrency,
                    spawn: false,
                },
                host.stop.clone(),
            ));
        }
        Ok(())
    }
}

/// Longest in-place retry of a command: its sender is waiting (5 s by default).
const COMMAND_MAX_WAIT: Duration = Duration::from_secs(1);

fn concurrency_of(options: &HandlerOptions) -> usize {
    if options.ordered { 1 } else { options.concurrency.max(1) }
}

/// What `start` assembles.
struct Host {
    tasks: JoinSet<()>,
    handlers: Vec<HandlerEntry>,
    served: Vec<String>,
    stop: watch::Receiver<bool>,
}

/// One running handler, for the stats view.
struct HandlerEntry {
    name: String,
    counters: Arc<HandlerCounters>,
    breaker: Option<CircuitBreaker>,
}

impl HandlerEntry {
    /// Calls counted outside the host's consumers (saga steps, deadline transitions).
    fn observed(o: &Observer) -> Self {
        Self {
            name: o.label.to_string(),
            counters: o.counters.clone(),
            breaker: None,
        }
    }
}

type Flush = Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), TransportError>> + Send + Sync>;

fn publisher_flush<T: Transport>(t: T) -> Flush {
    Box::new(move || {
        let t = t.clone();
        Box::pin(async move { t.flush().await })
    })
}

fn check_token(name: &str) -> Result<(), ServiceError> {
    crate::subject::check_token(name).map_err(|e| ServiceError::InvalidName {
        name: name.chars().take(64).collect(),
        reason: e.to_string(),
    })
}

/// The dead-letter stream: `DEAD_LETTERS` on `dlq.>` (over a
/// [`Prefixed`](crate::transport::Prefixed) transport with prefix `prod`: `PROD_DEAD_LETTERS` on
/// `prod.dlq.>`).
pub fn dead_letter_stream() -> Result<StreamSpec, ServiceError> {
    let mut spec = StreamSpec::for_domain(DEAD_LETTER_TOKEN, None)?;
    spec.name = DEAD_LETTER_STREAM_NAME.to_owned();
    Ok(spec)
}

/// The dead-letter subject pattern of a service set, for tools that read dead letters.
pub fn dead_letter_pattern() -> Result<SubjectPattern, SubjectError> {
    SubjectPattern::new(format!("{DEAD_LETTER_TOKEN}.>"))
}

/// A running service. Dropping it without [`shutdown`](Self::shutdown) aborts its handlers
/// (unacknowledged messages are redelivered) and everything it runs in the background (saga
/// resumes and rescans, process timers, `spawn_on_start` tasks), and its host status heartbeat
/// deletes its document.
pub struct Service {
    name: String,
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    handlers: Vec<HandlerEntry>,
    served: Vec<String>,
    background: Vec<Background>,
    flush: Flush,
    topology: Topology,
    log: Arc<PublishLog>,
}

/// Stops what [`shutdown`](Service::shutdown) did not: a dropped service's background tasks
/// (a saga rescan loop, a `spawn_on_start` task) kept running for good, driving sagas for a host
/// that was gone, until the twenty-fifth session. Timers abort on their own drop; the heartbeat,
/// its stop sender dropped, deletes its document and ends.
impl Drop for Service {
    fn drop(&mut self) {
        for b in &self.background {
            if let Background::Task(t) = b {
                t.abort();
            }
        }
    }
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("handlers", &self.stats())
            .field("commands", &self.served)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A builder for a service named `name` (`[A-Za-z0-9_-]+`) on `transport`.
    pub fn builder<T: Transport>(transport: T, name: impl Into<String>) -> ServiceBuilder<T> {
        ServiceBuilder {
            transport,
            name: name.into(),
            dedup: None,
            dedup_ttl: DEFAULT_DEDUP_TTL,
            dedup_check: DedupCheck::default(),
            dedup_clock_margin: crate::dedup::CLOCK_MARGIN,
            handlers: Vec::new(),
            commands: Vec::new(),
            command_settings: CommandSettings {
                concurrency: 16,
                result_ttl: Some(crate::command::DEFAULT_RESULT_TTL),
                retry: RetryPolicy::attempts(3).backoff(Duration::from_millis(50), 2, Duration::from_secs(1)),
                breaker: None,
            },
            background: Vec::new(),
            counted: Vec::new(),
            topology: Topology::new(),
            status_interval: Some(DEFAULT_STATUS_INTERVAL),
            layers: Passthrough,
        }
    }

    /// The service's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The command subjects served.
    pub fn command_subjects(&self) -> &[String] {
        &self.served
    }

    /// The service's [topology](crate::topology): what was declared when it was built
    /// ([`ServiceBuilder::topology`]) plus every publish its handlers have made since it started.
    pub fn topology(&self) -> Topology {
        let mut t = self.topology.clone();
        self.log.apply(&mut t);
        t
    }

    /// The state of a handler's circuit breaker, by durable name (command handlers:
    /// `{set}-{name}`). `None`: no such handler, or it has no breaker.
    pub fn breaker_state(&self, handler: &str) -> Option<BreakerState> {
        self.handlers
            .iter()
            .find(|h| h.name == handler)
            .and_then(|h| h.breaker.as_ref())
            .map(CircuitBreaker::state)
    }

    /// Counters of every handler, event and command handlers alike.
    pub fn stats(&self) -> Vec<HandlerStats> {
        self.handlers.iter().map(|h| h.counters.snapshot(&h.name)).collect()
    }

    /// Counters of one handler, by durable name (command handlers: `{set}-{name}`).
    pub fn handler_stats(&self, handler: &str) -> Option<HandlerStats> {
        self.handlers
            .iter()
            .find(|h| h.name == handler)
            .map(|h| h.counters.snapshot(&h.name))
    }

    /// Stops everything: background tasks (timers, resumes) first, then pulling; gives back what
    /// was pulled but not started; waits up to `grace` for in-flight handlers (their messages are
    /// settled as usual); abandons the rest unacknowledged (they are redelivered); flushes what
    /// was published, waiting for that at most `grace` (at least 2 s). The host status heartbeat
    /// deletes its document meanwhile (waited for at most 2 s more once the handlers are done;
    /// past that the document expires by itself).
    pub async fn shutdown(mut self, grace: Duration) {
        let mut aborted = Vec::new();
        let mut farewell = None;
        for b in self.background.drain(..) {
            match b {
                Background::Timers(t) => t.stop(),
                Background::Task(t) => {
                    t.abort();
                    aborted.push(t);
                }
                // Told to stop, it deletes its document while the handlers finish.
                Background::Heartbeat { task, stop } => {
                    let _ = stop.send(());
                    farewell = Some(task);
                }
            }
        }
        // An abort lands at the task's next await: wait for it, so that nothing in the background
        // (a status write, a resume) still runs once shutdown has returned.
        for t in aborted {
            let _ = t.await;
        }
        let _ = self.stop.send(true);
        let deadline = tokio::time::sleep(grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                r = self.tasks.join_next() => if r.is_none() { break },
                () = &mut deadline => {
                    tracing::warn!(service = %self.name, "shutdown grace elapsed; abandoning in-flight handlers");
                    self.tasks.abort_all();
                    break;
                }
            }
        }
        // Bounded: a server gone must not hold the caller, nor the heartbeat run on after.
        if let Some(mut task) = farewell
            && tokio::time::timeout(FLUSH_AT_SHUTDOWN, &mut task).await.is_err()
        {
            tracing::warn!(service = %self.name, "deleting the host status timed out; it expires by itself");
            task.abort();
            let _ = task.await;
        }
        // Bounded too: a connection that cannot flush (a server gone) must not hold the caller.
        match tokio::time::timeout(grace.max(FLUSH_AT_SHUTDOWN), (self.flush)()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(service = %self.name, error = %e, "flush at shutdown failed"),
            Err(_) => tracing::warn!(service = %self.name, "flush at shutdown timed out"),
        }
    }
}
