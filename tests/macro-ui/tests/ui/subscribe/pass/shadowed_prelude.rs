//! The expansion names everything by absolute path: it compiles where the prelude's names are
//! shadowed, under `deny(warnings, clippy::all)`.
#![deny(warnings, clippy::all)]

use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::{domain_event, handlers, subscribe};

#[allow(dead_code)]
struct Result;
#[allow(dead_code)]
struct Ok;
#[allow(dead_code)]
struct Option;
#[allow(dead_code)]
struct String;
#[allow(dead_code)]
struct Box;
#[allow(dead_code)]
struct Vec;
#[allow(dead_code)]
struct Arc;

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub pages: u32,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created", durable = "wf", max_attempts = 2)]
    async fn on_created(&self, ctx: &Context, event: DocumentCreated) -> ::core::result::Result<(), HandlerError> {
        let _ = (ctx, event.pages);
        ::core::result::Result::Ok(())
    }
}

#[subscribe("document.created", domain = "search")]
async fn free(event: DocumentCreated) -> ::core::result::Result<(), HandlerError> {
    let _ = event.pages;
    ::core::result::Result::Ok(())
}

fn main() {
    let _ = FreeHandler;
}
