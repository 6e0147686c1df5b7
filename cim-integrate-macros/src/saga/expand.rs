//! Expansion: the impl block as written (minus `#[step]`), then the `Saga` impl with its step
//! table inside `const _: () = { ... };`. The loop that runs the table is the runtime's.

use super::validate::{Compensation, Saga, Step};
use proc_macro2::{Span, TokenStream};
use quote::{quote, quote_spanned};
use syn::{Ident, Path, Type};

/// The impl block and the `Saga` impl.
pub(crate) fn saga(saga: &Saga) -> TokenStream {
    let Saga {
        item,
        self_ty,
        data,
        name,
        steps,
        krate,
    } = saga;
    let steps = steps.iter().map(|s| step(krate, self_ty, s));
    quote! {
        #item

        const _: () = {
            #[automatically_derived]
            impl #krate::__private::saga::Saga for #self_ty {
                type Data = #data;
                const NAME: &'static ::core::primitive::str = #name;
                fn steps() -> ::std::vec::Vec<#krate::__private::saga::Step<Self>> {
                    ::std::vec![#(#steps),*]
                }
            }
        };
    }
}

/// `|saga, ctx| Box::pin(Type::method(saga, ctx))`: the call on the method's name, so that a
/// wrong parameter is reported there, and the boxing (where the future's output must be
/// `Result<(), HandlerError>`) on its return type `output`, so that a wrong one is reported there.
fn call(self_ty: &Type, method: &Ident, output: Span) -> TokenStream {
    let invoke = quote_spanned!(method.span()=> <#self_ty>::#method(__saga, __ctx));
    let closure = crate::spans::respan(quote!(|__saga, __ctx| ::std::boxed::Box::pin), output);
    quote_spanned!(output=> #closure(#invoke))
}

fn millis(ms: u64) -> TokenStream {
    quote!(::core::time::Duration::from_millis(#ms))
}

fn step(krate: &Path, self_ty: &Type, step: &Step) -> TokenStream {
    let name = &step.name;
    let run = call(self_ty, &step.method, step.method_span);
    let mut out = quote!(#krate::__private::saga::Step::new(#name, #run));
    match &step.compensation {
        Compensation::By(method, span) => {
            let label = syn::ext::IdentExt::unraw(method).to_string();
            let run = call(self_ty, method, *span);
            out.extend(quote!(.compensate(#label, #run)));
        }
        Compensation::None(reason) => out.extend(quote!(.no_compensation(#reason))),
    }
    if let Some(ms) = step.timeout_ms {
        let d = millis(ms);
        out.extend(quote!(.timeout(#d)));
    }
    if let Some(n) = step.attempts {
        out.extend(quote!(.attempts(#n)));
    }
    if let Some(ms) = step.compensation_timeout_ms {
        let d = millis(ms);
        out.extend(quote!(.compensation_timeout(#d)));
    }
    if let Some(n) = step.compensation_attempts {
        out.extend(quote!(.compensation_attempts(#n)));
    }
    out
}
