//! Validation: the handler signatures, one key per handler, one `#[deadline]`, a name; into
//! the checked view that `expand` needs.

use super::parse::Args;
use crate::errors::Errors;
use proc_macro2::Span;
use syn::{Ident, ImplItem, ImplItemFn, ItemImpl, LitStr, Path, Type};

/// The shape every handler has, for messages.
pub(crate) const SHAPE: &str = "a process handler is `async fn name(&mut self, ctx: &mut ProcessContext, event: MyEvent) -> Result<(), HandlerError>`";

/// A checked event handler.
pub(crate) struct Handler {
    pub(crate) method: Ident,
    /// The method's return type's span, where a wrong one is reported.
    pub(crate) output: Span,
    pub(crate) event: Type,
    pub(crate) key: Ident,
    /// The handler's own `#[key(field)]`, if it has one.
    pub(crate) own_key: Option<Ident>,
}

/// A checked `#[process]`.
pub(crate) struct Process {
    /// The block, without the helper attributes `#[key]` and `#[deadline]`.
    pub(crate) block: ItemImpl,
    pub(crate) name: LitStr,
    pub(crate) krate: Path,
    pub(crate) handlers: Vec<Handler>,
    /// The `#[deadline]` method.
    pub(crate) deadline: Option<(Ident, Span)>,
}

fn helper<'a>(method: &'a ImplItemFn, name: &str) -> Option<&'a syn::Attribute> {
    method.attrs.iter().find(|a| a.path().is_ident(name))
}

/// The block without the helper attributes, which are ours (the fallback emits it too).
pub(crate) fn without_helpers(mut block: ItemImpl) -> ItemImpl {
    for item in &mut block.items {
        if let ImplItem::Fn(method) = item {
            method
                .attrs
                .retain(|a| !a.path().is_ident("deadline") && !a.path().is_ident("key"));
        }
    }
    block
}

/// Checks every rule, recording each broken one; the checked process if none is.
pub(crate) fn process(args: Args, block: ItemImpl, errors: &mut Errors) -> Option<Process> {
    let before = errors.count();
    if !args.name.given() {
        errors.push(syn::Error::new(
            Span::call_site(),
            "missing `name`: the process's name (its buckets and durable consumers), e.g. `#[process(name = \"onboarding\", key = person_id)]`",
        ));
    }
    if block.trait_.is_some() || !block.generics.params.is_empty() {
        errors.spanned(
            &block.self_ty,
            "`#[process]` goes on the inherent, non-generic `impl` block of the state type",
        );
    }
    let mut handlers = Vec::new();
    let mut deadline: Option<(Ident, Span)> = None;
    for item in &block.items {
        let ImplItem::Fn(method) = item else { continue };
        if let Some(attr) = helper(method, "deadline") {
            if let Some((first, _)) = &deadline {
                errors.spanned(attr, format!("only one `#[deadline]` method; `{first}` is one already"));
            }
            check_signature(method, errors);
            deadline = Some((method.sig.ident.clone(), output_span(&method.sig)));
            continue;
        }
        let own_key = match helper(method, "key") {
            Some(attr) => match attr.parse_args::<Ident>() {
                Ok(k) => Some(k),
                Err(_) => {
                    errors.spanned(
                        attr,
                        "expected `#[key(field)]`: the correlation field of this handler's event",
                    );
                    None
                }
            },
            None => None,
        };
        let Some(event) = check_signature(method, errors) else {
            continue;
        };
        if is_deadline(&event) {
            errors.spanned(
                &event,
                format!(
                    "`{}` takes a `Deadline`: mark it `#[deadline]` so that it runs when a scheduled deadline is due \
                     (event handlers take a `#[domain_event]`)",
                    method.sig.ident
                ),
            );
            continue;
        }
        match own_key.clone().or_else(|| args.key.get().cloned()) {
            Some(key) => handlers.push(Handler {
                method: method.sig.ident.clone(),
                output: output_span(&method.sig),
                event,
                key,
                own_key,
            }),
            None => errors.spanned(
                &method.sig.ident,
                "no correlation key for this handler: give the process one, `#[process(name = \"...\", key = field)]`, \
                 or the method `#[key(field)]`",
            ),
        }
    }
    if !block.items.iter().any(|i| matches!(i, ImplItem::Fn(_))) {
        errors.spanned(
            &block.self_ty,
            format!("a process needs at least one event handler: {SHAPE}"),
        );
    }
    let block = without_helpers(block);
    (errors.count() == before).then(|| Process {
        block,
        name: args
            .name
            .take()
            .unwrap_or_else(|| LitStr::new("invalid", Span::call_site())),
        krate: crate::args::facade(&args.krate),
        handlers,
        deadline,
    })
}

/// The span of a method's return type (its name's without one).
fn output_span(sig: &syn::Signature) -> Span {
    match &sig.output {
        syn::ReturnType::Type(_, ty) => syn::spanned::Spanned::span(&**ty),
        syn::ReturnType::Default => sig.ident.span(),
    }
}

fn check_signature(method: &ImplItemFn, errors: &mut Errors) -> Option<Type> {
    use crate::method::{Expect, Receiver, Wording};
    const WORDING: Wording = Wording {
        plural: "process handlers",
        singular: "a process handler",
        receiver: "`&mut self`",
        take_receiver: "take the state as `&mut self`",
        params: "the context and the event",
        output: "Result<(), HandlerError>",
        shape: SHAPE,
    };
    let expect = Expect {
        receiver: Receiver::Mut,
        min_params: 2,
        max_params: 2,
    };
    let (shape, problems) = crate::method::check(&method.sig, &expect);
    let ok = WORDING.report(problems, errors);
    let [_, event] = shape.params.as_slice() else {
        return None;
    };
    if let Type::Reference(r) = &*event.ty {
        errors.spanned(
            r,
            format!("the event comes last and by value (are the parameters swapped?): {SHAPE}"),
        );
        return None;
    }
    ok.then(|| (*event.ty).clone())
}

/// Whether a handler's parameter type is the runtime's `Deadline` (by its last segment).
fn is_deadline(ty: &Type) -> bool {
    matches!(ty, Type::Path(p) if p.qself.is_none() && p.path.segments.last().is_some_and(|s| s.ident == "Deadline"))
}
