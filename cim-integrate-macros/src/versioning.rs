//! The versioning machinery shared by every macro that declares a versioned wire payload
//! (`#[domain_event]` now, `#[command]` later): checking a payload struct and its version
//! literal, and expanding the serde derives, `PayloadVersion`, and `Versioned` with its decode
//! chain and the compile-time checks of version order.
//!
//! Each version is its own struct. The current version lists the older ones, oldest first; each
//! older version upcasts into the next through `From`, and the last into the current one:
//!
//! ```text
//! previous = [V1, V2]      V1 --From--> V2 --From--> Current
//! ```

use crate::args::Attr;
use crate::errors::Errors;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::{ToTokens, quote, quote_spanned};
use syn::ext::IdentExt;
use syn::spanned::Spanned;
use syn::{Attribute, Fields, Ident, ItemStruct, LitStr, Path};

/// The JSON field that carries the version (`cim_integrate_runtime::event::VERSION_TAG`).
const VERSION_TAG: &str = "version";

/// Checks a version literal: `MAJOR.MINOR`, decimal, no signs or leading zeros, as
/// `cim_integrate_runtime::event::parse_version` accepts.
pub(crate) fn check_version(lit: &LitStr) -> syn::Result<(u32, u32)> {
    let value = lit.value();
    parse_version(&value).ok_or_else(|| {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid version `{value}`: expected `MAJOR.MINOR` in decimal without leading zeros, e.g. `\"2.0\"`"
            ),
        )
    })
}

/// Rule: a payload declares a valid version. `given` says the key was written (its wrong value is
/// then already reported, so it is not also "missing"); `missing` is the message otherwise.
pub(crate) fn version_rule(version: &Attr<LitStr>, missing: &str, errors: &mut Errors) -> Option<LitStr> {
    let given = version.given();
    match version.get() {
        Some(lit) => match check_version(lit) {
            Ok(_) => Some(lit.clone()),
            Err(error) => {
                errors.push(error);
                None
            }
        },
        None if given => None,
        None => {
            errors.push(syn::Error::new(Span::call_site(), missing));
            None
        }
    }
}

fn parse_version(s: &str) -> Option<(u32, u32)> {
    let (major, minor) = s.split_once('.')?;
    Some((number(major)?, number(minor)?))
}

fn number(s: &str) -> Option<u32> {
    let digits = !s.is_empty() && s.len() <= 9 && s.bytes().all(|b| b.is_ascii_digit());
    let leading_zero = s.len() > 1 && s.starts_with('0');
    if digits && !leading_zero { s.parse().ok() } else { None }
}

/// Checks that the struct can be a wire payload: named fields, no generics, no field that
/// collides with the version tag, no serde derive or container attribute that would fight the
/// generated ones. `what` names the thing in messages, e.g. "domain events".
pub(crate) fn check_payload_struct(item: &ItemStruct, what: &str, errors: &mut Errors) {
    let generics = &item.generics;
    if !generics.params.is_empty() {
        errors.spanned(
            &generics.params,
            format!(
                "{what} cannot be generic: each version is one fixed wire shape that every subscriber decodes; \
                 replace the parameters with concrete types"
            ),
        );
    } else if let Some(clause) = &generics.where_clause {
        errors.spanned(clause, format!("{what} cannot have a `where` clause; remove it"));
    }
    match &item.fields {
        Fields::Named(fields) => {
            for field in &fields.named {
                check_field(field, errors);
            }
        }
        Fields::Unnamed(fields) => errors.spanned(
            fields,
            format!(
                "{what} need named fields: the payload is a JSON object, `{{\"version\":\"1.0\", \"name\": ...}}`; \
                 write `struct {} {{ name: Type }}`",
                item.ident
            ),
        ),
        Fields::Unit => errors.spanned(
            &item.ident,
            format!(
                "{what} need a braced struct: the payload is a JSON object; write `struct {} {{}}` for an event without fields",
                item.ident
            ),
        ),
    }
    for attr in &item.attrs {
        if attr.path().is_ident("derive") {
            check_derive(attr, errors);
        } else if attr.path().is_ident("serde") {
            for key in serde_keys(attr) {
                let fix = match key.to_string().as_str() {
                    "deny_unknown_fields" => "it would reject the `version` tag beside the fields; remove it",
                    "transparent" | "from" | "into" | "try_from" => {
                        "the payload must stay a JSON object of the struct's own fields; remove it"
                    }
                    "tag" | "untagged" | "content" => "the version tag is added by the macro; remove it",
                    "crate" => "the macro sets serde's crate path; use the macro's `crate = \"...\"` argument instead",
                    _ => continue,
                };
                errors.spanned(&key, format!("`#[serde({key})]` cannot be used here: {fix}"));
            }
        }
    }
}

fn check_field(field: &syn::Field, errors: &mut Errors) {
    let renamed = field
        .attrs
        .iter()
        .filter(|a| a.path().is_ident("serde"))
        .find_map(serde_rename);
    let collides = match &renamed {
        Some(lit) => lit.value() == VERSION_TAG,
        None => field.ident.as_ref().is_some_and(|i| i.unraw() == VERSION_TAG),
    };
    if collides {
        let spanned: &dyn ToTokens = match (&renamed, &field.ident) {
            (Some(lit), _) => lit,
            (None, Some(ident)) => ident,
            (None, None) => field,
        };
        errors.spanned(
            spanned,
            "this field would be serialised as `version`, which is the version tag's place in the payload; \
             rename it, e.g. `schema_version`, or keep the Rust name with `#[serde(rename = \"...\")]`",
        );
    }
}

fn check_derive(attr: &Attribute, errors: &mut Errors) {
    let Ok(paths) = attr.parse_args_with(syn::punctuated::Punctuated::<Path, syn::Token![,]>::parse_terminated) else {
        return;
    };
    for path in paths {
        if let Some(last) = path.segments.last()
            && (last.ident == "Serialize" || last.ident == "Deserialize")
        {
            errors.spanned(
                &path,
                format!(
                    "remove `{}` from this derive: the macro derives it, with the facade's serde",
                    last.ident
                ),
            );
        }
    }
}

/// The top-level keys of a `#[serde(...)]` attribute, e.g. `rename_all` and `deny_unknown_fields`
/// in `#[serde(rename_all = "camelCase", deny_unknown_fields)]`.
fn serde_keys(attr: &Attribute) -> Vec<Ident> {
    let Ok(list) = attr.meta.require_list() else {
        return Vec::new();
    };
    let mut keys = Vec::new();
    let mut at_key = true;
    for tt in list.tokens.clone() {
        match tt {
            TokenTree::Ident(ident) if at_key => {
                keys.push(ident);
                at_key = false;
            }
            TokenTree::Punct(p) if p.as_char() == ',' => at_key = true,
            _ => at_key = false,
        }
    }
    keys
}

/// The `"..."` of `#[serde(rename = "...")]`.
fn serde_rename(attr: &Attribute) -> Option<LitStr> {
    let Ok(list) = attr.meta.require_list() else {
        return None;
    };
    let tokens: Vec<TokenTree> = list.tokens.clone().into_iter().collect();
    tokens.windows(3).find_map(|w| match w {
        [TokenTree::Ident(key), TokenTree::Punct(eq), TokenTree::Literal(lit)]
            if key == "rename" && eq.as_char() == '=' =>
        {
            syn::parse2::<LitStr>(lit.to_token_stream()).ok()
        }
        _ => None,
    })
}

/// Checks the `previous` list of `current`: no entry twice, not `current` itself.
pub(crate) fn check_previous(current: &Ident, previous: &[Path], errors: &mut Errors) {
    let mut seen: Vec<String> = Vec::new();
    for path in previous {
        let text = path.to_token_stream().to_string();
        if path.is_ident(current) || path.is_ident("Self") {
            errors.spanned(
                path,
                format!("`{current}` is the current version; `previous` lists only its older versions"),
            );
        } else if seen.contains(&text) {
            errors.spanned(
                path,
                format!("`{text}` is listed twice in `previous`; list each older version once"),
            );
        } else {
            seen.push(text);
        }
    }
}

/// The serde derives and `#[serde(crate = ...)]` pointing at the facade's serde.
pub(crate) fn serde_derives(krate: &Path) -> TokenStream {
    let serde_crate = format!("{}::__private::serde", path_string(krate));
    quote! {
        #[derive(#krate::__private::serde::Serialize, #krate::__private::serde::Deserialize)]
        #[serde(crate = #serde_crate)]
    }
}

fn path_string(path: &Path) -> String {
    path.to_token_stream().to_string().replace(' ', "")
}

/// What a payload is, for its stub impls.
pub(crate) enum StubRole<'a> {
    /// A frozen older version: `PayloadVersion` only.
    Frozen,
    /// The current version of an event: `Versioned` and `DomainEvent` too.
    Event(Option<&'a LitStr>),
    /// The current version of a command: `Versioned` and `Command` too.
    Command(Option<&'a LitStr>),
    /// The current version of a command's answer: `Versioned` and `CommandAnswer` too.
    Answer,
}

/// The stub impls emitted beside the `compile_error!`s of a payload whose declaration has an
/// error (thiserror's `fallback.rs`): the traits the rest of the crate expects of it (serde,
/// `PayloadVersion`, and for a current version `Versioned` and `DomainEvent` or `Command`), so
/// that one mistake in the declaration is one error, not one more per handler, publish or
/// `previous` list using the type. Their bodies never run: the crate does not compile.
///
/// A generic struct gets none (its error says to remove the parameters); a serde trait the
/// struct derives itself is not stubbed again.
pub(crate) fn stub_impls(krate: &Path, item: &syn::Item, version: Option<&LitStr>, role: &StubRole) -> TokenStream {
    let (ident, generics, attrs) = match item {
        syn::Item::Struct(s) => (&s.ident, &s.generics, &s.attrs),
        syn::Item::Enum(e) => (&e.ident, &e.generics, &e.attrs),
        syn::Item::Union(u) => (&u.ident, &u.generics, &u.attrs),
        _ => return TokenStream::new(),
    };
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        return TokenStream::new();
    }
    let private = quote!(#krate::__private);
    let serde = quote!(#private::serde);
    let derives = |name: &str| {
        attrs.iter().filter(|a| a.path().is_ident("derive")).any(|a| {
            a.parse_args_with(syn::punctuated::Punctuated::<Path, syn::Token![,]>::parse_terminated)
                .is_ok_and(|paths| paths.iter().any(|p| p.segments.last().is_some_and(|s| s.ident == name)))
        })
    };
    let mut out = TokenStream::new();
    if !derives("Serialize") {
        out.extend(quote! {
            impl #serde::Serialize for #ident {
                fn serialize<__S: #serde::Serializer>(
                    &self,
                    _: __S,
                ) -> ::core::result::Result<__S::Ok, __S::Error> {
                    ::core::unimplemented!()
                }
            }
        });
    }
    if !derives("Deserialize") {
        out.extend(quote! {
            impl<'de> #serde::Deserialize<'de> for #ident {
                fn deserialize<__D: #serde::Deserializer<'de>>(
                    _: __D,
                ) -> ::core::result::Result<Self, __D::Error> {
                    ::core::unimplemented!()
                }
            }
        });
    }
    let version = version.map_or_else(|| quote!("0.0"), ToTokens::to_token_stream);
    out.extend(quote! {
        impl #private::event::PayloadVersion for #ident {
            const VERSION: &'static ::core::primitive::str = #version;
        }
    });
    let subject = |s: Option<&LitStr>, placeholder: &str| match s {
        Some(s) if crate::subject::check_concrete(s, crate::subject::Concrete::Event).is_ok() => s.to_token_stream(),
        _ => quote!(#placeholder),
    };
    let current = match role {
        StubRole::Frozen => return quote!(const _: () = { #out };),
        StubRole::Event(s) => {
            let s = subject(*s, "invalid.event");
            quote! {
                impl #private::event::DomainEvent for #ident {
                    const SUBJECT: &'static ::core::primitive::str = #s;
                    const __STUB: ::core::primitive::bool = true;
                }
            }
        }
        StubRole::Command(s) => {
            let s = subject(*s, "invalid.command");
            quote! {
                impl #private::command::Command for #ident {
                    const SUBJECT: &'static ::core::primitive::str = #s;
                    type Answer = ();
                }
            }
        }
        StubRole::Answer => quote! {
            impl #private::command::VersionedAnswer for #ident {}
        },
    };
    let type_name = ident.unraw().to_string();
    quote! {
        const _: () = {
            #out
            impl #private::event::Versioned for #ident {
                const TYPE_NAME: &'static ::core::primitive::str = #type_name;
                const VERSIONS: &'static [&'static ::core::primitive::str] = &[#version];
                fn decode_version(
                    _: &::core::primitive::str,
                    _: &[::core::primitive::u8],
                ) -> ::core::result::Result<::core::option::Option<Self>, #private::event::DecodeError> {
                    ::core::unimplemented!()
                }
            }
            #current
        };
    }
}

/// `impl PayloadVersion for #ident`.
pub(crate) fn payload_version_impl(krate: &Path, ident: &Ident, version: &LitStr) -> TokenStream {
    quote! {
        #[automatically_derived]
        impl #krate::__private::event::PayloadVersion for #ident {
            const VERSION: &'static ::core::primitive::str = #version;
        }
    }
}

/// `impl Versioned for #ident`: the version list, the decode chain over `previous` (oldest
/// first) and the current version, `visit_versions` over the same chain, and one `const` check
/// per step that versions go up.
///
/// Each step's code is spanned on its entry in `previous`, so a missing `From` impl or an
/// out-of-order version is reported there.
pub(crate) fn versioned_impl(krate: &Path, ident: &Ident, version: &LitStr, previous: &[Path]) -> TokenStream {
    let event = crate::args::extend_path(krate, &["__private", "event"]);
    let type_name = ident.unraw().to_string();
    let chain: Vec<TokenStream> = previous
        .iter()
        .map(|p| p.to_token_stream())
        .chain([quote!(Self)])
        .collect();
    let spans: Vec<Span> = previous.iter().map(Spanned::span).chain([version.span()]).collect();
    let version_of = |i: usize| -> TokenStream {
        if i + 1 == chain.len() {
            version.to_token_stream()
        } else {
            let ty = &chain[i];
            quote_spanned!(spans[i]=> <#ty as #event::PayloadVersion>::VERSION)
        }
    };
    let versions: Vec<TokenStream> = (0..chain.len()).map(version_of).collect();
    let (oldest, oldest_version) = (&chain[0], &versions[0]);
    let steps = (1..chain.len()).map(|i| {
        let (older, newer, newer_version) = (&chain[i - 1], &chain[i], &versions[i]);
        quote_spanned! {spans[i - 1]=>
            let __decoded = #event::decode_step::<#older, #newer>(
                __decoded, #newer_version, Self::TYPE_NAME, __version, __payload,
            )?;
        }
    });
    // Older versions through `PayloadVersion` by path, like their `VERSION`: an entry that is not
    // a version is then the one error already reported on it.
    let visits = previous
        .iter()
        .zip(&spans)
        .map(|(ty, span)| quote_spanned!(*span=> <#ty as #event::PayloadVersion>::__visit(__visitor);));
    let names: Vec<String> = previous.iter().map(path_string).chain([type_name.clone()]).collect();
    let order_checks = (1..chain.len()).map(|i| {
        let (older, newer) = (&versions[i - 1], &versions[i]);
        let (older_name, newer_name) = (&names[i - 1], &names[i]);
        let equal = format!(
            "duplicate version: `{older_name}` and `{newer_name}` have the same `version`; each version of `{type_name}` needs its own"
        );
        let descending = format!(
            "`previous` lists the older versions of `{type_name}` oldest first, each lower than the next: \
             the version of `{older_name}` must be lower than that of `{newer_name}`"
        );
        // The whole call on the entry, the path included: a failed check is reported there.
        let check = crate::spans::respan(quote!(#event::check_version_order), spans[i]);
        quote_spanned! {spans[i]=>
            const _: () = #check(#older, #newer, #equal, #descending);
        }
    });
    quote! {
        #[automatically_derived]
        impl #event::Versioned for #ident {
            const TYPE_NAME: &'static ::core::primitive::str = #type_name;
            const VERSIONS: &'static [&'static ::core::primitive::str] = &[#(#versions),*];

            fn decode_version(
                __version: &::core::primitive::str,
                __payload: &[::core::primitive::u8],
            ) -> ::core::result::Result<::core::option::Option<Self>, #event::DecodeError> {
                let __decoded = #event::decode_oldest::<#oldest>(
                    #oldest_version, Self::TYPE_NAME, __version, __payload,
                )?;
                #(#steps)*
                ::core::result::Result::Ok(__decoded)
            }

            fn visit_versions<__V: #event::VersionVisitor>(__visitor: &mut __V) {
                #(#visits)*
                __visitor.visit::<Self>();
            }
        }

        #(#order_checks)*
    }
}

#[cfg(test)]
mod tests {
    use super::parse_version;

    #[test]
    fn versions() {
        assert_eq!(parse_version("2.13"), Some((2, 13)));
        assert_eq!(parse_version("0.1"), Some((0, 1)));
        for bad in [
            "2",
            "v2.0",
            "02.0",
            "2.01",
            "2.0.0",
            "-1.0",
            "",
            ".",
            "1234567890.0",
            "2.x",
        ] {
            assert_eq!(parse_version(bad), None, "{bad}");
        }
    }
}
