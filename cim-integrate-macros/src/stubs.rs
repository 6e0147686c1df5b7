//! Stub impls emitted beside the `compile_error!`s of an `impl`-block macro (thiserror's
//! `fallback.rs`): the trait the rest of the crate expects of the type (`HandlerSet`, `Saga`,
//! `ProcessManager`, `CommandHandlerSet`), so that registering or running it adds no error of
//! its own. The bodies never run: the crate does not compile. The payload macros' stubs are in
//! [`crate::versioning::stub_impls`].

use proc_macro2::TokenStream;
use quote::quote;
use syn::{ItemImpl, Path, Type};

/// The self type of an inherent, non-generic `impl` block: the only kind a stub can be given.
fn stub_target(block: &ItemImpl) -> Option<&Type> {
    (block.trait_.is_none() && block.generics.params.is_empty() && block.generics.where_clause.is_none())
        .then_some(&*block.self_ty)
}

/// `impl HandlerSet for T`, for `#[handlers]` and the `{Name}Handler` of a free `#[subscribe]`.
pub(crate) fn handler_set(krate: &Path, self_ty: &TokenStream) -> TokenStream {
    quote! {
        const _: () = {
            impl #krate::__private::handler::HandlerSet for #self_ty {
                fn set_name(&self) -> &::core::primitive::str {
                    ::core::unimplemented!()
                }
                fn registrations(
                    self: ::std::sync::Arc<Self>,
                ) -> ::std::vec::Vec<#krate::__private::handler::Registration> {
                    ::core::unimplemented!()
                }
            }
        };
    }
}

/// `impl HandlerSet` for the self type of a `#[handlers]` block.
pub(crate) fn handlers_block(krate: &Path, block: &ItemImpl) -> TokenStream {
    stub_target(block).map_or_else(TokenStream::new, |ty| handler_set(krate, &quote!(#ty)))
}

/// `impl Saga` for the self type of a `#[saga]` block, with its `data` if it was given.
pub(crate) fn saga(krate: &Path, block: &ItemImpl, data: Option<&Type>) -> TokenStream {
    let Some(ty) = stub_target(block) else {
        return TokenStream::new();
    };
    let data = data.map_or_else(|| quote!(()), |d| quote!(#d));
    quote! {
        const _: () = {
            impl #krate::__private::saga::Saga for #ty {
                type Data = #data;
                const NAME: &'static ::core::primitive::str = "invalid";
                fn steps() -> ::std::vec::Vec<#krate::__private::saga::Step<Self>> {
                    ::core::unimplemented!()
                }
            }
        };
    }
}

/// `impl ProcessManager` for the self type of a `#[process]` block.
pub(crate) fn process(krate: &Path, block: &ItemImpl) -> TokenStream {
    let Some(ty) = stub_target(block) else {
        return TokenStream::new();
    };
    quote! {
        const _: () = {
            impl #krate::__private::process::ProcessManager for #ty {
                const NAME: &'static ::core::primitive::str = "invalid";
                fn handlers() -> ::std::vec::Vec<#krate::__private::process::ProcessHandler<Self>> {
                    ::core::unimplemented!()
                }
            }
        };
    }
}

/// `impl CommandHandlerSet` for the self type of a `#[command]` block.
pub(crate) fn command_handlers(krate: &Path, block: &ItemImpl) -> TokenStream {
    let Some(ty) = stub_target(block) else {
        return TokenStream::new();
    };
    quote! {
        const _: () = {
            impl #krate::__private::command::CommandHandlerSet for #ty {
                fn set_name(&self) -> &::core::primitive::str {
                    ::core::unimplemented!()
                }
                fn command_registrations(
                    self: ::std::sync::Arc<Self>,
                ) -> ::std::vec::Vec<#krate::__private::command::CommandRegistration> {
                    ::core::unimplemented!()
                }
            }
        };
    }
}
