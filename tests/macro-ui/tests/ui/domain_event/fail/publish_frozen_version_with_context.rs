// A handler publishes a frozen older version: the note speaks of publishing.
use cim_integrate::domain_event;
use cim_integrate::handler::{Context, HandlerError};

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

pub async fn republish(ctx: &Context) -> Result<(), HandlerError> {
    ctx.publish(&DocumentCreatedV1 { title: "t".into() }).await?;
    Ok(())
}

fn main() {}
