//! `#[handlers]` / `#[subscribe]` end to end with `#[domain_event]` types: the guide's cascade,
//! typed publishing with identity propagation, upcasting of an old version, and dead letters for
//! an unknown version — on the embedded transport and on a private nats-server.

use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::prelude::*;
use cim_integrate::service::{self, Service};
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::transport::{Consumer, ConsumerSpec};
use cim_integrate::{domain_event, handlers, subscribe};
use std::sync::{Arc, Mutex};
use std::time::Duration;

typed_id! {
    /// A document.
    pub struct DocumentId;
}

#[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentCreated {
    pub document_id: DocumentId,
    pub title: String,
    pub pages: u32,
}

#[domain_event(version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentCreatedV1 {
    pub document_id: DocumentId,
    pub title: String,
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self {
            document_id: v1.document_id,
            title: v1.title,
            pages: 0,
        }
    }
}

#[domain_event(subject = "workflow.started", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowStarted {
    pub document_id: DocumentId,
}

type Log = Arc<Mutex<Vec<(String, Identity, String)>>>;

struct WorkflowService {
    log: Log,
}

#[handlers(domain = "workflow")]
impl WorkflowService {
    /// The workflow domain starts an approval for every new document.
    #[subscribe("document.created", max_attempts = 3, backoff = "100ms")]
    async fn start_approval(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        self.log
            .lock()
            .unwrap()
            .push(("workflow".into(), *ctx.identity(), event.title.clone()));
        ctx.publish(&WorkflowStarted {
            document_id: event.document_id,
        })
        .await?;
        Ok(())
    }
}

struct SearchService {
    log: Log,
}

#[handlers(domain = "search")]
impl SearchService {
    #[subscribe("document.*")]
    async fn index(&self, ctx: Context, event: DocumentCreated) -> Result<(), HandlerError> {
        self.log
            .lock()
            .unwrap()
            .push(("search".into(), *ctx.identity(), format!("{} pages", event.pages)));
        Ok(())
    }
}

static AUDIT: Mutex<Vec<(String, Identity)>> = Mutex::new(Vec::new());

/// A free-function handler: generates `AuditWorkflowHandler`.
#[subscribe("workflow.started", domain = "audit", concurrency = 1)]
async fn audit_workflow(ctx: &Context, event: WorkflowStarted) -> Result<(), HandlerError> {
    AUDIT
        .lock()
        .unwrap()
        .push((event.document_id.to_string(), *ctx.identity()));
    Ok(())
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..500 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting for {what}");
}

async fn scenario<T: Transport>(t: T) {
    let log = Log::default();
    let svc = Service::builder(t.clone(), "app")
        .register(WorkflowService { log: log.clone() })
        .register(SearchService { log: log.clone() })
        .register(AuditWorkflowHandler)
        .start()
        .await
        .expect("start");

    // A current-version event, published as the root of a conversation.
    let id = DocumentId::new();
    let created = DocumentCreated {
        document_id: id,
        title: "Q3 report".into(),
        pages: 12,
    };
    let env = created.to_envelope().expect("envelope");
    t.publish_and_wait(env.clone().into()).await.expect("publish");
    // An old (1.0) payload from a not-yet-upgraded publisher: upcast on the way in.
    let old = Envelope::root(
        subject!("document.created"),
        format!(
            r#"{{"version":"1.0","document_id":"{}","title":"legacy"}}"#,
            DocumentId::new()
        ),
    );
    t.publish_and_wait(old.into()).await.expect("publish old");
    // An unknown version: dead-lettered by both subscribers, never handled.
    let future = Envelope::root(subject!("document.created"), r#"{"version":"9.0"}"#);
    t.publish_and_wait(future.into()).await.expect("publish future");

    wait_until("cascade", || log.lock().unwrap().len() == 4).await;
    wait_until("audit", || {
        AUDIT.lock().unwrap().iter().any(|(d, _)| *d == id.to_string())
    })
    .await;

    let entries = log.lock().unwrap().clone();
    let workflow: Vec<_> = entries.iter().filter(|e| e.0 == "workflow").collect();
    let search: Vec<_> = entries.iter().filter(|e| e.0 == "search").collect();
    assert_eq!(workflow.len(), 2);
    assert_eq!(search.len(), 2);
    assert!(
        search.iter().any(|e| e.2 == "0 pages"),
        "the 1.0 payload was upcast: {search:?}"
    );
    assert!(workflow.iter().any(|e| e.2 == "legacy"));

    // Identity: the audit handler saw workflow.started caused by the document event.
    let audit = AUDIT
        .lock()
        .unwrap()
        .iter()
        .find(|(d, _)| *d == id.to_string())
        .map(|(_, i)| *i)
        .expect("audit");
    assert_eq!(audit.correlation_id, env.correlation_id());
    assert_eq!(audit.causation_id.into_uuid(), env.message_id().into_uuid());

    wait_until("dead letters", || {
        let s = svc.stats();
        s.iter()
            .filter(|h| h.handler != "audit-audit_workflow")
            .all(|h| h.dead_lettered == 1)
    })
    .await;
    let dl = service::dead_letter_stream().expect("spec");
    let mut reader = t
        .consumer(&ConsumerSpec::new(
            dl.name,
            "check",
            service::dead_letter_pattern().expect("p"),
        ))
        .await
        .expect("dlq");
    let d = tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("in time")
        .expect("dlq");
    let reason = d
        .headers()
        .get(service::DEAD_LETTER_REASON)
        .unwrap_or_default()
        .to_owned();
    assert!(reason.contains(r#"unknown version "9.0""#), "{reason}");
    svc.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn handlers_on_the_embedded_transport() {
    scenario(MemoryTransport::new()).await;
}

#[tokio::test]
async fn handlers_on_nats() {
    let server = cim_integrate::testing::NatsServer::start().await.expect("nats-server");
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
    scenario(t).await;
}
