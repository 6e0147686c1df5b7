//! Expansion snapshots of `#[handlers]` and `#[subscribe]`.

use proc_macro2::TokenStream;
use quote::quote;

fn pretty(tokens: TokenStream) -> String {
    match syn::parse2::<syn::File>(tokens.clone()) {
        Ok(file) => prettyplease::unparse(&file),
        Err(error) => panic!("expansion is not a file ({error}):\n{tokens}"),
    }
}

#[test]
fn handler_set_on_impl_block() {
    insta::assert_snapshot!(pretty(super::expand_handlers(
        quote!(domain = "workflow"),
        quote! {
            impl WorkflowService {
                /// Starts the approval workflow.
                #[subscribe("document.created")]
                async fn start_approval(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
                    ctx.publish(&WorkflowStarted { document_id: event.document_id }).await?;
                    Ok(())
                }

                #[subscribe(
                    "person.*",
                    name = "approvals",
                    durable = "workflow-approvals-v2",
                    max_attempts = 3,
                    backoff = "500ms",
                    max_backoff = "1m",
                    concurrency = 1,
                    deliver = "new",
                    ordered = true,
                    ack_wait = "2m",
                    publishes = [ApprovalRecorded, audit::Noted],
                    breaker_threshold = 3,
                    breaker_window = "30s",
                    breaker_cool_down = "10s",
                    breaker_probes = 2
                )]
                async fn record(&self, event: PersonApproved) -> Result<(), HandlerError> {
                    Ok(())
                }

                fn helper(&self) {}
            }
        },
    )));
}

#[test]
fn free_function_with_crate_override() {
    insta::assert_snapshot!(pretty(super::expand_subscribe(
        quote!("document.created", domain = "search", crate = "::my_facade"),
        quote! {
            pub async fn index_document(ctx: Context, event: DocumentCreated) -> Result<(), HandlerError> {
                Ok(())
            }
        },
    )));
}

#[test]
fn errors_are_reported_together() {
    insta::assert_snapshot!(pretty(super::expand_handlers(
        quote!(domian = "workflow"),
        quote! {
            impl WorkflowService {
                #[subscribe("*.created", retrys = 3)]
                fn not_async(&self, event: DocumentCreated) -> Result<(), HandlerError> { Ok(()) }

                #[subscribe("document.created", backoff = "soon")]
                async fn too_many(&self, ctx: &Context, event: DocumentCreated, extra: u8) -> Result<(), HandlerError> { Ok(()) }

                #[subscribe("document.created")]
                async fn no_result(&self, event: &DocumentCreated) {}
            }
        },
    )));
}
