//! Expansion snapshots of `#[saga]`: `expand` on `quote!` input, pretty-printed (prettyplease)
//! and compared with the committed snapshots in `snapshots/` (insta). CI never writes snapshots.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(error) => panic!("expansion is not a file ({error}):\n{tokens}"),
    }
}

fn saga(attr: TokenStream, item: TokenStream) -> String {
    pretty(super::expand(attr, item))
}

#[test]
fn document_publishing() {
    insta::assert_snapshot!(saga(
        quote!(data = Publishing),
        quote! {
            impl DocumentPublishing {
                #[step(no_compensation = "read-only validation")]
                async fn validate(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
                    Ok(())
                }

                /// Publishes the document.
                #[step(compensate = "unpublish", timeout = "10s", attempts = 3)]
                async fn publish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
                    Ok(())
                }

                #[step(
                    name = "notify_subscribers",
                    compensate = "retract",
                    compensation_timeout = "500ms",
                    compensation_attempts = 10
                )]
                async fn notify(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
                    Ok(())
                }

                async fn unpublish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
                    Ok(())
                }

                async fn retract(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
                    Ok(())
                }
            }
        },
    ));
}

#[test]
fn name_and_crate_override() {
    insta::assert_snapshot!(saga(
        quote!(name = "cross-domain", data = crate::Transfer, crate = "::platform"),
        quote! {
            impl CrossDomainTransaction {
                #[step(compensate = "undo")]
                async fn apply(&self, ctx: &mut StepContext<crate::Transfer>) -> Result<(), HandlerError> {
                    Ok(())
                }
                async fn undo(&self, ctx: &mut StepContext<crate::Transfer>) -> Result<(), HandlerError> {
                    Ok(())
                }
            }
        },
    ));
}

/// Every mistake at once, each on its own span; the impl block is still emitted (without
/// `#[step]`), so the rest of the crate keeps compiling.
#[test]
fn errors_are_reported_together() {
    insta::assert_snapshot!(saga(
        quote!(data = Publishing, retrys = 3),
        quote! {
            impl DocumentPublishing {
                #[step]
                async fn no_decision(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                #[step(compensate = "missing")]
                async fn missing_compensation(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                #[step(compensate = "sync_undo")]
                async fn wrong_signature(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                #[step(compensate = "undo", timout = "1s")]
                fn not_async(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                #[step(name = "not_async", compensate = "undo")]
                async fn duplicate(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                #[step(no_compensation = "")]
                async fn empty_reason(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                fn sync_undo(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                async fn undo(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
            }
        },
    ));
}

#[test]
fn snake_case_names() {
    use super::validate::snake_case;
    assert_eq!(snake_case("DocumentPublishing"), "document_publishing");
    assert_eq!(snake_case("HTTPSaga"), "http_saga");
    assert_eq!(snake_case("Saga2Pc"), "saga2_pc");
    assert_eq!(snake_case("order"), "order");
}
