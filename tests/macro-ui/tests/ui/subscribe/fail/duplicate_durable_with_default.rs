#![allow(unused_imports)]
// A `durable` equal to another handler's default durable (`{domain}-{name}`): a compile error.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created")]
    async fn start(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    #[subscribe("document.*", name = "audit", durable = "workflow-start")]
    async fn audit(&self, _ctx: &Context, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
