//! Every supported handler shape, registered with a real service.
use cim_integrate::handler::{Context, HandlerError, HandlerSet};
use cim_integrate::{domain_event, handlers, subscribe};
use std::sync::Arc;

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created")]
    async fn with_ref_context(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        let _ = (ctx.correlation_id(), event.title);
        Ok(())
    }

    #[subscribe("document.*", name = "owned", deliver = "new", ordered = true, ack_wait = "1m")]
    async fn with_owned_context(&self, ctx: Context, event: DocumentCreated) -> Result<(), HandlerError> {
        let _ = (ctx, event);
        Ok(())
    }

    #[subscribe(
        "document.>",
        max_attempts = 2,
        backoff = "10ms",
        max_backoff = "1s",
        concurrency = 4,
        durable = "wf-all",
        publishes = [DocumentCreated],
        breaker_threshold = 3,
        breaker_cool_down = "5s"
    )]
    async fn event_only(&self, event: DocumentCreated) -> Result<(), HandlerError> {
        let _ = event;
        Ok(())
    }

    /// Not a handler: left alone.
    fn helper(&self) -> u8 {
        1
    }
}

#[subscribe("document.created", domain = "search")]
pub async fn index_document(event: DocumentCreated) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let regs = Arc::new(Svc).registrations();
    assert_eq!(regs.len(), 3);
    let all = regs.iter().find(|r| r.name() == "event_only").expect("event_only");
    let breaker = all.options().breaker.clone().expect("breaker attached");
    assert_eq!((breaker.failure_threshold, breaker.cool_down), (3, std::time::Duration::from_secs(5)));
    assert_eq!(all.options().publishes[0].subject, "document.created");
    assert_eq!(Svc.helper(), 1);
    assert_eq!(IndexDocumentHandler.set_name(), "search");
    let t = cim_integrate::prelude::MemoryTransport::new();
    let svc = cim_integrate::service::Service::builder(t, "app")
        .register(Svc)
        .register(IndexDocumentHandler)
        .start()
        .await
        .expect("start");
    let mut names: Vec<String> = svc.stats().into_iter().map(|s| s.handler).collect();
    names.sort();
    assert_eq!(names, ["search-index_document", "wf-all", "workflow-owned", "workflow-with_ref_context"]);
    svc.shutdown(std::time::Duration::from_secs(1)).await;
}
