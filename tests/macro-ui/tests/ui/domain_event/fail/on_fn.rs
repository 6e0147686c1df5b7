use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "1.0")]
fn on_document_created() {}

fn main() {}
