//! `#[domain_event]`: parse, validate, expand.
//!
//! - [`parse`]: the arguments and the item, into typed views;
//! - [`validate`]: the rules across them, into a checked [`validate::Event`];
//! - [`expand`]: the serde derives and the trait impls, through the shared [`crate::versioning`].

mod expand;
mod parse;
mod validate;

use crate::errors::{self, Errors};
use crate::versioning;
use proc_macro2::TokenStream;
use quote::ToTokens;

/// Expands `#[domain_event(attr)] item`. On any mistake: every error, beside the item itself.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = parse::Args::parse(attr, &mut errors);
    let parsed = parse::item(item.clone(), &mut errors);
    let event = validate::event(&args, parsed.clone(), &mut errors);
    match (errors.finish(), event) {
        (Ok(()), Some(event)) => expand::event(&event, item),
        (Err(error), _) => {
            // Built only here: parsing the item again and quoting the stubs on every expansion
            // was a third of the macro's own time in the `cargo check` benchmark.
            let stubs = stubs(&args, &item);
            let mut out = errors::with_item(error, fallback(parsed, item));
            out.extend(stubs);
            out
        }
        // Validation fails only with an error; should it not, the item is kept as written.
        (Ok(()), None) => item,
    }
}

/// The stub impls emitted on error (see [`versioning::stub_impls`]), from the arguments as far
/// as they are valid: a current version (with a `subject` key) gets `DomainEvent` too.
fn stubs(args: &parse::Args, item: &TokenStream) -> TokenStream {
    let Ok(item) = syn::parse2::<syn::Item>(item.clone()) else {
        return TokenStream::new();
    };
    let krate = crate::args::facade(&args.krate);
    let version = args.version.get().filter(|v| versioning::check_version(v).is_ok());
    let role = if args.subject.given() {
        versioning::StubRole::Event(args.subject.get())
    } else {
        versioning::StubRole::Frozen
    };
    versioning::stub_impls(&krate, &item, version, &role)
}

/// The item as the user wrote it, minus `#[serde(...)]` attributes when nothing derives serde
/// (they would be errors of their own without the derives).
fn fallback(parsed: Option<syn::ItemStruct>, item: TokenStream) -> TokenStream {
    let Some(mut item) = parsed else { return item };
    let derives_serde = item
        .attrs
        .iter()
        .any(|a| a.path().is_ident("derive") && a.meta.to_token_stream().to_string().contains("Serialize"));
    if !derives_serde {
        let not_serde = |a: &syn::Attribute| !a.path().is_ident("serde");
        item.attrs.retain(not_serde);
        for field in item.fields.iter_mut() {
            field.attrs.retain(not_serde);
        }
    }
    item.into_token_stream()
}
