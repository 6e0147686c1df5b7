//! Parsing: the attribute's arguments and the annotated item, into typed views that keep the
//! original syn nodes for spans. Nothing here judges combinations; see `validate`.

use crate::args;
use crate::errors::Errors;
use proc_macro2::TokenStream;
use syn::{Ident, Item, ItemStruct, LitStr, Path};

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
    pub(crate) subject: Option<LitStr>,
    pub(crate) version: Option<LitStr>,
    pub(crate) previous: Option<(Ident, Vec<Path>)>,
    pub(crate) krate: Option<Path>,
    /// The keys given, including those whose value was rejected.
    pub(crate) present: Vec<String>,
}

impl Args {
    /// Parses the arguments, recording every mistake in `errors`.
    pub(crate) fn parse(attr: TokenStream, errors: &mut Errors) -> Self {
        let mut args = Self::default();
        let present = args::parse(attr, "domain_event", KEYS, errors, |key, value| {
            let name = key.to_string();
            match name.as_str() {
                SUBJECT => args.subject = Some(args::string(value, "subject = \"document.created\"")?),
                VERSION => args.version = Some(args::string(value, "version = \"1.0\"")?),
                PREVIOUS => {
                    let paths = args::bracketed_paths(
                        value,
                        "expected the older versions in brackets, oldest first, e.g. `previous = [DocumentCreatedV1]`",
                    )?;
                    args.previous = Some((key.clone(), paths));
                }
                CRATE => args.krate = Some(args::krate(value)?),
                // `args::parse` passes only the known keys.
                _ => {}
            }
            Ok(())
        });
        Self { present, ..args }
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
