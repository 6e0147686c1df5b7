// One mistake, one error: an unknown argument on a frozen older version; the current version
// listing it in `previous` reports nothing more.
use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
pub struct DocumentCreated {
    pub title: String,
}

#[domain_event(version = "1.0", retries = 3)]
pub struct DocumentCreatedV1 {
    pub title: String,
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self { title: v1.title }
    }
}

fn main() {}
