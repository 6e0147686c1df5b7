#![allow(unused_imports)]
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document..created")]
    async fn on_created(&self, event: DocumentCreated) -> Result<(), HandlerError> {
        let _ = event;
        Ok(())
    }
}
fn main() {}
