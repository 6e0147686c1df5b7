//! The expansion: glue only. One `HandlerSet` impl, one `registration` call per handler, and one
//! `const` assertion per handler that its event's subject can match its pattern. The dispatch
//! loop lives in the runtime (`service.rs`).

use super::Handler;
use super::parse::{Ctx, Deliver};
use crate::args::Attr;
use proc_macro2::TokenStream;
use quote::{ToTokens, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Ident, ItemFn, ItemImpl, LitStr, Path};

fn facade(krate: &Attr<Path>) -> Path {
    crate::args::facade(krate)
}

fn options(k: &Path, h: &Handler) -> TokenStream {
    let a = &h.args;
    let mut sets = Vec::new();
    let ms = |v: u64| quote!(#k::__private::handler::macro_support::millis(#v));
    if let Some(d) = a.durable.get() {
        sets.push(quote!(__options.durable = ::core::option::Option::Some(::std::string::String::from(#d));));
    }
    if let Some(n) = a.max_attempts.get() {
        sets.push(quote!(__options.retry.max_attempts = #n;));
    }
    if let Some(&v) = a.backoff_ms.get() {
        let d = ms(v);
        sets.push(quote!(__options.retry.initial_backoff = #d;));
    }
    if let Some(&v) = a.max_backoff_ms.get() {
        let d = ms(v);
        sets.push(quote!(__options.retry.max_backoff = #d;));
    }
    if let Some(n) = a.concurrency.get() {
        sets.push(quote!(__options.concurrency = #n;));
    }
    if let Some(d) = a.deliver.get() {
        let v = match d {
            Deliver::All => quote!(All),
            Deliver::New => quote!(New),
        };
        sets.push(quote!(__options.deliver = #k::__private::transport::DeliverPolicy::#v;));
    }
    if let Some(b) = a.ordered.get() {
        sets.push(quote!(__options.ordered = #b;));
    }
    if let Some(&v) = a.ack_wait_ms.get() {
        let d = ms(v);
        sets.push(quote!(__options.ack_wait = #d;));
    }
    if let Some(publishes) = a.publishes.get().filter(|p| !p.is_empty()) {
        let refs = publishes
            .iter()
            .map(|t| quote_spanned!(t.span()=> #k::__private::topology::EventRef::of::<#t>()));
        sets.push(quote!(__options.publishes = ::std::vec::Vec::from([#(#refs),*]);));
    }
    if a.breaker.is_set() {
        let b = &a.breaker;
        let mut fields = Vec::new();
        if let Some(n) = b.threshold.get() {
            fields.push(quote!(__breaker.failure_threshold = #n;));
        }
        if let Some(&v) = b.window_ms.get() {
            let d = ms(v);
            fields.push(quote!(__breaker.window = #d;));
        }
        if let Some(&v) = b.cool_down_ms.get() {
            let d = ms(v);
            fields.push(quote!(__breaker.cool_down = #d;));
        }
        if let Some(n) = b.probes.get() {
            fields.push(quote!(__breaker.probes = #n;));
        }
        sets.push(quote! {
            __options.breaker = ::core::option::Option::Some({
                let mut __breaker = #k::__private::breaker::BreakerSettings::default();
                #(#fields)*
                __breaker
            });
        });
    }
    if sets.is_empty() {
        return quote!(#k::__private::handler::HandlerOptions::default());
    }
    quote!({
        let mut __options = #k::__private::handler::HandlerOptions::default();
        #(#sets)*
        __options
    })
}

/// The name of handler `i`'s event-info constant.
fn info_ident(i: usize) -> Ident {
    quote::format_ident!("__CIM_EVENT_{}", i)
}

/// The registration call of one handler (`method`: it runs on `__this`, the shared service).
fn registration(k: &Path, h: &Handler, i: usize, method: bool) -> TokenStream {
    let event = &h.sig.event;
    let ident = &h.sig.ident;
    let name = LitStr::new(&h.name, ident.span());
    let pattern = h.args.pattern.as_ref().map(|p| p.to_token_stream()).unwrap_or_default();
    let options = options(k, h);
    let info = info_ident(i);
    let target = if method { quote!(__this.#ident) } else { quote!(#ident) };
    let (ctx_param, call) = match h.sig.ctx {
        Ctx::Ref => (quote!(__ctx), quote!(#target(&__ctx, __event))),
        Ctx::Owned => (quote!(__ctx), quote!(#target(__ctx, __event))),
        Ctx::None => (quote!(_), quote!(#target(__event))),
    };
    // A wrong return type is reported on the handler's return type: the closure that awaits the
    // handler is put on it, whole (the bound on its future is checked at the closure).
    let out = h.sig.output.span();
    let register = crate::spans::respan(quote!(#k::__private::handler::macro_support::registration), out);
    let closure = if method {
        quote!({
            let __this = ::std::sync::Arc::clone(&self);
            move |#ctx_param: #k::__private::handler::Context, __event: #event| {
                let __this = ::std::sync::Arc::clone(&__this);
                async move { #call.await }
            }
        })
    } else {
        quote!(move |#ctx_param: #k::__private::handler::Context, __event: #event| async move { #call.await })
    };
    let closure = crate::spans::respan(closure, out);
    // The call itself (its parentheses) is on the return type too: rustc reports the unmet
    // `Future<Output = Result<(), HandlerError>>` bound on the call expression.
    quote_spanned!(out=> #register(#name, #pattern, &#info, #options, #closure))
}

/// The event-info constant of handler `i` (the one place `E: DomainEvent` is required, spanned
/// on the event type) and the `const` check that its subject can match the pattern.
fn event_checks(k: &Path, h: &Handler, i: usize) -> TokenStream {
    let Some(pattern) = &h.args.pattern else {
        return TokenStream::new();
    };
    let event = &h.sig.event;
    let info = info_ident(i);
    let event_name = event.to_token_stream().to_string().replace(' ', "");
    let message = LitStr::new(
        &format!(
            "`{event_name}`'s subject can never match the pattern `{}` of handler `{}`: subscribe to a pattern that matches the subject in its `#[domain_event(subject = ...)]`",
            pattern.value(),
            h.name
        ),
        pattern.span(),
    );
    let info_const = quote_spanned! {event.span()=>
        const #info: #k::__private::handler::macro_support::EventInfo<#event> =
            #k::__private::handler::macro_support::event_info::<#event>();
    };
    // The whole call on the pattern, the path included: a failed check is reported there.
    let check_can_match = crate::spans::respan(
        quote!(#k::__private::handler::macro_support::check_can_match),
        pattern.span(),
    );
    let check = quote_spanned! {pattern.span()=>
        const _: () = #check_can_match(#pattern, &#info, #message);
    };
    quote!(#info_const #check)
}

fn set_impl(k: &Path, self_ty: &TokenStream, domain: &LitStr, handlers: &[Handler], method: bool) -> TokenStream {
    let regs = handlers.iter().enumerate().map(|(i, h)| registration(k, h, i, method));
    let checks = handlers.iter().enumerate().map(|(i, h)| event_checks(k, h, i));
    quote! {
        #[doc(hidden)]
        const _: () = {
            #(#checks)*
            #[automatically_derived]
            impl #k::__private::handler::HandlerSet for #self_ty {
                fn set_name(&self) -> &::core::primitive::str {
                    #domain
                }
                fn registrations(
                    self: ::std::sync::Arc<Self>,
                ) -> ::std::vec::Vec<#k::__private::handler::Registration> {
                    ::std::vec::Vec::from([#(#regs),*])
                }
            }
        };
    }
}

/// `#[handlers]`: the impl block (its `#[subscribe]` attributes removed) and its `HandlerSet`.
pub(crate) fn handler_set(block: &ItemImpl, domain: &LitStr, krate: &Attr<Path>, handlers: &[Handler]) -> TokenStream {
    let k = facade(krate);
    let self_ty = block.self_ty.to_token_stream();
    let set = set_impl(&k, &self_ty, domain, handlers, true);
    quote!(#block #set)
}

/// `#[subscribe]` on a free function: the function, a unit struct `{Name}Handler`, its `HandlerSet`.
pub(crate) fn free_handler(f: &ItemFn, ty: &Ident, h: Handler) -> TokenStream {
    let k = facade(&h.args.krate);
    let vis = &f.vis;
    let Some(domain) = h.args.domain.get().cloned() else {
        return f.to_token_stream();
    };
    let doc = format!(
        "The handler set of [`{}`], generated by `#[subscribe]`: register it with `Service::builder(..).register({ty})`.",
        f.sig.ident
    );
    let set = set_impl(&k, &ty.to_token_stream(), &domain, std::slice::from_ref(&h), false);
    quote! {
        #f
        #[doc = #doc]
        #[derive(::core::fmt::Debug, ::core::clone::Clone, ::core::marker::Copy, ::core::default::Default)]
        #vis struct #ty;
        #set
    }
}
