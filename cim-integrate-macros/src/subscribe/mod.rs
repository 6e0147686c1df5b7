//! `#[subscribe]` and `#[handlers]`: typed, idempotent event handlers, registered explicitly.
//!
//! - [`parse`]: arguments and handler signatures into typed views (spans kept);
//! - [`expand`]: a `HandlerSet` impl with one registration call per handler, and `const` checks
//!   (the event type is a `DomainEvent`; its subject can match the pattern).
//!
//! `#[handlers(domain = "workflow")]` on an `impl` block collects its `#[subscribe]` methods;
//! `#[subscribe("...", domain = "search")]` on a free function generates a unit struct
//! `{Name}Handler` implementing `HandlerSet`.

mod expand;
mod parse;

use crate::errors::{self, Errors};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident};
use std::collections::HashSet;
use syn::ext::IdentExt;

/// One handler, checked.
pub(crate) struct Handler {
    pub(crate) args: parse::SubscribeArgs,
    pub(crate) sig: parse::HandlerSig,
    /// The registered name (`name = ...` or the function's name).
    pub(crate) name: String,
}

/// Expands `#[handlers(attr)] impl ...`.
pub fn expand_handlers(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let (args, present) = parse::handlers_args(attr, &mut errors);
    let mut block: syn::ItemImpl = match syn::parse2(item.clone()) {
        Ok(b) => b,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "`#[handlers]` goes on an inherent `impl` block whose methods carry `#[subscribe(\"...\")]`",
            ));
            return errors::emit(errors, item);
        }
    };
    if !present.iter().any(|k| k == parse::DOMAIN) {
        errors.push(syn::Error::new(
            Span::call_site(),
            "`#[handlers]` needs the domain the handlers belong to: `#[handlers(domain = \"workflow\")]` (it prefixes durable names and dead-letter subjects)",
        ));
    }
    if let Some((path, _)) = &block.trait_ {
        errors.spanned(path, "`#[handlers]` goes on an inherent `impl` block, not a trait impl");
    }
    if !block.generics.params.is_empty() {
        errors.spanned(
            &block.generics,
            "`#[handlers]` cannot be used on a generic `impl` block: register a concrete service type",
        );
    }
    let mut handlers = Vec::new();
    let mut names = Names::new(args.domain.as_ref());
    for item in &mut block.items {
        let syn::ImplItem::Fn(f) = item else { continue };
        let Some(pos) = f.attrs.iter().position(parse::is_subscribe) else {
            continue;
        };
        let attr = f.attrs.remove(pos);
        if let Some(extra) = f.attrs.iter().find(|a| parse::is_subscribe(a)) {
            errors.spanned(
                extra,
                "one `#[subscribe]` per handler; write a second handler for a second pattern",
            );
        }
        let span = attr
            .path()
            .segments
            .last()
            .map_or(Span::call_site(), |s| s.ident.span());
        let a = parse::subscribe_args(parse::attr_tokens(&attr), parse::METHOD_KEYS, span, &mut errors);
        let Some(sig) = parse::handler_sig(&f.sig, true, &mut errors) else {
            continue;
        };
        if let Some(h) = checked(a, sig, &mut names, &mut errors) {
            handlers.push(h);
        }
    }
    if handlers.is_empty() && errors.count() == 0 {
        errors.spanned(
            &block.self_ty,
            "this `#[handlers]` block has no `#[subscribe(\"...\")]` method",
        );
    }
    match (errors.finish(), &args.domain) {
        (Ok(()), Some(domain)) => expand::handler_set(&block, domain, args.krate.as_ref(), &handlers),
        (Err(e), _) => {
            let stub = crate::stubs::handlers_block(&crate::args::facade(args.krate.as_ref()), &block);
            let mut out = errors::with_item(e, block);
            out.extend(stub);
            out
        }
        (Ok(()), None) => block.into_token_stream(),
    }
}

/// The handler names and durable consumer names taken so far in one set: each must be unique,
/// or the service would refuse to start.
struct Names {
    /// The set's domain, which prefixes default durable names (`{domain}-{name}`).
    domain: Option<String>,
    names: HashSet<String>,
    durables: HashSet<String>,
}

impl Names {
    fn new(domain: Option<&syn::LitStr>) -> Self {
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
        .as_ref()
        .map_or_else(|| ident.unraw().to_string(), syn::LitStr::value)
}

fn checked(
    args: parse::SubscribeArgs,
    sig: parse::HandlerSig,
    names: &mut Names,
    errors: &mut Errors,
) -> Option<Handler> {
    args.pattern.as_ref()?;
    let name = handler_name(&args, &sig.ident);
    let name_span: &dyn ToTokens = match &args.name {
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
    let durable = match (&args.durable, &names.domain) {
        (Some(d), _) => Some(d.value()),
        (None, Some(domain)) => Some(format!("{domain}-{name}")),
        (None, None) => None,
    };
    if let Some(durable) = durable
        && !names.durables.insert(durable.clone())
    {
        let span: &dyn ToTokens = match &args.durable {
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

/// Expands `#[subscribe(attr)] fn ...` on a free function.
pub fn expand_subscribe(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let f: syn::ItemFn = match syn::parse2(item.clone()) {
        Ok(f) => f,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "`#[subscribe]` goes on an `async fn` handler, or on methods of an `impl` block marked `#[handlers(domain = \"...\")]`",
            ));
            return errors::emit(errors, item);
        }
    };
    if let Some(syn::FnArg::Receiver(r)) = f.sig.inputs.first() {
        errors.spanned(
            r,
            "`#[subscribe]` on a method needs `#[handlers(domain = \"...\")]` on its `impl` block",
        );
        return errors::emit(errors, f);
    }
    let a = parse::subscribe_args(attr, &parse::fn_keys(), Span::call_site(), &mut errors);
    if a.domain.is_none() && a.pattern.is_some() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "a free-function handler needs its domain: `#[subscribe(\"document.created\", domain = \"search\")]`",
        ));
    }
    let sig = parse::handler_sig(&f.sig, false, &mut errors);
    let krate = crate::args::facade(a.krate.as_ref());
    let mut names = Names::new(a.domain.as_ref());
    let handler = sig.and_then(|sig| checked(a, sig, &mut names, &mut errors));
    match (errors.finish(), handler) {
        (Ok(()), Some(h)) => {
            let ty = handler_type(&f.sig.ident);
            expand::free_handler(&f, &ty, h)
        }
        (Err(e), _) => {
            // The struct `{Name}Handler` and a stub `HandlerSet`, so that registering it adds
            // no error of its own.
            let ty = handler_type(&f.sig.ident);
            let vis = &f.vis;
            let stub = crate::stubs::handler_set(&krate, &ty.to_token_stream());
            let mut out = errors::with_item(e, &f);
            out.extend(quote::quote! {
                #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy, ::core::default::Default)]
                #vis struct #ty;
                #stub
            });
            out
        }
        (Ok(()), None) => f.into_token_stream(),
    }
}

/// The unit struct of a free-function handler: `index_document` -> `IndexDocumentHandler`
/// (`r#type` -> `TypeHandler`), spanned on the function's name.
fn handler_type(function: &syn::Ident) -> syn::Ident {
    let camel = camel(&function.unraw().to_string());
    let name = if camel.starts_with(|c: char| c.is_ascii_digit()) {
        format!("Handler{camel}")
    } else {
        format!("{camel}Handler")
    };
    let mut ident = syn::parse_str::<syn::Ident>(&name).unwrap_or_else(|_| format_ident!("Handler"));
    ident.set_span(function.span());
    ident
}

/// `index_document` -> `IndexDocument`.
fn camel(snake: &str) -> String {
    snake
        .split('_')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let mut c = p.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect()
}

#[cfg(test)]
mod tests;
