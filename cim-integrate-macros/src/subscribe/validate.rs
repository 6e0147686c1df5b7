//! Validation: the rules of a handler set, each a named function recording its own mistake once,
//! on its token.

use super::{Handler, parse};
use crate::args::Attr;
use crate::errors::Errors;
use proc_macro2::Span;
use quote::ToTokens;
use std::collections::HashSet;
use syn::LitStr;
use syn::ext::IdentExt;

/// Rule: `#[handlers]` names its domain (it prefixes durable names and dead-letter subjects).
pub(crate) fn domain_given(domain: &Attr<LitStr>, errors: &mut Errors) {
    if !domain.given() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "`#[handlers]` needs the domain the handlers belong to: `#[handlers(domain = \"workflow\")]` (it prefixes durable names and dead-letter subjects)",
        ));
    }
}

/// Rule: `#[handlers]` is on an inherent, non-generic `impl` block.
pub(crate) fn inherent_and_concrete(block: &syn::ItemImpl, errors: &mut Errors) {
    if let Some((path, _)) = &block.trait_ {
        errors.spanned(path, "`#[handlers]` goes on an inherent `impl` block, not a trait impl");
    }
    if !block.generics.params.is_empty() {
        errors.spanned(
            &block.generics,
            "`#[handlers]` cannot be used on a generic `impl` block: register a concrete service type",
        );
    }
}

/// Rule: a set has at least one handler (reported only when nothing else is wrong: a handler
/// with a mistake is still a handler).
pub(crate) fn has_handlers(block: &syn::ItemImpl, handlers: &[Handler], errors: &mut Errors) {
    if handlers.is_empty() && errors.count() == 0 {
        errors.spanned(
            &block.self_ty,
            "this `#[handlers]` block has no `#[subscribe(\"...\")]` method",
        );
    }
}

/// The handler names and durable consumer names taken so far in one set: each must be unique,
/// or the service would refuse to start.
pub(crate) struct Names {
    /// The set's domain, which prefixes default durable names (`{domain}-{name}`).
    domain: Option<String>,
    names: HashSet<String>,
    durables: HashSet<String>,
}

impl Names {
    pub(crate) fn new(domain: Option<&syn::LitStr>) -> Self {
        Self {
            domain: domain.map(syn::LitStr::value),
            names: HashSet::new(),
            durables: HashSet::new(),
        }
    }
}

/// The name a handler is registered under: `name = "..."`, or the function's name without `r#`.
fn handler_name(args: &parse::SubscribeArgs, ident: &syn::Ident) -> String {
    args.name
        .get()
        .map_or_else(|| ident.unraw().to_string(), syn::LitStr::value)
}

pub(crate) fn checked(
    args: parse::SubscribeArgs,
    sig: parse::HandlerSig,
    names: &mut Names,
    errors: &mut Errors,
) -> Option<Handler> {
    args.pattern.as_ref()?;
    let name = handler_name(&args, &sig.ident);
    let name_span: &dyn ToTokens = match args.name.get() {
        Some(n) => n,
        None => &sig.ident,
    };
    if !names.names.insert(name.clone()) {
        errors.spanned(
            name_span,
            format!("two handlers in this set are named `{name}`; give one another `name = \"...\"`"),
        );
        return None;
    }
    let durable = match (args.durable.get(), &names.domain) {
        (Some(d), _) => Some(d.value()),
        (None, Some(domain)) => Some(format!("{domain}-{name}")),
        (None, None) => None,
    };
    if let Some(durable) = durable
        && !names.durables.insert(durable.clone())
    {
        let span: &dyn ToTokens = match args.durable.get() {
            Some(d) => d,
            None => name_span,
        };
        errors.spanned(
            span,
            format!(
                "two handlers in this set use the durable consumer `{durable}`, so the service would refuse to start; \
                 give this one another `durable = \"...\"`"
            ),
        );
        return None;
    }
    Some(Handler { args, sig, name })
}
