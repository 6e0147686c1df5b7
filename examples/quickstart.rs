//! Quickstart: publish and consume events through the runtime API (no macros yet).
//!
//! The document domain publishes `document.created`; the workflow domain reacts by publishing
//! `workflow.started` (same correlation id, caused by the document event); the audit domain has
//! its own durable consumer on both streams and sees the whole conversation.
//!
//! ```text
//! cargo run --example quickstart                                  # embedded transport
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example quickstart   # NATS JetStream
//! ```

use cim_integrate::prelude::*;
use cim_integrate::transport::any::AnyTransport;
use cim_integrate::transport::{Consumer, ConsumerSpec, DeliverPolicy, StreamSpec};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// How long the example waits for each delivery before it gives up: on a healthy server they
/// arrive in milliseconds; on a cluster that just lost a node, a consumer it led delivers once
/// nats-server has elected a new leader (4-9 s).
const DELIVERY_WAIT: Duration = Duration::from_secs(20);

typed_id! {
    /// A document, across every domain.
    pub struct DocumentId;
}

#[derive(Debug, Serialize, Deserialize)]
struct DocumentCreated {
    version: String,
    document_id: DocumentId,
    title: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct WorkflowStarted {
    version: String,
    document_id: DocumentId,
    workflow: String,
}

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let transport = AnyTransport::from_env().await?;
    println!("transport: {}", transport.kind());
    run(transport).await
}

async fn run<T: Transport>(t: T) -> Result<(), Error> {
    // A fresh run id keeps durable names apart when the example runs again on a persistent server.
    let run = MessageId::new().to_string()[..8].to_owned();
    for domain in ["document", "workflow"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None)?).await?;
    }

    // The workflow domain subscribes to document.created with its own durable consumer.
    let workflow_spec = ConsumerSpec::new(
        "DOCUMENT_EVENTS",
        format!("workflow-on-document-created-{run}"),
        subject_pattern!("document.created"),
    )
    .deliver(DeliverPolicy::New);
    let mut workflow = t.consumer(&workflow_spec).await?;
    // The audit domain sees everything of both domains (one consumer per stream).
    let mut audit_docs = t
        .consumer(
            &ConsumerSpec::new(
                "DOCUMENT_EVENTS",
                format!("audit-{run}"),
                subject_pattern!("document.>"),
            )
            .deliver(DeliverPolicy::New),
        )
        .await?;
    let mut audit_flows = t
        .consumer(
            &ConsumerSpec::new(
                "WORKFLOW_EVENTS",
                format!("audit-{run}"),
                subject_pattern!("workflow.>"),
            )
            .deliver(DeliverPolicy::New),
        )
        .await?;

    // The document domain publishes a root event.
    let document_id = DocumentId::new();
    let created = DocumentCreated {
        version: "1.0".into(),
        document_id,
        title: "Quarterly report".into(),
    };
    let env =
        Envelope::root(subject!("document.created"), serde_json::to_vec(&created)?).typed("DocumentCreated", "1.0");
    let ack = t.publish_and_wait(env.clone().into()).await?;
    println!(
        "document  published {} (seq {}) correlation {}",
        env.subject(),
        ack.sequence,
        env.correlation_id()
    );

    // The workflow domain handles it and publishes a caused-by event. (On a cluster that just
    // lost a node, a consumer that node led delivers after its election: seconds, not at once.)
    let delivery = tokio::time::timeout(DELIVERY_WAIT, workflow.next()).await??;
    let incoming = delivery.envelope()?;
    let event: DocumentCreated = serde_json::from_slice(incoming.payload())?;
    let started = WorkflowStarted {
        version: "1.0".into(),
        document_id: event.document_id,
        workflow: "approval".into(),
    };
    let reply = Envelope::caused_by(
        incoming.identity(),
        subject!("workflow.started"),
        serde_json::to_vec(&started)?,
    )
    .typed("WorkflowStarted", "1.0");
    t.publish_and_wait(reply.into()).await?;
    delivery.ack().await?; // ack only after the reaction is stored
    println!(
        "workflow  handled {} for {:?}, published workflow.started",
        incoming.subject(),
        event.title
    );

    // The audit domain sees both, sharing one correlation id.
    for consumer in [&mut audit_docs, &mut audit_flows] {
        let d = tokio::time::timeout(DELIVERY_WAIT, consumer.next()).await??;
        let e = d.envelope()?;
        println!(
            "audit     saw {:<18} message {} correlation {} causation {}",
            e.subject().as_str(),
            e.message_id(),
            e.correlation_id(),
            e.causation_id()
        );
        assert_eq!(
            e.correlation_id(),
            env.correlation_id(),
            "one conversation, one correlation id"
        );
        d.ack().await?;
    }
    for (stream, durable) in [
        ("DOCUMENT_EVENTS", &workflow_spec.durable),
        ("DOCUMENT_EVENTS", &format!("audit-{run}")),
        ("WORKFLOW_EVENTS", &format!("audit-{run}")),
    ] {
        t.delete_consumer(stream, durable).await?;
    }
    t.flush().await?;
    println!("done: one correlation id across two domains");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_on_the_embedded_transport() {
        run(MemoryTransport::new()).await.expect("quickstart on memory");
    }

    #[tokio::test]
    async fn runs_on_nats() {
        let server = cim_integrate::testing::NatsServer::start().await.expect("nats-server");
        let t = cim_integrate::transport::nats::NatsTransport::connect_url(&server.url())
            .await
            .expect("connect");
        run(t).await.expect("quickstart on NATS");
    }
}
