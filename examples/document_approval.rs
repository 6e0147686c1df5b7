//! Document approval: the guide's event-driven communication and cascade.
//!
//! Four domains that never call each other:
//!
//! 1. **document** publishes `document.created`;
//! 2. **workflow** starts an approval workflow and assigns a review task (`workflow.started`,
//!    `workflow.task_assigned`);
//! 3. **notification** tells the assignee (`notification.sent`);
//! 4. **person**: the assignee approves (`person.approved`);
//! 5. **workflow** completes (`workflow.completed`);
//! 6. **document** marks the document Approved (`document.approved`).
//!
//! Every message carries the correlation id of the first one; each is caused by the one before.
//!
//! ```text
//! cargo run --example document_approval                                  # embedded transport
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example document_approval   # NATS JetStream
//! ```

#[path = "support/mod.rs"]
mod support;

use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::prelude::*;
use cim_integrate::service::Service;
use cim_integrate::transport::any::AnyTransport;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Audit, Error, short};

typed_id! {
    /// A document, in every domain.
    pub struct DocumentId;
}
typed_id! {
    /// A person.
    pub struct UserId;
}
typed_id! {
    /// An approval workflow.
    pub struct WorkflowId;
}

// ---- the published language: events of each domain ---------------------------------------

#[domain_event(subject = "document.created", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentCreated {
    pub document_id: DocumentId,
    pub title: String,
    pub author: UserId,
}

#[domain_event(subject = "workflow.started", version = "1.0")]
#[derive(Debug, Clone)]
pub struct WorkflowStarted {
    pub workflow_id: WorkflowId,
    pub document_id: DocumentId,
}

#[domain_event(subject = "workflow.task_assigned", version = "1.0")]
#[derive(Debug, Clone)]
pub struct TaskAssigned {
    pub workflow_id: WorkflowId,
    pub document_id: DocumentId,
    pub assignee: UserId,
}

#[domain_event(subject = "notification.sent", version = "1.0")]
#[derive(Debug, Clone)]
pub struct NotificationSent {
    pub recipient: UserId,
    pub workflow_id: WorkflowId,
    pub message: String,
}

#[domain_event(subject = "person.approved", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ApprovalGiven {
    pub approver: UserId,
    pub workflow_id: WorkflowId,
}

#[domain_event(subject = "workflow.completed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct WorkflowCompleted {
    pub workflow_id: WorkflowId,
    pub document_id: DocumentId,
    pub approved: bool,
}

#[domain_event(subject = "document.approved", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentApproved {
    pub document_id: DocumentId,
}

// ---- workflow domain -----------------------------------------------------------------------

struct WorkflowService {
    reviewer: UserId,
    running: Mutex<HashMap<WorkflowId, DocumentId>>,
}

#[handlers(domain = "workflow")]
impl WorkflowService {
    /// A new document starts an approval workflow with one review task.
    #[subscribe("document.created")]
    async fn start_approval(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        // The workflow id is derived from the document, so a re-run starts the same workflow.
        let workflow_id = WorkflowId::from_uuid(*event.document_id.as_uuid());
        self.running.lock().unwrap().insert(workflow_id, event.document_id);
        ctx.publish(&WorkflowStarted {
            workflow_id,
            document_id: event.document_id,
        })
        .await?;
        ctx.publish(&TaskAssigned {
            workflow_id,
            document_id: event.document_id,
            assignee: self.reviewer,
        })
        .await?;
        Ok(())
    }

    /// An approval completes the workflow.
    #[subscribe("person.approved")]
    async fn complete(&self, ctx: &Context, event: ApprovalGiven) -> Result<(), HandlerError> {
        let document_id = self
            .running
            .lock()
            .unwrap()
            .remove(&event.workflow_id)
            .ok_or_else(|| HandlerError::permanent(format!("no running workflow {}", event.workflow_id)))?;
        ctx.publish(&WorkflowCompleted {
            workflow_id: event.workflow_id,
            document_id,
            approved: true,
        })
        .await?;
        Ok(())
    }
}

// ---- notification domain -------------------------------------------------------------------

struct NotificationService;

#[handlers(domain = "notification")]
impl NotificationService {
    #[subscribe("workflow.task_assigned")]
    async fn notify_assignee(&self, ctx: &Context, event: TaskAssigned) -> Result<(), HandlerError> {
        let message = format!("please review document {}", short(event.document_id));
        ctx.publish(&NotificationSent {
            recipient: event.assignee,
            workflow_id: event.workflow_id,
            message,
        })
        .await?;
        Ok(())
    }
}

// ---- person domain: the reviewer reads the notification and approves ------------------------

struct PersonService {
    me: UserId,
}

#[handlers(domain = "person")]
impl PersonService {
    #[subscribe("notification.sent")]
    async fn review(&self, ctx: &Context, event: NotificationSent) -> Result<(), HandlerError> {
        if event.recipient == self.me {
            ctx.publish(&ApprovalGiven {
                approver: self.me,
                workflow_id: event.workflow_id,
            })
            .await?;
        }
        Ok(())
    }
}

// ---- document domain -----------------------------------------------------------------------

/// The document domain's own state: what it knows of each document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentState {
    Draft,
    Approved,
}

struct DocumentService {
    documents: Arc<Mutex<HashMap<DocumentId, DocumentState>>>,
}

#[handlers(domain = "document")]
impl DocumentService {
    #[subscribe("workflow.completed")]
    async fn on_workflow_completed(&self, ctx: &Context, event: WorkflowCompleted) -> Result<(), HandlerError> {
        if event.approved {
            self.documents
                .lock()
                .unwrap()
                .insert(event.document_id, DocumentState::Approved);
            ctx.publish(&DocumentApproved {
                document_id: event.document_id,
            })
            .await?;
        }
        Ok(())
    }
}

/// Runs the scenario; returns the document's final state and the audit trail.
async fn run<T: Transport>(t: T) -> Result<(DocumentState, Vec<support::Seen>), Error> {
    let domains = ["document", "workflow", "notification", "person"];
    let documents = Arc::new(Mutex::new(HashMap::new()));
    let reviewer = UserId::new();
    let audit = Audit::new(&domains);
    // One service per process would be usual; here the four domains share one for brevity.
    // Each still has its own durable consumers, streams and dead letters.
    let service = Service::builder(t.clone(), "approval")
        .register(WorkflowService {
            reviewer,
            running: Mutex::default(),
        })
        .register(NotificationService)
        .register(PersonService { me: reviewer })
        .register(DocumentService {
            documents: documents.clone(),
        })
        .register(audit.clone())
        .start()
        .await?;

    let document_id = DocumentId::new();
    documents.lock().unwrap().insert(document_id, DocumentState::Draft);
    let created = DocumentCreated {
        document_id,
        title: "Quarterly report".into(),
        author: UserId::new(),
    };
    let envelope = created.to_envelope()?;
    println!(
        "document {} created; correlation {}",
        short(document_id),
        short(envelope.correlation_id())
    );
    t.publish_and_wait(envelope.clone().into()).await?;

    audit.wait_for("document.approved", Duration::from_secs(10)).await?;
    let state = documents.lock().unwrap()[&document_id];
    println!("document {} is now {state:?}", short(document_id));
    service.shutdown(Duration::from_secs(5)).await;
    let trail: Vec<_> = audit
        .seen()
        .into_iter()
        .filter(|s| s.identity.correlation_id == envelope.correlation_id())
        .collect();
    Ok((state, trail))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let transport = AnyTransport::from_env().await?;
    println!("document approval on the {} transport", transport.kind());
    let (state, trail) = run(transport).await?;
    println!("{} events, one correlation id; final state {state:?}", trail.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUBJECTS: [&str; 7] = [
        "document.created",
        "workflow.started",
        "workflow.task_assigned",
        "notification.sent",
        "person.approved",
        "workflow.completed",
        "document.approved",
    ];

    fn check(state: DocumentState, trail: &[support::Seen]) {
        assert_eq!(state, DocumentState::Approved);
        for s in SUBJECTS {
            assert!(trail.iter().any(|t| t.subject == s), "{s} missing from {trail:?}");
        }
        let root = trail
            .iter()
            .find(|t| t.subject == "document.created")
            .expect("root")
            .identity;
        assert!(root.is_root());
        let approved = trail
            .iter()
            .find(|t| t.subject == "document.approved")
            .expect("end")
            .identity;
        assert_eq!(approved.correlation_id, root.correlation_id);
    }

    #[tokio::test]
    async fn approves_on_the_embedded_transport() {
        let (state, trail) = run(MemoryTransport::new()).await.expect("run");
        check(state, &trail);
    }

    #[tokio::test]
    async fn approves_on_nats_with_identity_headers_on_every_message() {
        let checked = support::run_on_nats_checking_headers(
            &["document", "workflow", "notification", "person"],
            |t| async move {
                let (state, trail) = run(t).await?;
                check(state, &trail);
                Ok(())
            },
        )
        .await;
        assert!(checked >= SUBJECTS.len(), "checked {checked} messages");
    }
}
