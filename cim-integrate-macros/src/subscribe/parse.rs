//! Parsing of `#[subscribe("pattern", key = value, ...)]`, `#[handlers(domain = "...")]` and of
//! the handler function's signature, into typed views that keep the syn nodes for spans.

use crate::args::{self, Attr};
use crate::errors::Errors;
use proc_macro2::{Span, TokenStream, TokenTree};
use quote::ToTokens;
use syn::{Ident, LitBool, LitStr, Path, Signature, Type};

pub(crate) const NAME: &str = "name";
pub(crate) const DURABLE: &str = "durable";
pub(crate) const MAX_ATTEMPTS: &str = "max_attempts";
pub(crate) const BACKOFF: &str = "backoff";
pub(crate) const MAX_BACKOFF: &str = "max_backoff";
pub(crate) const CONCURRENCY: &str = "concurrency";
pub(crate) const DELIVER: &str = "deliver";
pub(crate) const ORDERED: &str = "ordered";
pub(crate) const ACK_WAIT: &str = "ack_wait";
pub(crate) const PUBLISHES: &str = "publishes";
pub(crate) const BREAKER_THRESHOLD: &str = "breaker_threshold";
pub(crate) const BREAKER_WINDOW: &str = "breaker_window";
pub(crate) const BREAKER_COOL_DOWN: &str = "breaker_cool_down";
pub(crate) const BREAKER_PROBES: &str = "breaker_probes";
pub(crate) const DOMAIN: &str = "domain";
pub(crate) const CRATE: &str = "crate";

/// Keys of `#[subscribe]` on a method inside `#[handlers]`.
pub(crate) const METHOD_KEYS: &[&str] = &[
    NAME,
    DURABLE,
    MAX_ATTEMPTS,
    BACKOFF,
    MAX_BACKOFF,
    CONCURRENCY,
    DELIVER,
    ORDERED,
    ACK_WAIT,
    PUBLISHES,
    BREAKER_THRESHOLD,
    BREAKER_WINDOW,
    BREAKER_COOL_DOWN,
    BREAKER_PROBES,
];
/// Keys of `#[subscribe]` on a free function (which has no `#[handlers]` to name the domain):
/// the method keys plus `domain` and `crate`.
pub(crate) fn fn_keys() -> Vec<&'static str> {
    METHOD_KEYS.iter().copied().chain([DOMAIN, CRATE]).collect()
}
/// Keys of `#[handlers]`.
pub(crate) const HANDLERS_KEYS: &[&str] = &[DOMAIN, CRATE];

/// Where a new durable consumer starts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Deliver {
    All,
    New,
}

/// The `breaker_*` arguments; any of them attaches a circuit breaker to the handler.
#[derive(Default)]
pub(crate) struct Breaker {
    pub(crate) threshold: Attr<u32>,
    pub(crate) window_ms: Attr<u64>,
    pub(crate) cool_down_ms: Attr<u64>,
    pub(crate) probes: Attr<u32>,
}

impl Breaker {
    pub(crate) fn is_set(&self) -> bool {
        self.threshold.given() || self.window_ms.given() || self.cool_down_ms.given() || self.probes.given()
    }
}

/// The arguments of one `#[subscribe]`.
#[derive(Default)]
pub(crate) struct SubscribeArgs {
    /// The subject pattern, the one positional argument.
    pub(crate) pattern: Option<LitStr>,
    pub(crate) name: Attr<LitStr>,
    pub(crate) durable: Attr<LitStr>,
    pub(crate) max_attempts: Attr<u32>,
    pub(crate) backoff_ms: Attr<u64>,
    pub(crate) max_backoff_ms: Attr<u64>,
    pub(crate) concurrency: Attr<usize>,
    pub(crate) deliver: Attr<Deliver>,
    pub(crate) ordered: Attr<bool>,
    pub(crate) ack_wait_ms: Attr<u64>,
    pub(crate) publishes: Attr<Vec<Type>>,
    pub(crate) breaker: Breaker,
    pub(crate) domain: Attr<LitStr>,
    pub(crate) krate: Attr<Path>,
}

/// Splits `"pattern", rest...` and parses the rest as `key = value` pairs.
pub(crate) fn subscribe_args(attr: TokenStream, keys: &[&str], span: Span, errors: &mut Errors) -> SubscribeArgs {
    const PATTERN_FIRST: &str =
        "`#[subscribe]` needs the subject pattern first, as a string: `#[subscribe(\"document.created\")]`";
    let tokens: Vec<TokenTree> = attr.into_iter().collect();
    let mut out = SubscribeArgs::default();
    // Where the `key = value` arguments start.
    let mut rest_from = 0;
    let is_comma = |t: &TokenTree| matches!(t, TokenTree::Punct(p) if p.as_char() == ',');
    let is_eq = |t: Option<&TokenTree>| matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == '=');
    match tokens.first() {
        Some(TokenTree::Literal(_)) => {
            let first: TokenStream = tokens[..1].iter().cloned().collect();
            match syn::parse2::<LitStr>(first.clone()) {
                Ok(p) => match crate::subject::check_pattern(&p) {
                    Ok(()) => out.pattern = Some(p),
                    Err(e) => errors.push(e),
                },
                Err(_) => errors.spanned(first, PATTERN_FIRST),
            }
            rest_from = 1;
            match tokens.get(1) {
                None => {}
                Some(t) if is_comma(t) => rest_from = 2,
                // One mistake, one error: the arguments after a missing comma are still read.
                Some(other) => errors.spanned(other, "expected `,` after the pattern"),
            }
        }
        // A key first: the pattern is missing; the arguments are read as usual.
        Some(TokenTree::Ident(_)) if is_eq(tokens.get(1)) => errors.push(syn::Error::new(span, PATTERN_FIRST)),
        None => errors.push(syn::Error::new(span, PATTERN_FIRST)),
        // Something else where the pattern goes (an unquoted subject, a constant): one error on
        // it, not also an "unknown argument".
        Some(_) => {
            let end = tokens.iter().position(is_comma).unwrap_or(tokens.len());
            let found: TokenStream = tokens[..end].iter().cloned().collect();
            errors.spanned(found, PATTERN_FIRST);
            rest_from = (end + 1).min(tokens.len());
        }
    }
    let rest: TokenStream = tokens[rest_from..].iter().cloned().collect();
    args::parse(rest, "subscribe", keys, errors, |key, value| {
        match key.to_string().as_str() {
            NAME => out
                .name
                .set(key, args::token(value, "name = \"start_approval\"", "handler name")),
            DURABLE => out.durable.set(
                key,
                args::token(value, "durable = \"workflow-approvals\"", "durable name"),
            ),
            MAX_ATTEMPTS => out.max_attempts.set(
                key,
                args::count(value, MAX_ATTEMPTS).map(|n| n.value).map_err(|e| {
                    syn::Error::new(
                        e.span(),
                        "`max_attempts` counts the first run: a whole number of 1 or more, e.g. `max_attempts = 5`",
                    )
                }),
            ),
            BACKOFF => out
                .backoff_ms
                .set(key, args::duration(value, BACKOFF).map(|d| d.millis)),
            MAX_BACKOFF => out
                .max_backoff_ms
                .set(key, args::duration(value, MAX_BACKOFF).map(|d| d.millis)),
            ACK_WAIT => out
                .ack_wait_ms
                .set(key, args::duration(value, ACK_WAIT).map(|d| d.millis)),
            CONCURRENCY => out
                .concurrency
                .set(key, args::count(value, CONCURRENCY).map(|n| n.value as usize)),
            DELIVER => out.deliver.set(key, deliver(value)),
            ORDERED => out.ordered.set(
                key,
                args::literal::<LitBool>(value, "`ordered = true` or `ordered = false`").map(|b| b.value),
            ),
            DOMAIN => out.domain.set(key, args::token(value, "domain = \"search\"", "domain")),
            PUBLISHES => out.publishes.set(key, publishes(value)),
            BREAKER_THRESHOLD => out
                .breaker
                .threshold
                .set(key, args::count(value, BREAKER_THRESHOLD).map(|n| n.value)),
            BREAKER_PROBES => out
                .breaker
                .probes
                .set(key, args::count(value, BREAKER_PROBES).map(|n| n.value)),
            BREAKER_WINDOW => out
                .breaker
                .window_ms
                .set(key, args::duration(value, BREAKER_WINDOW).map(|d| d.millis)),
            BREAKER_COOL_DOWN => out
                .breaker
                .cool_down_ms
                .set(key, args::duration(value, BREAKER_COOL_DOWN).map(|d| d.millis)),
            // `args::parse` passes only the known keys: this is `crate`.
            _ => out.krate.set(key, args::krate(value)),
        }
    });
    out
}

/// `deliver = "all"` or `deliver = "new"`.
fn deliver(value: TokenStream) -> syn::Result<Deliver> {
    let s: LitStr = args::literal(value, "`deliver = \"all\"` or `deliver = \"new\"`")?;
    match s.value().as_str() {
        "all" => Ok(Deliver::All),
        "new" => Ok(Deliver::New),
        other => Err(syn::Error::new(
            s.span(),
            format!(
                "unknown deliver policy `{other}`; expected `\"all\"` (from the first stored message) or `\"new\"` (only messages published from now on)"
            ),
        )),
    }
}

/// `publishes = [WorkflowStarted, ...]`.
fn publishes(value: TokenStream) -> syn::Result<Vec<Type>> {
    let list = |input: syn::parse::ParseStream| {
        let content;
        syn::bracketed!(content in input);
        syn::punctuated::Punctuated::<Type, syn::Token![,]>::parse_terminated(&content)
    };
    let types = syn::parse::Parser::parse2(list, value.clone()).map_err(|_| {
        syn::Error::new_spanned(
            value,
            "expected a list of event types such as `publishes = [WorkflowStarted]`",
        )
    })?;
    Ok(types.into_iter().collect())
}

/// The arguments of `#[handlers]`.
#[derive(Default)]
pub(crate) struct HandlersArgs {
    pub(crate) domain: Attr<LitStr>,
    pub(crate) krate: Attr<Path>,
}

pub(crate) fn handlers_args(attr: TokenStream, errors: &mut Errors) -> HandlersArgs {
    let mut out = HandlersArgs::default();
    args::parse(attr, "handlers", HANDLERS_KEYS, errors, |key, value| {
        if key == DOMAIN {
            out.domain
                .set(key, args::token(value, "domain = \"workflow\"", "domain"))
        } else {
            out.krate.set(key, args::krate(value))
        }
    });
    out
}

/// How the handler takes its context.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Ctx {
    None,
    Ref,
    Owned,
}

/// A checked handler signature.
pub(crate) struct HandlerSig {
    pub(crate) ident: Ident,
    pub(crate) ctx: Ctx,
    pub(crate) event: Type,
    pub(crate) output: Type,
}

fn is_context(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Context" && s.arguments.is_empty()))
}

/// Checks a handler's signature: `async fn name(&self?, ctx: &Context?, event: E) -> Result<(), HandlerError>`.
pub(crate) fn handler_sig(sig: &Signature, method: bool, errors: &mut Errors) -> Option<HandlerSig> {
    use crate::method::{Expect, Problem, Receiver};
    let expect = Expect {
        receiver: if method { Receiver::Shared } else { Receiver::None },
        min_params: 1,
        max_params: 2,
    };
    let (shape, problems) = crate::method::check(sig, &expect);
    let ok = problems.is_empty();
    for found in problems {
        let message = match found.problem {
            Problem::NotAsync => "a handler must be an `async fn`: add `async`".to_owned(),
            Problem::Generic => "a handler cannot be generic: it is registered for one event type".to_owned(),
            Problem::Variadic => "a handler cannot be variadic".to_owned(),
            Problem::WrongReceiver => {
                "a handler method takes `&self`: handlers of one set run concurrently and share the service".to_owned()
            }
            Problem::MissingReceiver => "a handler inside `#[handlers]` is a method taking `&self`; move free functions out of the `impl` block".to_owned(),
            Problem::UnexpectedReceiver => {
                "`#[subscribe]` on a method needs `#[handlers(domain = \"...\")]` on its `impl` block".to_owned()
            }
            Problem::SelfNotFirst => "`self` must come first".to_owned(),
            Problem::Arity(n) => {
                let receiver = if method { "&self, " } else { "" };
                format!(
                    "a handler takes the event, optionally after its context: `({receiver}ctx: &Context, event: DocumentCreated)` or `({receiver}event: DocumentCreated)`; found {n} parameter(s)"
                )
            }
            Problem::MissingOutput => "a handler returns `Result<(), HandlerError>`: add `-> Result<(), HandlerError>` (errors decide retry or dead letter)".to_owned(),
        };
        errors.spanned(found.tokens, message);
    }
    let (ctx, event) = match shape.params.as_slice() {
        [event] => (Ctx::None, *event),
        [ctx, event] => {
            let kind = match &*ctx.ty {
                Type::Reference(r) if r.mutability.is_none() && is_context(&r.elem) => Ctx::Ref,
                ty if is_context(ty) => Ctx::Owned,
                other => {
                    let swapped = match &*event.ty {
                        Type::Reference(r) => is_context(&r.elem),
                        ty => is_context(ty),
                    };
                    let message = if swapped {
                        "the context comes first and the event last: swap them, `(ctx: &Context, event: DocumentCreated)`"
                    } else {
                        "the first parameter of a two-parameter handler is its context: `ctx: &Context`"
                    };
                    errors.spanned(other, message);
                    return None;
                }
            };
            (kind, *event)
        }
        _ => return None,
    };
    if let Type::Reference(r) = &*event.ty {
        errors.spanned(
            r,
            "the event is passed by value: `event: DocumentCreated`, not a reference",
        );
        return None;
    }
    let output = shape.output?;
    ok.then(|| HandlerSig {
        ident: sig.ident.clone(),
        ctx,
        event: (*event.ty).clone(),
        output: output.clone(),
    })
}

/// The attribute's name, for matching `#[subscribe]` and `#[cim_integrate::subscribe]`.
pub(crate) fn is_subscribe(attr: &syn::Attribute) -> bool {
    attr.path().segments.last().is_some_and(|s| s.ident == "subscribe")
}

/// The tokens inside `#[subscribe(...)]` (empty for a bare `#[subscribe]`).
pub(crate) fn attr_tokens(attr: &syn::Attribute) -> TokenStream {
    match &attr.meta {
        syn::Meta::List(l) => l.tokens.clone(),
        other => {
            let _ = other.to_token_stream();
            TokenStream::new()
        }
    }
}
