//! W3C trace context across NATS (feature `otel`), against a private nats-server: a four-domain
//! conversation (document -> workflow's handler -> a command to person -> organization's process
//! manager, whose outbox publishes -> organization's handler) started inside one span yields one
//! trace, exported by an in-memory OpenTelemetry exporter, in which
//!
//! - every span of every hop (the start, each `publish`, the `send_command`, each `handle` of an
//!   event or a command) has the trace id of the start;
//! - each `handle` span's parent is, remotely, exactly the span that published the message it
//!   handled (the parent id of that message's `traceparent`), and that span was exported;
//!
//! and a plain NATS subscriber sees a valid `traceparent` on every message of the conversation,
//! events and the command alike.
//!
//! One test in this binary: it installs the global `tracing` subscriber.

use cim_integrate::command::CommandBus;
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::prelude::*;
use cim_integrate::process::{ProcessContext, ProcessRunner};
use cim_integrate::service::Service;
use cim_integrate::testing::NatsServer;
use cim_integrate::trace_context::TraceParent;
use cim_integrate::transport::Transport;
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::{command, domain_event, handlers, process};
use futures::StreamExt;
use opentelemetry::trace::{SpanId, TraceId};
use opentelemetry_sdk::trace::SpanData;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use tracing::Instrument;
mod otel_support;
use otel_support::attribute;

#[domain_event(subject = "document.uploaded", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentUploaded {
    pub document_id: String,
}

#[domain_event(subject = "person.reviewer_assigned", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReviewerAssigned {
    pub document_id: String,
    pub person_id: String,
}

#[domain_event(subject = "organization.review_logged", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReviewLogged {
    pub document_id: String,
}

#[command(subject = "person.assign_reviewer", version = "1.0")]
#[derive(Debug, Clone)]
pub struct AssignReviewer {
    pub document_id: String,
}

/// Workflow: on an upload, asks the person domain for a reviewer.
struct Workflow {
    bus: CommandBus,
}

#[handlers(domain = "workflow")]
impl Workflow {
    #[subscribe("document.uploaded")]
    async fn on_uploaded(&self, ctx: &Context, event: DocumentUploaded) -> Result<(), HandlerError> {
        let ack = self
            .bus
            .send_caused_by(
                ctx.identity(),
                &AssignReviewer {
                    document_id: event.document_id,
                },
            )
            .await
            .map_err(|e| HandlerError::transient(e.to_string()))?;
        assert_eq!(ack, CommandAck::Accepted(()));
        Ok(())
    }
}

/// Person: assigns a reviewer.
struct People;

#[command(name = "person")]
impl People {
    async fn assign_reviewer(&self, ctx: &Context, command: AssignReviewer) -> CommandResult {
        ctx.publish(&ReviewerAssigned {
            document_id: command.document_id,
            person_id: "p-1".into(),
        })
        .await?;
        Ok(())
    }
}

/// Organization's process manager: a review per document, logged through its outbox.
#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Review {
    reviewer: String,
}

#[process(name = "review", key = document_id)]
impl Review {
    async fn reviewer_assigned(&mut self, ctx: &mut ProcessContext, e: ReviewerAssigned) -> Result<(), HandlerError> {
        self.reviewer = e.person_id;
        ctx.publish(&ReviewLogged {
            document_id: e.document_id,
        })
        .map_err(HandlerError::permanent)?;
        ctx.end();
        Ok(())
    }
}

/// Organization: acknowledges the logged review (with `emit`).
struct Organization {
    done: Arc<AtomicBool>,
}

#[domain_event(subject = "organization.review_acknowledged", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReviewAcknowledged {
    pub document_id: String,
}

#[handlers(domain = "organization")]
impl Organization {
    #[subscribe("organization.review_logged")]
    async fn on_logged(&self, ctx: &Context, event: ReviewLogged) -> Result<(), HandlerError> {
        ctx.emit(&ReviewAcknowledged {
            document_id: event.document_id,
        })
        .await?;
        self.done.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn describe(spans: &[SpanData]) -> String {
    spans
        .iter()
        .map(|s| {
            format!(
                "{} {} trace={} span={} parent={} remote={} handler={:?} message_id={:?}",
                s.name,
                attribute(s, "subject").unwrap_or_default(),
                s.span_context.trace_id(),
                s.span_context.span_id(),
                s.parent_span_id,
                s.parent_span_is_remote,
                attribute(s, "handler"),
                attribute(s, "message_id"),
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_spans_every_hop_across_four_domains() {
    let exporter = otel_support::install();

    let server = NatsServer::start().await.expect("server");
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");

    // A plain NATS subscriber on every subject of the conversation (events and commands).
    let plain = async_nats::connect(server.url()).await.expect("plain client");
    let mut wire = futures::stream::select_all(
        futures::future::join_all(
            ["document.>", "person.>", "organization.>", "commands.>"].map(|s| plain.subscribe(s)),
        )
        .await
        .into_iter()
        .map(|s| s.expect("subscribe")),
    );
    plain.flush().await.expect("flush");

    let done = Arc::new(AtomicBool::new(false));
    let services = vec![
        Service::builder(t.clone(), "workflow")
            .register(Workflow {
                bus: CommandBus::new(t.clone()).timeout(Duration::from_secs(10)),
            })
            .start()
            .await
            .expect("workflow"),
        Service::builder(t.clone(), "person")
            .commands(People)
            .start()
            .await
            .expect("person"),
        Service::builder(t.clone(), "organization")
            .process(ProcessRunner::<_, Review>::open(t.clone()).await.expect("process"))
            .register(Organization { done: done.clone() })
            .start()
            .await
            .expect("organization"),
    ];

    // The conversation starts inside one span: the trace every hop must belong to.
    let upload = tracing::info_span!("upload");
    let envelope = DocumentUploaded {
        document_id: "d-1".into(),
    }
    .to_envelope()
    .expect("encode");
    let start = envelope.identity().message_id;
    async {
        let ack = t.publish((&envelope).into()).await.expect("publish");
        ack.await.expect("stored");
    }
    .instrument(upload.clone())
    .await;
    drop(upload);

    let deadline = Instant::now() + Duration::from_secs(30);
    while !done.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the conversation did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The wire: every message of the conversation carries a valid traceparent.
    let mut seen: HashMap<String, (String, TraceParent)> = HashMap::new();
    let wire_deadline = Instant::now() + Duration::from_secs(10);
    while seen.len() < 5 {
        let next = tokio::time::timeout_at(wire_deadline.into(), wire.next())
            .await
            .unwrap_or_else(|_| panic!("only {} messages seen on the wire: {:?}", seen.len(), seen.keys()));
        let msg = next.expect("subscription open");
        let headers = msg.headers.clone().unwrap_or_default();
        let value = headers
            .get("traceparent")
            .unwrap_or_else(|| panic!("no traceparent on {} ({:?})", msg.subject, headers))
            .as_str()
            .to_owned();
        let parent = TraceParent::parse(&value).unwrap_or_else(|e| panic!("{}: {value}: {e}", msg.subject));
        let id = headers
            .get("X-Message-ID")
            .map(|v| v.as_str().to_owned())
            .unwrap_or_else(|| panic!("no message id on {}", msg.subject));
        seen.insert(id, (msg.subject.to_string(), parent));
    }
    let subjects: Vec<&str> = {
        let mut s: Vec<&str> = seen.values().map(|(s, _)| s.as_str()).collect();
        s.sort_unstable();
        s
    };
    assert_eq!(
        subjects,
        [
            "commands.person.assign_reviewer",
            "document.uploaded",
            "organization.review_acknowledged",
            "organization.review_logged",
            "person.reviewer_assigned"
        ]
    );

    for s in services {
        s.shutdown(Duration::from_secs(5)).await;
    }

    // The trace: wait for the three `handle` spans (they close when their handler has returned).
    let spans = loop {
        let spans = exporter.get_finished_spans().expect("spans");
        if spans.iter().filter(|s| s.name == "handle").count() >= 4 || Instant::now() > deadline {
            break spans;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let all = describe(&spans);
    let root = spans
        .iter()
        .find(|s| s.name == "upload")
        .unwrap_or_else(|| panic!("no upload span:\n{all}"));
    let trace: TraceId = root.span_context.trace_id();
    let by_id: HashMap<SpanId, &SpanData> = spans.iter().map(|s| (s.span_context.span_id(), s)).collect();

    let hops: Vec<&SpanData> = spans
        .iter()
        .filter(|s| ["upload", "publish", "send_command", "handle", "process_outbox"].contains(&&*s.name))
        .collect();
    for s in &hops {
        assert_eq!(s.span_context.trace_id(), trace, "a span of another trace:\n{all}");
    }
    let handles: Vec<&&SpanData> = hops.iter().filter(|s| s.name == "handle").collect();
    assert_eq!(handles.len(), 4, "one handle span per hop:\n{all}");
    for h in &handles {
        let id = attribute(h, "message_id").expect("handle spans carry the message id");
        let (subject, parent) = seen
            .get(&id)
            .unwrap_or_else(|| panic!("handled {id}, not seen on the wire:\n{all}"));
        assert_eq!(
            parent.trace_id,
            trace.to_bytes(),
            "{subject}: traceparent of another trace"
        );
        assert_eq!(
            h.parent_span_id,
            SpanId::from_bytes(parent.parent_id),
            "the handle span of {subject} is not a child of the span that published it:\n{all}"
        );
        assert!(h.parent_span_is_remote, "{subject}: the parent came over NATS");
        let publisher = by_id
            .get(&h.parent_span_id)
            .unwrap_or_else(|| panic!("the publishing span of {subject} was not exported:\n{all}"));
        assert!(
            ["upload", "publish", "send_command", "handle", "process_outbox"].contains(&&*publisher.name),
            "{subject} published from a `{}` span",
            publisher.name
        );
    }
    // The start was handled by the workflow, under the upload span itself.
    let (_, first) = &seen[&start.to_string()];
    assert_eq!(SpanId::from_bytes(first.parent_id), root.span_context.span_id());
    // The command travelled under the span that sent it.
    let command = seen
        .values()
        .find(|(s, _)| s.starts_with("commands."))
        .expect("the command on the wire");
    assert_eq!(
        by_id[&SpanId::from_bytes(command.1.parent_id)].name,
        "send_command",
        "\n{all}"
    );
    // The process manager's event left through its outbox, under the transition's handle span.
    let logged = seen
        .values()
        .find(|(s, _)| s == "organization.review_logged")
        .expect("the logged review on the wire");
    let outbox = by_id[&SpanId::from_bytes(logged.1.parent_id)];
    assert_eq!(outbox.name, "process_outbox", "\n{all}");
    assert_eq!(by_id[&outbox.parent_span_id].name, "handle", "\n{all}");
}
