//! `#[saga]`: parse, validate, expand.
//!
//! - [`parse`]: `#[saga(...)]`'s arguments, the impl block, each method's `#[step(...)]`;
//! - [`validate`]: compensations declared, existing, well-typed and used once; unique step
//!   names; async steps;
//! - [`expand`]: the impl block as written and a `Saga` impl with the step table.

mod expand;
mod parse;
mod validate;

#[cfg(test)]
mod tests;

use crate::errors::{self, Errors};
use proc_macro2::TokenStream;
use quote::ToTokens;

/// Expands `#[saga(attr)] item`. On any mistake: every error, beside the impl block (without its
/// `#[step]` attributes, which would be errors of their own).
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::Args::parse(attr, &mut errors);
    let parsed = parse::item(item.clone(), &mut errors);
    // On error: the block as written (without `#[step]`) and a stub `Saga` impl.
    let fallback = parsed.as_ref().map_or_else(
        || item.clone(),
        |p| {
            let krate = crate::args::facade(&args.krate);
            let mut out = p.item.to_token_stream();
            out.extend(crate::stubs::saga(&krate, &p.item, args.data.get()));
            out
        },
    );
    let saga = validate::saga(args, parsed, &mut errors);
    match (errors.finish(), saga) {
        (Ok(()), Some(saga)) => expand::saga(&saga),
        (Err(error), _) => errors::with_item(error, fallback),
        // Validation fails only with an error; should it not, the item is kept as written.
        (Ok(()), None) => item,
    }
}
