//! Robustness of every macro: raw identifiers are names like any other, and no input, valid or
//! not, makes a macro panic (each `expand` is fed generated variants of valid input: every token
//! dropped, every argument value replaced, the item cut short).

use proc_macro2::{Delimiter, Group, Literal, TokenStream, TokenTree};
use quote::quote;

type Expand = fn(TokenStream, TokenStream) -> TokenStream;

/// Each macro's `expand`, with a valid attribute and item.
fn valid_inputs() -> Vec<(&'static str, Expand, TokenStream, TokenStream)> {
    vec![
        (
            "domain_event",
            crate::domain_event::expand,
            quote!(
                subject = "document.created",
                version = "2.0",
                previous = [DocumentCreatedV1],
                crate = "::cim_integrate"
            ),
            quote!(
                pub struct DocumentCreated {
                    pub r#type: String,
                    #[serde(default)]
                    pub title: String,
                }
            ),
        ),
        (
            "domain_event (frozen)",
            crate::domain_event::expand,
            quote!(version = "1.0"),
            quote!(
                pub struct DocumentCreatedV1 {
                    pub title: String,
                }
            ),
        ),
        (
            "subscribe",
            crate::subscribe::expand_subscribe,
            quote!(
                "document.created",
                domain = "search",
                name = "index",
                durable = "d",
                max_attempts = 3,
                backoff = "1s",
                max_backoff = "1m",
                concurrency = 2,
                deliver = "new",
                ordered = true,
                ack_wait = "30s",
                publishes = [A, b::B],
                breaker_threshold = 2,
                breaker_window = "1m",
                breaker_cool_down = "5s",
                breaker_probes = 1,
                crate = "::cim_integrate"
            ),
            quote!(
                pub async fn r#type(ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
                    Ok(())
                }
            ),
        ),
        (
            "handlers",
            crate::subscribe::expand_handlers,
            quote!(domain = "workflow", crate = "::cim_integrate"),
            quote!(impl Svc {
                #[subscribe("document.created", max_attempts = 3)]
                async fn r#type(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> { Ok(()) }
                #[subscribe("person.*", name = "approvals", durable = "workflow-approvals")]
                async fn approve(&self, event: PersonApproved) -> Result<(), HandlerError> { Ok(()) }
            }),
        ),
        (
            "saga",
            crate::saga::expand,
            quote!(data = Publishing, name = "publishing", crate = "::cim_integrate"),
            quote!(impl DocumentPublishing {
                #[step(no_compensation = "read-only", timeout = "1s", attempts = 2)]
                async fn r#type(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                #[step(compensate = "r#undo", compensation_timeout = "1s", compensation_attempts = 2)]
                async fn publish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
                async fn r#undo(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
            }),
        ),
        (
            "command (type)",
            crate::command::expand,
            quote!(
                subject = "document.create",
                version = "2.0",
                previous = [CreateV1],
                crate = "::cim_integrate"
            ),
            quote!(
                pub struct Create {
                    pub title: String,
                }
            ),
        ),
        (
            "command (frozen)",
            crate::command::expand,
            quote!(version = "1.0", frozen),
            quote!(
                pub struct CreateV1 {
                    pub title: String,
                }
            ),
        ),
        (
            "command (handlers)",
            crate::command::expand,
            quote!(name = "document", crate = "::cim_integrate"),
            quote!(impl DocumentCommands {
                async fn r#type(&self, ctx: &Context, command: Create) -> CommandResult { Ok(()) }
            }),
        ),
        (
            "process",
            crate::process::expand,
            quote!(name = "onboarding", key = person_id, crate = "::cim_integrate"),
            quote!(impl Onboarding {
                async fn r#type(&mut self, ctx: &mut ProcessContext, e: PersonCreated) -> Result<(), HandlerError> { Ok(()) }
                #[key(owner_id)]
                async fn document(&mut self, ctx: &mut ProcessContext, e: DocumentCreated) -> Result<(), HandlerError> { Ok(()) }
                #[deadline]
                async fn timed_out(&mut self, ctx: &mut ProcessContext, d: Deadline) -> Result<(), HandlerError> { Ok(()) }
            }),
        ),
    ]
}

/// Variants of `tokens`: each top-level token removed, each token (also inside groups) replaced
/// by a few others, the stream cut at every position.
fn variants(tokens: &TokenStream) -> Vec<TokenStream> {
    let list: Vec<TokenTree> = tokens.clone().into_iter().collect();
    let replacements: Vec<TokenTree> = vec![
        TokenTree::Literal(Literal::string("")),
        TokenTree::Literal(Literal::string("r#x.*.>")),
        TokenTree::Literal(Literal::u64_unsuffixed(0)),
        TokenTree::Literal(Literal::string("99999999999999999999999h")),
        quote!(r#type).into_iter().next().expect("an ident"),
        quote!(_1).into_iter().next().expect("an ident"),
        quote!(=).into_iter().next().expect("a punct"),
        quote!(,).into_iter().next().expect("a punct"),
        TokenTree::Group(Group::new(Delimiter::Bracket, TokenStream::new())),
        TokenTree::Group(Group::new(Delimiter::Parenthesis, quote!(a, =))),
    ];
    let mut out = Vec::new();
    for i in 0..list.len() {
        let mut removed = list.clone();
        removed.remove(i);
        out.push(removed.into_iter().collect());
        out.push(list[..i].iter().cloned().collect());
        for r in &replacements {
            let mut replaced = list.clone();
            replaced[i] = r.clone();
            out.push(replaced.into_iter().collect());
        }
        if let TokenTree::Group(g) = &list[i] {
            for inner in variants(&g.stream()) {
                let mut nested = list.clone();
                nested[i] = TokenTree::Group(Group::new(g.delimiter(), inner));
                out.push(nested.into_iter().collect());
            }
        }
    }
    out
}

#[test]
fn valid_input_with_raw_identifiers_expands_without_errors() {
    for (name, expand, attr, item) in valid_inputs() {
        let out = expand(attr, item).to_string();
        assert!(!out.contains("compile_error"), "{name}: {out}");
        assert!(!out.contains("\"r#"), "{name} registers a name with `r#`: {out}");
    }
}

#[test]
fn raw_identifiers_name_handlers_and_steps_without_r_hash() {
    let inputs = valid_inputs();
    let out = |name: &str| {
        let (_, expand, attr, item) = inputs.iter().find(|(n, ..)| *n == name).expect("a case");
        expand(attr.clone(), item.clone()).to_string()
    };
    // The free function `r#type` becomes `TypeHandler`, registered as `index` (its `name`).
    assert!(out("subscribe").contains("struct TypeHandler"));
    // The method `r#type` is registered as `type` (durable `workflow-type`) and still called as `r#type`.
    let handlers = out("handlers");
    assert!(handlers.contains("registration (\"type\""), "{handlers}");
    assert!(handlers.contains("r#type (& __ctx"), "{handlers}");
    let saga = out("saga");
    assert!(saga.contains("Step :: new (\"type\""), "{saga}");
    assert!(saga.contains("compensate (\"undo\""), "{saga}");
    assert!(out("process").contains("\"type\""));
    assert!(out("command (handlers)").contains("\"type\""));
}

#[test]
fn no_macro_panics_on_generated_variants() {
    let mut runs = 0;
    for (name, expand, attr, item) in valid_inputs() {
        let mut cases: Vec<(TokenStream, TokenStream)> = Vec::new();
        cases.extend(variants(&attr).into_iter().map(|a| (a, item.clone())));
        cases.extend(variants(&item).into_iter().map(|i| (attr.clone(), i)));
        for (attr, item) in cases {
            let shown = format!("{name}: #[{attr}] {item}");
            let item_parses = syn::parse2::<syn::Item>(item.clone()).is_ok();
            let result = std::panic::catch_unwind(|| expand(attr, item));
            let Ok(out) = result else {
                panic!("panicked on {shown}");
            };
            // A well-formed item gives well-formed output (its errors are `compile_error!`s, not
            // syntax errors of their own).
            if item_parses {
                assert!(
                    syn::parse2::<syn::File>(out.clone()).is_ok(),
                    "malformed output for {shown}:\n{out}"
                );
            }
            runs += 1;
        }
    }
    assert!(runs > 1000, "only {runs} variants");
}
