#![allow(unused_imports)]
// A handler takes a frozen older version: the note says to take the current version.
use cim_integrate::handler::HandlerError;
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

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created")]
    async fn on_created(&self, event: DocumentCreatedV1) -> Result<(), HandlerError> {
        let _ = event.title;
        Ok(())
    }
}

fn main() {}
