#![allow(unused_imports)]
// The `previous` entry is not a version: reported once, on the entry, however often the
// current version is then handled or published.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
pub struct DocumentCreated {
    pub title: String,
}

pub struct DocumentCreatedV1 {
    pub title: String,
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self { title: v1.title }
    }
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created")]
    async fn first(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        ctx.publish(&event).await?;
        Ok(())
    }

    #[subscribe("document.*")]
    async fn second(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
