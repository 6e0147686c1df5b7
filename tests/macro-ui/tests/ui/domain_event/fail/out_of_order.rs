use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "3.0", previous = [DocumentCreatedV2, DocumentCreatedV1])]
pub struct DocumentCreated {
    pub title: String,
}

#[domain_event(version = "2.0")]
pub struct DocumentCreatedV2 {
    pub title: String,
}

#[domain_event(version = "1.0")]
pub struct DocumentCreatedV1 {
    pub title: String,
}

impl From<DocumentCreatedV2> for DocumentCreatedV1 {
    fn from(v2: DocumentCreatedV2) -> Self {
        Self { title: v2.title }
    }
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self { title: v1.title }
    }
}

fn main() {}
