//! Expansion snapshots: `expand` on `quote!` input, pretty-printed (prettyplease) and compared
//! with the committed snapshots in `src/snapshots` (insta). CI never writes snapshots.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(error) => panic!("expansion is not a file ({error}):\n{tokens}"),
    }
}

fn domain_event(attr: TokenStream, item: TokenStream) -> String {
    pretty(crate::domain_event::expand(attr, item))
}

#[test]
fn single_version() {
    insta::assert_snapshot!(domain_event(
        quote!(subject = "document.deleted", version = "1.0"),
        quote! {
            /// A document was deleted.
            #[derive(Debug, Clone, PartialEq)]
            pub struct DocumentDeleted {
                pub document_id: DocumentId,
                #[serde(default)]
                pub reason: Option<String>,
            }
        },
    ));
}

#[test]
fn three_version_chain() {
    let current = domain_event(
        quote!(
            subject = "document.created",
            version = "3.0",
            previous = [DocumentCreatedV1, v2::DocumentCreatedV2]
        ),
        quote! {
            pub struct DocumentCreated {
                pub document_id: DocumentId,
                pub title: String,
                pub author: Option<UserId>,
                pub tags: Vec<String>,
            }
        },
    );
    let frozen = domain_event(
        quote!(version = "1.0"),
        quote! {
            pub struct DocumentCreatedV1 {
                pub document_id: DocumentId,
                pub title: String,
            }
        },
    );
    insta::assert_snapshot!(format!("{current}\n// ---- a frozen older version ----\n\n{frozen}"));
}

#[test]
fn crate_override() {
    insta::assert_snapshot!(domain_event(
        quote!(
            subject = "person.registered",
            version = "1.0",
            crate = "::my_platform::integrate"
        ),
        quote! {
            pub struct PersonRegistered {
                pub person_id: PersonId,
            }
        },
    ));
}

#[test]
fn errors_of_bad_input() {
    insta::assert_snapshot!(domain_event(
        quote!(
            subject = "document.*",
            version = "2",
            previous = [DocumentCreatedV1, DocumentCreatedV1],
            retries = 3,
            version = "3.0"
        ),
        quote! {
            #[derive(serde::Serialize)]
            pub struct DocumentCreated<T> {
                pub version: u32,
                #[serde(rename = "title")]
                pub name: T,
            }
        },
    ));
}

#[test]
fn errors_of_bad_items() {
    let cases = [
        (
            quote!(subject = "document.created", version = "1.0"),
            quote!(
                pub enum DocumentChanged {
                    Renamed { title: String },
                }
            ),
        ),
        (
            quote!(subject = "document.created", version = "1.0"),
            quote!(
                pub struct DocumentCreated(String);
            ),
        ),
        (
            quote!(subject = "document.created", version = "1.0"),
            quote!(
                pub struct DocumentCreated;
            ),
        ),
        (
            quote!(subject = "document created", version = "1.0"),
            quote!(
                pub fn handle() {}
            ),
        ),
        (
            quote!(
                subjct = "document.created",
                version = 1.0,
                previous = DocumentCreatedV1,
                crate = "not a path"
            ),
            quote!(
                struct A {}
            ),
        ),
        (
            quote!(version = "1.0", previous = [A]),
            quote!(
                #[serde(deny_unknown_fields)]
                struct B {
                    #[serde(rename = "version")]
                    v: u32,
                }
            ),
        ),
        (
            quote!(),
            quote!(
                struct C {}
            ),
        ),
    ];
    let out: Vec<String> = cases.into_iter().map(|(attr, item)| domain_event(attr, item)).collect();
    insta::assert_snapshot!(out.join("// ----\n"));
}
