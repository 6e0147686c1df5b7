//! Example events shared by the `domain_event_*` tests and the `event_decode` benchmark:
//! `DocumentCreated` with three versions, `PersonRegistered` with two.
//!
//! The frozen versions must never change: their golden payloads are in
//! `tests/fixtures/events/`.

use cim_integrate::domain_event;

cim_integrate::typed_id! {
    /// Identifies a document.
    pub struct DocumentId;
}
cim_integrate::typed_id! {
    /// Identifies a user.
    pub struct UserId;
}
cim_integrate::typed_id! {
    /// Identifies a person.
    pub struct PersonId;
}

/// A document was created. The current version: 3.0 added `tags`.
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

/// Version 2.0 (frozen): added `author`.
#[domain_event(version = "2.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentCreatedV2 {
    pub document_id: DocumentId,
    pub title: String,
    pub author: Option<UserId>,
}

/// Version 1.0 (frozen).
#[domain_event(version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct DocumentCreatedV1 {
    pub document_id: DocumentId,
    pub title: String,
}

impl From<DocumentCreatedV1> for DocumentCreatedV2 {
    fn from(v1: DocumentCreatedV1) -> Self {
        Self {
            document_id: v1.document_id,
            title: v1.title,
            author: None,
        }
    }
}

impl From<DocumentCreatedV2> for DocumentCreated {
    fn from(v2: DocumentCreatedV2) -> Self {
        Self {
            document_id: v2.document_id,
            title: v2.title,
            author: v2.author,
            tags: Vec::new(),
        }
    }
}

/// A person registered. The current version: 2.0 split `name` and added `email`.
#[domain_event(subject = "person.registered", version = "2.0", previous = [PersonRegisteredV1])]
#[derive(Debug, Clone, PartialEq)]
pub struct PersonRegistered {
    pub person_id: PersonId,
    pub given_name: String,
    pub family_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
}

/// Version 1.0 (frozen): one `name`.
#[domain_event(version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct PersonRegisteredV1 {
    pub person_id: PersonId,
    pub name: String,
}

impl From<PersonRegisteredV1> for PersonRegistered {
    fn from(v1: PersonRegisteredV1) -> Self {
        let (given, family) = v1.name.split_once(' ').unwrap_or((&v1.name, ""));
        Self {
            person_id: v1.person_id,
            given_name: given.to_owned(),
            family_name: family.to_owned(),
            email: None,
        }
    }
}
