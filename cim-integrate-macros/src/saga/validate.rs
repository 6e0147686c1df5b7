//! Validation: every step names its compensation (or none, with a reason), compensations exist,
//! have a step's signature and undo one step each, names are unique, steps are async.

use super::parse::{self, Args, COMPENSATE, DATA, Method, NAME, NO_COMPENSATION, Parsed, StepArgs};
use crate::errors::Errors;
use proc_macro2::{Span, TokenStream};
use quote::ToTokens;
use syn::ext::IdentExt;
use syn::{Ident, ItemImpl, LitStr, Path, Type};

/// A checked `#[saga]`.
pub(crate) struct Saga {
    /// The impl block, without `#[step]` attributes.
    pub(crate) item: ItemImpl,
    pub(crate) self_ty: Type,
    pub(crate) data: Type,
    pub(crate) name: LitStr,
    pub(crate) steps: Vec<Step>,
    pub(crate) krate: Path,
}

/// A checked step.
pub(crate) struct Step {
    pub(crate) name: LitStr,
    pub(crate) method: Ident,
    /// Where a type error in calling the method is reported: its return type.
    pub(crate) method_span: Span,
    pub(crate) compensation: Compensation,
    pub(crate) timeout_ms: Option<u64>,
    pub(crate) attempts: Option<u32>,
    pub(crate) compensation_timeout_ms: Option<u64>,
    pub(crate) compensation_attempts: Option<u32>,
}

/// What undoes a checked step.
pub(crate) enum Compensation {
    /// The method and its return type's span.
    By(Ident, Span),
    None(LitStr),
}

const SIGNATURE: &str = "async fn NAME(&self, ctx: &mut StepContext<Data>) -> Result<(), HandlerError>";

fn signature(name: &Ident) -> String {
    SIGNATURE.replace("NAME", &name.to_string())
}

/// Checks a step's or compensation's signature; the first problem and the tokens to put it on.
fn signature_problem(method: &Method) -> Option<(TokenStream, &'static str)> {
    use crate::method::{Expect, Problem, Receiver};
    let expect = Expect {
        receiver: Receiver::Shared,
        min_params: 1,
        max_params: 1,
    };
    let (shape, problems) = crate::method::check(&method.func.sig, &expect);
    if let Some(found) = problems.into_iter().next() {
        let problem = match found.problem {
            Problem::NotAsync => "it is not `async`",
            Problem::Generic => "it cannot be generic",
            Problem::Variadic => "it cannot be variadic",
            Problem::WrongReceiver => {
                "it must take `&self` (the saga holds shared dependencies; its data is in the context)"
            }
            Problem::MissingReceiver | Problem::UnexpectedReceiver | Problem::SelfNotFirst => "it must take `&self`",
            Problem::Arity(0) => "it must take the step context `ctx: &mut StepContext<Data>`",
            Problem::Arity(_) => "it takes one argument besides `&self`: the step context",
            Problem::MissingOutput => "it must return `Result<(), HandlerError>`",
        };
        return Some((found.tokens, problem));
    }
    match shape.params.as_slice() {
        [arg] if matches!(&*arg.ty, Type::Reference(r) if r.mutability.is_some()) => None,
        [arg] => Some((
            arg.to_token_stream(),
            "its argument must be the step context, `&mut StepContext<Data>`",
        )),
        _ => None,
    }
}

/// Checks every rule, recording each broken one; `None` if any is.
pub(crate) fn saga(args: Args, parsed: Option<Parsed>, errors: &mut Errors) -> Option<Saga> {
    let data = args.data.get().cloned();
    if !args.data.given() {
        errors.push(syn::Error::new(
            Span::call_site(),
            format!(
                "missing `{DATA}`: name the saga's persisted data type, e.g. `#[saga({DATA} = PublishingData)]` \
                 (it must be `Serialize + Deserialize + Clone + Send + Sync`)"
            ),
        ));
    }
    if let Some(name) = args.name.get() {
        check_token(name, "saga name", errors);
    }
    let parsed = parsed?;
    let item = &parsed.item;
    if let Some((path, _)) = &item.trait_ {
        errors.spanned(
            path,
            "`#[saga]` goes on an inherent `impl` block (`impl DocumentPublishing { ... }`), not a trait impl",
        );
        return None;
    }
    if !item.generics.params.is_empty() {
        errors.spanned(
            &item.generics,
            "a saga type cannot be generic: its name and step table are persisted; use a concrete type",
        );
    }
    let type_name = parse::type_ident(&item.self_ty).cloned();
    let name = match (args.name.get(), &type_name) {
        (Some(name), _) => name.clone(),
        (None, Some(ident)) => LitStr::new(&snake_case(&ident.unraw().to_string()), ident.span()),
        (None, None) => {
            errors.spanned(
                &item.self_ty,
                format!(
                    "cannot derive a saga name from this type; give one: `#[saga({NAME} = \"document_publishing\")]`"
                ),
            );
            LitStr::new("saga", Span::call_site())
        }
    };

    let methods = &parsed.methods;
    let by_name = |n: &str| methods.iter().find(|m| m.func.sig.ident.unraw() == n);
    let steps: Vec<(&Method, &StepArgs)> = methods.iter().filter_map(|m| m.step.as_ref().map(|s| (m, s))).collect();
    if steps.is_empty() {
        errors.spanned(
            &item.self_ty,
            "this saga has no steps: mark its step methods `#[step(compensate = \"...\")]` or `#[step(no_compensation = \"...\")]`",
        );
    }
    let helpers: Vec<String> = methods
        .iter()
        .filter(|m| m.step.is_none())
        .map(|m| format!("`{}`", m.func.sig.ident.unraw()))
        .collect();

    let mut out = Vec::new();
    let mut step_names: Vec<String> = Vec::new();
    let mut used: Vec<(String, String)> = Vec::new();
    for (method, args) in steps {
        let ident = &method.func.sig.ident;
        if let Some((tokens, problem)) = signature_problem(method) {
            errors.spanned(
                tokens,
                format!("step `{ident}` must be `{}`: {problem}", signature(ident)),
            );
        }
        let step_name = args
            .name
            .get()
            .cloned()
            .unwrap_or_else(|| LitStr::new(&ident.unraw().to_string(), ident.span()));
        check_token(&step_name, "step name", errors);
        if step_names.contains(&step_name.value()) {
            errors.push(syn::Error::new(
                args.name.get().map_or(ident.span(), LitStr::span),
                format!(
                    "duplicate step name `{}`: step names are persisted in the saga log and must be unique; \
                     give this step another `{NAME} = \"...\"`",
                    step_name.value()
                ),
            ));
        }
        step_names.push(step_name.value());

        let compensation = match (args.compensate.get(), args.no_compensation.get()) {
            (Some(_), Some(reason)) => {
                errors.spanned(
                    reason,
                    format!(
                        "step `{ident}` has both `{COMPENSATE}` and `{NO_COMPENSATION}`; keep the one that is true"
                    ),
                );
                None
            }
            (None, None) => {
                if !args.compensate.given() && !args.no_compensation.given() {
                    errors.spanned(
                        &args.attr,
                        format!(
                            "step `{ident}` names no compensation: add `{COMPENSATE} = \"method\"` naming the method \
                             that undoes it, or `{NO_COMPENSATION} = \"reason\"` if it needs none \
                             (a read-only step, a final pivot step)"
                        ),
                    );
                }
                None
            }
            (None, Some(reason)) => {
                if reason.value().trim().is_empty() {
                    errors.spanned(
                        reason,
                        format!(
                            "`{NO_COMPENSATION}` needs a reason, e.g. `{NO_COMPENSATION} = \"read-only validation\"`"
                        ),
                    );
                }
                Some(Compensation::None(reason.clone()))
            }
            (Some(target), None) => compensation(target, ident, &by_name, &helpers, &mut used, errors)
                .map(|(method, span)| Compensation::By(method, span)),
        };
        if let Some(c) = compensation {
            out.push(Step {
                name: step_name,
                method: ident.clone(),
                method_span: output_span(&method.func.sig),
                compensation: c,
                timeout_ms: args.timeout.get().map(|d| d.millis),
                attempts: args.attempts.get().map(|c| c.value),
                compensation_timeout_ms: args.compensation_timeout.get().map(|d| d.millis),
                compensation_attempts: args.compensation_attempts.get().map(|c| c.value),
            });
        }
        if !args.compensate.given() {
            let spans = [
                args.compensation_attempts.get().map(|c| c.lit.span()),
                args.compensation_timeout.get().map(|d| d.lit.span()),
            ];
            for span in spans.into_iter().flatten() {
                errors.push(syn::Error::new(
                    span,
                    format!("step `{ident}` has no compensation to retry or time out; remove this"),
                ));
            }
        }
    }
    Some(Saga {
        self_ty: (*parsed.item.self_ty).clone(),
        item: parsed.item,
        data: data?,
        name,
        steps: out,
        krate: crate::args::facade(&args.krate),
    })
}

/// Checks `compensate = "target"` of step `step`.
fn compensation<'m>(
    target: &LitStr,
    step: &Ident,
    by_name: &impl Fn(&str) -> Option<&'m Method>,
    helpers: &[String],
    used: &mut Vec<(String, String)>,
    errors: &mut Errors,
) -> Option<(Ident, Span)> {
    // `compensate = "undo"` and `compensate = "r#undo"` both name `fn r#undo`.
    let value = target.value();
    let name = value.strip_prefix("r#").unwrap_or(&value).to_owned();
    let Some(method) = by_name(&name) else {
        let listed = if helpers.is_empty() {
            "this impl block has no methods without `#[step]`".to_owned()
        } else {
            format!("methods without `#[step]`: {}", helpers.join(", "))
        };
        errors.spanned(
            target,
            format!(
                "compensation `{name}` of step `{step}` is not a method of this impl block ({listed}); \
                 add `{}` here",
                SIGNATURE.replace("NAME", &name)
            ),
        );
        return None;
    };
    if method.step.is_some() {
        errors.spanned(
            target,
            format!("`{name}` is a step; a compensation is a method without `#[step]` that undoes step `{step}`"),
        );
        return None;
    }
    if let Some((tokens, problem)) = signature_problem(method) {
        errors.spanned(
            tokens,
            format!(
                "`{name}`, the compensation of step `{step}`, has the wrong signature: {problem}; it must be `{}`",
                signature(&method.func.sig.ident)
            ),
        );
        return None;
    }
    if let Some((_, other)) = used.iter().find(|(c, _)| *c == name) {
        errors.spanned(
            target,
            format!(
                "compensation `{name}` already undoes step `{other}`; each step needs its own compensation \
                 (the log records each one as done separately)"
            ),
        );
        return None;
    }
    used.push((name, step.to_string()));
    Some((method.func.sig.ident.clone(), output_span(&method.func.sig)))
}

/// The span of a method's return type (its name's without one), where a wrong one is reported.
fn output_span(sig: &syn::Signature) -> Span {
    match &sig.output {
        syn::ReturnType::Type(_, ty) => syn::spanned::Spanned::span(&**ty),
        syn::ReturnType::Default => sig.ident.span(),
    }
}

fn check_token(lit: &LitStr, what: &str, errors: &mut Errors) {
    if let Err(error) = crate::subject::check_token(lit, what) {
        errors.push(error);
    }
}

/// `DocumentPublishing` -> `document_publishing`.
pub(crate) fn snake_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    let chars: Vec<char> = name.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev_lower = i > 0 && (chars[i - 1].is_lowercase() || chars[i - 1].is_ascii_digit());
            let next_lower = chars.get(i + 1).is_some_and(|n| n.is_lowercase());
            if i > 0 && (prev_lower || (next_lower && chars[i - 1].is_uppercase())) {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(*c);
        }
    }
    out
}
