//! [`TestHost`]: the user's whole host (event handlers, command handlers, sagas, process
//! managers) on the embedded transport, driven by a test and inspected with typed assertions.
//!
//! A test publishes an event, sends a command or starts a saga, then [`settle`](TestHost::settle)s:
//! that returns once every message in the host has been handled, dead-lettered, or is waiting on
//! a timer (a retry's delay, a deadline). It looks at the transport, not at a clock: for every
//! durable consumer of the host, nothing stored that it has not been delivered, nothing delivered
//! and not settled, nothing due for redelivery; and no command waiting for its answer. Run the
//! test under paused time (`#[tokio::test(start_paused = true)]`), and
//! [`advance`](TestHost::advance) moves the clock to run deadlines and delayed retries: nothing
//! sleeps in real time.
//!
//! What happened is read back from the transport: [`events`](TestHost::events) (every event
//! stored, in publish order, with its identity), [`commands`](TestHost::commands) (every command
//! anyone sent, with its answer), [`dead_letters`](TestHost::dead_letters) (with their reasons),
//! [`saga`](TestHost::saga) (a saga's record and lifecycle events, as
//! [`SagaFixture`](super::SagaFixture) shows them) and [`process`](TestHost::process) (a process
//! manager's state). Each `expect_*` panics with what was expected and what happened instead.
//!
//! ```
//! use cim_integrate_runtime::handler::{Context, HandlerError, Registration};
//! use cim_integrate_runtime::testing::TestHost;
//! use cim_integrate_runtime::{Envelope, subject, subject_pattern};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! // A handler that answers every `ping` with a `pong`.
//! let pong = Registration::new(
//!     "pong",
//!     subject_pattern!("ping.>"),
//!     "Ping",
//!     |_: &[u8]| Ok::<(), std::convert::Infallible>(()),
//!     |ctx: Context, ()| async move {
//!         ctx.publish_bytes(&subject!("pong.sent"), "Pong", "1.0", "{}").await.map_err(HandlerError::transient)?;
//!         Ok(())
//!     },
//! );
//! let host = TestHost::start(TestHost::service("ping").handler("ping", pong)).await?;
//! let ping = host.publish_envelope(Envelope::root(subject!("ping.sent"), "{}").typed("Ping", "1.0")).await?;
//! host.settle().await;
//! let events = host.events();
//! let pong = events.expect_subject_after("pong.sent", &ping);
//! assert_eq!(pong.envelope.causation_id().to_string(), ping.message_id().to_string());
//! # Ok::<(), Box<dyn std::error::Error>>(()) }).unwrap();
//! ```
#![allow(clippy::missing_panics_doc)]

use crate::command::{Command, CommandAck, CommandAnswer, CommandBus, CommandError, SendableCommand, WireReply};
use crate::envelope::Envelope;
use crate::event::{DecodeError, DomainEvent, EncodeError};
use crate::headers::Headers;
use crate::id::{CorrelationId, Identity};
use crate::process::{ProcessError, ProcessManager, ProcessRunner};
use crate::saga::fixture::SagaThen;
use crate::saga::{Saga, SagaError, SagaEvent, SagaOutcome, SagaRunner};
use crate::service::{
    DEAD_LETTER_HANDLER, DEAD_LETTER_KIND, DEAD_LETTER_REASON, DEAD_LETTER_STREAM_NAME, DEAD_LETTER_SUBJECT,
    DEAD_LETTER_TOKEN, HostLayer, REDRIVE_TOKEN, Service, ServiceBuilder, ServiceError,
};
use crate::transport::memory::{ConsumerProgress, MemoryTransport, StoredMessage};
use crate::transport::{OutboundMessage, Provisioner, TransportError};
use bytes::Bytes;
use std::fmt;
use std::time::Duration;
use tokio::time::Instant;

/// How long (on tokio's clock) [`TestHost::settle`] waits for a host that stays busy before it
/// fails, unless [`TestHost::settle_limit`] says otherwise.
pub const DEFAULT_SETTLE_LIMIT: Duration = Duration::from_secs(60);

/// How many turns of the scheduler in a row the host must look quiet before `settle` believes it:
/// work between two transport calls (a timer task's transition before it publishes) shows
/// nowhere, and one turn lets every ready task run once.
const QUIET_TURNS: u32 = 8;

/// Turns spent yielding to a busy host before `settle` lets time pass (1 ms at a time), for
/// work that waits on a timer while it is in flight (a retry in place, a step's back-off).
const YIELDS_BEFORE_TIME: u32 = 64;

/// The subjects of saga lifecycle events and dead letters are not the application's events.
const SAGA_EVENTS_STREAM: &str = "SAGA_EVENTS";

/// Why the test host could not do what the test asked (not an assertion: those panic).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestHostError {
    /// The service did not start.
    #[error("the host did not start: {0}")]
    Start(#[from] ServiceError),
    /// The event could not be encoded.
    #[error("encoding the event: {0}")]
    Encode(#[from] EncodeError),
    /// The transport refused the publish.
    #[error("publishing: {0}")]
    Transport(#[from] TransportError),
}

/// The host did not settle within the limit: what was still in flight.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the host did not settle within {limit:?} (tokio time); still in flight:\n{}", in_flight.join("\n"))]
pub struct NotSettled {
    /// The limit that ran out.
    pub limit: Duration,
    /// One line per handler with unsettled messages (and one for commands awaiting answers).
    pub in_flight: Vec<String>,
}

/// The user's whole host on the embedded transport, for tests. See the [module docs](self).
pub struct TestHost {
    transport: MemoryTransport,
    service: Option<Service>,
    provisioner: Provisioner<MemoryTransport>,
    bus: CommandBus,
    consumers: Vec<(String, String)>,
    settle_limit: Duration,
}

impl fmt::Debug for TestHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestHost")
            .field("service", &self.service)
            .field("consumers", &self.consumers)
            .field("settle_limit", &self.settle_limit)
            .finish_non_exhaustive()
    }
}

impl TestHost {
    /// A service builder named `name` on a fresh [`MemoryTransport`]: register the handlers,
    /// commands, sagas and process managers under test, then [`start`](Self::start) it. Build
    /// saga and process runners on [`ServiceBuilder::transport`].
    pub fn service(name: impl Into<String>) -> ServiceBuilder<MemoryTransport> {
        Service::builder(MemoryTransport::new(), name)
    }

    /// Starts the host `builder` describes (as [`ServiceBuilder::start`] does, without the
    /// periodic host status), and starts recording every command sent on its transport.
    pub async fn start<L: HostLayer<MemoryTransport>>(
        builder: ServiceBuilder<MemoryTransport, L>,
    ) -> Result<Self, TestHostError> {
        let transport = builder.transport().clone();
        transport.record_requests();
        let consumers = builder.consumers()?;
        let service = builder.status_interval(None).start().await?;
        Ok(Self {
            provisioner: Provisioner::new(transport.clone()),
            bus: CommandBus::new(transport.clone()),
            transport,
            service: Some(service),
            consumers,
            settle_limit: DEFAULT_SETTLE_LIMIT,
        })
    }

    /// How long [`settle`](Self::settle) waits for a host that stays busy (default
    /// [`DEFAULT_SETTLE_LIMIT`], on tokio's clock).
    #[must_use]
    pub fn settle_limit(mut self, limit: Duration) -> Self {
        self.settle_limit = limit;
        self
    }

    /// The transport the host runs on.
    pub fn transport(&self) -> &MemoryTransport {
        &self.transport
    }

    /// The running service (its [`stats`](Service::stats), [`topology`](Service::topology)).
    /// `None` only after [`shutdown`](Self::shutdown) began.
    pub fn running(&self) -> Option<&Service> {
        self.service.as_ref()
    }

    /// Publishes `event` as the root of a new conversation (fresh identity, its own correlation
    /// id) and returns its envelope. Does not wait for the handlers: [`settle`](Self::settle).
    pub async fn publish<E: DomainEvent>(&self, event: &E) -> Result<Envelope, TestHostError> {
        self.publish_envelope(event.to_envelope()?).await
    }

    /// Publishes `event` as caused by the message with identity `parent` (same correlation id).
    pub async fn publish_caused_by<E: DomainEvent>(
        &self,
        parent: &Identity,
        event: &E,
    ) -> Result<Envelope, TestHostError> {
        self.publish_envelope(event.to_envelope_caused_by(parent)?).await
    }

    /// Publishes a prepared envelope (a foreign or hand-made message), provisioning its
    /// domain's stream if nobody has yet.
    pub async fn publish_envelope(&self, envelope: Envelope) -> Result<Envelope, TestHostError> {
        self.provisioner
            .publish_and_wait(OutboundMessage::from(&envelope))
            .await?;
        Ok(envelope)
    }

    /// Sends `command` as the root of a new conversation and returns its answer, as
    /// [`CommandBus::send`] does. The host's own handlers answer it; what they publish is
    /// handled at the next [`settle`](Self::settle).
    pub async fn send<A: Send + 'static>(
        &self,
        command: &(dyn SendableCommand<Answer = A> + Sync + '_),
    ) -> Result<CommandAck<A>, CommandError> {
        self.bus.send(command).await
    }

    /// Sends `command` with `identity` (e.g. `parent.child()`), returning its answer.
    pub async fn send_with<A: Send + 'static>(
        &self,
        identity: Identity,
        command: &(dyn SendableCommand<Answer = A> + Sync + '_),
    ) -> Result<CommandAck<A>, CommandError> {
        self.bus.send_with(identity, command, self.bus.default_timeout()).await
    }

    /// Starts saga `id` with `data` on `runner` as the root of a new conversation and drives it
    /// until it completes, is compensated or needs attention, as [`SagaRunner::start`] does.
    pub async fn start_saga<S: Saga>(
        &self,
        runner: &SagaRunner<S, MemoryTransport>,
        id: &str,
        data: S::Data,
    ) -> Result<SagaOutcome, SagaError> {
        runner.start_with_identity(id, data, Identity::root()).await
    }

    /// Waits until the host is quiet: every message stored for one of its handlers has been
    /// handled, dead-lettered, or is waiting on a timer (given back with a delay), and no command
    /// is waiting for its answer. Panics with what is still in flight if that does not happen
    /// within the [settle limit](Self::settle_limit).
    pub async fn settle(&self) {
        if let Err(e) = self.try_settle().await {
            panic!("TestHost::settle: {e}");
        }
    }

    /// [`settle`](Self::settle), returning what was still in flight instead of panicking.
    pub async fn try_settle(&self) -> Result<(), NotSettled> {
        let started = Instant::now();
        let (mut quiet, mut busy) = (0u32, 0u32);
        loop {
            if self.is_quiet() {
                quiet += 1;
                if quiet >= QUIET_TURNS {
                    return Ok(());
                }
                tokio::task::yield_now().await;
                continue;
            }
            quiet = 0;
            if started.elapsed() >= self.settle_limit {
                return Err(NotSettled {
                    limit: self.settle_limit,
                    in_flight: self.in_flight(),
                });
            }
            busy += 1;
            if busy < YIELDS_BEFORE_TIME {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
    }

    /// Lets `duration` pass on tokio's clock (instantly under paused time: every timer due on
    /// the way fires in order, with the host running between them), then
    /// [`settle`](Self::settle)s: deadlines, delayed retries and saga back-offs run.
    pub async fn advance(&self, duration: Duration) {
        tokio::time::sleep(duration).await;
        self.settle().await;
    }

    fn progress(&self) -> impl Iterator<Item = ConsumerProgress> + '_ {
        self.consumers
            .iter()
            .filter_map(|(stream, durable)| self.transport.consumer_progress(stream, durable))
    }

    fn is_quiet(&self) -> bool {
        self.transport.requests_in_flight() == 0 && self.progress().all(|p| p.is_quiet())
    }

    /// What is not settled now, one line per handler (and commands awaiting answers): the
    /// messages by stream sequence, subject and correlation id.
    pub fn in_flight(&self) -> Vec<String> {
        let mut lines = Vec::new();
        let requests = self.transport.requests_in_flight();
        if requests > 0 {
            lines.push(format!("  {requests} command(s) waiting for an answer"));
        }
        for p in self.progress().filter(|p| !p.is_quiet()) {
            let stored = self.transport.stored(&p.stream);
            let describe = |seqs: &[u64]| -> String {
                let items: Vec<String> = seqs
                    .iter()
                    .map(|seq| match stored.iter().find(|m| m.sequence == *seq) {
                        Some(m) => format!(
                            "#{seq} {} (correlation {})",
                            m.envelope.subject(),
                            m.envelope.correlation_id()
                        ),
                        None => format!("#{seq}"),
                    })
                    .collect();
                format!("[{}]", items.join(", "))
            };
            let mut parts = Vec::new();
            if !p.undelivered.is_empty() {
                parts.push(format!("not delivered yet {}", describe(&p.undelivered)));
            }
            if !p.in_flight.is_empty() {
                parts.push(format!("being handled {}", describe(&p.in_flight)));
            }
            if !p.due.is_empty() {
                parts.push(format!("due for redelivery {}", describe(&p.due)));
            }
            lines.push(format!(
                "  handler `{}` on {}: {}",
                p.durable,
                p.stream,
                parts.join("; ")
            ));
        }
        lines
    }

    /// Every event stored so far (every stream but dead letters and saga lifecycle events), in
    /// the order they were published.
    pub fn events(&self) -> Events {
        let mut all: Vec<Published> = self
            .transport
            .stream_names()
            .iter()
            .filter(|s| s.as_str() != DEAD_LETTER_STREAM_NAME && s.as_str() != SAGA_EVENTS_STREAM)
            .flat_map(|s| self.transport.stored(s))
            .map(Published::from)
            .collect();
        all.sort_by_key(|p| p.order);
        Events { all }
    }

    /// Every command sent on the host's transport since it started (by the test, by handlers,
    /// sagas and process managers), with its answer, in the order they were answered.
    pub fn commands(&self) -> Commands {
        let all = self
            .transport
            .recorded_requests()
            .into_iter()
            .map(|r| SentCommand {
                answer_json: r.reply.as_ref().ok().and_then(|payload| {
                    match serde_json::from_slice::<WireReply>(payload) {
                        Ok(WireReply::Accepted { answer }) => answer,
                        _ => None,
                    }
                }),
                answer: match r.reply {
                    Ok(payload) => match serde_json::from_slice::<WireReply>(&payload) {
                        Ok(WireReply::Accepted { .. }) => Answer::Accepted,
                        Ok(WireReply::Rejected { reason }) => Answer::Rejected(reason),
                        Ok(WireReply::Failed { reason }) => Answer::Failed(reason),
                        Err(e) => Answer::Failed(format!("unreadable answer: {e}")),
                    },
                    Err(e) => Answer::Unanswered(e.to_string()),
                },
                envelope: r.envelope,
            })
            .collect();
        Commands { all }
    }

    /// Every dead letter stored so far, in order.
    pub fn dead_letters(&self) -> DeadLetters {
        let all = self
            .transport
            .stored(DEAD_LETTER_STREAM_NAME)
            .into_iter()
            .filter(|m| {
                let s = m.envelope.subject().as_str();
                s.starts_with(DEAD_LETTER_TOKEN) && !s.ends_with(&format!(".{REDRIVE_TOKEN}"))
            })
            .map(DeadLetter::from)
            .collect();
        DeadLetters { all }
    }

    /// Saga `id` of `runner` as it stands: its record, outcome and lifecycle events, with
    /// [`SagaThen`]'s assertions (`then_compensated`, `then_steps`, `then_events`, ...).
    pub async fn saga<S: Saga>(&self, runner: &SagaRunner<S, MemoryTransport>, id: &str) -> SagaThen<S> {
        let record = match runner.status(id).await {
            Ok(r) => r,
            Err(e) => panic!("reading saga `{}` `{id}`: {e}", S::NAME),
        };
        let prefix = format!("saga.{}.", S::NAME);
        let events = self
            .transport
            .stored(SAGA_EVENTS_STREAM)
            .into_iter()
            .filter(|m| m.envelope.subject().as_str().starts_with(&prefix))
            .filter_map(|m| {
                let event = SagaEvent::decode(m.envelope.payload()).ok()?;
                (event.saga_id == id).then_some((m.envelope, event))
            })
            .collect();
        SagaThen::observed(id, record, events, runner.clone())
    }

    /// The state of process `key` of `runner`, if it runs (`None`: never started, or ended).
    pub async fn process<P: ProcessManager>(
        &self,
        runner: &ProcessRunner<MemoryTransport, P>,
        key: &str,
    ) -> Result<Option<P>, ProcessError> {
        runner.state(key).await
    }

    /// Expects process `key` of `runner` to be running, and returns its state.
    pub async fn expect_process<P: ProcessManager>(&self, runner: &ProcessRunner<MemoryTransport, P>, key: &str) -> P {
        match runner.state(key).await {
            Ok(Some(state)) => state,
            Ok(None) => panic!(
                "expected process `{}` `{key}` to be running; it has no state (never started, or ended)\n{}",
                P::NAME,
                self.events()
            ),
            Err(e) => panic!("reading process `{}` `{key}`: {e}", P::NAME),
        }
    }

    /// Expects process `key` of `runner` to have ended (its state deleted), or never started.
    pub async fn expect_process_ended<P: ProcessManager + fmt::Debug>(
        &self,
        runner: &ProcessRunner<MemoryTransport, P>,
        key: &str,
    ) {
        match runner.state(key).await {
            Ok(None) => {}
            Ok(Some(state)) => panic!(
                "expected process `{}` `{key}` to have ended; it is still running with {state:?}\n{}",
                P::NAME,
                self.events()
            ),
            Err(e) => panic!("reading process `{}` `{key}`: {e}", P::NAME),
        }
    }

    /// Stops the host: its background work, its handlers (waiting up to a second for those in
    /// flight).
    pub async fn shutdown(mut self) {
        if let Some(service) = self.service.take() {
            service.shutdown(Duration::from_secs(1)).await;
        }
    }
}

/// An event as it was stored: its envelope (identity, subject, type, payload) and where.
#[derive(Debug, Clone)]
pub struct Published {
    /// The envelope, as a handler would see it.
    pub envelope: Envelope,
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence there.
    pub sequence: u64,
    /// Its place among every message the host's transport stored (publish order).
    pub order: u64,
}

impl From<StoredMessage> for Published {
    fn from(m: StoredMessage) -> Self {
        Self {
            envelope: m.envelope,
            stream: m.stream,
            sequence: m.sequence,
            order: m.order,
        }
    }
}

impl Published {
    /// The event type (`X-Event-Type`), or `""` for a message without one.
    pub fn event_type(&self) -> &str {
        self.envelope.event_type().unwrap_or_default()
    }

    /// `true` if it is an `E`: its type is `E`'s, or it has none and is on `E`'s subject.
    pub fn is<E: DomainEvent>(&self) -> bool {
        match self.envelope.event_type() {
            Some(t) => t == E::TYPE_NAME,
            None => self.envelope.subject().as_str() == E::SUBJECT,
        }
    }

    /// The payload decoded as an `E` (any version, upcast).
    pub fn decode<E: DomainEvent>(&self) -> Result<E, DecodeError> {
        E::decode(self.envelope.payload())
    }

    /// Its identity (message, correlation and causation ids).
    pub fn identity(&self) -> &Identity {
        self.envelope.identity()
    }

    /// `true` if it was published while handling `parent`: same correlation id, and `parent`'s
    /// message id as causation id.
    pub fn is_caused_by(&self, parent: &Envelope) -> bool {
        self.envelope.correlation_id() == parent.correlation_id()
            && self.envelope.causation_id().to_string() == parent.message_id().to_string()
    }
}

impl fmt::Display for Published {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.envelope.identity();
        write!(
            f,
            "{} `{}` (message {}, correlation {}, causation {})",
            self.envelope.subject(),
            self.event_type(),
            id.message_id,
            id.correlation_id,
            id.causation_id
        )
    }
}

/// A published event decoded as its type.
#[derive(Debug, Clone)]
pub struct Typed<E> {
    /// How it was stored.
    pub published: Published,
    /// The event.
    pub event: E,
}

impl<E> Typed<E> {
    /// Its envelope.
    pub fn envelope(&self) -> &Envelope {
        &self.published.envelope
    }
}

impl<E> std::ops::Deref for Typed<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.event
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "[] (nothing)".to_owned();
    }
    let lines: Vec<String> = items.iter().map(|i| format!("  {i}")).collect();
    format!("[\n{}\n]", lines.join(",\n"))
}

/// The events published in a host, in publish order, with typed assertions. From
/// [`TestHost::events`].
#[derive(Debug, Clone)]
pub struct Events {
    all: Vec<Published>,
}

impl fmt::Display for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "published: {}", list(&self.all))
    }
}

impl Events {
    /// All of them, in publish order.
    pub fn all(&self) -> &[Published] {
        &self.all
    }

    /// Those of one conversation (correlation id).
    #[must_use]
    pub fn correlated(&self, correlation: CorrelationId) -> Self {
        Self {
            all: self
                .all
                .iter()
                .filter(|p| p.envelope.correlation_id() == correlation)
                .cloned()
                .collect(),
        }
    }

    /// Those published after `earlier` (in publish order); none if `earlier` is not among them.
    #[must_use]
    pub fn after(&self, earlier: &Envelope) -> Self {
        let from = self
            .all
            .iter()
            .find(|p| p.envelope.message_id() == earlier.message_id())
            .map(|p| p.order);
        Self {
            all: self
                .all
                .iter()
                .filter(|p| from.is_some_and(|o| p.order > o))
                .cloned()
                .collect(),
        }
    }

    /// The `E`s, in order. One that does not decode as an `E` is a failed expectation.
    pub fn of<E: DomainEvent>(&self) -> Vec<Typed<E>> {
        self.all
            .iter()
            .filter(|p| p.is::<E>())
            .map(|p| match p.decode::<E>() {
                Ok(event) => Typed {
                    published: p.clone(),
                    event,
                },
                Err(e) => panic!("published {p} does not decode as `{}`: {e}", E::TYPE_NAME),
            })
            .collect()
    }

    /// The first `E`; panics, listing what was published, if there is none.
    pub fn expect<E: DomainEvent>(&self) -> Typed<E> {
        self.of::<E>().into_iter().next().unwrap_or_else(|| {
            panic!(
                "expected `{}` ({}) to be published; {}",
                E::TYPE_NAME,
                E::SUBJECT,
                self.instead()
            )
        })
    }

    /// The first `E` for which `check` holds; panics, listing the `E`s and everything else
    /// published, if there is none.
    pub fn expect_where<E: DomainEvent + fmt::Debug>(&self, check: impl Fn(&E) -> bool) -> Typed<E> {
        let all = self.of::<E>();
        let seen: Vec<String> = all.iter().map(|t| format!("{:?}", t.event)).collect();
        all.into_iter().find(|t| check(&t.event)).unwrap_or_else(|| {
            panic!(
                "expected a `{}` ({}) matching the condition to be published; the `{}`s published: {seen:?}; {}",
                E::TYPE_NAME,
                E::SUBJECT,
                E::TYPE_NAME,
                self.instead()
            )
        })
    }

    /// Exactly one `E`: returns it; panics if there are none or several.
    pub fn expect_one<E: DomainEvent>(&self) -> Typed<E> {
        let mut all = self.of::<E>();
        match all.len() {
            1 => all.remove(0),
            n => panic!(
                "expected exactly one `{}` ({}) to be published, found {n}; {}",
                E::TYPE_NAME,
                E::SUBJECT,
                self
            ),
        }
    }

    /// The first `E` published after `earlier`; panics naming both and listing what was
    /// published after `earlier` instead.
    pub fn expect_after<E: DomainEvent>(&self, earlier: &Envelope) -> Typed<E> {
        self.expect_stored(earlier);
        let after = self.after(earlier);
        after.of::<E>().into_iter().next().unwrap_or_else(|| {
            panic!(
                "expected `{}` ({}) published after {} `{}` (message {}); published after it instead: {}",
                E::TYPE_NAME,
                E::SUBJECT,
                earlier.subject(),
                earlier.event_type().unwrap_or_default(),
                earlier.message_id(),
                list(&after.all)
            )
        })
    }

    /// The first message on `subject` published after `earlier` (for events without a Rust
    /// type, such as foreign ones).
    pub fn expect_subject_after(&self, subject: &str, earlier: &Envelope) -> Published {
        self.expect_stored(earlier);
        let after = self.after(earlier);
        after
            .all
            .iter()
            .find(|p| p.envelope.subject().as_str() == subject)
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "expected a message on `{subject}` published after {} (message {}); published after it instead: {}",
                    earlier.subject(),
                    earlier.message_id(),
                    list(&after.all)
                )
            })
    }

    /// No `E` was published.
    pub fn expect_none<E: DomainEvent>(&self) {
        let found = self.of::<E>();
        if !found.is_empty() {
            let found: Vec<&Published> = found.iter().map(|t| &t.published).collect();
            panic!(
                "expected no `{}` ({}) to be published; published: {}",
                E::TYPE_NAME,
                E::SUBJECT,
                list(&found)
            );
        }
    }

    /// The event types published, in order, are exactly `types` (`TYPE_NAME`s).
    pub fn expect_types(&self, types: &[&str]) {
        let got: Vec<&str> = self.all.iter().map(Published::event_type).collect();
        assert!(
            got == types,
            "expected exactly these events, in order: {types:?}; {}",
            self.instead()
        );
    }

    /// Panics unless `earlier` is among these events.
    fn expect_stored(&self, earlier: &Envelope) {
        if !self.all.iter().any(|p| p.envelope.message_id() == earlier.message_id()) {
            panic!(
                "{} `{}` (message {}) was not published, so nothing can be published after it; {}",
                earlier.subject(),
                earlier.event_type().unwrap_or_default(),
                earlier.message_id(),
                self
            );
        }
    }

    fn instead(&self) -> String {
        format!("published instead: {}", list(&self.all))
    }
}

/// How a command was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Accepted and carried out.
    Accepted,
    /// Rejected, with the handler's reason.
    Rejected(String),
    /// The handler failed (after its retries), with the reason.
    Failed(String),
    /// No answer: no handler, or a timeout.
    Unanswered(String),
}

impl fmt::Display for Answer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Accepted => f.write_str("accepted"),
            Self::Rejected(r) => write!(f, "rejected: {r}"),
            Self::Failed(r) => write!(f, "failed: {r}"),
            Self::Unanswered(r) => write!(f, "unanswered: {r}"),
        }
    }
}

/// A command sent in the host and its answer.
#[derive(Debug, Clone)]
pub struct SentCommand {
    /// The command's envelope (subject `commands.{domain}.{name}`, type, identity, payload).
    pub envelope: Envelope,
    /// Its answer.
    pub answer: Answer,
    /// The accepted answer's JSON, for a command with an answer type.
    pub answer_json: Option<serde_json::Value>,
}

impl SentCommand {
    /// The accepted answer read as `A` (a command's [`Command::Answer`]); `None` if it was not
    /// accepted or does not read as `A`.
    pub fn answer_as<A: CommandAnswer>(&self) -> Option<A> {
        match self.answer {
            Answer::Accepted => A::from_answer(self.answer_json.as_ref()).ok(),
            _ => None,
        }
    }

    /// `true` if it is a `C` (by type, or by subject for an untyped one).
    pub fn is<C: Command>(&self) -> bool {
        match self.envelope.event_type() {
            Some(t) => t == C::TYPE_NAME,
            None => self.envelope.subject() == &C::subject(),
        }
    }

    /// The payload decoded as a `C`.
    pub fn decode<C: Command>(&self) -> Result<C, DecodeError> {
        C::decode(self.envelope.payload())
    }
}

impl fmt::Display for SentCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.envelope.identity();
        write!(
            f,
            "{} `{}` -> {} (message {}, correlation {})",
            self.envelope.subject(),
            self.envelope.event_type().unwrap_or_default(),
            self.answer,
            id.message_id,
            id.correlation_id
        )
    }
}

/// The commands sent in a host, with their answers. From [`TestHost::commands`].
#[derive(Debug, Clone)]
pub struct Commands {
    all: Vec<SentCommand>,
}

impl fmt::Display for Commands {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "commands sent: {}", list(&self.all))
    }
}

impl Commands {
    /// All of them, in the order they were answered.
    pub fn all(&self) -> &[SentCommand] {
        &self.all
    }

    /// The `C`s, decoded, with how each was sent and answered.
    pub fn of<C: Command>(&self) -> Vec<(SentCommand, C)> {
        self.all
            .iter()
            .filter(|c| c.is::<C>())
            .map(|c| match c.decode::<C>() {
                Ok(command) => (c.clone(), command),
                Err(e) => panic!("sent {c} does not decode as `{}`: {e}", C::TYPE_NAME),
            })
            .collect()
    }

    /// The first `C` sent; panics, listing the commands sent, if there is none.
    pub fn expect<C: Command>(&self) -> (SentCommand, C) {
        self.of::<C>()
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("expected `{}` to be sent; {}", C::TYPE_NAME, self))
    }

    /// The first `C` sent, which must have been answered `answer`.
    pub fn expect_answered<C: Command>(&self, answer: &Answer) -> (SentCommand, C) {
        let (sent, command) = self.expect::<C>();
        assert!(
            &sent.answer == answer,
            "expected `{}` to be answered `{answer}`, it was answered `{}`; {}",
            C::TYPE_NAME,
            sent.answer,
            self
        );
        (sent, command)
    }

    /// No `C` was sent.
    pub fn expect_none<C: Command>(&self) {
        let found: Vec<SentCommand> = self.of::<C>().into_iter().map(|(c, _)| c).collect();
        if !found.is_empty() {
            panic!("expected no `{}` to be sent; sent: {}", C::TYPE_NAME, list(&found));
        }
    }
}

/// A dead letter: the message a handler gave up on, and why.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The handler that gave up (its durable name).
    pub handler: String,
    /// The failure kind (`permanent`, `undecodable`, `exhausted`, `invalid_envelope`).
    pub kind: String,
    /// The reason, as the handler's error said it.
    pub reason: String,
    /// The subject the original was published on.
    pub subject: String,
    /// The original's event type, if it had one.
    pub event_type: Option<String>,
    /// The original's correlation id, if it carried one.
    pub correlation_id: Option<String>,
    /// The original's payload.
    pub payload: Bytes,
    /// The dead letter's headers (the original's and the `X-Dead-Letter-*` ones).
    pub headers: Headers,
}

impl From<StoredMessage> for DeadLetter {
    fn from(m: StoredMessage) -> Self {
        let h = &m.headers;
        let get = |name: &str| h.get(name).map(str::to_owned);
        Self {
            handler: get(DEAD_LETTER_HANDLER).unwrap_or_default(),
            kind: get(DEAD_LETTER_KIND).unwrap_or_default(),
            reason: get(DEAD_LETTER_REASON).unwrap_or_default(),
            subject: get(DEAD_LETTER_SUBJECT).unwrap_or_default(),
            event_type: get(crate::headers::EVENT_TYPE),
            correlation_id: get(crate::headers::CORRELATION_ID),
            payload: m.envelope.payload().clone(),
            headers: m.headers,
        }
    }
}

impl DeadLetter {
    /// `true` if the original was an `E`.
    pub fn is<E: DomainEvent>(&self) -> bool {
        match &self.event_type {
            Some(t) => t == E::TYPE_NAME,
            None => self.subject == E::SUBJECT,
        }
    }
}

impl fmt::Display for DeadLetter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` dead-lettered by `{}` ({}): {}",
            self.subject,
            self.event_type.as_deref().unwrap_or_default(),
            self.handler,
            self.kind,
            self.reason
        )
    }
}

/// The dead letters of a host. From [`TestHost::dead_letters`].
#[derive(Debug, Clone)]
pub struct DeadLetters {
    all: Vec<DeadLetter>,
}

impl fmt::Display for DeadLetters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dead letters: {}", list(&self.all))
    }
}

impl DeadLetters {
    /// All of them, in order.
    pub fn all(&self) -> &[DeadLetter] {
        &self.all
    }

    /// The first dead letter of an `E`; panics, listing the dead letters, if there is none.
    pub fn expect<E: DomainEvent>(&self) -> DeadLetter {
        self.all.iter().find(|d| d.is::<E>()).cloned().unwrap_or_else(|| {
            panic!(
                "expected a dead letter of `{}` ({}); {}",
                E::TYPE_NAME,
                E::SUBJECT,
                self
            )
        })
    }

    /// The first dead letter of handler `handler` (durable name, e.g. `{set}-{handler}`).
    pub fn expect_from(&self, handler: &str) -> DeadLetter {
        self.all
            .iter()
            .find(|d| d.handler == handler)
            .cloned()
            .unwrap_or_else(|| panic!("expected a dead letter from handler `{handler}`; {self}"))
    }

    /// There are none.
    pub fn expect_none(&self) {
        assert!(self.all.is_empty(), "expected no dead letters; {self}");
    }
}
