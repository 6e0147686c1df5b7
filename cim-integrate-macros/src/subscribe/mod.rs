//! `#[subscribe]` and `#[handlers]`: typed, idempotent event handlers, registered explicitly.
//!
//! - [`parse`]: arguments and handler signatures into typed views (spans kept);
//! - [`validate`]: the rules of a set (a domain, an inherent concrete block, at least one
//!   handler, unique handler and durable names);
//! - [`expand`]: a `HandlerSet` impl with one registration call per handler, and `const` checks
//!   (the event type is a `DomainEvent`; its subject can match the pattern).
//!
//! `#[handlers(domain = "workflow")]` on an `impl` block collects its `#[subscribe]` methods;
//! `#[subscribe("...", domain = "search")]` on a free function generates a unit struct
//! `{Name}Handler` implementing `HandlerSet`.

mod expand;
mod parse;
mod validate;

use crate::errors::{self, Errors};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, format_ident};
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
    let args = parse::handlers_args(attr, &mut errors);
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
    validate::domain_given(&args.domain, &mut errors);
    validate::inherent_and_concrete(&block, &mut errors);
    let mut handlers = Vec::new();
    let mut names = validate::Names::new(args.domain.get());
    for item in &mut block.items {
        let syn::ImplItem::Fn(f) = item else { continue };
        let Some(pos) = f.attrs.iter().position(parse::is_subscribe) else {
            continue;
        };
        let attr = f.attrs.remove(pos);
        // Every further `#[subscribe]` is reported and removed (left in place, it would expand
        // on its own and report a second error).
        let extra: Vec<syn::Attribute> = f.attrs.iter().filter(|a| parse::is_subscribe(a)).cloned().collect();
        f.attrs.retain(|a| !parse::is_subscribe(a));
        for extra in extra {
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
        if let Some(h) = validate::checked(a, sig, &mut names, &mut errors) {
            handlers.push(h);
        }
    }
    validate::has_handlers(&block, &handlers, &mut errors);
    match (errors.finish(), args.domain.get()) {
        (Ok(()), Some(domain)) => expand::handler_set(&block, domain, &args.krate, &handlers),
        (Err(e), _) => {
            let stub = crate::stubs::handlers_block(&crate::args::facade(&args.krate), &block);
            let mut out = errors::with_item(e, block);
            out.extend(stub);
            out
        }
        (Ok(()), None) => block.into_token_stream(),
    }
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
    if !a.domain.given() && a.pattern.is_some() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "a free-function handler needs its domain: `#[subscribe(\"document.created\", domain = \"search\")]`",
        ));
    }
    let sig = parse::handler_sig(&f.sig, false, &mut errors);
    let krate = crate::args::facade(&a.krate);
    let mut names = validate::Names::new(a.domain.get());
    let handler = sig.and_then(|sig| validate::checked(a, sig, &mut names, &mut errors));
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
