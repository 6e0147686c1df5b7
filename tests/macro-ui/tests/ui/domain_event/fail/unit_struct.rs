use cim_integrate::domain_event;

#[domain_event(subject = "document.archived", version = "1.0")]
pub struct DocumentArchived;

fn main() {}
