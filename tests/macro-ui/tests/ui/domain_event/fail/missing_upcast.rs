use cim_integrate::domain_event;

#[domain_event(subject = "document.created", version = "3.0", previous = [DocumentCreatedV1, DocumentCreatedV2])]
pub struct DocumentCreated {
    pub title: String,
    pub pages: u32,
    pub tags: Vec<String>,
}

#[domain_event(version = "2.0")]
pub struct DocumentCreatedV2 {
    pub title: String,
    pub pages: u32,
}

#[domain_event(version = "1.0")]
pub struct DocumentCreatedV1 {
    pub title: String,
}

// the mistake: no `impl From<DocumentCreatedV1> for DocumentCreatedV2`

impl From<DocumentCreatedV2> for DocumentCreated {
    fn from(v2: DocumentCreatedV2) -> Self {
        Self {
            title: v2.title,
            pages: v2.pages,
            tags: Vec::new(),
        }
    }
}

fn main() {}
