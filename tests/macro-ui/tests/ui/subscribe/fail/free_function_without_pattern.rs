#![allow(unused_imports)]
// A free function without its pattern: one error, not also "unknown argument" or "needs its domain".
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct Svc;

#[subscribe(domain = "search", max_attempts = 3)]
async fn index(_ctx: &Context, _event: DocumentCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {}
