#![allow(unused_imports)]
// Two `#[subscribe]` on one handler: one error on the second, which is not expanded on its own.
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
    #[subscribe("document.updated")]
    async fn on_created(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
