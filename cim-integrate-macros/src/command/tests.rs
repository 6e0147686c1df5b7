//! Expansion snapshots of `#[command]`.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(error) => panic!("expansion is not a file ({error}):\n{tokens}"),
    }
}

fn command(attr: TokenStream, item: TokenStream) -> String {
    pretty(super::expand(attr, item))
}

#[test]
fn command_type_with_history() {
    let current = command(
        quote!(
            subject = "document.create",
            version = "2.0",
            previous = [CreateDocumentV1]
        ),
        quote! {
            /// Create a document.
            pub struct CreateDocument {
                pub document_id: DocumentId,
                pub title: String,
            }
        },
    );
    let frozen = command(
        quote!(version = "1.0", frozen),
        quote! {
            pub struct CreateDocumentV1 {
                pub document_id: DocumentId,
            }
        },
    );
    insta::assert_snapshot!(format!("{current}\n// ---- a frozen older version ----\n\n{frozen}"));
}

#[test]
fn command_with_an_answer() {
    let command_type = command(
        quote!(subject = "inventory.reserve", version = "1.0", answer = Reserved),
        quote! {
            pub struct ReserveStock {
                pub sku: String,
                pub quantity: u32,
            }
        },
    );
    let answer = command(
        quote!(answer, version = "2.0", previous = [ReservedV1]),
        quote! {
            pub struct Reserved {
                pub reserved: u32,
                pub available: u32,
            }
        },
    );
    insta::assert_snapshot!(format!("{command_type}\n// ---- its answer ----\n\n{answer}"));
}

#[test]
fn handler_set() {
    insta::assert_snapshot!(command(
        quote!(name = "document", crate = "::my_platform::integrate"),
        quote! {
            impl DocumentCommands {
                async fn create(&self, ctx: &Context, command: CreateDocument) -> CommandResult {
                    Ok(())
                }
                async fn archive(&self, ctx: &Context, command: ArchiveDocument) -> CommandResult {
                    Err(CommandRejection::reject("archived documents stay"))
                }
            }
        },
    ));
}

#[test]
fn errors_of_bad_input() {
    let cases = [
        (
            quote!(version = "1.0"),
            quote!(
                pub struct NoSubject {}
            ),
        ),
        (
            quote!(subject = "document.*", version = "1", frozen, retries = 3),
            quote!(
                pub struct Bad {
                    pub version: u32,
                }
            ),
        ),
        (
            quote!(name = "document"),
            quote! {
                impl DocumentCommands {
                    fn create(&self, ctx: Context, command: CreateDocument) -> CommandResult { Ok(()) }
                    async fn archive(&mut self, command: ArchiveDocument) {}
                }
            },
        ),
        (quote!(), quote!(impl Empty {})),
    ];
    let out: Vec<String> = cases.into_iter().map(|(a, i)| command(a, i)).collect();
    insta::assert_snapshot!(out.join("// ----\n"));
}
