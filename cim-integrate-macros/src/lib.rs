//! Procedural macros of [cim-integrate](https://docs.rs/cim-integrate). Use them through the
//! `cim-integrate` facade crate, which re-exports them with the runtime they expand into.
//!
//! Each macro is a thin entry point here; the work is in `expand(attr, item)` functions on
//! `proc_macro2` types, one module per macro, so that unit tests can snapshot the expansion.

#![warn(missing_docs)]

mod args;
mod domain_event;
mod errors;
mod subject;
mod versioning;

#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Declares a version of a domain event: a struct with named fields, published on a concrete NATS
/// subject as JSON, `{"version":"2.0", ...fields}`, and decoded from every older version it lists.
///
/// ```ignore
/// use cim_integrate::prelude::*;
///
/// /// The current version: it has a `subject`, and lists its older versions, oldest first.
/// #[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
/// pub struct DocumentCreated {
///     pub document_id: DocumentId,
///     pub title: String,
///     pub author: Option<UserId>,
/// }
///
/// /// A frozen older version: only a `version`. Never edit it; payloads of it are stored.
/// #[domain_event(version = "1.0")]
/// pub struct DocumentCreatedV1 {
///     pub document_id: DocumentId,
///     pub title: String,
/// }
///
/// /// The upcast: every older version becomes the next newer one through `From`.
/// impl From<DocumentCreatedV1> for DocumentCreated {
///     fn from(v1: DocumentCreatedV1) -> Self {
///         Self { document_id: v1.document_id, title: v1.title, author: None }
///     }
/// }
/// ```
///
/// # Arguments
///
/// - `subject = "domain.event"`: the concrete subject the event is published on. Only the
///   current version has one. Tokens are `[A-Za-z0-9_-]+` separated by dots; no wildcards.
/// - `version = "MAJOR.MINOR"`: this struct's wire version. Required.
/// - `previous = [V1, V2, ...]`: the older versions, oldest first, each a struct marked
///   `#[domain_event(version = "...")]` with a lower version than the next. Each needs
///   `impl From<Vn> for Vn+1`, the last one into the current version.
/// - `crate = "path"`: the path of the `cim-integrate` facade if it is renamed or re-exported
///   (default `::cim_integrate`).
///
/// # Expansion
///
/// `#[derive(Serialize, Deserialize)]` (through the facade's serde; `#[serde(...)]` field
/// attributes keep working), `cim_integrate::event::PayloadVersion`, and for the current
/// version `cim_integrate::event::Versioned` (encode, decode of any listed version with upcast)
/// and `cim_integrate::event::DomainEvent` (subject, envelopes).
///
/// Compile-time errors name the fix: an invalid or wildcard subject, a malformed or missing
/// version, duplicate or out-of-order versions, an older version without `From` into the next,
/// unknown or repeated arguments, and items that cannot be an event (enums, tuple structs,
/// generics, a field named `version`).
#[proc_macro_attribute]
pub fn domain_event(attr: TokenStream, item: TokenStream) -> TokenStream {
    domain_event::expand(attr.into(), item.into()).into()
}
