#![allow(unused_imports)]
// A handler body publishes a frozen older version with `ctx.publish(..).await?`: one error, on
// the argument, whose note says to convert it into the current version.
use cim_integrate::handler::{Context, HandlerError};
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

#[domain_event(subject = "person.registered", version = "1.0")]
pub struct PersonRegistered {
    pub name: String,
}

pub struct Svc;

#[handlers(domain = "document")]
impl Svc {
    #[subscribe("person.registered")]
    async fn on_registered(&self, ctx: &Context, event: PersonRegistered) -> Result<(), HandlerError> {
        let old = DocumentCreatedV1 { title: event.name };
        ctx.publish(&old).await?;
        Ok(())
    }
}

fn main() {}
