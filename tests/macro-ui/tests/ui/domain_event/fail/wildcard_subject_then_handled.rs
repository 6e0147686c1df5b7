// One mistake, one error: the subject has a wildcard; the handler on a pattern that the
// (invalid) subject cannot match reports nothing more.
use cim_integrate::handler::HandlerError;
use cim_integrate::{domain_event, subscribe};

#[domain_event(subject = "document.*", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

#[subscribe("document.created", domain = "search")]
async fn index(event: DocumentCreated) -> Result<(), HandlerError> {
    let _ = event.title;
    Ok(())
}

fn main() {}
