use cim_integrate::domain_event;

#[domain_event(subjct = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

fn main() {}
