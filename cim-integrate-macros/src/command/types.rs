//! `#[command(subject = "...", version = "...")]` on a struct: a versioned command type.

use crate::args::{self, Attr};
use crate::errors::{self, Errors};
use crate::{subject, versioning};
use proc_macro2::{Span, TokenStream};
use quote::{ToTokens, quote};
use syn::spanned::Spanned;
use syn::{Ident, Item, ItemStruct, LitStr, Path};

const SUBJECT: &str = "subject";
const VERSION: &str = "version";
const PREVIOUS: &str = "previous";
const FROZEN: &str = "frozen";
const ANSWER: &str = "answer";
const CRATE: &str = "crate";
const KEYS: &[&str] = &[SUBJECT, VERSION, PREVIOUS, FROZEN, ANSWER, CRATE];

/// `answer`: as a bare flag, the struct is a command's answer type; as `answer = Type`, the
/// command's answer type.
enum AnswerArg {
    /// `answer` (rewritten `answer = true`).
    Flag,
    /// `answer = Reserved`.
    Type(Box<syn::Type>),
}

#[derive(Default)]
struct Args {
    subject: Attr<LitStr>,
    version: Attr<LitStr>,
    previous: Attr<Vec<Path>>,
    /// `frozen` (rewritten to `frozen = true`); `frozen = false` is allowed and means not frozen.
    frozen: Attr<bool>,
    answer: Attr<AnswerArg>,
    krate: Attr<Path>,
}

/// Parses `frozen` (a bare flag) beside `key = value` pairs: the flag is rewritten to
/// `frozen = true` for the shared parser.
fn normalise_flags(attr: TokenStream) -> TokenStream {
    let mut out = TokenStream::new();
    let tokens: Vec<proc_macro2::TokenTree> = attr.into_iter().collect();
    for (i, tt) in tokens.iter().enumerate() {
        out.extend([tt.clone()]);
        if let proc_macro2::TokenTree::Ident(ident) = tt {
            let at_key = i == 0 || matches!(&tokens[i - 1], proc_macro2::TokenTree::Punct(p) if p.as_char() == ',');
            let next_is_eq = matches!(tokens.get(i + 1), Some(proc_macro2::TokenTree::Punct(p)) if p.as_char() == '=');
            if at_key && (ident == FROZEN || ident == ANSWER) && !next_is_eq {
                let t = syn::LitBool::new(true, ident.span());
                out.extend(quote!(= #t));
            }
        }
    }
    out
}

impl Args {
    fn parse(attr: TokenStream, errors: &mut Errors) -> Self {
        let mut a = Self::default();
        args::parse(normalise_flags(attr), "command", KEYS, errors, |key, value| {
            match key.to_string().as_str() {
                SUBJECT => a.subject.set(key, args::string(value, "subject = \"document.create\"")),
                VERSION => a.version.set(key, args::string(value, "version = \"1.0\"")),
                PREVIOUS => a.previous.set(
                    key,
                    args::bracketed_paths(
                        value,
                        "expected the older versions in brackets, oldest first, e.g. `previous = [CreateDocumentV1]`",
                    ),
                ),
                FROZEN => {
                    let flag = syn::parse2::<syn::LitBool>(value.clone())
                        .map(|flag| flag.value)
                        .map_err(|_| syn::Error::new(value.span(), "`frozen` takes no value: write `frozen`"));
                    a.frozen.set(key, flag)
                }
                ANSWER => {
                    let parsed = match syn::parse2::<syn::LitBool>(value.clone()) {
                        Ok(flag) if flag.value => Ok(AnswerArg::Flag),
                        Ok(flag) => Err(syn::Error::new(
                            flag.span(),
                            "write `answer` alone on an answer type, or `answer = Reserved` on a command",
                        )),
                        Err(_) => syn::parse2::<syn::Type>(value.clone()).map(|t| AnswerArg::Type(Box::new(t))).map_err(|_| {
                            syn::Error::new_spanned(
                                &value,
                                "expected the command's answer type, e.g. `answer = Reserved`, or `answer` alone on an answer type",
                            )
                        }),
                    };
                    a.answer.set(key, parsed)
                }
                // `args::parse` passes only the known keys: this is `crate`.
                _ => a.krate.set(key, args::krate(value)),
            }
        });
        a
    }

    /// The `answer` flag's key, if the struct is an answer type.
    fn answer_flag(&self) -> Option<&Ident> {
        self.answer
            .key()
            .filter(|_| matches!(self.answer.get(), Some(AnswerArg::Flag)))
    }

    /// The command's answer type, `answer = Type`.
    fn answer_type(&self) -> Option<&syn::Type> {
        match self.answer.get() {
            Some(AnswerArg::Type(t)) => Some(t),
            _ => None,
        }
    }

    /// The `frozen` flag's key, if the command is a frozen older version.
    fn frozen(&self) -> Option<&Ident> {
        self.frozen.key().filter(|_| self.frozen.get() == Some(&true))
    }
}

fn item(item: TokenStream, errors: &mut Errors) -> Option<ItemStruct> {
    const USE: &str =
        "`#[command]` goes on a struct with named fields (a command type) or on an `impl` block (its handlers)";
    match syn::parse2::<Item>(item) {
        Ok(Item::Struct(s)) => Some(s),
        Ok(Item::Enum(e)) => {
            errors.spanned(
                e.enum_token,
                format!(
                    "{USE}, not an enum: declare one command struct per case (e.g. `CreateDocument`, `ArchiveDocument`)"
                ),
            );
            None
        }
        Ok(Item::Fn(f)) => {
            errors.spanned(
                f.sig.fn_token,
                format!("{USE}, not a function: put the handler in an `impl` block marked `#[command]`"),
            );
            None
        }
        Ok(other) => {
            errors.spanned(other, USE);
            None
        }
        Err(e) => {
            errors.push(e);
            None
        }
    }
}

/// A checked command type.
struct CommandType {
    item: ItemStruct,
    version: LitStr,
    role: Role,
    krate: Path,
}

/// What the struct is.
enum Role {
    /// The current version of a command: its subject, older versions, and answer type.
    Command {
        subject: LitStr,
        previous: Vec<Path>,
        answer: Option<Box<syn::Type>>,
    },
    /// The current version of a command's answer, with its older versions.
    Answer { previous: Vec<Path> },
    /// A frozen older version (of a command or an answer).
    Frozen,
}

/// Checks every rule, recording each broken one; the checked command type if none is.
fn validate(args: &Args, parsed: Option<ItemStruct>, errors: &mut Errors) -> Option<CommandType> {
    let before = errors.count();
    let version = versioning::version_rule(
        &args.version,
        "missing `version`: every command declares its wire version, e.g. \
         `#[command(subject = \"document.create\", version = \"1.0\")]`",
        errors,
    );
    let answer_flag = args.answer_flag();
    if let Some(flag) = answer_flag {
        if let Some(s) = args.subject.key() {
            errors.spanned(
                s,
                "an answer type has no `subject`: it travels in the reply to its command; remove `subject`, \
                 and name this type in the command's `answer = ...`",
            );
        } else if args.frozen().is_some() {
            errors.spanned(
                flag,
                "a frozen older version of an answer is declared like any frozen version: \
                 `#[command(version = \"1.0\", frozen)]`; remove `answer`",
            );
        }
    }
    if let (Some(_), None, Some(key)) = (args.answer_type(), args.subject.get(), args.answer.key())
        && !args.subject.given()
    {
        errors.spanned(
            key,
            "`answer = ...` names the answer of a command: it belongs on the current version, the one with a `subject`",
        );
    }
    match (args.subject.get(), args.frozen()) {
        _ if answer_flag.is_some() => {}
        (Some(s), _) => {
            if let Err(e) = subject::check_concrete(s, subject::Concrete::Command) {
                errors.push(e);
            }
            if let Some(f) = args.frozen() {
                errors.spanned(
                    f,
                    "a frozen older version has no `subject`: only the current version of a command is sent; \
                     remove `frozen`, or remove `subject` and list this type in the current version's `previous`",
                );
            }
        }
        (None, Some(_)) => {}
        (None, None) if args.subject.given() => {}
        (None, None) => errors.push(syn::Error::new(
            Span::call_site(),
            "missing `subject`: a command names the domain and the command it asks for, e.g. \
             `#[command(subject = \"document.create\", version = \"1.0\")]` (it travels on \
             `commands.document.create`); a frozen older version of a command is declared \
             `#[command(version = \"1.0\", frozen)]`, and a command's answer type \
             `#[command(answer, version = \"1.0\")]`",
        )),
    }
    if let (Some(_), Some(_), Some(key)) = (args.frozen(), args.previous.get(), args.previous.key()) {
        errors.spanned(
            key,
            "`previous` belongs on the current version of a command, the one with a `subject`",
        );
    }
    let previous = args.previous.get().cloned().unwrap_or_default();
    let item = parsed?;
    versioning::check_payload_struct(&item, "commands", errors);
    versioning::check_previous(&item.ident, &previous, errors);
    let role = match (args.subject.get(), answer_flag) {
        (_, Some(_)) => Role::Answer { previous },
        (Some(subject), None) if args.frozen().is_none() => Role::Command {
            subject: subject.clone(),
            previous,
            answer: args.answer_type().cloned().map(Box::new),
        },
        _ => Role::Frozen,
    };
    (errors.count() == before).then_some(CommandType {
        item,
        version: version?,
        role,
        krate: args::facade(&args.krate),
    })
}

/// The struct with serde derives, `PayloadVersion`, and for the current version `Versioned`
/// and `Command`.
fn expand_type(command: &CommandType) -> TokenStream {
    let CommandType {
        item,
        version,
        role,
        krate,
    } = command;
    let ident = &item.ident;
    let derives = versioning::serde_derives(krate);
    let payload_version = versioning::payload_version_impl(krate, ident, version);
    let private = quote!(#krate::__private);
    let current = match role {
        Role::Command {
            subject,
            previous,
            answer,
        } => {
            let versioned = versioning::versioned_impl(krate, ident, version, previous);
            // On the answer type's tokens: a type that is not an answer is reported there.
            let answer = answer.as_ref().map_or_else(|| quote!(()), ToTokens::to_token_stream);
            quote! {
                #versioned

                #[automatically_derived]
                impl #private::command::Command for #ident {
                    const SUBJECT: &'static ::core::primitive::str = #subject;
                    type Answer = #answer;
                }
            }
        }
        Role::Answer { previous } => {
            let versioned = versioning::versioned_impl(krate, ident, version, previous);
            quote! {
                #versioned

                #[automatically_derived]
                impl #private::command::VersionedAnswer for #ident {}
            }
        }
        Role::Frozen => TokenStream::new(),
    };
    quote! {
        #derives
        #item

        const _: () = {
            #payload_version
            #current
        };
    }
}

/// Expands `#[command(attr)] struct ...`: parse, validate, expand; on any mistake every error
/// beside the struct and stub impls.
pub(super) fn expand(attr: TokenStream, tokens: TokenStream) -> TokenStream {
    let mut errors = Errors::default();
    let args = Args::parse(attr, &mut errors);
    let parsed = item(tokens.clone(), &mut errors);
    let command = validate(&args, parsed.clone(), &mut errors);
    match (errors.finish(), command) {
        (Ok(()), Some(command)) => expand_type(&command),
        (Err(error), _) => {
            let krate = args::facade(&args.krate);
            let stubs = stubs(&args, &krate, &tokens);
            let mut out = errors::with_item(error, fallback(parsed, tokens));
            out.extend(stubs);
            out
        }
        // Validation fails only with an error; should it not, the item is kept as written.
        (Ok(()), None) => tokens,
    }
}

/// The stub impls emitted on error (see [`versioning::stub_impls`]): a command that is not
/// `frozen` gets `Command` too.
fn stubs(args: &Args, krate: &Path, tokens: &TokenStream) -> TokenStream {
    let Ok(item) = syn::parse2::<Item>(tokens.clone()) else {
        return TokenStream::new();
    };
    let version = args.version.get().filter(|v| versioning::check_version(v).is_ok());
    let role = if args.frozen().is_some() {
        versioning::StubRole::Frozen
    } else if args.answer_flag().is_some() {
        versioning::StubRole::Answer
    } else {
        versioning::StubRole::Command(args.subject.get())
    };
    versioning::stub_impls(krate, &item, version, &role)
}

/// The item as written, without `#[serde]` attributes (nothing derives serde on error).
fn fallback(parsed: Option<ItemStruct>, tokens: TokenStream) -> TokenStream {
    let Some(mut item) = parsed else { return tokens };
    let not_serde = |a: &syn::Attribute| !a.path().is_ident("serde");
    item.attrs.retain(not_serde);
    for field in item.fields.iter_mut() {
        field.attrs.retain(not_serde);
    }
    item.into_token_stream()
}
