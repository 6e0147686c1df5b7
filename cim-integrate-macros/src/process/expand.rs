//! Expansion: the block, then inside `const _: () = { ... };` one key function and one call shim
//! per handler, the check that every key has one type, and the `ProcessManager` impl.

use super::validate::Process;
use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;

/// The block and its `ProcessManager` impl.
pub(crate) fn process(process: &Process) -> TokenStream {
    let Process {
        block,
        name,
        krate,
        handlers,
        deadline,
    } = process;
    let private = quote!(#krate::__private);
    let self_ty = &block.self_ty;
    let mut shims = Vec::new();
    let mut entries = Vec::new();
    for h in handlers {
        let (method, event, field) = (&h.method, &h.event, &h.key);
        let key_fn = format_ident!("__key_{}", method);
        let call_fn = format_ident!("__call_{}", method);
        let method_name = method.unraw().to_string();
        let boxed = boxed_call(self_ty, method, quote!(__state, __ctx, __event), h.output);
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
                #boxed
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
    let on_deadline = deadline.as_ref().map(|(method, output)| {
        let boxed = boxed_call(self_ty, method, quote!(self, __ctx, __deadline), *output);
        quote! {
            fn on_deadline<'__a>(
                &'__a mut self,
                __ctx: &'__a mut #private::process::ProcessContext,
                __deadline: #private::process::Deadline,
            ) -> #private::process::BoxFuture<'__a, ::core::result::Result<(), #private::handler::HandlerError>> {
                #boxed
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

/// `Box::pin(Type::method(args))`: the call on the method's name (a wrong parameter is reported
/// there), the boxing on its return type `output` (where the future's output must be
/// `Result<(), HandlerError>`, so a wrong one is reported there).
fn boxed_call(self_ty: &syn::Type, method: &syn::Ident, args: TokenStream, output: Span) -> TokenStream {
    let invoke = quote_spanned!(method.span()=> <#self_ty>::#method(#args));
    let pin = crate::spans::respan(quote!(::std::boxed::Box::pin), output);
    quote_spanned!(output=> #pin(#invoke))
}
