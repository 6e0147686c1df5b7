#![allow(unused_imports)]
// The pattern is not quoted: one error on it, no "unknown argument" after it.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe(document.created, max_attempts = 3)]
    async fn on_created(&self, _ctx: &Context, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
