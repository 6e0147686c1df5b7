#![allow(unused_imports)]
// `r#type` is registered as `type`: a second handler named `type` is a duplicate.
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
    async fn r#type(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }

    #[subscribe("document.*", name = "type")]
    async fn other(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
