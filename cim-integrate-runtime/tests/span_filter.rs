//! The per-message spans' stable targets (`monitor::HANDLE_TARGET`, `monitor::PUBLISH_TARGET`)
//! are what a subscriber's filter names to leave them out: with `cim_integrate::handle=off` the
//! handler still runs and still logs at `INFO`, no `handle` span is opened, and the `publish`
//! spans, filtered separately, are still there. Its own test binary: the filter is the global
//! subscriber's.

use cim_integrate_runtime::handler::{Context, HandlerOptions, Registration};
use cim_integrate_runtime::monitor::{HANDLE_TARGET, PUBLISH_TARGET};
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::transport::memory::MemoryTransport;
use cim_integrate_runtime::transport::{StreamSpec, Transport};
use cim_integrate_runtime::{Envelope, Subject, SubjectPattern};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};

/// An event's message and the names of the spans around it, innermost first.
type EventSeen = (String, Vec<&'static str>);

/// What the capturing layer saw: spans by (name, target), and events.
#[derive(Default, Clone)]
struct Seen {
    spans: Arc<Mutex<Vec<(&'static str, &'static str)>>>,
    events: Arc<Mutex<Vec<EventSeen>>>,
}

struct Message(String);

impl tracing::field::Visit for Message {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl<S> tracing_subscriber::Layer<S> for Seen
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: LayerContext<'_, S>) {
        let m = attrs.metadata();
        self.spans.lock().expect("lock").push((m.name(), m.target()));
    }

    fn on_event(&self, event: &tracing::Event<'_>, ctx: LayerContext<'_, S>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let scope = ctx
            .event_scope(event)
            .map(|scope| scope.map(|span| span.name()).collect())
            .unwrap_or_default();
        self.events.lock().expect("lock").push((message.0, scope));
    }
}

fn subject(s: &str) -> Subject {
    Subject::new(s).expect("subject")
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_filter_on_the_handle_target_leaves_the_spans_out_and_the_handler_logging() {
    let seen = Seen::default();
    let filter: tracing_subscriber::filter::Targets = format!("info,{HANDLE_TARGET}=off").parse().expect("filter");
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(seen.clone()).with(filter))
        .expect("the only subscriber of this test binary");

    let t = MemoryTransport::new();
    for domain in ["document", "workflow"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None).expect("spec"))
            .await
            .expect("stream");
    }
    let runs = Arc::new(AtomicU32::new(0));
    let handler = {
        let runs = runs.clone();
        Registration::new(
            "start_review",
            SubjectPattern::new("document.created").expect("pattern"),
            "DocumentCreated",
            |p: &[u8]| std::str::from_utf8(p).map(str::to_owned),
            move |ctx: Context, n: String| {
                let runs = runs.clone();
                async move {
                    tracing::info!(n, "starting review");
                    ctx.publish_bytes(&subject("workflow.started"), "WorkflowStarted", "1.0", n)
                        .await?;
                    runs.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        )
        .with_options(HandlerOptions {
            concurrency: 1,
            ..HandlerOptions::default()
        })
    };
    let svc = Service::builder(t.clone(), "filtered")
        .handler("workflow", handler)
        .start()
        .await
        .expect("start");
    let env = Envelope::root(subject("document.created"), "1").typed("DocumentCreated", "1.0");
    t.publish_and_wait((&env).into()).await.expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runs.load(Ordering::SeqCst) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the handler did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    svc.shutdown(Duration::from_secs(1)).await;

    let spans = seen.spans.lock().expect("lock").clone();
    assert!(
        !spans.iter().any(|(name, _)| *name == "handle"),
        "no handle span under `{HANDLE_TARGET}=off`: {spans:?}"
    );
    assert!(
        spans.contains(&("publish", PUBLISH_TARGET)),
        "the publish span is filtered by its own target: {spans:?}"
    );
    let events = seen.events.lock().expect("lock").clone();
    let logged = events
        .iter()
        .find(|(message, _)| message == "starting review")
        .unwrap_or_else(|| panic!("the handler's own line is still logged: {events:?}"));
    assert!(logged.1.is_empty(), "outside any span: {logged:?}");
}
