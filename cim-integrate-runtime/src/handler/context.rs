//! [`Context`]: what a handler knows about the message it handles, and how it publishes.

use crate::envelope::Envelope;
use crate::event::Publishable;
use crate::id::{CausationId, CorrelationId, Identity, MessageId};
use crate::monitor;
use crate::subject::{Subject, SubjectError};
use crate::timestamp::Timestamp;
use crate::topology::PublishLog;
use crate::transport::{OutboundMessage, PublishAck, Transport, TransportError};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tracing::Instrument;

/// Why a publish from a handler failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The event could not be encoded.
    #[error("cannot encode {event_type}: {reason}")]
    Encode {
        /// The event type.
        event_type: String,
        /// What the encoder said.
        reason: String,
    },
    /// A subject is invalid.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The transport refused or did not acknowledge the message.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Object-safe publishing, so that [`Context`] is not generic over the transport.
pub(crate) trait DynPublish: Send + Sync + 'static {
    fn publish_and_wait(&self, message: OutboundMessage) -> BoxFuture<'static, Result<PublishAck, TransportError>>;
    /// Sends without waiting; the returned future resolves to the acknowledgement. By default,
    /// waits (a publisher without pipelining).
    fn publish(&self, message: OutboundMessage) -> BoxFuture<'static, Result<AckFuture, TransportError>> {
        let sent = self.publish_and_wait(message);
        Box::pin(async move {
            let ack = sent.await;
            Ok(Box::pin(std::future::ready(ack)) as AckFuture)
        })
    }
}

/// A publish's acknowledgement, awaited later.
pub(crate) type AckFuture = BoxFuture<'static, Result<PublishAck, TransportError>>;

/// An [`emit`](Context::emit) whose acknowledgement is awaited by [`Context::flush`], which
/// counts it then (`cim_published_total` by outcome, the time since `start`).
struct Emitted {
    ack: AckFuture,
    subject: Subject,
    start: tokio::time::Instant,
}

impl<T: Transport> DynPublish for crate::transport::Provisioner<T> {
    fn publish_and_wait(&self, message: OutboundMessage) -> BoxFuture<'static, Result<PublishAck, TransportError>> {
        let t = self.clone();
        Box::pin(async move { crate::transport::Provisioner::publish_and_wait(&t, message).await })
    }
    fn publish(&self, message: OutboundMessage) -> BoxFuture<'static, Result<AckFuture, TransportError>> {
        let t = self.clone();
        Box::pin(async move {
            let ack = crate::transport::Provisioner::publish(&t, message).await?;
            Ok(Box::pin(ack) as AckFuture)
        })
    }
}

/// The runtime's publisher on `transport`: domains first seen at publish time get their stream.
pub(crate) fn publisher<T: Transport>(transport: T) -> Arc<dyn DynPublish> {
    Arc::new(crate::transport::Provisioner::new(transport))
}

/// Who a [`Context`] runs for: the same for every message of one handler (or saga step), built
/// once and shared, so that a context per message clones one `Arc`, not five.
pub(crate) struct Runs {
    handler: Arc<str>,
    publisher: Arc<dyn DynPublish>,
    /// The handler set, the handler's name, and the service's log of observed publishes (for
    /// the topology).
    observer: Option<(Arc<str>, Arc<str>, Arc<PublishLog>)>,
    /// The publish metrics of the first domain published into (nearly always the only one), so
    /// that a publish records into handles; a publish into another domain registers its own.
    metrics: OnceLock<(Box<str>, monitor::PublishMetrics)>,
}

impl Runs {
    /// Contexts of `handler` publishing through `publisher`.
    pub(crate) fn new(handler: Arc<str>, publisher: Arc<dyn DynPublish>) -> Self {
        Self {
            handler,
            publisher,
            observer: None,
            metrics: OnceLock::new(),
        }
    }

    /// Counts a publish to `subject` (`cim_published_total`, `cim_publish_duration_seconds`, by the
    /// subject's domain and this handler).
    fn published(&self, subject: &Subject, result: &Result<PublishAck, TransportError>, elapsed: Duration) {
        let outcome = match result {
            Ok(ack) if ack.duplicate => monitor::PublishOutcome::Duplicate,
            Ok(_) => monitor::PublishOutcome::Ok,
            Err(_) => monitor::PublishOutcome::Error,
        };
        let domain = subject.first_token();
        let (first, metrics) = self
            .metrics
            .get_or_init(|| (domain.into(), monitor::PublishMetrics::new(domain, &self.handler)));
        if **first == *domain {
            metrics.record(outcome, elapsed);
        } else {
            monitor::PublishMetrics::new(domain, &self.handler).record(outcome, elapsed);
        }
    }

    /// Records a publish for the topology (the log keeps each subject and event type once).
    fn observe(&self, subject: &Subject, event_type: &str) {
        if let Some((set, handler, log)) = &self.observer {
            log.record(set, handler, subject.as_str(), event_type);
        }
    }

    /// Records the contexts' publishes in `log` as made by `handler` of the handler set `set`.
    pub(crate) fn observed_by(mut self, set: Arc<str>, handler: Arc<str>, log: Arc<PublishLog>) -> Self {
        self.observer = Some((set, handler, log));
        self
    }
}

struct Inner {
    identity: Identity,
    subject: Subject,
    occurred: Timestamp,
    delivered: u64,
    runs: Arc<Runs>,
    /// The scope message ids of publishes are derived from, if not the handler's name: a finer
    /// key (a saga step's idempotency key) when the label must stay bounded and the ids unique.
    scope: Option<Arc<str>>,
    published: AtomicU32,
    /// Headers a pipeline layer asked to carry into every publish.
    propagated: Vec<(String, String)>,
    /// Acknowledgements of [`Context::emit`]s, awaited together once the handler returned.
    emitted: std::sync::Mutex<Vec<Emitted>>,
}

/// The handler's view of the message it handles, and its way to publish.
///
/// Messages published through the context are caused by the handled message: they keep its
/// correlation id and take its message id as causation id. Their own message ids are derived from
/// (handled message id, handler, n-th publish), so a handler that runs again for the same message
/// (after a crash before its de-duplication mark was stored) re-publishes the same ids, and the
/// stream's duplicate window drops them.
#[derive(Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("handler", &self.inner.runs.handler)
            .field("subject", &self.inner.subject)
            .field("identity", &self.inner.identity)
            .field("delivered", &self.inner.delivered)
            .finish_non_exhaustive()
    }
}

impl Context {
    /// The context for handling `envelope` (its `delivered`-th delivery) as `runs` says.
    pub(crate) fn running(envelope: &Envelope, delivered: u64, runs: Arc<Runs>) -> Self {
        Self::of(
            *envelope.identity(),
            envelope.subject().clone(),
            envelope.occurred(),
            delivered,
            runs,
            None,
        )
    }

    /// [`running`](Self::running) from the parts of the envelope it reads, with the scope its
    /// message ids are derived from if not the handler's name.
    fn of(
        identity: Identity,
        subject: Subject,
        occurred: Timestamp,
        delivered: u64,
        runs: Arc<Runs>,
        scope: Option<Arc<str>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                identity,
                subject,
                occurred,
                delivered,
                runs,
                scope,
                published: AtomicU32::new(0),
                propagated: Vec::new(),
                emitted: std::sync::Mutex::new(Vec::new()),
            }),
        }
    }

    /// Carries `headers` into every message published through this context.
    pub(crate) fn propagating(mut self, headers: &[(String, String)]) -> Self {
        if !headers.is_empty()
            && let Some(inner) = Arc::get_mut(&mut self.inner)
        {
            inner.propagated = headers.to_vec();
        }
        self
    }

    /// A context for calling a handler directly (in a unit test, or from a saga), publishing to
    /// `transport` as if handling `envelope` as `handler`.
    pub fn detached<T: Transport>(transport: T, envelope: &Envelope, handler: &str) -> Self {
        Self::running(
            envelope,
            1,
            Arc::new(Runs::new(Arc::from(handler), publisher(transport))),
        )
    }

    /// A detached context (a saga step's) for a message of `identity` on `subject` at
    /// `occurred`, labelled as `runs` says (its handler name in metrics, spans and logs: bounded,
    /// never an id), whose published message ids are derived from `scope` (a per-instance key,
    /// so a re-run re-publishes the same ids).
    pub(crate) fn scoped(
        identity: Identity,
        subject: Subject,
        occurred: Timestamp,
        runs: Arc<Runs>,
        scope: Arc<str>,
    ) -> Self {
        Self::of(identity, subject, occurred, 1, runs, Some(scope))
    }

    /// The handled message's identity.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }
    /// The handled message's id: the key for making side effects idempotent.
    pub fn message_id(&self) -> MessageId {
        self.inner.identity.message_id
    }
    /// The conversation's correlation id.
    pub fn correlation_id(&self) -> CorrelationId {
        self.inner.identity.correlation_id
    }
    /// The handled message's causation id.
    pub fn causation_id(&self) -> CausationId {
        self.inner.identity.causation_id
    }
    /// The handled message's subject.
    pub fn subject(&self) -> &Subject {
        &self.inner.subject
    }
    /// When the handled event occurred.
    pub fn occurred(&self) -> Timestamp {
        self.inner.occurred
    }
    /// How many times this message has been delivered to this handler (1 the first time).
    pub fn delivered(&self) -> u64 {
        self.inner.delivered
    }
    /// The handler's name.
    pub fn handler(&self) -> &str {
        &self.inner.runs.handler
    }

    /// Publishes `event` as a message caused by the handled one (same correlation id, the handled
    /// message as causation), and waits for the stream's acknowledgement.
    ///
    /// `event` is any current version of a `#[domain_event]` (see [`Publishable`]).
    pub fn publish(
        &self,
        event: &dyn Publishable,
    ) -> impl Future<Output = Result<PublishAck, PublishError>> + Send + use<'_> {
        self.publish_typed(event, false)
    }

    /// [`publish`](Self::publish) (`root` false) or [`publish_root`](Self::publish_root).
    fn publish_typed(
        &self,
        event: &dyn Publishable,
        root: bool,
    ) -> impl Future<Output = Result<PublishAck, PublishError>> + Send + use<'_> {
        let out = Outgoing::of(event);
        async move {
            let payload = out.payload?;
            if root {
                self.publish_root_bytes(&out.subject, out.event_type, out.version, payload)
                    .await
            } else {
                self.publish_bytes(&out.subject, out.event_type, out.version, payload)
                    .await
            }
        }
    }

    /// Publishes `event` as [`publish`](Self::publish) does, without waiting for the stream's
    /// acknowledgement: the runtime awaits the acknowledgements of every `emit` together once the
    /// handler returned, before the handled message is acknowledged. A handler that publishes
    /// k events this way pays about one round trip, not k. If one of them is not acknowledged,
    /// the handler's run failed and is retried (transiently, or dead-lettered if it can never
    /// succeed); the retried run re-publishes the same ids, which the stream's duplicate window
    /// drops.
    ///
    /// Outside a handler run by the runtime (a [`detached`](Self::detached) context), call
    /// [`flush`](Self::flush) to await them.
    pub fn emit(&self, event: &dyn Publishable) -> impl Future<Output = Result<(), PublishError>> + Send + use<'_> {
        self.emit_encoded(Outgoing::of(event))
    }

    async fn emit_encoded(&self, out: Outgoing) -> Result<(), PublishError> {
        let Outgoing {
            subject,
            event_type,
            version,
            payload,
        } = out;
        let envelope = self.child(&subject, event_type, version, payload?);
        let ack = self.inner.runs.publisher.publish(envelope.into()).await?;
        self.inner.runs.observe(&subject, event_type);
        let start = tokio::time::Instant::now();
        self.inner
            .emitted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Emitted { ack, subject, start });
        Ok(())
    }

    /// Awaits the acknowledgements of every [`emit`](Self::emit) so far, together; the first
    /// failure is returned (the others were still awaited).
    pub async fn flush(&self) -> Result<(), PublishError> {
        // Every emit counts a publish before it leaves its acknowledgement, and was awaited
        // before this call (which orders its writes before this read): none counted, none left.
        if self.inner.published.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        let pending = std::mem::take(
            &mut *self
                .inner
                .emitted
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        if pending.is_empty() {
            return Ok(());
        }
        let runs = &self.inner.runs;
        let results = futures::future::join_all(pending.into_iter().map(|e| async move {
            let result = e.ack.await;
            runs.published(&e.subject, &result, e.start.elapsed());
            result
        }))
        .await;
        match results.into_iter().find_map(Result::err) {
            Some(e) => Err(PublishError::Transport(e)),
            None => Ok(()),
        }
    }

    /// Publishes `event` as the root of a new conversation (a fresh correlation id).
    pub fn publish_root(
        &self,
        event: &dyn Publishable,
    ) -> impl Future<Output = Result<PublishAck, PublishError>> + Send + use<'_> {
        self.publish_typed(event, true)
    }

    /// Publishes raw payload bytes as a message caused by the handled one, and waits for the
    /// stream's acknowledgement.
    pub async fn publish_bytes(
        &self,
        subject: &Subject,
        event_type: &str,
        version: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishAck, PublishError> {
        let envelope = self.child(subject, event_type, version, payload.into());
        self.send(subject, event_type, envelope).await
    }

    /// The next message caused by the handled one, with its id derived from (handled message id,
    /// scope, n-th publish) and the propagated headers. Nothing of the delivery (its time, its
    /// stream position) goes into the id: every delivery of the message, and every stored copy
    /// of it, re-publishes the same ids.
    fn child(&self, subject: &Subject, event_type: &str, version: &str, payload: Bytes) -> Envelope {
        let n = self.inner.published.fetch_add(1, Ordering::Relaxed);
        let scope = self.inner.scope.as_deref().unwrap_or(&self.inner.runs.handler);
        let identity = self.inner.identity.stable_child(scope, n);
        let envelope = Envelope::with_identity(identity, subject.clone(), payload).typed(event_type, version);
        self.with_propagated(envelope)
    }

    /// Publishes raw payload bytes as the root of a new conversation (a fresh correlation id).
    pub async fn publish_root_bytes(
        &self,
        subject: &Subject,
        event_type: &str,
        version: &str,
        payload: impl Into<Bytes>,
    ) -> Result<PublishAck, PublishError> {
        let envelope = Envelope::root(subject.clone(), payload).typed(event_type, version);
        self.send(subject, event_type, self.with_propagated(envelope)).await
    }

    fn with_propagated(&self, mut envelope: Envelope) -> Envelope {
        for (name, value) in &self.inner.propagated {
            // Checked when the layer asked for it; a header the envelope refuses is left out.
            envelope = match envelope.clone().header(name, value.clone()) {
                Ok(e) => e,
                Err(_) => envelope,
            };
        }
        envelope
    }

    /// Publishes inside a `publish` span, counts it (`cim_published_total`, by the subject's
    /// domain and the publishing handler) and records it for the topology.
    async fn send(&self, subject: &Subject, event_type: &str, envelope: Envelope) -> Result<PublishAck, PublishError> {
        let span = monitor::publish_span(envelope.subject(), envelope.identity(), &self.inner.runs.handler);
        let start = tokio::time::Instant::now();
        // Built inside the `publish` span: with `otel`, its `traceparent` names that span.
        let message = span.in_scope(|| OutboundMessage::from(envelope));
        let result = self
            .inner
            .runs
            .publisher
            .publish_and_wait(message)
            .instrument(span)
            .await;
        self.inner.runs.published(subject, &result, start.elapsed());
        self.inner.runs.observe(subject, event_type);
        Ok(result?)
    }
}

/// What a typed publish sends, read from the event before the returned future (which so does
/// not borrow the event, nor depend on its type).
struct Outgoing {
    subject: Subject,
    event_type: &'static str,
    version: &'static str,
    payload: Result<Bytes, PublishError>,
}

impl Outgoing {
    fn of(event: &dyn Publishable) -> Self {
        let event_type = event.published_type();
        Self {
            subject: event.published_subject(),
            event_type,
            version: event.published_version(),
            payload: event.encode_published().map_err(|e| PublishError::Encode {
                event_type: event_type.to_owned(),
                reason: e.to_string(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::Topology;
    use crate::transport::memory::MemoryTransport;

    /// Repeated publishes are recorded once, and a handler publishing to many subjects has every
    /// one recorded, under every event type it published to them.
    #[test]
    fn every_publication_reaches_the_log_once() {
        let log = Arc::new(PublishLog::default());
        let runs = Runs::new(Arc::from("docs-h"), publisher(MemoryTransport::new())).observed_by(
            Arc::from("docs"),
            Arc::from("h"),
            log.clone(),
        );
        let subjects: Vec<Subject> = (0..72)
            .map(|i| Subject::new(format!("doc.e{i}")).expect("subject"))
            .collect();
        for _ in 0..3 {
            for s in &subjects {
                runs.observe(s, "DocEvent");
            }
        }
        // Another type on a known subject reaches the log too (where the topology keeps one type
        // per publication, the latest); read below from the log itself.
        runs.observe(&subjects[0], "OtherEvent");
        assert!(log.contains("docs", "h", "doc.e0", "OtherEvent"));
        assert!(log.contains("docs", "h", "doc.e71", "DocEvent"));
        assert_eq!(log.recorded(), subjects.len() + 1);
        let mut t = Topology::new();
        log.apply(&mut t);
        let seen: Vec<(&str, Option<&str>)> = t
            .publications()
            .map(|p| (p.subject.as_str(), p.type_name.as_deref()))
            .collect();
        assert_eq!(seen.len(), subjects.len(), "{seen:?}");
        for s in &subjects {
            assert!(seen.contains(&(s.as_str(), Some("DocEvent"))), "{s}: {seen:?}");
        }
        assert!(
            t.publications()
                .all(|p| p.participant == "docs" && p.handler.as_deref() == Some("h"))
        );
    }
}
