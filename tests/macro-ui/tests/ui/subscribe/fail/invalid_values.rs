#![allow(unused_imports)]
// Invalid values of typed arguments: one error each, on the value, naming an example; a free
// function whose `domain` is invalid is not also told that it has none.
use cim_integrate::handler::HandlerError;
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[handlers(domain = "search")]
impl Svc {
    #[subscribe("document.created", concurrency = 0, max_attempts = "3", ordered = "yes")]
    async fn on_created(&self, event: DocumentCreated) -> Result<(), HandlerError> {
        let _ = event;
        Ok(())
    }
}

#[subscribe("document.created", domain = "search index")]
async fn index(event: DocumentCreated) -> Result<(), HandlerError> {
    let _ = event;
    Ok(())
}

fn main() {}
