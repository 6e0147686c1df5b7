use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
pub struct DocumentCreated {
    pub title: String,
}

// the mistake: not marked `#[domain_event(version = "1.0")]`
#[derive(serde::Serialize, serde::Deserialize)]
pub struct DocumentCreatedV1 {
    pub title: String,
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self { title: v1.title }
    }
}

fn main() {}
