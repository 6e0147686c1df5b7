use cim_integrate::domain_event;
use cim_integrate::prelude::*;

#[domain_event(
    subject = "document.created",
    version = "3.0",
    previous = [history::DocumentCreatedV1, history::DocumentCreatedV2],
)]
#[derive(Debug, PartialEq)]
pub struct DocumentCreated {
    pub title: String,
    pub pages: u32,
    pub tags: Vec<String>,
}

/// Frozen versions may live in their own module.
mod history {
    use cim_integrate::domain_event;

    #[domain_event(version = "2.0")]
    pub struct DocumentCreatedV2 {
        pub title: String,
        pub pages: u32,
    }

    #[domain_event(version = "1.0")]
    pub struct DocumentCreatedV1 {
        pub title: String,
    }

    impl From<DocumentCreatedV1> for DocumentCreatedV2 {
        fn from(v1: DocumentCreatedV1) -> Self {
            Self {
                title: v1.title,
                pages: 0,
            }
        }
    }

    impl From<DocumentCreatedV2> for super::DocumentCreated {
        fn from(v2: DocumentCreatedV2) -> Self {
            Self {
                title: v2.title,
                pages: v2.pages,
                tags: Vec::new(),
            }
        }
    }
}

fn main() {
    let upcast = DocumentCreated::decode(br#"{"version":"1.0","title":"t"}"#).unwrap();
    assert_eq!(
        upcast,
        DocumentCreated {
            title: "t".into(),
            pages: 0,
            tags: vec![]
        }
    );
    assert_eq!(DocumentCreated::VERSIONS, ["1.0", "2.0", "3.0"]);
}
