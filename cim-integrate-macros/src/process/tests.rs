//! Expansion snapshots of `#[process]`.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(error) => panic!("expansion is not a file ({error}):\n{tokens}"),
    }
}

#[test]
fn onboarding() {
    insta::assert_snapshot!(pretty(super::expand(
        quote!(name = "onboarding", key = person_id),
        quote! {
            impl Onboarding {
                async fn person_created(&mut self, ctx: &mut ProcessContext, e: PersonCreated) -> Result<(), HandlerError> {
                    ctx.schedule("documents", Duration::from_secs(60));
                    Ok(())
                }
                #[key(owner_id)]
                async fn document_created(&mut self, ctx: &mut ProcessContext, e: DocumentCreated) -> Result<(), HandlerError> {
                    ctx.end();
                    Ok(())
                }
                #[deadline]
                async fn timed_out(&mut self, ctx: &mut ProcessContext, d: Deadline) -> Result<(), HandlerError> {
                    Ok(())
                }
            }
        },
    )));
}

#[test]
fn errors_of_bad_input() {
    let cases = [
        (
            quote!(key = person_id),
            quote!(impl P { async fn a(&mut self, ctx: &mut ProcessContext, e: E) -> R { Ok(()) } }),
        ),
        (
            quote!(name = "bad name", kee = x),
            quote! {
                impl P {
                    fn sync(&mut self, ctx: &mut ProcessContext, e: E) -> R { Ok(()) }
                    async fn shared(&self, ctx: &mut ProcessContext, e: E) -> R { Ok(()) }
                    async fn no_key(&mut self, ctx: &mut ProcessContext, e: E) -> R { Ok(()) }
                }
            },
        ),
        (
            quote!(name = "p", key = id),
            quote!(
                struct NotAnImpl;
            ),
        ),
    ];
    let out: Vec<String> = cases.into_iter().map(|(a, i)| pretty(super::expand(a, i))).collect();
    insta::assert_snapshot!(out.join("// ----\n"));
}
