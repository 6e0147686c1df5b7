use cim_integrate::domain_event;
use cim_integrate::event::{DomainEvent, Versioned};

cim_integrate::typed_id! {
    pub struct DocumentId;
}

/// A document was deleted.
#[domain_event(subject = "document.deleted", version = "1.0")]
#[derive(Debug, PartialEq)]
pub struct DocumentDeleted {
    pub document_id: DocumentId,
    #[serde(default)]
    pub reason: Option<String>,
}

fn main() {
    let event = DocumentDeleted {
        document_id: DocumentId::new(),
        reason: None,
    };
    let bytes = event.encode().unwrap();
    assert!(bytes.starts_with(br#"{"version":"1.0","document_id":""#));
    assert_eq!(DocumentDeleted::decode(&bytes).unwrap(), event);
    assert_eq!(DocumentDeleted::subject().as_str(), "document.deleted");
    assert_eq!(DocumentDeleted::VERSIONS, ["1.0"]);
}
