use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated<T> {
    pub title: String,
    pub body: T,
}

fn main() {}
