#![allow(unused_imports)]
// Two handlers of one set with one `durable`: a compile error on the second, not a start-up failure.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created", durable = "workflow-documents")]
    async fn first(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    #[subscribe("document.*", durable = "workflow-documents")]
    async fn second(&self, _ctx: &Context, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
