#![allow(unused_imports)]
// `ctx.emit(..).await?` of a frozen older version and `ctx.publish_root(..).await?` of a plain
// struct: one error each, on the argument.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
pub struct DocumentCreated {
    pub title: String,
}

#[domain_event(version = "1.0")]
pub struct DocumentCreatedV1 {
    pub title: String,
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self { title: v1.title }
    }
}

pub struct Report {
    pub pages: u32,
}

pub struct Svc;

#[handlers(domain = "document")]
impl Svc {
    #[subscribe("document.created")]
    async fn on_created(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        ctx.emit(&DocumentCreatedV1 { title: event.title }).await?;
        ctx.publish_root(&Report { pages: 1 }).await?;
        Ok(())
    }
}

fn main() {}
