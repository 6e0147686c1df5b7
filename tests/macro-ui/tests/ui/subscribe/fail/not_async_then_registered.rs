#![allow(unused_imports)]
// One mistake, one error: a handler is not `async`; registering the set reports nothing more.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::service::Service;
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created")]
    fn on_created(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let _ = Service::builder(MemoryTransport::new(), "app").register(Svc);
}
