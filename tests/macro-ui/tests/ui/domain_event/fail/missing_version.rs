use cim_integrate::domain_event;

#[domain_event(subject = "document.created")]
pub struct DocumentCreated {
    pub title: String,
}

fn main() {}
