//! Expansion: the struct with serde derives, then its trait impls inside `const _: () = { ... };`.

use super::validate::{Event, Role};
use crate::versioning;
use proc_macro2::TokenStream;
use quote::quote;

/// The struct and its impls: `PayloadVersion` always; `Versioned` and `DomainEvent` for the
/// current version. `tokens` is the struct as written (`event.item` parsed from it, unchanged):
/// emitted as it came, not re-tokenised from the syntax tree.
pub(crate) fn event(event: &Event, tokens: TokenStream) -> TokenStream {
    let Event {
        item,
        version,
        role,
        krate,
    } = event;
    let ident = &item.ident;
    let derives = versioning::serde_derives(krate);
    let payload_version = versioning::payload_version_impl(krate, ident, version);
    let current = match role {
        Role::Frozen => TokenStream::new(),
        Role::Current { subject, previous } => {
            let versioned = versioning::versioned_impl(krate, ident, version, previous);
            quote! {
                #versioned

                #[automatically_derived]
                impl #krate::__private::event::DomainEvent for #ident {
                    const SUBJECT: &'static ::core::primitive::str = #subject;
                }
            }
        }
    };
    quote! {
        #derives
        #tokens

        const _: () = {
            #payload_version
            #current
        };
    }
}
