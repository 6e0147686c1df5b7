//! Monitoring end to end through `Service` on the in-memory transport: every handler run and
//! every publish is in a span carrying the correlation id (checked with a capturing subscriber),
//! and the metrics are counted by outcome, source and target domain (checked with the debugging
//! recorder of `metrics-util`).

use cim_integrate_runtime::breaker::BreakerSettings;
use cim_integrate_runtime::dedup::{DedupCheck, DedupStore, KvDedup};
use cim_integrate_runtime::handler::{Context, HandlerError, HandlerOptions, Registration, RetryPolicy};
use cim_integrate_runtime::monitor::{self, IntegrationPoint};
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::transport::memory::MemoryTransport;
use cim_integrate_runtime::transport::{KvSpec, StreamSpec, Transport};
use cim_integrate_runtime::{Envelope, Identity, Subject, SubjectPattern};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

// ---------------------------------------------------------------------------------------------
// A small scenario: document -> workflow (publishes workflow.started) -> notification.

fn decode(payload: &[u8]) -> Result<u32, std::num::ParseIntError> {
    std::str::from_utf8(payload).unwrap_or_default().parse()
}

fn pattern(p: &str) -> SubjectPattern {
    SubjectPattern::new(p).expect("pattern")
}

fn subject(s: &str) -> Subject {
    Subject::new(s).expect("subject")
}

fn fast() -> HandlerOptions {
    HandlerOptions {
        retry: RetryPolicy::attempts(2).backoff(Duration::from_millis(100), 1, Duration::from_millis(100)),
        concurrency: 1,
        ..HandlerOptions::default()
    }
}

/// workflow.start_review: logs, then publishes `workflow.started` (caused by the document).
fn start_review() -> Registration {
    Registration::new(
        "start_review",
        pattern("document.created"),
        "DocumentCreated",
        decode,
        |ctx: Context, n: u32| async move {
            tracing::info!(n, "starting review");
            ctx.publish_bytes(&subject("workflow.started"), "WorkflowStarted", "1.0", n.to_string())
                .await?;
            Ok(())
        },
    )
    .with_options(fast())
}

/// notification.notify: logs; fails permanently for 13 and transiently (once) for 7.
fn notify(runs: &Arc<AtomicU32>) -> Registration {
    let runs = runs.clone();
    Registration::new(
        "notify",
        pattern("workflow.*"),
        "WorkflowStarted",
        decode,
        move |ctx: Context, n: u32| {
            let runs = runs.clone();
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                tracing::info!(n, "notifying");
                match n {
                    13 => Err(HandlerError::permanent("no recipient")),
                    7 if ctx.delivered() == 1 => Err(HandlerError::transient("mail server busy")),
                    _ => Ok(()),
                }
            }
        },
    )
    .with_options(HandlerOptions {
        breaker: Some(BreakerSettings::new(5, Duration::from_secs(60), Duration::from_secs(5))),
        ..fast()
    })
}

async fn setup() -> MemoryTransport {
    let t = MemoryTransport::new();
    for domain in ["document", "workflow"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None).expect("spec"))
            .await
            .expect("stream");
    }
    t
}

async fn publish(t: &MemoryTransport, n: u32) -> Envelope {
    let env = Envelope::root(subject("document.created"), n.to_string()).typed("DocumentCreated", "1.0");
    t.publish_and_wait((&env).into()).await.expect("publish");
    env
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// Spans

/// A span as the capturing layer saw it: name, target and fields.
#[derive(Debug, Clone)]
struct SpanRecord {
    name: &'static str,
    target: &'static str,
    fields: BTreeMap<String, String>,
}

/// An event with the fields of every span around it, innermost first.
#[derive(Debug, Clone)]
struct EventRecord {
    message: String,
    scope: Vec<SpanRecord>,
}

#[derive(Default, Clone)]
struct Captured {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    events: Arc<Mutex<Vec<EventRecord>>>,
}

struct Fields(BTreeMap<String, String>);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Captured {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: LayerContext<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        attrs.record(&mut fields);
        let record = SpanRecord {
            name: attrs.metadata().name(),
            target: attrs.metadata().target(),
            fields: fields.0,
        };
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(record.clone());
        }
        self.spans.lock().expect("lock").push(record);
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut fields = Fields(BTreeMap::new());
        event.record(&mut fields);
        let scope = ctx
            .event_scope(event)
            .map(|scope| {
                scope
                    .filter_map(|span| span.extensions().get::<SpanRecord>().cloned())
                    .collect()
            })
            .unwrap_or_default();
        self.events.lock().expect("lock").push(EventRecord {
            message: fields.0.remove("message").unwrap_or_default(),
            scope,
        });
    }
}

fn field<'a>(span: &'a SpanRecord, name: &str) -> &'a str {
    span.fields.get(name).map(String::as_str).unwrap_or_default()
}

/// One capturing subscriber for the whole test binary, installed globally once. A scoped
/// (`set_default`) subscriber races with tracing's global callsite-interest cache while other
/// tests run on other threads, and a span can then go unrecorded; so tests share this one and
/// find their own spans and events by correlation id or by names no other test uses.
fn captured() -> Captured {
    static GLOBAL: std::sync::OnceLock<Captured> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let c = Captured::default();
            let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry().with(c.clone()));
            c
        })
        .clone()
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn spans_carry_the_correlation_id_through_a_cascade() {
    let captured = captured();

    let t = setup().await;
    let runs = Arc::new(AtomicU32::new(0));
    let svc = Service::builder(t.clone(), "cascade")
        .handler("workflow", start_review())
        .handler("notification", notify(&runs))
        .start()
        .await
        .expect("start");
    let root = publish(&t, 1).await;
    wait_until("the notification", || runs.load(Ordering::SeqCst) == 1).await;
    svc.shutdown(Duration::from_secs(1)).await;

    let correlation = root.correlation_id().to_string();
    let spans = captured.spans.lock().expect("lock").clone();
    let handle_review = spans
        .iter()
        .find(|s| {
            s.name == "handle"
                && field(s, "handler") == "workflow-start_review"
                && field(s, "correlation_id") == correlation
        })
        .expect("handle span of start_review");
    assert_eq!(field(handle_review, "correlation_id"), correlation);
    assert_eq!(field(handle_review, "message_id"), root.message_id().to_string());
    assert_eq!(field(handle_review, "subject"), "document.created");
    // The stable target a filter names, whatever module opens the span.
    assert_eq!(handle_review.target, cim_integrate_runtime::monitor::HANDLE_TARGET);

    let publish = spans
        .iter()
        .find(|s| s.name == "publish" && field(s, "correlation_id") == correlation)
        .expect("publish span");
    assert_eq!(field(publish, "subject"), "workflow.started");
    assert_eq!(field(publish, "handler"), "workflow-start_review");
    assert_eq!(field(publish, "correlation_id"), correlation);
    assert_eq!(field(publish, "causation_id"), root.message_id().to_string());
    assert_eq!(publish.target, cim_integrate_runtime::monitor::PUBLISH_TARGET);

    let handle_notify = spans
        .iter()
        .find(|s| {
            s.name == "handle"
                && field(s, "handler") == "notification-notify"
                && field(s, "correlation_id") == correlation
        })
        .expect("handle span of notify");
    assert_eq!(field(handle_notify, "correlation_id"), correlation);
    assert_eq!(field(handle_notify, "message_id"), field(publish, "message_id"));

    // What handlers log is inside those spans: one correlation id finds the whole conversation.
    let events = captured.events.lock().expect("lock").clone();
    for message in ["starting review", "notifying"] {
        let e = events
            .iter()
            .find(|e| {
                e.message == message
                    && e.scope
                        .iter()
                        .any(|s| s.name == "handle" && field(s, "correlation_id") == correlation)
            })
            .unwrap_or_else(|| panic!("event {message:?} inside a handle span of this conversation in {events:#?}"));
        let handle = e
            .scope
            .iter()
            .find(|s| s.name == "handle")
            .expect("inside a handle span");
        assert_eq!(field(handle, "correlation_id"), correlation, "{message}");
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn integration_points_get_a_span_with_the_identity() {
    let captured = captured();
    let identity = Identity::root();
    let point = IntegrationPoint::new("saga_step", "publishing.index")
        .source("document")
        .target("search");
    let r: Result<(), &str> = point
        .observe(&subject("document.published"), &identity, async {
            tracing::info!("indexing");
            Ok(())
        })
        .await;
    assert!(r.is_ok());
    let events = captured.events.lock().expect("lock").clone();
    let span = &events.iter().find(|e| e.message == "indexing").expect("event").scope[0];
    assert_eq!(span.name, "integration");
    assert_eq!(field(span, "kind"), "saga_step");
    assert_eq!(field(span, "name"), "publishing.index");
    assert_eq!(field(span, "correlation_id"), identity.correlation_id.to_string());
    assert_eq!(field(span, "target_domain"), "search");
}

// ---------------------------------------------------------------------------------------------
// Metrics

/// `name{labels}` -> value, for every metric of the snapshot.
fn metrics_by_key(snapshotter: &Snapshotter) -> BTreeMap<String, DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let key = key.key();
            let mut labels: Vec<String> = key.labels().map(|l| format!("{}={}", l.key(), l.value())).collect();
            labels.sort();
            (format!("{}{{{}}}", key.name(), labels.join(",")), value)
        })
        .collect()
}

fn counter(all: &BTreeMap<String, DebugValue>, key: &str) -> u64 {
    match all.get(key) {
        Some(DebugValue::Counter(n)) => *n,
        other => panic!("counter {key}: {other:?}; have: {:#?}", all.keys().collect::<Vec<_>>()),
    }
}

fn histogram_len(all: &BTreeMap<String, DebugValue>, key: &str) -> usize {
    match all.get(key) {
        Some(DebugValue::Histogram(v)) => v.len(),
        other => panic!(
            "histogram {key}: {other:?}; have: {:#?}",
            all.keys().collect::<Vec<_>>()
        ),
    }
}

const NOTIFY: &str =
    "event_type=WorkflowStarted,handler=notification-notify,source_domain=workflow,target_domain=notification";
const REVIEW: &str =
    "event_type=DocumentCreated,handler=workflow-start_review,source_domain=document,target_domain=workflow";

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn metrics_are_counted_by_outcome_and_domain() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Thread-local: the current-thread runtime runs every task of the service on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let t = setup().await;
    // A de-duplication store the test can pre-mark, to get one de-duplication hit; read on
    // every delivery (by default a first delivery to a durable that counts every delivery is
    // not checked, and a mark made by hand before it would not be seen).
    let kv = t.key_value(&KvSpec::new("marks")).await.expect("kv");
    let runs = Arc::new(AtomicU32::new(0));
    let svc = Service::builder(t.clone(), "cascade")
        .dedup_store(KvDedup::new(kv.clone()))
        .dedup_check(DedupCheck::Always)
        .handler("workflow", start_review())
        .handler("notification", notify(&runs))
        .start()
        .await
        .expect("start");

    // 1: handled by both. 7: notify fails once, then succeeds (a retry, a redelivery).
    // 13: notify dead-letters it. 2: already marked for start_review (a duplicate).
    let marked = Envelope::root(subject("document.created"), "2").typed("DocumentCreated", "1.0");
    KvDedup::new(kv)
        .mark("workflow-start_review", marked.message_id())
        .await
        .expect("mark");
    for n in [1, 7, 13] {
        publish(&t, n).await;
    }
    t.publish_and_wait((&marked).into()).await.expect("publish");
    wait_until("every outcome", || {
        svc.handler_stats("notification-notify")
            .is_some_and(|s| s.succeeded == 2 && s.dead_lettered == 1)
            && svc
                .handler_stats("workflow-start_review")
                .is_some_and(|s| s.duplicates == 1)
    })
    .await;
    svc.shutdown(Duration::from_secs(1)).await;

    let all = metrics_by_key(&snapshotter);
    // Keys list labels sorted by name: event_type, handler, outcome, source_domain, target_domain.
    let sorted = |labels: &str, extra: &str| {
        let mut v: Vec<&str> = labels.split(',').chain(std::iter::once(extra)).collect();
        v.sort_unstable();
        v.join(",")
    };
    let messages = |labels: &str, o: &str| {
        counter(
            &all,
            &format!(
                "{}{{{}}}",
                monitor::HANDLER_MESSAGES,
                sorted(labels, &format!("outcome={o}"))
            ),
        )
    };
    assert_eq!(messages(REVIEW, "succeeded"), 3);
    assert_eq!(messages(REVIEW, "duplicate"), 1);
    assert_eq!(messages(REVIEW, "dead_lettered"), 0);
    assert_eq!(messages(NOTIFY, "succeeded"), 2);
    assert_eq!(messages(NOTIFY, "retried"), 1);
    assert_eq!(messages(NOTIFY, "dead_lettered"), 1);
    assert_eq!(messages(NOTIFY, "deferred"), 0);
    assert_eq!(
        counter(
            &all,
            &format!("{}{{{}}}", monitor::DEAD_LETTERS, sorted(NOTIFY, "reason=permanent"))
        ),
        1
    );
    assert_eq!(
        counter(&all, &format!("{}{{{NOTIFY}}}", monitor::HANDLER_REDELIVERIES)),
        1
    );
    // Every run is timed: 3 of start_review, 4 of notify (1, 7 twice, 13).
    assert_eq!(
        histogram_len(&all, &format!("{}{{{REVIEW}}}", monitor::HANDLER_DURATION)),
        3
    );
    assert_eq!(
        histogram_len(&all, &format!("{}{{{NOTIFY}}}", monitor::HANDLER_DURATION)),
        4
    );
    // Publishes from start_review, by the published subject's domain.
    let publisher = "publisher=workflow-start_review,source_domain=workflow";
    assert_eq!(
        counter(&all, &format!("{}{{outcome=ok,{publisher}}}", monitor::PUBLISHED)),
        3
    );
    assert_eq!(
        histogram_len(&all, &format!("{}{{{publisher}}}", monitor::PUBLISH_DURATION)),
        3
    );
    // The handler's breaker exists and is closed (gauge 0).
    let breaker_key = format!(
        "{}{{breaker=notification-notify,handler=notify,source_domain=workflow,target_domain=notification}}",
        monitor::BREAKER_STATE
    );
    assert!(
        matches!(all.get(&breaker_key), Some(DebugValue::Gauge(g)) if g.into_inner() == 0.0),
        "{breaker_key}: {:?}",
        all.get(&breaker_key)
    );
}

/// A handler publishing into two domains: the first domain's publishes are recorded through the
/// handles registered at its first publish, the second's by their own; a re-run's publishes, dropped
/// by the duplicate window, count as `duplicate`.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn publishes_are_counted_by_domain_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let t = setup().await;
    t.ensure_stream(&StreamSpec::for_domain("audit", None).expect("spec"))
        .await
        .expect("stream");
    let runs = Arc::new(AtomicU32::new(0));
    let handler = {
        let runs = runs.clone();
        Registration::new(
            "fan",
            pattern("document.created"),
            "DocumentCreated",
            decode,
            move |ctx: Context, n: u32| {
                let runs = runs.clone();
                async move {
                    ctx.publish_bytes(&subject("workflow.started"), "WorkflowStarted", "1.0", n.to_string())
                        .await?;
                    ctx.publish_bytes(&subject("audit.recorded"), "AuditRecorded", "1.0", n.to_string())
                        .await?;
                    // The first run fails after publishing: the second re-publishes the same ids.
                    if runs.fetch_add(1, Ordering::SeqCst) == 0 {
                        return Err(HandlerError::transient("once"));
                    }
                    Ok(())
                }
            },
        )
        .with_options(fast())
    };
    let svc = Service::builder(t.clone(), "counted")
        .handler("workflow", handler)
        .start()
        .await
        .expect("start");
    publish(&t, 1).await;
    wait_until("the second run", || {
        svc.handler_stats("workflow-fan").is_some_and(|s| s.succeeded == 1)
    })
    .await;
    svc.shutdown(Duration::from_secs(1)).await;

    let all = metrics_by_key(&snapshotter);
    for domain in ["workflow", "audit"] {
        let publisher = format!("publisher=workflow-fan,source_domain={domain}");
        for outcome in ["ok", "duplicate"] {
            assert_eq!(
                counter(
                    &all,
                    &format!("{}{{outcome={outcome},{publisher}}}", monitor::PUBLISHED)
                ),
                1,
                "{domain} {outcome}"
            );
        }
        assert_eq!(
            histogram_len(&all, &format!("{}{{{publisher}}}", monitor::PUBLISH_DURATION)),
            2,
            "{domain}"
        );
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn breaker_transitions_are_counted() {
    use cim_integrate_runtime::breaker::CircuitBreaker;
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);

    let b = CircuitBreaker::new(
        "crm",
        BreakerSettings::new(1, Duration::from_secs(10), Duration::from_secs(1)),
    );
    let _ = b.call(|| async { Err::<(), _>("down") }).await;
    let _ = b.call(|| async { Ok::<_, &str>(()) }).await; // refused
    tokio::time::advance(Duration::from_secs(1)).await;
    let _ = b.call(|| async { Ok::<_, &str>(()) }).await; // probe: closes

    let all = metrics_by_key(&snapshotter);
    for (from, to) in [("closed", "open"), ("open", "half_open"), ("half_open", "closed")] {
        assert_eq!(
            counter(
                &all,
                &format!("{}{{breaker=crm,from={from},to={to}}}", monitor::BREAKER_TRANSITIONS)
            ),
            1,
            "{from} -> {to}"
        );
    }
    assert_eq!(
        counter(&all, &format!("{}{{breaker=crm}}", monitor::BREAKER_REJECTED)),
        1
    );
    assert!(matches!(
        all.get(&format!("{}{{breaker=crm}}", monitor::BREAKER_STATE)),
        Some(DebugValue::Gauge(g)) if g.into_inner() == 0.0
    ));
}
