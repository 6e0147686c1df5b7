//! The topology of a multi-domain service as an artefact: rendered as Mermaid and JSON from the
//! builder (before start) and from the running service (with the publishes it observed), and
//! snapshot-tested so that a change in who publishes or subscribes shows up as a diff in review.

use cim_integrate_runtime::event::{self, DecodeError, DomainEvent, PayloadVersion, Versioned};
use cim_integrate_runtime::handler::{Context, Registration};
use cim_integrate_runtime::service::{Service, ServiceBuilder};
use cim_integrate_runtime::topology::{EventRef, ParticipantKind, TopologyWarning};
use cim_integrate_runtime::transport::memory::MemoryTransport;
use cim_integrate_runtime::transport::{StreamSpec, Transport};
use cim_integrate_runtime::{Subject, SubjectPattern};
use serde::{Deserialize, Serialize};
use std::time::Duration;

// Two versions of one event, written out as `#[domain_event]` would expand them.

#[derive(Debug, Serialize, Deserialize)]
struct DocumentCreatedV1 {
    title: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct DocumentCreated {
    title: String,
    pages: u32,
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self {
            title: v1.title,
            pages: 0,
        }
    }
}

impl PayloadVersion for DocumentCreatedV1 {
    const VERSION: &'static str = "1.0";
}
impl PayloadVersion for DocumentCreated {
    const VERSION: &'static str = "2.0";
}
impl Versioned for DocumentCreated {
    const TYPE_NAME: &'static str = "DocumentCreated";
    const VERSIONS: &'static [&'static str] = &["1.0", "2.0"];
    fn decode_version(version: &str, payload: &[u8]) -> Result<Option<Self>, DecodeError> {
        let oldest = event::decode_oldest::<DocumentCreatedV1>("1.0", Self::TYPE_NAME, version, payload)?;
        event::decode_step::<DocumentCreatedV1, Self>(oldest, "2.0", Self::TYPE_NAME, version, payload)
    }
}
impl DomainEvent for DocumentCreated {
    const SUBJECT: &'static str = "document.created";
}

fn pattern(p: &str) -> SubjectPattern {
    SubjectPattern::new(p).expect("pattern")
}

fn ignore(_: &[u8]) -> Result<(), std::convert::Infallible> {
    Ok(())
}

fn noop(name: &str, p: &str, event_type: &'static str) -> Registration {
    Registration::new(name, pattern(p), event_type, ignore, |_ctx: Context, ()| async {
        Ok(())
    })
}

/// workflow.start_review: declares `workflow.review_started`; at run time also publishes
/// `workflow.escalated`, which it does not declare.
fn start_review() -> Registration {
    Registration::new(
        "start_review",
        pattern("document.created"),
        DocumentCreated::TYPE_NAME,
        DocumentCreated::decode,
        |ctx: Context, doc: DocumentCreated| async move {
            let review_started = Subject::new("workflow.review_started").expect("subject");
            ctx.publish_bytes(&review_started, "ReviewStarted", "1.0", r#"{"version":"1.0"}"#)
                .await?;
            if doc.pages > 100 {
                let escalated = Subject::new("workflow.escalated").expect("subject");
                ctx.publish_bytes(&escalated, "ReviewEscalated", "1.0", r#"{"version":"1.0"}"#)
                    .await?;
            }
            Ok(())
        },
    )
    .publishes(EventRef::typed("workflow.review_started", "ReviewStarted"))
}

/// The guide's document cascade, five domains, a saga and a command handler.
fn builder(t: MemoryTransport) -> ServiceBuilder<MemoryTransport> {
    Service::builder(t, "cascade")
        .declare_event::<DocumentCreated>()
        .describe(|topology| {
            topology
                .add_participant("document", ParticipantKind::Publisher)
                .add_publication("document", None, EventRef::of::<DocumentCreated>())
                .add_publication(
                    "document",
                    None,
                    EventRef::typed("document.approved", "DocumentApproved"),
                )
                .add_participant("document_publishing", ParticipantKind::Saga)
                .add_subscription(
                    "document_publishing",
                    "start",
                    "document.approved",
                    Some("DocumentApproved"),
                )
                .add_publication(
                    "document_publishing",
                    Some("lifecycle"),
                    EventRef::typed("saga.document_publishing.completed", "SagaEvent"),
                )
                .add_command_sender(
                    "workflow",
                    Some("start_review"),
                    EventRef::typed("commands.organization.assign_reviewer", "AssignReviewer"),
                )
                .add_command_handler(
                    "organization",
                    "assign_reviewer",
                    "commands.organization.assign_reviewer",
                    Some("AssignReviewer"),
                );
        })
        .handler("workflow", start_review())
        .handler("search", noop("index", "document.*", "DocumentEvent"))
        .handler(
            "notification",
            noop("notify_reviewers", "workflow.review_started", "ReviewStarted"),
        )
        // A typo: nothing publishes `document.archive`.
        .handler(
            "notification",
            noop("on_archived", "document.archive", "DocumentArchived"),
        )
        .handler("audit", noop("record", "workflow.>", "WorkflowEvent"))
}

#[test]
fn declared_topology_as_mermaid() {
    let topology = builder(MemoryTransport::new()).topology();
    insta::assert_snapshot!(topology.to_mermaid());
}

#[test]
fn declared_topology_as_json() {
    let topology = builder(MemoryTransport::new()).topology();
    insta::assert_snapshot!(topology.to_json_pretty());
}

#[test]
fn declared_topology_warnings() {
    let warnings = builder(MemoryTransport::new()).topology().warnings();
    assert_eq!(
        warnings,
        [
            TopologyWarning::Unsubscribed {
                subject: "saga.document_publishing.completed".into(),
                publishers: vec!["document_publishing".into()],
            },
            TopologyWarning::Unmatched {
                participant: "notification".into(),
                handler: "on_archived".into(),
                pattern: "document.archive".into(),
            },
        ]
    );
    let text: Vec<String> = warnings.iter().map(ToString::to_string).collect();
    insta::assert_snapshot!(text.join("\n"));
}

/// The running service adds what its handlers actually published: `workflow.escalated`, drawn
/// dotted because nobody declared it.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn running_service_adds_observed_publishes() {
    let t = MemoryTransport::new();
    for domain in ["document", "workflow"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None).expect("spec"))
            .await
            .expect("stream");
    }
    let svc = builder(t.clone()).start().await.expect("start");
    let declared = svc.topology();
    let big = DocumentCreated {
        title: "Annual report".into(),
        pages: 240,
    };
    t.publish_and_wait(big.to_envelope().expect("encode").into())
        .await
        .expect("publish");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while svc.handler_stats("audit-record").is_none_or(|s| s.succeeded < 2) {
        assert!(tokio::time::Instant::now() < deadline, "audit did not see both events");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let observed = svc.topology();
    svc.shutdown(Duration::from_secs(1)).await;

    assert_ne!(declared, observed);
    let escalated = observed
        .publications()
        .find(|p| p.subject == "workflow.escalated")
        .expect("observed publication");
    assert!(escalated.observed && !escalated.declared);
    assert_eq!(escalated.handler.as_deref(), Some("start_review"));
    let review = observed
        .publications()
        .find(|p| p.subject == "workflow.review_started")
        .expect("declared publication");
    assert!(review.observed && review.declared);
    insta::assert_snapshot!(observed.to_mermaid());
}
