#![allow(unused_imports)]
// One mistake, one error: a free handler's duration is invalid; its generated
// `IndexDocumentHandler` is still there, and registering it reports nothing more.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::service::Service;
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::{domain_event, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

#[subscribe("document.created", domain = "search", backoff = "soon")]
async fn index_document(_ctx: &Context, _event: DocumentCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {
    let _ = Service::builder(MemoryTransport::new(), "app").register(IndexDocumentHandler);
}
