//! `#[command]`: on a struct, a versioned command type; on an `impl` block, a domain's command
//! handlers.
//!
//! - struct: the arguments and the struct are checked with the `#[domain_event]` versioning
//!   machinery ([`crate::versioning`]); the expansion is the serde derives, `PayloadVersion`,
//!   and for the current version `Versioned` and `Command` (its subject).
//! - `impl` block: every method is a handler, `async fn name(&self, ctx: &Context, command: C)
//!   -> CommandResult`; the expansion is one `CommandHandlerSet` impl registering each.

mod handlers;
mod types;

#[cfg(test)]
mod tests;

use proc_macro2::TokenStream;

/// Expands `#[command(attr)] item`: a command type or a handler block, by the item's kind.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    match syn::parse2::<syn::Item>(item.clone()) {
        Ok(syn::Item::Impl(block)) => handlers::expand(attr, block),
        _ => types::expand(attr, item),
    }
}
