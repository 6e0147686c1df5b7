//! Parsing: `#[saga(...)]`'s arguments, the `impl` block, and each method's `#[step(...)]`, into
//! typed views that keep the syn nodes for spans. Rules across them are in `validate`.

use crate::args::{self, Attr};
use crate::errors::Errors;
use proc_macro2::TokenStream;
use syn::{Attribute, Ident, ImplItem, ImplItemFn, Item, ItemImpl, LitStr, Path, Type};

/// `name = "document_publishing"`: the saga's name (default: the type's name in snake case).
pub(crate) const NAME: &str = "name";
/// `data = PublishingData`: the persisted data type.
pub(crate) const DATA: &str = "data";
/// `crate = "::cim_integrate"`: the path of the facade crate.
pub(crate) const CRATE: &str = "crate";
/// Every `#[saga]` argument.
pub(crate) const KEYS: &[&str] = &[NAME, DATA, CRATE];

/// `compensate = "method"`: the method that undoes the step.
pub(crate) const COMPENSATE: &str = "compensate";
/// `no_compensation = "reason"`: the step needs none.
pub(crate) const NO_COMPENSATION: &str = "no_compensation";
/// `timeout = "30s"`: one attempt's limit.
pub(crate) const TIMEOUT: &str = "timeout";
/// `attempts = 3`: attempts before the step fails.
pub(crate) const ATTEMPTS: &str = "attempts";
/// `compensation_timeout = "30s"`.
pub(crate) const COMPENSATION_TIMEOUT: &str = "compensation_timeout";
/// `compensation_attempts = 5`.
pub(crate) const COMPENSATION_ATTEMPTS: &str = "compensation_attempts";
/// Every `#[step]` argument.
pub(crate) const STEP_KEYS: &[&str] = &[
    NAME,
    COMPENSATE,
    NO_COMPENSATION,
    TIMEOUT,
    ATTEMPTS,
    COMPENSATION_TIMEOUT,
    COMPENSATION_ATTEMPTS,
];

/// The marker attribute of steps.
pub(crate) const STEP: &str = "step";

/// `#[saga(...)]`'s arguments.
#[derive(Default)]
pub(crate) struct Args {
    pub(crate) name: Attr<LitStr>,
    pub(crate) data: Attr<Type>,
    pub(crate) krate: Attr<Path>,
}

impl Args {
    pub(crate) fn parse(attr: TokenStream, errors: &mut Errors) -> Self {
        let mut args = Self::default();
        args::parse(attr, "saga", KEYS, errors, |key, value| {
            match key.to_string().as_str() {
                NAME => args
                    .name
                    .set(key, args::string(value, "name = \"document_publishing\"")),
                DATA => args.data.set(
                    key,
                    args::literal(value, "the saga's data type, e.g. `data = PublishingData`"),
                ),
                // `args::parse` passes only the known keys: this is `crate`.
                _ => args.krate.set(key, args::krate(value)),
            }
        });
        args
    }
}

pub(crate) use crate::args::{CountArg, DurationArg};

/// One method's `#[step(...)]`.
pub(crate) struct StepArgs {
    /// The attribute, for spans.
    pub(crate) attr: Attribute,
    pub(crate) name: Attr<LitStr>,
    pub(crate) compensate: Attr<LitStr>,
    pub(crate) no_compensation: Attr<LitStr>,
    pub(crate) timeout: Attr<DurationArg>,
    pub(crate) attempts: Attr<CountArg>,
    pub(crate) compensation_timeout: Attr<DurationArg>,
    pub(crate) compensation_attempts: Attr<CountArg>,
}

impl StepArgs {
    fn parse(attr: Attribute, errors: &mut Errors) -> Self {
        let mut step = Self {
            attr: attr.clone(),
            name: Attr::default(),
            compensate: Attr::default(),
            no_compensation: Attr::default(),
            timeout: Attr::default(),
            attempts: Attr::default(),
            compensation_timeout: Attr::default(),
            compensation_attempts: Attr::default(),
        };
        let tokens = match &attr.meta {
            syn::Meta::Path(_) => TokenStream::new(),
            syn::Meta::List(list) => list.tokens.clone(),
            syn::Meta::NameValue(nv) => {
                errors.spanned(
                    nv,
                    "expected `#[step(compensate = \"method\")]` or `#[step(no_compensation = \"reason\")]`",
                );
                return step;
            }
        };
        args::parse(tokens, STEP, STEP_KEYS, errors, |key, value| {
            match key.to_string().as_str() {
                NAME => step.name.set(key, args::string(value, "name = \"publish\"")),
                COMPENSATE => step
                    .compensate
                    .set(key, args::string(value, "compensate = \"unpublish\"")),
                NO_COMPENSATION => step
                    .no_compensation
                    .set(key, args::string(value, "no_compensation = \"read-only validation\"")),
                TIMEOUT => step.timeout.set(key, args::duration(value, TIMEOUT)),
                ATTEMPTS => step.attempts.set(key, args::count(value, ATTEMPTS)),
                COMPENSATION_TIMEOUT => step
                    .compensation_timeout
                    .set(key, args::duration(value, COMPENSATION_TIMEOUT)),
                // `args::parse` passes only the known keys: this is `compensation_attempts`.
                _ => step
                    .compensation_attempts
                    .set(key, args::count(value, COMPENSATION_ATTEMPTS)),
            }
        });
        step
    }
}

/// A method of the impl block, with its `#[step]` (if any) taken off.
pub(crate) struct Method {
    pub(crate) func: ImplItemFn,
    pub(crate) step: Option<StepArgs>,
}

/// The annotated impl block (with every `#[step]` removed) and its methods.
pub(crate) struct Parsed {
    pub(crate) item: ItemImpl,
    pub(crate) methods: Vec<Method>,
}

/// Parses the item; anything but an inherent impl block is an error.
pub(crate) fn item(item: TokenStream, errors: &mut Errors) -> Option<Parsed> {
    const USE: &str =
        "`#[saga]` goes on an inherent `impl` block whose `async fn`s marked `#[step(...)]` are the steps";
    let item = match syn::parse2::<Item>(item) {
        Ok(Item::Impl(item)) => item,
        Ok(Item::Struct(s)) => {
            errors.spanned(
                s.struct_token,
                format!("{USE}; put it on `impl {} {{ ... }}`, not on the struct", s.ident),
            );
            return None;
        }
        Ok(other) => {
            errors.spanned(
                other,
                format!("{USE}, e.g. `#[saga(data = PublishingData)] impl DocumentPublishing {{ ... }}`"),
            );
            return None;
        }
        Err(error) => {
            errors.push(error);
            return None;
        }
    };
    let mut item = item;
    let mut methods = Vec::new();
    for impl_item in &mut item.items {
        let ImplItem::Fn(func) = impl_item else { continue };
        let mut step = None;
        let mut kept = Vec::with_capacity(func.attrs.len());
        for attr in std::mem::take(&mut func.attrs) {
            if attr.path().is_ident(STEP) {
                if step.is_some() {
                    errors.spanned(
                        &attr,
                        format!("`{}` has two `#[step]` attributes; merge them", func.sig.ident),
                    );
                } else {
                    step = Some(StepArgs::parse(attr, errors));
                }
            } else {
                kept.push(attr);
            }
        }
        func.attrs = kept;
        methods.push(Method {
            func: func.clone(),
            step,
        });
    }
    Some(Parsed { item, methods })
}

/// The type name's last segment, if the self type is a path.
pub(crate) fn type_ident(ty: &Type) -> Option<&Ident> {
    match ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| &s.ident),
        _ => None,
    }
}
