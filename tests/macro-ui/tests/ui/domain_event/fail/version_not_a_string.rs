use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = 2.0)]
pub struct DocumentCreated {
    pub title: String,
}

fn main() {}
