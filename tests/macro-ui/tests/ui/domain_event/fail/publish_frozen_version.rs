use cim_integrate::domain_event;
use cim_integrate::event::DomainEvent;

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

fn publish<E: DomainEvent>(event: &E) -> cim_integrate::Envelope {
    event.to_envelope().unwrap()
}

fn main() {
    // the mistake: a frozen older version is not published; the current one is
    publish(&DocumentCreatedV1 { title: "t".into() });
}
