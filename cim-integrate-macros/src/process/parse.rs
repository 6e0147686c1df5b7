//! Parsing: `#[process(...)]`'s arguments and the `impl` block, into typed views that keep the
//! syn nodes for spans. Rules across them are in `validate`.

use crate::args::{self, Attr};
use crate::errors::Errors;
use proc_macro2::{Span, TokenStream};
use syn::{Ident, ItemImpl, LitStr, Path};

/// `name = "onboarding"`: the process's name (buckets, durable names).
pub(crate) const NAME: &str = "name";
/// `key = person_id`: the correlation field of the handled events.
pub(crate) const KEY: &str = "key";
/// `crate = "::cim_integrate"`: the path of the facade crate.
pub(crate) const CRATE: &str = "crate";
/// Every `#[process]` argument.
pub(crate) const KEYS: &[&str] = &[NAME, KEY, CRATE];

/// `#[process(...)]`'s arguments.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Attr<LitStr>,
    pub(crate) key: Attr<Ident>,
    pub(crate) krate: Attr<Path>,
}

impl Args {
    /// Parses the arguments, recording every mistake in `errors`.
    pub(crate) fn parse(attr: TokenStream, errors: &mut Errors) -> Self {
        let mut out = Self::default();
        args::parse(attr, "process", KEYS, errors, |k, value| match k.to_string().as_str() {
            NAME => out
                .name
                .set(k, args::token(value, "name = \"onboarding\"", "process name")),
            KEY => out.key.set(
                k,
                args::literal(
                    value,
                    "the name of the correlation field of the handled events, e.g. `key = person_id`",
                ),
            ),
            // `args::parse` passes only the known keys: this is `crate`.
            _ => out.krate.set(k, args::krate(value)),
        });
        out
    }
}

/// Parses the annotated item: an `impl` block, or an error.
pub(crate) fn item(item: TokenStream, errors: &mut Errors) -> Option<ItemImpl> {
    if let Ok(block) = syn::parse2::<ItemImpl>(item) {
        return Some(block);
    }
    errors.push(syn::Error::new(
        Span::call_site(),
        "`#[process]` goes on the `impl` block of the process state: `#[process(name = \"onboarding\", key = person_id)] impl Onboarding { ... }`",
    ));
    None
}
