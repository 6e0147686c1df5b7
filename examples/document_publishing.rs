//! Document publishing: the guide's saga, with its compensation log made durable.
//!
//! `document.publish_requested` starts a `DocumentPublishing` saga (through a handler, so the
//! saga's correlation id is the request's). Its steps, each naming its compensation:
//!
//! | step | effect (event) | compensation (event) |
//! | --- | --- | --- |
//! | `validate` | none: read-only | none, declared |
//! | `publish` | `document.published` | `unpublish` (`document.unpublished`) |
//! | `index` | `search.document_indexed` | `unindex` (`search.document_removed`) |
//! | `notify` | `notification.subscribers_notified` | `retract` (`notification.retracted`) |
//!
//! The saga's log (state, data, step states) is a key-value record written with compare-and-set
//! before and after every step; its lifecycle events go to `saga.document_publishing.*`.
//!
//! ```text
//! cargo run --example document_publishing                       # every step succeeds
//! cargo run --example document_publishing -- --fail-at notify   # watch index and publish being undone
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example document_publishing -- --fail-at index
//! ```

#[path = "support/mod.rs"]
mod support;

use cim_integrate::handler::Registration;
use cim_integrate::prelude::*;
use cim_integrate::saga::{SagaRunner, SagaStatus, StepContext};
use std::time::Duration;
use support::{Audit, Error, short};

typed_id! {
    /// A document.
    pub struct DocumentId;
}

#[domain_event(subject = "document.publish_requested", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PublishRequested {
    pub document_id: DocumentId,
    pub title: String,
}

#[domain_event(subject = "document.published", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentPublished {
    pub document_id: DocumentId,
}

#[domain_event(subject = "document.unpublished", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentUnpublished {
    pub document_id: DocumentId,
}

#[domain_event(subject = "search.document_indexed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentIndexed {
    pub document_id: DocumentId,
}

#[domain_event(subject = "search.document_removed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentRemovedFromIndex {
    pub document_id: DocumentId,
}

#[domain_event(subject = "notification.subscribers_notified", version = "1.0")]
#[derive(Debug, Clone)]
pub struct SubscribersNotified {
    pub document_id: DocumentId,
    pub subscribers: u32,
}

#[domain_event(subject = "notification.retracted", version = "1.0")]
#[derive(Debug, Clone)]
pub struct NotificationRetracted {
    pub document_id: DocumentId,
}

/// The saga's persisted data.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Publishing {
    pub document_id: Option<DocumentId>,
    pub title: String,
    pub published: bool,
    pub indexed: bool,
    pub notified: bool,
}

/// The saga. Its fields are dependencies; `fail_at` makes one step fail for good.
pub struct DocumentPublishing {
    fail_at: Option<String>,
}

impl DocumentPublishing {
    fn fail_if_asked(&self, ctx: &StepContext<Publishing>) -> Result<(), HandlerError> {
        if self.fail_at.as_deref() == Some(ctx.step()) {
            println!("  !! step `{}` fails (--fail-at)", ctx.step());
            return Err(HandlerError::permanent(format!(
                "step `{}` failed on request",
                ctx.step()
            )));
        }
        Ok(())
    }

    fn id(ctx: &StepContext<Publishing>) -> Result<DocumentId, HandlerError> {
        ctx.data()
            .document_id
            .ok_or_else(|| HandlerError::permanent("no document id"))
    }
}

#[saga(data = Publishing)]
impl DocumentPublishing {
    #[step(no_compensation = "read-only validation")]
    async fn validate(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        self.fail_if_asked(ctx)?;
        if ctx.data().title.trim().is_empty() {
            return Err(HandlerError::permanent("a document needs a title to be published"));
        }
        Ok(())
    }

    #[step(compensate = "unpublish", timeout = "5s", attempts = 3)]
    async fn publish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        self.fail_if_asked(ctx)?;
        let document_id = Self::id(ctx)?;
        ctx.context().publish(&DocumentPublished { document_id }).await?;
        ctx.data_mut().published = true;
        Ok(())
    }

    #[step(compensate = "unindex", timeout = "5s", attempts = 3)]
    async fn index(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        self.fail_if_asked(ctx)?;
        let document_id = Self::id(ctx)?;
        ctx.context().publish(&DocumentIndexed { document_id }).await?;
        ctx.data_mut().indexed = true;
        Ok(())
    }

    #[step(compensate = "retract", timeout = "5s", attempts = 3)]
    async fn notify(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        self.fail_if_asked(ctx)?;
        let document_id = Self::id(ctx)?;
        ctx.context()
            .publish(&SubscribersNotified {
                document_id,
                subscribers: 42,
            })
            .await?;
        ctx.data_mut().notified = true;
        Ok(())
    }

    async fn unpublish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        let document_id = Self::id(ctx)?;
        ctx.context().publish(&DocumentUnpublished { document_id }).await?;
        ctx.data_mut().published = false;
        Ok(())
    }

    async fn unindex(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        let document_id = Self::id(ctx)?;
        ctx.context().publish(&DocumentRemovedFromIndex { document_id }).await?;
        ctx.data_mut().indexed = false;
        Ok(())
    }

    async fn retract(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        let document_id = Self::id(ctx)?;
        ctx.context().publish(&NotificationRetracted { document_id }).await?;
        ctx.data_mut().notified = false;
        Ok(())
    }
}

/// The handler that starts a saga for every `document.publish_requested`; the saga's id is the
/// document's, its correlation id the request's.
fn start_publishing<T: Transport>(runner: &SagaRunner<DocumentPublishing, T>) -> Registration {
    runner.start_on(
        "start_publishing",
        subject_pattern!("document.publish_requested"),
        "PublishRequested",
        PublishRequested::decode,
        |_ctx, e: PublishRequested| {
            let data = Publishing {
                document_id: Some(e.document_id),
                title: e.title,
                ..Publishing::default()
            };
            Ok((e.document_id.to_string(), data))
        },
    )
}

/// Runs one publication; returns the saga's final status and data, and the trail of events.
async fn run<T: Transport>(t: T, fail_at: Option<&str>) -> Result<(SagaStatus, Publishing, Vec<support::Seen>), Error> {
    let audit = Audit::new(&["document", "search", "notification", "saga"]);
    let runner = SagaRunner::builder(
        t.clone(),
        DocumentPublishing {
            fail_at: fail_at.map(str::to_owned),
        },
    )
    .build()
    .await?;
    runner.resume().await?; // drive to an end whatever an earlier, crashed run left
    let start = start_publishing(&runner);
    let service = Service::builder(t.clone(), "publishing")
        .handler("publishing", start)
        .register(audit.clone())
        .start()
        .await?;

    let document_id = DocumentId::new();
    let request = PublishRequested {
        document_id,
        title: "Annual report".into(),
    };
    let envelope = request.to_envelope()?;
    println!(
        "publishing document {}{}",
        short(document_id),
        fail_at.map(|s| format!(" (step `{s}` will fail)")).unwrap_or_default()
    );
    t.publish_and_wait(envelope.clone().into()).await?;

    let id = document_id.to_string();
    // Generous: on a cluster that just lost a node, electing new leaders for the saga's buckets
    // takes several seconds, and reads meanwhile fail as transient (`SagaError::is_transient`):
    // the saga goes on once they are elected, so a transient failure here is "not yet".
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let record = loop {
        match runner.status(&id).await {
            Ok(Some(r))
                if matches!(
                    r.status,
                    SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::NeedsAttention
                ) =>
            {
                break r;
            }
            Ok(_) => {}
            Err(e) if e.is_transient() && tokio::time::Instant::now() <= deadline => {}
            Err(e) => return Err(e.into()),
        }
        if tokio::time::Instant::now() > deadline {
            return Err("the saga did not finish".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let last = match record.status {
        SagaStatus::Completed => "saga.document_publishing.completed",
        _ => "saga.document_publishing.compensated",
    };
    audit.wait_for(last, Duration::from_secs(5)).await.ok();
    tokio::time::sleep(Duration::from_millis(100)).await;
    service.shutdown(Duration::from_secs(5)).await;
    println!(
        "saga {:?}: published {}, indexed {}, notified {}",
        record.status, record.data.published, record.data.indexed, record.data.notified
    );
    let trail = audit
        .seen()
        .into_iter()
        .filter(|s| s.identity.correlation_id == envelope.correlation_id())
        .collect();
    Ok((record.status, record.data, trail))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let fail_at = args
        .iter()
        .position(|a| a == "--fail-at")
        .and_then(|i| args.get(i + 1))
        .cloned();
    if let Some(step) = &fail_at
        && !["validate", "publish", "index", "notify"].contains(&step.as_str())
    {
        return Err(format!("--fail-at takes one of validate, publish, index, notify; not `{step}`").into());
    }
    let transport = AnyTransport::from_env().await?;
    println!("document publishing saga on the {} transport", transport.kind());
    run(transport, fail_at.as_deref()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subjects(trail: &[support::Seen]) -> Vec<String> {
        trail
            .iter()
            .map(|s| s.subject.clone())
            .filter(|s| !s.starts_with("saga."))
            .collect()
    }

    #[tokio::test]
    async fn publishes_on_the_embedded_transport() {
        let (status, data, trail) = run(MemoryTransport::new(), None).await.expect("run");
        assert_eq!(status, SagaStatus::Completed);
        assert!(data.published && data.indexed && data.notified);
        let s = subjects(&trail);
        for want in [
            "document.publish_requested",
            "document.published",
            "search.document_indexed",
            "notification.subscribers_notified",
        ] {
            assert!(s.iter().any(|x| x == want), "{want} missing from {s:?}");
        }
        assert!(trail.iter().any(|t| t.subject == "saga.document_publishing.completed"));
    }

    /// Failing at each step undoes exactly the completed steps, in reverse order. In a
    /// `TestHost`: no polling of the saga's status, no sleeping for the trail to arrive.
    #[tokio::test(start_paused = true)]
    async fn failure_at_each_step_compensates_what_completed_in_reverse() {
        use cim_integrate::testing::TestHost;
        const UNDONE: [&str; 3] = [
            "document.unpublished",
            "search.document_removed",
            "notification.retracted",
        ];
        let started = std::time::Instant::now();
        for (fail_at, undone) in [
            ("validate", vec![]),
            ("publish", vec![]),
            ("index", vec!["document.unpublished"]),
            ("notify", vec!["search.document_removed", "document.unpublished"]),
        ] {
            let builder = TestHost::service("publishing");
            let saga = DocumentPublishing {
                fail_at: Some(fail_at.to_owned()),
            };
            let runner = SagaRunner::builder(builder.transport().clone(), saga)
                .build()
                .await
                .unwrap();
            let builder = builder
                .handler("publishing", start_publishing(&runner))
                .saga(runner.clone());
            let host = TestHost::start(builder).await.unwrap();
            let document_id = DocumentId::new();
            let request = PublishRequested {
                document_id,
                title: "Annual report".into(),
            };
            let requested = host.publish(&request).await.unwrap();
            host.settle().await;

            host.saga(&runner, &document_id.to_string())
                .await
                .then_compensated(fail_at)
                .then_data(|d| {
                    assert!(!d.published && !d.indexed && !d.notified, "{fail_at}: {d:?}");
                });
            let events = host.events().correlated(requested.correlation_id());
            let compensations: Vec<&str> = events
                .all()
                .iter()
                .map(|p| p.envelope.subject().as_str())
                .filter(|s| UNDONE.contains(s))
                .collect();
            assert_eq!(compensations, undone, "{fail_at}: {events}");
            host.shutdown().await;
        }
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    #[tokio::test]
    async fn compensates_on_nats_with_identity_headers() {
        support::run_on_nats_checking_headers(&["document", "search", "notification", "saga"], |t| async move {
            let (status, _, _) = run(t, Some("notify")).await?;
            assert_eq!(status, SagaStatus::Compensated);
            Ok(())
        })
        .await;
    }
}
