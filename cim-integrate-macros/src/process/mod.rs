//! `#[process(name = "...", key = field)]` on the `impl` block of a process manager's state.
//!
//! Every method is an event handler, `async fn name(&mut self, ctx: &mut ProcessContext, event: E)
//! -> Result<(), HandlerError>`, keyed by the event's field `key` (or the method's own
//! `#[key(field)]`); one method marked `#[deadline]` reacts to due deadlines,
//! `async fn name(&mut self, ctx: &mut ProcessContext, deadline: Deadline) -> Result<(), HandlerError>`.
//!
//! The expansion is the block (helper attributes removed) and, inside `const _: () = { ... };`,
//! one key function per handler (`event.field`, so a missing field is a compile error on the
//! key), one call shim per handler, a check that every handler's key field has the same type,
//! and the `ProcessManager` impl listing them.

#[cfg(test)]
mod tests;

use crate::args;
use crate::errors::{self, Errors};
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Path, Type};

const NAME: &str = "name";
const KEY: &str = "key";
const CRATE: &str = "crate";
const KEYS: &[&str] = &[NAME, KEY, CRATE];
const SHAPE: &str = "a process handler is `async fn name(&mut self, ctx: &mut ProcessContext, event: MyEvent) -> Result<(), HandlerError>`";

struct Handler {
    method: Ident,
    event: Type,
    key: Ident,
    /// The handler's own `#[key(field)]`, if it has one.
    own_key: Option<Ident>,
}

fn helper<'a>(method: &'a ImplItemFn, name: &str) -> Option<&'a syn::Attribute> {
    method.attrs.iter().find(|a| a.path().is_ident(name))
}

fn check_signature(method: &ImplItemFn, errors: &mut Errors) -> Option<Type> {
    use crate::method::{Expect, Problem, Receiver};
    let expect = Expect {
        receiver: Receiver::Mut,
        min_params: 2,
        max_params: 2,
    };
    let (shape, problems) = crate::method::check(&method.sig, &expect);
    let ok = problems.is_empty();
    for found in problems {
        let message = match found.problem {
            Problem::NotAsync => format!("process handlers are `async`: {SHAPE}"),
            Problem::Generic => format!("process handlers cannot be generic: {SHAPE}"),
            Problem::Variadic => format!("process handlers cannot be variadic: {SHAPE}"),
            Problem::WrongReceiver => format!("take the state as `&mut self`: {SHAPE}"),
            Problem::MissingReceiver | Problem::UnexpectedReceiver | Problem::SelfNotFirst => {
                format!("a process handler is a method taking `&mut self` first: {SHAPE}")
            }
            Problem::Arity(n) => {
                format!("expected two parameters after `&mut self`, the context and the event, found {n}: {SHAPE}")
            }
            Problem::MissingOutput => format!("missing return type `-> Result<(), HandlerError>`: {SHAPE}"),
        };
        errors.spanned(found.tokens, message);
    }
    let [_, event] = shape.params.as_slice() else {
        return None;
    };
    if let Type::Reference(r) = &*event.ty {
        errors.spanned(
            r,
            format!("the event comes last and by value (are the parameters swapped?): {SHAPE}"),
        );
        return None;
    }
    ok.then(|| (*event.ty).clone())
}

/// Whether a handler's parameter type is the runtime's `Deadline` (by its last segment).
fn is_deadline(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Deadline"))
}

/// Expands `#[process(attr)] impl State { ... }`.
pub fn expand(attr: TokenStream, item: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let mut name: Option<LitStr> = None;
    let mut key: Option<Ident> = None;
    let mut krate: Option<Path> = None;
    let present = args::parse(attr, "process", KEYS, &mut errors, |k, value| {
        match k.to_string().as_str() {
            NAME => {
                let lit = args::string(value, "name = \"onboarding\"")?;
                crate::subject::check_token(&lit, "process name")?;
                name = Some(lit);
            }
            KEY => {
                key = Some(syn::parse2::<Ident>(value.clone()).map_err(|_| {
                    syn::Error::new(
                        value.span(),
                        "expected the name of the correlation field of the handled events, e.g. `key = person_id`",
                    )
                })?);
            }
            _ => krate = Some(args::krate(value)?),
        }
        Ok(())
    });
    let mut block = match syn::parse2::<ItemImpl>(item.clone()) {
        Ok(b) => b,
        Err(_) => {
            errors.push(syn::Error::new(
                Span::call_site(),
                "`#[process]` goes on the `impl` block of the process state: `#[process(name = \"onboarding\", key = person_id)] impl Onboarding { ... }`",
            ));
            return errors::emit(errors, item);
        }
    };
    if name.is_none() && !present.iter().any(|k| k == NAME) {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `name`: the process's name (its buckets and durable consumers), e.g. `#[process(name = \"onboarding\", key = person_id)]`",
        ));
    }
    if block.trait_.is_some() || !block.generics.params.is_empty() {
        errors.spanned(
            &block.self_ty,
            "`#[process]` goes on the inherent, non-generic `impl` block of the state type",
        );
    }
    let mut handlers = Vec::new();
    let mut deadline: Option<Ident> = None;
    for item in &block.items {
        let ImplItem::Fn(method) = item else { continue };
        if let Some(attr) = helper(method, "deadline") {
            if let Some(first) = &deadline {
                errors.spanned(attr, format!("only one `#[deadline]` method; `{first}` is one already"));
            }
            check_signature(method, &mut errors);
            deadline = Some(method.sig.ident.clone());
            continue;
        }
        let own_key = match helper(method, "key") {
            Some(attr) => match attr.parse_args::<Ident>() {
                Ok(k) => Some(k),
                Err(_) => {
                    errors.spanned(
                        attr,
                        "expected `#[key(field)]`: the correlation field of this handler's event",
                    );
                    None
                }
            },
            None => None,
        };
        let Some(event) = check_signature(method, &mut errors) else {
            continue;
        };
        if is_deadline(&event) {
            errors.spanned(
                &event,
                format!(
                    "`{}` takes a `Deadline`: mark it `#[deadline]` so that it runs when a scheduled deadline is due \
                     (event handlers take a `#[domain_event]`)",
                    method.sig.ident
                ),
            );
            continue;
        }
        match own_key.clone().or_else(|| key.clone()) {
            Some(key) => handlers.push(Handler {
                method: method.sig.ident.clone(),
                event,
                key,
                own_key,
            }),
            None => errors.spanned(
                &method.sig.ident,
                "no correlation key for this handler: give the process one, `#[process(name = \"...\", key = field)]`, \
                 or the method `#[key(field)]`",
            ),
        }
    }
    if !block.items.iter().any(|i| matches!(i, ImplItem::Fn(_))) {
        errors.spanned(
            &block.self_ty,
            format!("a process needs at least one event handler: {SHAPE}"),
        );
    }
    // The helper attributes are ours: remove them from the emitted block.
    for item in &mut block.items {
        if let ImplItem::Fn(method) = item {
            method
                .attrs
                .retain(|a| !a.path().is_ident("deadline") && !a.path().is_ident("key"));
        }
    }
    if let Err(error) = errors.finish() {
        let mut out = errors::with_item(error, &block);
        out.extend(crate::stubs::process(&crate::args::facade(krate.as_ref()), &block));
        return out;
    }
    let name = name.unwrap_or_else(|| LitStr::new("invalid", Span::call_site()));
    let krate = crate::args::facade(krate.as_ref());
    let private = quote!(#krate::__private);
    let self_ty = &block.self_ty;
    let mut shims = Vec::new();
    let mut entries = Vec::new();
    for h in &handlers {
        let (method, event, field) = (&h.method, &h.event, &h.key);
        let key_fn = format_ident!("__key_{}", method);
        let call_fn = format_ident!("__call_{}", method);
        let method_name = method.unraw().to_string();
        let access = quote_spanned!(field.span()=> &__event.#field);
        shims.push(quote! {
            fn #key_fn(__event: &#event) -> ::std::string::String {
                #private::process::key_of(#access)
            }
            fn #call_fn<'__a>(
                __state: &'__a mut #self_ty,
                __ctx: &'__a mut #private::process::ProcessContext,
                __event: #event,
            ) -> #private::process::BoxFuture<'__a, ::core::result::Result<(), #private::handler::HandlerError>> {
                ::std::boxed::Box::pin(<#self_ty>::#method(__state, __ctx, __event))
            }
        });
        let register = quote_spanned!(event.span()=> #private::process::ProcessHandler::new::<#event>);
        entries.push(quote! { #register(#method_name, #key_fn, #call_fn) });
    }
    // Every handler's key field has one type: `__same_key(&a.k, &b.k)` fails to type-check otherwise,
    // on the argument of the handler whose key differs (spanned on its event type).
    let same_key = if handlers.len() > 1 {
        let params = handlers.iter().enumerate().map(|(i, h)| {
            let p = format_ident!("__e{}", i);
            let ty = &h.event;
            quote!(#p: &#ty)
        });
        let first = &handlers[0].key;
        // The whole check of a handler is put on its event type (the `#[key(field)]` of a
        // handler with its own key), so the mismatch is reported on the handler that differs.
        let checks = handlers.iter().enumerate().skip(1).map(|(i, h)| {
            let p = format_ident!("__e{}", i);
            let field = &h.key;
            let span = h.own_key.as_ref().map_or_else(|| h.event.span(), Spanned::span);
            crate::spans::respan(quote!(#private::process::__same_key(&__e0.#first, &#p.#field);), span)
        });
        quote! {
            #[allow(dead_code)]
            fn __same_key_type(#(#params),*) {
                #(#checks)*
            }
        }
    } else {
        TokenStream::new()
    };
    let on_deadline = deadline.map(|method| {
        quote! {
            fn on_deadline<'__a>(
                &'__a mut self,
                __ctx: &'__a mut #private::process::ProcessContext,
                __deadline: #private::process::Deadline,
            ) -> #private::process::BoxFuture<'__a, ::core::result::Result<(), #private::handler::HandlerError>> {
                ::std::boxed::Box::pin(<#self_ty>::#method(self, __ctx, __deadline))
            }
        }
    });
    quote! {
        #block

        const _: () = {
            #(#shims)*
            #same_key

            #[automatically_derived]
            impl #private::process::ProcessManager for #self_ty {
                const NAME: &'static ::core::primitive::str = #name;

                fn handlers() -> ::std::vec::Vec<#private::process::ProcessHandler<Self>> {
                    ::std::vec![#(#entries),*]
                }

                #on_deadline
            }
        };
    }
}
