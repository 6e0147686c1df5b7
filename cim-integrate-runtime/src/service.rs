//! [`Service`]: runs registered handlers, one durable consumer each.
//!
//! For every message a handler's consumer delivers, the dispatcher:
//!
//! 1. rebuilds the [`Envelope`] (an invalid subject -> dead letter);
//! 2. asks the [`DedupStore`] whether this handler already handled this message id (yes -> ack,
//!    the handler does not run; the store unreachable -> nak with a delay, never a blind run);
//! 3. dead-letters a message delivered more often than the retry policy allows (a previous
//!    process crashed while handling it);
//! 4. decodes the payload (undecodable or unknown version -> dead letter);
//! 5. runs the handler, catching panics, signalling progress while it runs;
//! 6. on success writes the de-duplication mark, then acks; on a transient error or a panic naks
//!    with the retry policy's back-off, or dead-letters once the attempts are spent; on a
//!    permanent error dead-letters at once.
//!
//! A handler with a circuit breaker ([`HandlerOptions::breaker`](crate::handler::HandlerOptions))
//! asks it before step 5; while it is open the message is naked with the rest of the cool-down as
//! delay (an ordered handler waits in place instead). A handler whose transient error carries a
//! [`BreakerOpen`](crate::breaker::BreakerOpen) (a breaker around its own outgoing call refused)
//! is deferred the same way. Deferred deliveries are not attempts: they are subtracted from the
//! delivery count before it is compared with the retry policy.
//!
//! Every delivery runs in a `handle` span and is counted in the metrics of [`crate::monitor`];
//! [`Service::topology`] tells who publishes and who subscribes.
//!
//! A dead letter is the original payload and headers, plus `X-Dead-Letter-*` headers (reason,
//! handler, original subject, stream and sequence, delivery count, time), published to
//! `dlq.{set}.{handler}` in the `DEAD_LETTERS` stream; only once it is stored is the original
//! terminated. Nothing is acknowledged before it is handled or dead-lettered.
//!
//! Shutdown stops pulling, lets in-flight handlers finish within a grace period and acks what
//! finished; what did not finish is left unacknowledged and is redelivered.

use crate::breaker::{self, BreakerState, CircuitBreaker};
use crate::dedup::{DEFAULT_DEDUP_TTL, DedupStore, KvDedup};
use crate::envelope::{DERIVED_ID_NAMESPACE, Envelope};
use crate::handler::context::DynPublish;
use crate::handler::{Context, HandlerError, HandlerSet, Registration};
use crate::headers::{self, Headers};
use crate::monitor::{self, DeadLetterReason, HandlerMetrics};
use crate::subject::{Subject, SubjectError, SubjectPattern};
use crate::timestamp::Timestamp;
use crate::topology::{PublishLog, Topology};
use crate::transport::{
    Acker, Consumer, ConsumerSpec, Delivery, KvError, KvSpec, OutboundMessage, StreamSpec, Transport, TransportError,
};
use futures::FutureExt;
use std::collections::{BTreeMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tracing::Instrument;

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
/// Header: how many times it had been delivered.
pub const DEAD_LETTER_DELIVERIES: &str = "X-Delivery-Count";
/// Header: when it was dead-lettered (RFC 3339).
pub const DEAD_LETTER_AT: &str = "X-Dead-Letter-At";
/// Header: the original `Nats-Msg-Id`, if it had one (the dead letter gets its own).
pub const DEAD_LETTER_ORIGINAL_MSG_ID: &str = "X-Dead-Letter-Original-Msg-Id";

/// The dead-letter stream's name (before any deployment prefix).
pub const DEAD_LETTER_STREAM_NAME: &str = "DEAD_LETTERS";
/// The first token of dead-letter subjects.
pub const DEAD_LETTER_TOKEN: &str = "dlq";

/// Why a service could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// Two handlers would share one durable consumer.
    #[error("two handlers use the durable name `{0}`; give one of them another name or `durable = \"...\"`")]
    DuplicateHandler(String),
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
    /// Opening the de-duplication bucket failed.
    #[error(transparent)]
    KeyValue(#[from] KvError),
    /// A subject could not be built.
    #[error(transparent)]
    Subject(#[from] SubjectError),
}

/// Counters of one handler.
#[derive(Debug, Default)]
pub struct HandlerCounters {
    /// Runs that succeeded.
    pub succeeded: AtomicU64,
    /// Deliveries skipped because the handler had already handled the message.
    pub duplicates: AtomicU64,
    /// Failed runs that will be retried.
    pub retried: AtomicU64,
    /// Messages dead-lettered.
    pub dead_lettered: AtomicU64,
    /// Runs that panicked.
    pub panicked: AtomicU64,
    /// Deliveries deferred because a circuit breaker was open.
    pub deferred: AtomicU64,
    /// Messages of another event type that the pattern matched, acknowledged without running.
    pub skipped: AtomicU64,
}

/// A snapshot of one handler's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandlerStats {
    /// Durable name.
    pub handler: String,
    /// Runs that succeeded.
    pub succeeded: u64,
    /// Deliveries skipped as duplicates.
    pub duplicates: u64,
    /// Failed runs to be retried.
    pub retried: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Runs that panicked.
    pub panicked: u64,
    /// Deliveries deferred because a circuit breaker was open.
    pub deferred: u64,
    /// Messages of another event type, acknowledged without running.
    pub skipped: u64,
}

/// Builds and starts a [`Service`].
pub struct ServiceBuilder<T: Transport> {
    transport: T,
    name: String,
    prefix: Option<Subject>,
    dedup: Option<Arc<dyn DedupStore>>,
    dedup_ttl: Duration,
    handlers: Vec<(String, Registration)>,
    topology: Topology,
}

impl<T: Transport> std::fmt::Debug for ServiceBuilder<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceBuilder")
            .field("name", &self.name)
            .field("handlers", &self.handlers)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> ServiceBuilder<T> {
    /// Subject prefix of a deployment (`prod` -> `prod.document.created`, streams `PROD_...`).
    pub fn prefix(mut self, prefix: Subject) -> Self {
        self.prefix = Some(prefix);
        self
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

    /// Uses `store` for de-duplication marks instead of the default key-value bucket
    /// `cim_dedup_{service}` on the service's transport.
    pub fn dedup_store(mut self, store: impl DedupStore) -> Self {
        self.dedup = Some(Arc::new(store));
        self
    }

    /// TTL of de-duplication marks in the default bucket (default 24 h).
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
    /// publishers outside the service, sagas, command handlers, events of other services.
    pub fn describe(mut self, f: impl FnOnce(&mut Topology)) -> Self {
        f(&mut self.topology);
        self
    }

    /// The topology the service will have when started, before anything is observed: its
    /// handler sets and their subscriptions and declared publications, and what was added with
    /// [`declare_event`](Self::declare_event) and [`describe`](Self::describe). Needs no transport
    /// call, so a test can snapshot it.
    pub fn topology(&self) -> Topology {
        let mut t = self.topology.clone();
        for (set, reg) in &self.handlers {
            t.add_participant(set.clone(), crate::topology::ParticipantKind::HandlerSet);
            t.add_subscription(set, &reg.name, reg.pattern.as_str(), Some(reg.event_type));
            for e in &reg.options.publishes {
                t.add_publication(set, Some(&reg.name), e.clone());
            }
        }
        t
    }

    /// Provisions streams, the dead-letter stream, the de-duplication bucket and one durable
    /// consumer per handler, then starts dispatching.
    pub async fn start(self) -> Result<Service, ServiceError> {
        check_token(&self.name)?;
        monitor::describe();
        let topology = self.topology();
        for w in topology.warnings() {
            tracing::info!(service = %self.name, "topology: {w}");
        }
        let dlq_spec = dead_letter_stream(self.prefix.as_ref())?;
        self.transport.ensure_stream(&dlq_spec).await?;
        let dedup = match self.dedup {
            Some(d) => d,
            None => {
                let spec = KvSpec::new(format!("cim_dedup_{}", self.name)).max_age(self.dedup_ttl);
                Arc::new(KvDedup::new(self.transport.key_value(&spec).await?)) as Arc<dyn DedupStore>
            }
        };
        let mut durables = HashSet::new();
        let mut plans = Vec::new();
        for (set, reg) in self.handlers {
            check_token(&set)?;
            check_token(&reg.name)?;
            let durable = reg
                .options
                .durable
                .clone()
                .unwrap_or_else(|| format!("{set}-{}", reg.name));
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
            let stream = StreamSpec::for_domain(&domain, self.prefix.as_ref())?;
            match self.transport.ensure_stream(&stream).await {
                // The publishing domain owns its stream; other settings there are its business.
                Err(TransportError::StreamConflict { stream, detail }) => {
                    tracing::info!(%stream, %detail, "subscribing to an existing stream with other settings");
                }
                other => other?,
            }
            let filter = reg.pattern.under(self.prefix.as_ref())?;
            let concurrency = if reg.options.ordered {
                1
            } else {
                reg.options.concurrency.max(1)
            };
            let spec = ConsumerSpec::new(stream.name.clone(), durable.clone(), filter)
                .deliver(reg.options.deliver)
                .ack_wait(reg.options.ack_wait)
                .max_ack_pending(u32::try_from(concurrency.saturating_mul(4)).unwrap_or(u32::MAX).max(1));
            let consumer = self.transport.consumer(&spec).await?;
            let dlq_subject = Subject::from_tokens([DEAD_LETTER_TOKEN, set.as_str(), reg.name.as_str()])?
                .under(self.prefix.as_ref())?;
            plans.push((spec, consumer, durable, dlq_subject, (set, reg), concurrency));
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut tasks = JoinSet::new();
        let mut counters = Vec::new();
        let publisher: Arc<dyn DynPublish> = Arc::new(self.transport.clone());
        let log = Arc::new(PublishLog::default());
        for (spec, consumer, durable, dlq_subject, (set, reg), concurrency) in plans {
            let domain = reg.pattern.as_str().split('.').next().unwrap_or_default();
            let breaker = reg.options.breaker.clone().map(|settings| {
                let labels = [
                    ("source_domain", domain),
                    ("target_domain", &set),
                    ("handler", &reg.name),
                ]
                .map(|(k, v)| (k.to_owned(), v.to_owned()));
                CircuitBreaker::with_labels(durable.clone(), settings, labels.to_vec())
            });
            let shared = Arc::new(HandlerRuntime {
                metrics: HandlerMetrics::new(domain, &set, &durable, reg.event_type),
                set: Arc::from(set.as_str()),
                name: Arc::from(reg.name.as_str()),
                durable_name: Arc::from(durable.as_str()),
                durable,
                dlq_subject,
                breaker,
                registration: reg,
                prefix: self.prefix.clone(),
                dedup: dedup.clone(),
                publisher: publisher.clone(),
                counters: HandlerCounters::default(),
                concurrency,
                log: log.clone(),
                deferrals: Mutex::new(BTreeMap::new()),
                deferral_count: AtomicUsize::new(0),
            });
            counters.push(shared.clone());
            tracing::info!(handler = %shared.durable, filter = %spec.filter, stream = %spec.stream, "handler started");
            tasks.spawn(run_handler(
                self.transport.clone(),
                spec,
                consumer,
                shared,
                stop_rx.clone(),
            ));
        }
        Ok(Service {
            name: self.name,
            stop: stop_tx,
            stop_rx,
            tasks,
            handlers: counters,
            flush: publisher_flush(self.transport),
            topology,
            log,
        })
    }
}

fn publisher_flush<T: Transport>(
    t: T,
) -> Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), TransportError>> + Send + Sync> {
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

/// The dead-letter stream: `DEAD_LETTERS` on `dlq.>` (with a prefix: `PROD_DEAD_LETTERS` on
/// `prod.dlq.>`).
pub fn dead_letter_stream(prefix: Option<&Subject>) -> Result<StreamSpec, ServiceError> {
    let mut spec = StreamSpec::for_domain(DEAD_LETTER_TOKEN, prefix)?;
    spec.name = crate::transport::prefixed_name(prefix, DEAD_LETTER_STREAM_NAME);
    Ok(spec)
}

/// A running service. Dropping it without [`shutdown`](Self::shutdown) aborts its handlers
/// (unacknowledged messages are redelivered).
pub struct Service {
    name: String,
    stop: watch::Sender<bool>,
    stop_rx: watch::Receiver<bool>,
    tasks: JoinSet<()>,
    handlers: Vec<Arc<HandlerRuntime>>,
    flush: Box<dyn Fn() -> futures::future::BoxFuture<'static, Result<(), TransportError>> + Send + Sync>,
    topology: Topology,
    log: Arc<PublishLog>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("name", &self.name)
            .field("handlers", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A builder for a service named `name` (`[A-Za-z0-9_-]+`) on `transport`.
    pub fn builder<T: Transport>(transport: T, name: impl Into<String>) -> ServiceBuilder<T> {
        ServiceBuilder {
            transport,
            name: name.into(),
            prefix: None,
            dedup: None,
            dedup_ttl: DEFAULT_DEDUP_TTL,
            handlers: Vec::new(),
            topology: Topology::new(),
        }
    }

    /// The service's [topology](crate::topology): what was declared when it was built
    /// ([`ServiceBuilder::topology`]) plus every publish its handlers have made since it started.
    pub fn topology(&self) -> Topology {
        let mut t = self.topology.clone();
        self.log.apply(&mut t);
        t
    }

    /// The state of a handler's circuit breaker, by durable name (`None`: no such handler, or it
    /// has no breaker).
    pub fn breaker_state(&self, durable: &str) -> Option<BreakerState> {
        self.handlers
            .iter()
            .find(|h| h.durable == durable)
            .and_then(|h| h.breaker.as_ref())
            .map(CircuitBreaker::state)
    }

    /// Counters of every handler.
    pub fn stats(&self) -> Vec<HandlerStats> {
        self.handlers
            .iter()
            .map(|h| {
                let c = &h.counters;
                HandlerStats {
                    handler: h.durable.clone(),
                    succeeded: c.succeeded.load(Ordering::Relaxed),
                    duplicates: c.duplicates.load(Ordering::Relaxed),
                    retried: c.retried.load(Ordering::Relaxed),
                    dead_lettered: c.dead_lettered.load(Ordering::Relaxed),
                    panicked: c.panicked.load(Ordering::Relaxed),
                    deferred: c.deferred.load(Ordering::Relaxed),
                    skipped: c.skipped.load(Ordering::Relaxed),
                }
            })
            .collect()
    }

    /// Counters of one handler, by durable name.
    pub fn handler_stats(&self, durable: &str) -> Option<HandlerStats> {
        self.stats().into_iter().find(|s| s.handler == durable)
    }

    /// Stops pulling, waits up to `grace` for in-flight handlers (their messages are acked or
    /// naked as usual), abandons the rest unacknowledged (they are redelivered), and flushes.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = self.stop_rx.borrow_and_update();
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
        if let Err(e) = (self.flush)().await {
            tracing::warn!(service = %self.name, error = %e, "flush at shutdown failed");
        }
    }
}

struct HandlerRuntime {
    /// The handler set's name (the target domain).
    set: Arc<str>,
    /// The handler's name.
    name: Arc<str>,
    durable: String,
    /// `durable`, shared with every `Context` without a copy.
    durable_name: Arc<str>,
    dlq_subject: Subject,
    registration: Registration,
    prefix: Option<Subject>,
    dedup: Arc<dyn DedupStore>,
    publisher: Arc<dyn DynPublish>,
    counters: HandlerCounters,
    concurrency: usize,
    metrics: HandlerMetrics,
    breaker: Option<CircuitBreaker>,
    log: Arc<PublishLog>,
    /// Stream sequence -> deliveries deferred by a breaker, for messages not yet settled.
    deferrals: Mutex<BTreeMap<u64, u64>>,
    /// Its length, read without the lock on the hot path.
    deferral_count: AtomicUsize,
}

/// Most messages whose deferrals a handler remembers; beyond, the oldest are forgotten (and their
/// deferrals count as attempts again).
const DEFERRAL_LIMIT: usize = 65_536;

/// Shortest delay of a deferral, so that a breaker about to half-open does not spin.
const MIN_DEFERRAL: Duration = Duration::from_millis(10);

impl HandlerRuntime {
    fn deferred(&self, seq: u64) -> u64 {
        if self.deferral_count.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        let map = self.deferrals.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&seq).copied().unwrap_or(0)
    }

    fn note_deferral(&self, seq: u64) {
        let mut map = self.deferrals.lock().unwrap_or_else(|p| p.into_inner());
        *map.entry(seq).or_insert(0) += 1;
        while map.len() > DEFERRAL_LIMIT {
            map.pop_first();
        }
        self.deferral_count.store(map.len(), Ordering::Relaxed);
    }

    fn forget(&self, seq: u64) {
        if self.deferral_count.load(Ordering::Relaxed) == 0 {
            return;
        }
        let mut map = self.deferrals.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&seq);
        self.deferral_count.store(map.len(), Ordering::Relaxed);
    }
}

async fn run_handler<T: Transport>(
    transport: T,
    spec: ConsumerSpec,
    mut consumer: T::Consumer,
    h: Arc<HandlerRuntime>,
    mut stop: watch::Receiver<bool>,
) {
    let permits = Arc::new(Semaphore::new(h.concurrency));
    let mut in_flight = JoinSet::new();
    'pull: loop {
        let permit = tokio::select! {
            biased;
            _ = stop.changed() => break 'pull,
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break 'pull },
        };
        let delivery = tokio::select! {
            biased;
            _ = stop.changed() => break 'pull,
            d = consumer.next() => d,
        };
        match delivery {
            Ok(d) if h.concurrency == 1 => {
                // One at a time: no task per message.
                process(&h, d).await;
                drop(permit);
            }
            Ok(d) => {
                let h = h.clone();
                in_flight.spawn(async move {
                    process(&h, d).await;
                    drop(permit);
                });
            }
            Err(e) => {
                tracing::error!(handler = %h.durable, error = %e, "consumer failed; reopening in 1s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                match transport.consumer(&spec).await {
                    Ok(c) => consumer = c,
                    Err(e) => tracing::error!(handler = %h.durable, error = %e, "reopening consumer failed"),
                }
            }
        }
        while in_flight.try_join_next().is_some() {}
    }
    // Shutdown: in-flight handlers finish (the service bounds how long); nothing new is pulled.
    while in_flight.join_next().await.is_some() {}
}

enum Outcome {
    Done,
    Retry(String),
    Deferred(Duration, String),
    DeadLetter(DeadLetterReason, String),
}

async fn process<A: Acker>(h: &HandlerRuntime, d: Delivery<A>) {
    let delivered = d.info().delivered;
    let envelope = match d.envelope() {
        Ok(e) => e,
        Err(e) => {
            let reason = format!("invalid envelope: {e}");
            return dead_letter(h, d, DeadLetterReason::InvalidEnvelope, &reason).await;
        }
    };
    let span = tracing::info_span!(
        "handle",
        handler = %h.durable,
        subject = %envelope.subject(),
        message_id = %envelope.message_id(),
        correlation_id = %envelope.correlation_id(),
        causation_id = %envelope.causation_id(),
        delivered,
    );
    process_envelope(h, d, envelope).instrument(span).await
}

async fn process_envelope<A: Acker>(h: &HandlerRuntime, d: Delivery<A>, envelope: Envelope) {
    let delivered = d.info().delivered;
    let seq = d.info().stream_sequence;
    h.metrics.delivered(delivered);
    let id = envelope.message_id();
    // A typed handler on a wide pattern (`document.*`) ignores other event types.
    let own_subject = match &h.prefix {
        Some(p) => envelope
            .subject()
            .as_str()
            .strip_prefix(p.as_str())
            .and_then(|s| s.strip_prefix('.'))
            .unwrap_or(envelope.subject().as_str()),
        None => envelope.subject().as_str(),
    };
    let event_type = envelope.event_type().filter(|t| !t.is_empty());
    if !h.registration.accepts(own_subject, event_type) {
        h.counters.skipped.fetch_add(1, Ordering::Relaxed);
        h.metrics.outcome(monitor::Outcome::Skipped);
        h.forget(seq);
        tracing::debug!(event_type, "another event type; acknowledging without running");
        return settle(d.ack().await);
    }
    let seen = match h.dedup.seen_now(&h.durable, id) {
        Some(r) => r,
        None => h.dedup.seen(&h.durable, id).await,
    };
    match seen {
        Ok(true) => {
            h.counters.duplicates.fetch_add(1, Ordering::Relaxed);
            h.metrics.outcome(monitor::Outcome::Duplicate);
            h.forget(seq);
            tracing::debug!("already handled; acknowledging without running");
            return settle(d.ack().await);
        }
        Ok(false) => {}
        Err(e) => {
            tracing::warn!(error = %e, "dedup check failed; redelivering later");
            return settle(d.nak(Some(Duration::from_secs(1))).await);
        }
    }
    let retry = &h.registration.options.retry;
    // Deliveries a breaker deferred were not attempts.
    let deferred = h.deferred(seq);
    let mut attempt = delivered.saturating_sub(deferred).max(1);
    if attempt > u64::from(retry.max_attempts) {
        let reason = format!(
            "retries exhausted: delivered {delivered} times ({deferred} deferred by a circuit breaker), max_attempts {} (earlier runs did not finish)",
            retry.max_attempts
        );
        return dead_letter(h, d, DeadLetterReason::Exhausted, &reason).await;
    }
    loop {
        let permit = match h.breaker.as_ref().map(CircuitBreaker::try_acquire) {
            None => None,
            Some(Ok(permit)) => Some(permit),
            Some(Err(open)) => {
                if defer(h, &d, open.retry_after, &open.to_string()).await {
                    continue;
                }
                return settle(d.nak(Some(open.retry_after.max(MIN_DEFERRAL))).await);
            }
        };
        let ctx = Context::new(
            &envelope,
            attempt,
            h.durable_name.clone(),
            h.prefix.clone(),
            h.publisher.clone(),
        )
        .observed_by(&h.set, &h.name, &h.log);
        let outcome = match (h.registration.invoke)(ctx, envelope.payload()) {
            // Says nothing about the downstream: the permit is dropped unrecorded.
            Err(reason) => Outcome::DeadLetter(
                DeadLetterReason::Undecodable,
                format!("undecodable payload for {}: {reason}", h.registration.event_type),
            ),
            Ok(fut) => {
                let start = tokio::time::Instant::now();
                let result = run_with_progress(fut, &d, h.registration.options.ack_wait).await;
                h.metrics.ran(start.elapsed());
                match result {
                    Ok(Ok(())) => {
                        if let Some(p) = permit {
                            p.success();
                        }
                        Outcome::Done
                    }
                    Ok(Err(HandlerError::Permanent(e))) => {
                        Outcome::DeadLetter(DeadLetterReason::Permanent, format!("handler failed permanently: {e}"))
                    }
                    Ok(Err(HandlerError::Transient(e))) => match breaker::find_open(e.as_ref()) {
                        Some(open) => Outcome::Deferred(open.retry_after, open.to_string()),
                        None => {
                            if let Some(p) = permit {
                                p.failure();
                            }
                            Outcome::Retry(format!("handler failed: {e}"))
                        }
                    },
                    Err(panic) => {
                        if let Some(p) = permit {
                            p.failure();
                        }
                        h.counters.panicked.fetch_add(1, Ordering::Relaxed);
                        h.metrics.panicked();
                        Outcome::Retry(format!("handler panicked: {}", panic_message(&panic)))
                    }
                }
            }
        };
        match outcome {
            Outcome::Done => {
                let marked = match h.dedup.mark_now(&h.durable, id) {
                    Some(r) => r,
                    None => h.dedup.mark(&h.durable, id).await,
                };
                if let Err(e) = marked {
                    // The handler succeeded; acking is right. Only a lost ack could now re-run it.
                    tracing::warn!(error = %e, "dedup mark failed; acknowledging anyway");
                }
                h.counters.succeeded.fetch_add(1, Ordering::Relaxed);
                h.metrics.outcome(monitor::Outcome::Succeeded);
                h.forget(seq);
                return settle(d.ack().await);
            }
            Outcome::DeadLetter(kind, reason) => return dead_letter(h, d, kind, &reason).await,
            Outcome::Deferred(delay, why) => {
                if defer(h, &d, delay, &why).await {
                    continue;
                }
                return settle(d.nak(Some(delay.max(MIN_DEFERRAL))).await);
            }
            Outcome::Retry(reason) if attempt >= u64::from(retry.max_attempts) => {
                let reason = format!("retries exhausted after {attempt} attempts; last: {reason}");
                return dead_letter(h, d, DeadLetterReason::Exhausted, &reason).await;
            }
            Outcome::Retry(reason) => {
                h.counters.retried.fetch_add(1, Ordering::Relaxed);
                h.metrics.outcome(monitor::Outcome::Retried);
                // If this failure opened the breaker, come back when it lets probes through.
                let cool_down = h.breaker.as_ref().map(CircuitBreaker::retry_after).unwrap_or_default();
                let delay = retry.delay(attempt).max(cool_down);
                tracing::warn!(%reason, attempt, ?delay, "handler will be retried");
                if !h.registration.options.ordered {
                    return settle(d.nak(Some(delay)).await);
                }
                // Ordered: retry in place so later messages wait, keeping the delivery alive.
                if run_with_progress(tokio::time::sleep(delay).map(Ok), &d, h.registration.options.ack_wait)
                    .await
                    .is_err()
                {
                    return settle(d.nak(Some(delay)).await);
                }
                attempt += 1;
            }
        }
    }
}

/// A breaker refused: counts the deferral, and either waits `delay` in place keeping the
/// delivery alive (ordered handlers: `true`, try again) or records the deferral so that the
/// redelivery is not counted as an attempt (`false`: the caller naks).
async fn defer<A: Acker>(h: &HandlerRuntime, d: &Delivery<A>, delay: Duration, why: &str) -> bool {
    h.counters.deferred.fetch_add(1, Ordering::Relaxed);
    h.metrics.outcome(monitor::Outcome::Deferred);
    let delay = delay.max(MIN_DEFERRAL);
    tracing::debug!(reason = why, ?delay, "deferred: a circuit breaker is open");
    if h.registration.options.ordered {
        let wait = tokio::time::sleep(delay).map(Ok);
        return run_with_progress(wait, d, h.registration.options.ack_wait)
            .await
            .is_ok();
    }
    h.note_deferral(d.info().stream_sequence);
    false
}

/// Runs `fut` (catching panics) while telling the server every half ack wait that the delivery
/// is still in progress.
async fn run_with_progress<A: Acker, F>(
    fut: F,
    d: &Delivery<A>,
    ack_wait: Duration,
) -> Result<Result<(), HandlerError>, Box<dyn std::any::Any + Send>>
where
    F: std::future::Future<Output = Result<(), HandlerError>>,
{
    let fut = AssertUnwindSafe(fut).catch_unwind();
    tokio::pin!(fut);
    // Most handlers finish without waiting: arm the progress timer only for those that wait.
    if let std::task::Poll::Ready(r) = futures::poll!(&mut fut) {
        return r;
    }
    let period = (ack_wait / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            r = &mut fut => return r,
            _ = tick.tick() => {
                if let Err(e) = d.in_progress().await {
                    tracing::debug!(error = %e, "progress signal failed");
                }
            }
        }
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_owned())
}

fn settle(r: Result<(), TransportError>) {
    if let Err(e) = r {
        tracing::warn!(error = %e, "acknowledgement failed; the message will be redelivered");
    }
}

fn header_safe(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(1000)
        .collect()
}

async fn dead_letter<A: Acker>(h: &HandlerRuntime, d: Delivery<A>, kind: DeadLetterReason, reason: &str) {
    let info = d.info().clone();
    let mut hdrs = Headers::new();
    for (n, v) in d.headers().iter().filter(|(n, _)| *n != headers::NATS_MSG_ID) {
        hdrs.push_received(n.to_owned(), v.to_owned());
    }
    if let Some(orig) = d.headers().get(headers::NATS_MSG_ID) {
        hdrs.push_received(DEAD_LETTER_ORIGINAL_MSG_ID.to_owned(), header_safe(orig));
    }
    let dlq_id = uuid::Uuid::new_v5(
        &DERIVED_ID_NAMESPACE,
        format!("dlq\0{}\0{}\0{}", h.durable, info.stream, info.stream_sequence).as_bytes(),
    );
    for (n, v) in [
        (headers::NATS_MSG_ID, dlq_id.to_string()),
        (DEAD_LETTER_REASON, header_safe(reason)),
        (DEAD_LETTER_HANDLER, h.durable.clone()),
        (DEAD_LETTER_SUBJECT, header_safe(d.subject())),
        (DEAD_LETTER_STREAM, info.stream.to_string()),
        (DEAD_LETTER_SEQUENCE, info.stream_sequence.to_string()),
        (DEAD_LETTER_DELIVERIES, info.delivered.to_string()),
        (DEAD_LETTER_AT, Timestamp::now().to_rfc3339()),
    ] {
        hdrs.push_received(n.to_owned(), v);
    }
    let message = OutboundMessage {
        subject: h.dlq_subject.clone(),
        headers: hdrs,
        payload: d.payload().clone(),
    };
    match h.publisher.publish_and_wait(message).await {
        Ok(_) => {
            h.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            h.metrics.outcome(monitor::Outcome::DeadLettered);
            h.metrics.dead_letter(kind);
            h.forget(info.stream_sequence);
            tracing::warn!(handler = %h.durable, subject = d.subject(), reason, "dead-lettered");
            settle(d.term().await);
        }
        Err(e) => {
            tracing::error!(handler = %h.durable, error = %e, reason, "dead-lettering failed; redelivering later");
            settle(d.nak(Some(Duration::from_secs(1))).await);
        }
    }
}

/// The dead-letter subject pattern of a service set, for tools that read dead letters.
pub fn dead_letter_pattern(prefix: Option<&Subject>) -> Result<SubjectPattern, SubjectError> {
    SubjectPattern::new(format!("{DEAD_LETTER_TOKEN}.>"))?.under(prefix)
}
