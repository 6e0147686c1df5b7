//! `#[command]` on an `impl` block: every method is a command handler,
//! `async fn name(&self, ctx: &Context, command: C) -> CommandResult`.

use crate::args::{self, Attr};
use crate::errors::{self, Errors};
use proc_macro2::TokenStream;
use quote::{quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{ImplItem, ImplItemFn, ItemImpl, LitStr, Path, Type};

const NAME: &str = "name";
const CRATE: &str = "crate";
const KEYS: &[&str] = &[NAME, CRATE];

/// A checked handler: the method and its command type.
struct Handler<'a> {
    method: &'a ImplItemFn,
    command: &'a Type,
    output: &'a Type,
}

fn check<'a>(method: &'a ImplItemFn, errors: &mut Errors) -> Option<Handler<'a>> {
    use crate::method::{Expect, Receiver, Wording};
    const SHAPE: &str =
        "a command handler is `async fn name(&self, ctx: &Context, command: MyCommand) -> CommandResult`";
    const WORDING: Wording = Wording {
        plural: "command handlers",
        singular: "a command handler",
        receiver: "`&self`",
        take_receiver: "take the service by shared reference, `&self`",
        params: "the context and the command",
        output: "CommandResult",
        shape: SHAPE,
    };
    let expect = Expect {
        receiver: Receiver::Shared,
        min_params: 2,
        max_params: 2,
    };
    let (shape, problems) = crate::method::check(&method.sig, &expect);
    let ok = WORDING.report(problems, errors);
    let ([_, command], Some(output)) = (shape.params.as_slice(), shape.output) else {
        return None;
    };
    if let Type::Reference(r) = &*command.ty {
        errors.spanned(
            r,
            format!("the command comes last and by value (are the parameters swapped?): {SHAPE}"),
        );
        return None;
    }
    ok.then_some(Handler {
        method,
        command: &command.ty,
        output,
    })
}

/// `#[command(...)]`'s arguments on an `impl` block.
#[derive(Default)]
struct Args {
    name: Attr<LitStr>,
    krate: Attr<Path>,
}

impl Args {
    fn parse(attr: TokenStream, errors: &mut Errors) -> Self {
        let mut out = Self::default();
        args::parse(attr, "command", KEYS, errors, |key, value| {
            if key == NAME {
                out.name
                    .set(key, args::token(value, "name = \"document\"", "handler set name"))
            } else {
                out.krate.set(key, args::krate(value))
            }
        });
        out
    }
}

/// A checked handler set.
struct Set<'a> {
    block: &'a ItemImpl,
    name: LitStr,
    krate: Path,
    handlers: Vec<Handler<'a>>,
}

/// Checks every rule, recording each broken one; the checked set if none is.
fn validate<'a>(args: Args, block: &'a ItemImpl, errors: &mut Errors) -> Option<Set<'a>> {
    let before = errors.count();
    if block.trait_.is_some() {
        errors.spanned(
            &block.self_ty,
            "`#[command]` goes on an inherent `impl` block of handlers, not a trait impl",
        );
    }
    if !block.generics.params.is_empty() {
        errors.spanned(
            &block.generics,
            "a command handler set cannot be generic; use a concrete service type",
        );
    }
    let methods: Vec<&ImplItemFn> = block
        .items
        .iter()
        .filter_map(|i| match i {
            ImplItem::Fn(f) => Some(f),
            _ => None,
        })
        .collect();
    if methods.is_empty() {
        errors.spanned(&block.self_ty, "this `impl` block has no handlers: add `async fn name(&self, ctx: &Context, command: MyCommand) -> CommandResult`");
    }
    let handlers: Vec<Handler> = methods.iter().filter_map(|m| check(m, errors)).collect();
    // A `name` given with a wrong value is reported there, not also as missing.
    if !args.name.given() {
        errors.push(syn::Error::new(
            proc_macro2::Span::call_site(),
            "missing `name`: the handler set's name, usually its domain, e.g. `#[command(name = \"document\")]`",
        ));
    }
    (errors.count() == before).then(|| Set {
        block,
        name: args
            .name
            .take()
            .unwrap_or_else(|| LitStr::new("invalid", proc_macro2::Span::call_site())),
        krate: args::facade(&args.krate),
        handlers,
    })
}

/// Expands `#[command(attr)] impl ...`: parse, validate, expand; on any mistake every error
/// beside the block and a stub `CommandHandlerSet`.
pub(super) fn expand(attr: TokenStream, block: ItemImpl) -> TokenStream {
    let mut errors = Errors::default();
    let args = Args::parse(attr, &mut errors);
    let krate = args::facade(&args.krate);
    let set = validate(args, &block, &mut errors);
    match (errors.finish(), set) {
        (Ok(()), Some(set)) => expand_set(&set),
        (Err(error), _) => {
            let mut out = errors::with_item(error, &block);
            out.extend(crate::stubs::command_handlers(&krate, &block));
            out
        }
        // Validation fails only with an error; should it not, the block is kept as written.
        (Ok(()), None) => quote!(#block),
    }
}

/// The block and its `CommandHandlerSet` impl, registering each handler.
fn expand_set(set: &Set) -> TokenStream {
    let Set {
        block,
        name,
        krate,
        handlers,
    } = set;
    let self_ty = &block.self_ty;
    let private = quote!(#krate::__private);
    let registrations = handlers.iter().map(|h| {
        let method = &h.method.sig.ident;
        let method_name = syn::ext::IdentExt::unraw(method).to_string();
        let command = h.command;
        let register = quote_spanned! {command.span()=>
            #private::command::CommandRegistration::new::<#command>
        };
        // The closure is spanned on the return type: the registration's bound that its output be
        // `CommandResult` of the command's answer is reported there (the answer is known from
        // the command type, which is checked on the parameter, once).
        let output_span = h.output.span();
        let handler = quote_spanned! {output_span=>
            move |__ctx: #private::handler::Context, __command: #command| {
                let __this = ::std::sync::Arc::clone(&__this);
                async move { __this.#method(&__ctx, __command).await }
            }
        };
        quote! {
            {
                let __this = ::std::sync::Arc::clone(&self);
                __registrations.push(#register(#method_name, #handler));
            }
        }
    });
    quote! {
        #block

        const _: () = {
            #[automatically_derived]
            impl #private::command::CommandHandlerSet for #self_ty {
                fn set_name(&self) -> &::core::primitive::str {
                    #name
                }

                fn command_registrations(
                    self: ::std::sync::Arc<Self>,
                ) -> ::std::vec::Vec<#private::command::CommandRegistration> {
                    let mut __registrations = ::std::vec::Vec::new();
                    #(#registrations)*
                    __registrations
                }
            }
        };
    }
}
