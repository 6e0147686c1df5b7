//! W3C trace context (feature `otel`): work that starts from stored state is linked to the trace
//! it was stored in, not parented on it; a delivery that continues a conversation is parented.
//!
//! - A saga started in one trace whose runner crashed, resumed by a fresh runner in another
//!   trace: every step span of the resume links to the start's trace.
//! - A delivery carrying `X-Redrive-Count` (a redriven dead letter) links to the `traceparent`
//!   it carries; the same message without it is that span's child.
//!
//! One test in this binary: it installs the global `tracing` subscriber.

use cim_integrate::event::DomainEvent;
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::saga::conformance::{Order, Shop};
use cim_integrate::saga::{Moment, SagaError, SagaRunner, Write};
use cim_integrate::service::Service;
use cim_integrate::trace_context::TraceParent;
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::transport::{OutboundMessage, Transport};
use cim_integrate::{domain_event, handlers};
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SpanData};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;
mod otel_support;
use otel_support::attribute;

#[domain_event(subject = "ledger.booked", version = "1.0")]
#[derive(Debug, Clone)]
pub struct Booked {
    pub n: u32,
}

struct Ledger {
    handled: Arc<AtomicU32>,
}

#[handlers(domain = "audit")]
impl Ledger {
    #[subscribe("ledger.booked")]
    async fn on_booked(&self, _ctx: &Context, _event: Booked) -> Result<(), HandlerError> {
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn linked_traces(span: &SpanData) -> Vec<TraceId> {
    span.links.iter().map(|l| l.span_context.trace_id()).collect()
}

async fn spans_until(exporter: &InMemorySpanExporter, what: &str, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let spans = exporter.get_finished_spans().expect("spans");
        if done(&spans) {
            return spans;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_state_is_linked_and_live_deliveries_are_parented() {
    let exporter = otel_support::install();

    // A saga whose runner dies right after the first step is recorded, then resumed elsewhere.
    let t = MemoryTransport::new();
    let shop = Shop::default();
    let crashing = SagaRunner::builder(t.clone(), shop.clone())
        .instance("node-1")
        .fault_hook(|p| p.write == Write::StepCompleted && p.step == Some("validate") && p.moment == Moment::After)
        .build()
        .await
        .expect("runner");
    let crashed = crashing
        .start("o-1", Order::default())
        .instrument(tracing::info_span!("start"))
        .await;
    assert!(matches!(crashed, Err(SagaError::Crashed(_))), "{crashed:?}");
    let resumer = SagaRunner::builder(t.clone(), shop.clone())
        .instance("node-1")
        .build()
        .await
        .expect("runner");
    resumer
        .resume_saga("o-1")
        .instrument(tracing::info_span!("resume"))
        .await
        .expect("resumed");
    let spans = spans_until(&exporter, "the resume span", |s| s.iter().any(|s| s.name == "resume")).await;
    let trace_of = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no {name} span"))
            .span_context
            .trace_id()
    };
    let (start, resume) = (trace_of("start"), trace_of("resume"));
    assert_ne!(start, resume);
    let resumed_steps: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "saga_step" && s.span_context.trace_id() == resume)
        .collect();
    let names: Vec<String> = resumed_steps.iter().filter_map(|s| attribute(s, "step")).collect();
    assert!(
        names.iter().any(|n| n == "reserve"),
        "the resume ran the steps after validate: {names:?}"
    );
    for s in &resumed_steps {
        assert_eq!(
            linked_traces(s),
            [start],
            "step {:?} of the resume",
            attribute(s, "step")
        );
    }
    // The step's work (its `handle` span) stays inside the step's span, in the resume's trace.
    let by_id: std::collections::HashMap<SpanId, &SpanData> =
        spans.iter().map(|s| (s.span_context.span_id(), s)).collect();
    let step_work: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "handle" && attribute(s, "kind").as_deref() == Some("saga_step"))
        .collect();
    assert!(!step_work.is_empty());
    for s in &step_work {
        assert_eq!(by_id.get(&s.parent_span_id).map(|p| &*p.name), Some("saga_step"));
    }
    let first_steps: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "saga_step" && s.span_context.trace_id() == start)
        .collect();
    assert!(!first_steps.is_empty());
    for s in &first_steps {
        assert!(s.links.is_empty(), "a step of the start's own trace links to nothing");
    }

    // A delivery: parented on its traceparent; with `X-Redrive-Count`, linked to it instead.
    let handled = Arc::new(AtomicU32::new(0));
    let service = Service::builder(t.clone(), "audit")
        .register(Ledger {
            handled: handled.clone(),
        })
        .start()
        .await
        .expect("service");
    let earlier = TraceParent::parse("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
    for (n, redriven) in [(1, false), (2, true)] {
        let envelope = Booked { n }.to_envelope().expect("encode");
        let mut message = OutboundMessage::from(&envelope);
        message
            .headers
            .insert("traceparent", earlier.to_string())
            .expect("header");
        if redriven {
            message.headers.insert("X-Redrive-Count", "1").expect("header");
        }
        t.publish(message).await.expect("publish").await.expect("stored");
    }
    let spans = spans_until(&exporter, "both handled", |s| {
        handled.load(Ordering::SeqCst) == 2
            && s.iter()
                .filter(|s| s.name == "handle" && attribute(s, "kind").as_deref() == Some("event"))
                .count()
                >= 2
    })
    .await;
    let handles: Vec<&SpanData> = spans
        .iter()
        .filter(|s| s.name == "handle" && attribute(s, "kind").as_deref() == Some("event"))
        .collect();
    assert_eq!(handles.len(), 2);
    let earlier_trace = TraceId::from_bytes(earlier.trace_id);
    let earlier_span = SpanId::from_bytes(earlier.parent_id);
    let live = handles
        .iter()
        .find(|s| s.span_context.trace_id() == earlier_trace)
        .expect("the live delivery continues the trace it carries");
    assert_eq!(live.parent_span_id, earlier_span);
    assert!(live.parent_span_is_remote);
    assert!(live.links.is_empty());
    let redriven = handles
        .iter()
        .find(|s| s.span_context.trace_id() != earlier_trace)
        .expect("the redriven delivery starts a trace of its own");
    assert_eq!(redriven.parent_span_id, SpanId::INVALID);
    assert_eq!(
        redriven
            .links
            .iter()
            .map(|l| (l.span_context.trace_id(), l.span_context.span_id()))
            .collect::<Vec<_>>(),
        [(earlier_trace, earlier_span)]
    );
    service.shutdown(Duration::from_secs(5)).await;
}
