#![allow(unused_imports)]
use cim_integrate::handler::HandlerError;
use cim_integrate::{domain_event, handlers};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Generic<T>(T);

#[handlers(domain = "workflow")]
impl<T: Send + Sync + 'static> Generic<T> {
    #[subscribe("document.created")]
    async fn on_created(&self, event: DocumentCreated) -> Result<(), HandlerError> {
        let _ = event;
        Ok(())
    }
}

fn main() {}
