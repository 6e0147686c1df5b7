#![allow(unused_imports)]
// One mistake, one error: the event's version is malformed, and the type is still used by a
// handler, a publish and another event's `previous`; only the version is reported.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1")]
pub struct DocumentCreated {
    pub title: String,
}

#[domain_event(subject = "document.renamed", version = "2.0", previous = [DocumentCreated])]
pub struct DocumentRenamed {
    pub title: String,
}

impl From<DocumentCreated> for DocumentRenamed {
    fn from(e: DocumentCreated) -> Self {
        Self { title: e.title }
    }
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created")]
    async fn on_created(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        ctx.publish(&event).await?;
        Ok(())
    }
}

fn main() {}
