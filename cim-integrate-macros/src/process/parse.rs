//! Parsing: `#[process(...)]`'s arguments and the `impl` block, into typed views that keep the
//! syn nodes for spans. Rules across them are in `validate`.

use crate::args;
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
    pub(crate) name: Option<LitStr>,
    pub(crate) key: Option<Ident>,
    pub(crate) krate: Option<Path>,
    /// The keys given, including those whose value was rejected.
    pub(crate) present: Vec<String>,
}

impl Args {
    /// Parses the arguments, recording every mistake in `errors`.
    pub(crate) fn parse(attr: TokenStream, errors: &mut Errors) -> Self {
        let mut out = Self::default();
        let present = args::parse(attr, "process", KEYS, errors, |k, value| {
            match k.to_string().as_str() {
                NAME => {
                    let lit = args::string(value, "name = \"onboarding\"")?;
                    crate::subject::check_token(&lit, "process name")?;
                    out.name = Some(lit);
                }
                KEY => {
                    out.key = Some(syn::parse2::<Ident>(value.clone()).map_err(|_| {
                        syn::Error::new_spanned(
                            value,
                            "expected the name of the correlation field of the handled events, e.g. `key = person_id`",
                        )
                    })?);
                }
                _ => out.krate = Some(args::krate(value)?),
            }
            Ok(())
        });
        Self { present, ..out }
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
