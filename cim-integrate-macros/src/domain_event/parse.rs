//! Parsing: the attribute's arguments and the annotated item, into typed views that keep the
//! original syn nodes for spans. Nothing here judges combinations; see `validate`.

use crate::args::{self, Attr};
use crate::errors::Errors;
use proc_macro2::TokenStream;
use syn::{Item, ItemStruct, LitStr, Path};

/// `subject = "document.created"`: where the event is published; marks the current version.
pub(crate) const SUBJECT: &str = "subject";
/// `version = "2.0"`: the wire version of this struct.
pub(crate) const VERSION: &str = "version";
/// `previous = [DocumentCreatedV1]`: the older versions, oldest first.
pub(crate) const PREVIOUS: &str = "previous";
/// `crate = "::cim_integrate"`: the path of the facade crate.
pub(crate) const CRATE: &str = "crate";
/// Every argument, in the order the documentation gives them.
pub(crate) const KEYS: &[&str] = &[SUBJECT, VERSION, PREVIOUS, CRATE];

/// The arguments of `#[domain_event(...)]`, each with its key for spans.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) subject: Attr<LitStr>,
    pub(crate) version: Attr<LitStr>,
    pub(crate) previous: Attr<Vec<Path>>,
    pub(crate) krate: Attr<Path>,
}

impl Args {
    /// Parses the arguments, recording every mistake in `errors`.
    pub(crate) fn parse(attr: TokenStream, errors: &mut Errors) -> Self {
        let mut args = Self::default();
        args::parse(attr, "domain_event", KEYS, errors, |key, value| {
            match key.to_string().as_str() {
                SUBJECT => args
                    .subject
                    .set(key, args::string(value, "subject = \"document.created\"")),
                VERSION => args.version.set(key, args::string(value, "version = \"1.0\"")),
                PREVIOUS => args.previous.set(
                    key,
                    args::bracketed_paths(
                        value,
                        "expected the older versions in brackets, oldest first, e.g. `previous = [DocumentCreatedV1]`",
                    ),
                ),
                // `args::parse` passes only the known keys: this is `crate`.
                _ => args.krate.set(key, args::krate(value)),
            }
        });
        args
    }
}

/// Parses the annotated item; anything but a struct is an error spanned on its keyword.
pub(crate) fn item(item: TokenStream, errors: &mut Errors) -> Option<ItemStruct> {
    const USE: &str = "`#[domain_event]` goes on a struct with named fields";
    let item = match syn::parse2::<Item>(item) {
        Ok(item) => item,
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    match item {
        Item::Struct(item) => return Some(item),
        Item::Enum(item) => errors.spanned(
            item.enum_token,
            format!(
                "{USE}, not an enum: every version of an event is one JSON object of fields beside its `version` tag; \
                 declare one event struct per case (e.g. `DocumentRenamed`, `DocumentMoved`)"
            ),
        ),
        Item::Union(item) => errors.spanned(item.union_token, format!("{USE}, not a union")),
        Item::Fn(item) => errors.spanned(
            item.sig.fn_token,
            format!("{USE}, not a function; to react to an event, use `#[subscribe(\"domain.event\")]`"),
        ),
        other => errors.spanned(
            other,
            format!("{USE}, e.g. `pub struct DocumentCreated {{ pub title: String }}`"),
        ),
    }
    None
}
