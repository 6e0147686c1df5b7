//! The complete example of `docs/domain_event.md`, kept compiling and passing here.

use cim_integrate::prelude::*;

typed_id! {
    /// Identifies a document.
    pub struct DocumentId;
}
typed_id! {
    /// Identifies a user.
    pub struct UserId;
}

/// The current version: it has a `subject`, and lists its older versions, oldest first.
#[domain_event(
    subject = "document.created",
    version = "3.0",
    previous = [DocumentCreatedV1, DocumentCreatedV2],
)]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentCreated {
    pub document_id: DocumentId,
    pub title: String,
    pub author: Option<UserId>,
    pub tags: Vec<String>,
}

/// Frozen: payloads of 2.0 are stored in streams. Never edit this struct.
#[domain_event(version = "2.0")]
pub struct DocumentCreatedV2 {
    pub document_id: DocumentId,
    pub title: String,
    pub author: Option<UserId>,
}

/// Frozen.
#[domain_event(version = "1.0")]
pub struct DocumentCreatedV1 {
    pub document_id: DocumentId,
    pub title: String,
}

// The upcast chain: 1.0 -> 2.0 -> 3.0. Each step fills in what the newer version added.
impl From<DocumentCreatedV1> for DocumentCreatedV2 {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self { document_id: v1.document_id, title: v1.title, author: None }
    }
}

impl From<DocumentCreatedV2> for DocumentCreated {
    fn from(v2: DocumentCreatedV2) -> Self {
        Self { document_id: v2.document_id, title: v2.title, author: v2.author, tags: Vec::new() }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let event = DocumentCreated {
        document_id: DocumentId::new(),
        title: "Quarterly report".into(),
        author: None,
        tags: vec!["finance".into()],
    };

    // {"version":"3.0","document_id":"…","title":"Quarterly report","author":null,"tags":["finance"]}
    let payload = event.encode()?;
    assert_eq!(DocumentCreated::decode(&payload)?, event);

    // A payload written years ago by a 1.0 publisher decodes, upcast to the current version.
    let old = br#"{"version":"1.0","document_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","title":"Q1"}"#;
    let upcast = DocumentCreated::decode(old)?;
    assert_eq!((upcast.author, upcast.tags.len()), (None, 0));

    // An envelope with identity headers, X-Event-Type `DocumentCreated`, X-Event-Version `3.0`.
    let envelope = event.to_envelope()?;
    assert_eq!(envelope.subject().as_str(), "document.created");
    Ok(())
}
