#![allow(unused_imports)]
// A free function's wrong return type: reported on the return type.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[subscribe("document.created", domain = "search")]
async fn index(_ctx: &Context, _event: DocumentCreated) -> Result<u32, HandlerError> {
    Ok(1)
}

fn main() {}
