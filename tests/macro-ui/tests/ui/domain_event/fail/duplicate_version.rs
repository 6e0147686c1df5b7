use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "1.0", previous = [DocumentCreatedV1])]
pub struct DocumentCreated {
    pub title: String,
    pub pages: u32,
}

#[domain_event(version = "1.0")]
pub struct DocumentCreatedV1 {
    pub title: String,
}

impl From<DocumentCreatedV1> for DocumentCreated {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self {
            title: v1.title,
            pages: 0,
        }
    }
}

fn main() {}
