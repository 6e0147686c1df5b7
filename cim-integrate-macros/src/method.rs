//! The one method-shape checker shared by the macros whose items are methods or functions
//! (handlers, command handlers, process handlers, saga steps and compensations): it finds what
//! breaks the expected shape, each problem on its own token; each macro words the problems for
//! its own shape (`#[subscribe]`: "a handler must be an `async fn`", `#[saga]`: "step `x` must
//! be `...`").

use proc_macro2::TokenStream;
use quote::ToTokens;
use syn::{FnArg, PatType, ReceiverKind, ReturnType, Signature, Type};

/// The receiver a shape expects.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Receiver {
    /// A free function: no `self`.
    None,
    /// `&self`.
    Shared,
    /// `&mut self`.
    Mut,
}

/// The expected shape: the receiver and how many typed parameters follow it.
pub(crate) struct Expect {
    pub(crate) receiver: Receiver,
    pub(crate) min_params: usize,
    pub(crate) max_params: usize,
}

/// One way a signature breaks its shape.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Problem {
    /// Not `async` (on `fn`).
    NotAsync,
    /// Generic parameters or a `where` clause (on the generics).
    Generic,
    /// `...` (on it).
    Variadic,
    /// A method without `self` where one is expected (on its name).
    MissingReceiver,
    /// `self` taken another way than expected (on the receiver).
    WrongReceiver,
    /// `self` on a free function's shape (on the receiver).
    UnexpectedReceiver,
    /// `self` after another parameter (on it).
    SelfNotFirst,
    /// Too few or too many typed parameters, with how many there are (too few: on the
    /// parentheses; too many: on the parameter list).
    Arity(usize),
    /// No return type (on the closing parenthesis, where `-> T` goes).
    MissingOutput,
}

/// What a signature has, as far as it could be read.
pub(crate) struct Method<'a> {
    /// The typed parameters after the receiver.
    pub(crate) params: Vec<&'a PatType>,
    /// The return type.
    pub(crate) output: Option<&'a Type>,
}

/// A problem and the tokens it is reported on.
pub(crate) struct Found {
    pub(crate) problem: Problem,
    pub(crate) tokens: TokenStream,
}

/// How a kind of method words its problems, for the macros whose messages follow one pattern
/// (`#[command]` handlers, `#[process]` handlers): "{plural} are `async`: {shape}".
pub(crate) struct Wording {
    /// "command handlers".
    pub(crate) plural: &'static str,
    /// "a command handler".
    pub(crate) singular: &'static str,
    /// "`&self`" or "`&mut self`".
    pub(crate) receiver: &'static str,
    /// How the receiver should be taken: "take the service by shared reference, `&self`".
    pub(crate) take_receiver: &'static str,
    /// The typed parameters after the receiver: "the context and the command".
    pub(crate) params: &'static str,
    /// The return type: "CommandResult".
    pub(crate) output: &'static str,
    /// The whole expected shape, ending every message.
    pub(crate) shape: &'static str,
}

impl Wording {
    /// The message for `problem`.
    pub(crate) fn message(&self, problem: Problem) -> String {
        let Self {
            plural,
            singular,
            receiver,
            take_receiver,
            params,
            output,
            shape,
        } = self;
        match problem {
            Problem::NotAsync => format!("{plural} are `async`: {shape}"),
            Problem::Generic => format!("{plural} cannot be generic: {shape}"),
            Problem::Variadic => format!("{plural} cannot be variadic: {shape}"),
            Problem::WrongReceiver => format!("{take_receiver}: {shape}"),
            Problem::MissingReceiver | Problem::UnexpectedReceiver | Problem::SelfNotFirst => {
                format!("{singular} is a method taking {receiver} first: {shape}")
            }
            Problem::Arity(n) => {
                format!("expected two parameters after {receiver}, {params}, found {n}: {shape}")
            }
            Problem::MissingOutput => format!("missing return type `-> {output}`: {shape}"),
        }
    }

    /// Records every problem found, each on its tokens; whether there was none.
    pub(crate) fn report(&self, found: Vec<Found>, errors: &mut crate::errors::Errors) -> bool {
        let ok = found.is_empty();
        for found in found {
            errors.spanned(found.tokens, self.message(found.problem));
        }
        ok
    }
}

/// Checks `sig` against `expect`: what it has, and every problem found, in signature order.
pub(crate) fn check<'a>(sig: &'a Signature, expect: &Expect) -> (Method<'a>, Vec<Found>) {
    let mut found = Vec::new();
    let mut report = |problem: Problem, tokens: &dyn ToTokens| {
        found.push(Found {
            problem,
            tokens: tokens.to_token_stream(),
        });
    };
    if sig.asyncness.is_none() {
        report(Problem::NotAsync, &sig.fn_token);
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        report(Problem::Generic, &sig.generics);
    }
    if let Some(v) = &sig.variadic {
        report(Problem::Variadic, v);
    }
    let mut inputs = sig.inputs.iter().peekable();
    match (expect.receiver, inputs.peek()) {
        (Receiver::None, Some(FnArg::Receiver(r))) => {
            report(Problem::UnexpectedReceiver, r);
            inputs.next();
        }
        (Receiver::None, _) => {}
        (expected, Some(FnArg::Receiver(r))) => {
            let mutable = match &r.kind {
                ReceiverKind::Reference(_, _, m) => Some(m.is_some()),
                _ => None,
            };
            if mutable != Some(expected == Receiver::Mut) {
                report(Problem::WrongReceiver, r);
            }
            inputs.next();
        }
        (_, _) => report(Problem::MissingReceiver, &sig.ident),
    }
    let mut params = Vec::new();
    for input in inputs {
        match input {
            FnArg::Typed(t) => params.push(t),
            FnArg::Receiver(r) => report(Problem::SelfNotFirst, r),
        }
    }
    if params.len() < expect.min_params {
        // Too few: on the parentheses, where the missing parameter goes.
        let parens = sig.paren_token.span.join();
        found.push(Found {
            problem: Problem::Arity(params.len()),
            tokens: quote::quote_spanned!(parens=> ()),
        });
    } else if params.len() > expect.max_params {
        report(Problem::Arity(params.len()), &sig.inputs);
    }
    let output = match &sig.output {
        ReturnType::Type(_, ty) => Some(&**ty),
        ReturnType::Default => {
            let close = sig.paren_token.span.close();
            found.push(Found {
                problem: Problem::MissingOutput,
                tokens: quote::quote_spanned!(close=> ()),
            });
            None
        }
    };
    (Method { params, output }, found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems(sig: TokenStream, expect: &Expect) -> Vec<Problem> {
        let sig: Signature = syn::parse2(sig).expect("a signature");
        check(&sig, expect).1.into_iter().map(|f| f.problem).collect()
    }

    #[test]
    fn finds_each_problem_once() {
        let method = Expect {
            receiver: Receiver::Shared,
            min_params: 2,
            max_params: 2,
        };
        assert_eq!(problems(quote::quote!(async fn a(&self, c: C, e: E) -> R), &method), []);
        assert_eq!(
            problems(quote::quote!(fn a<T>(&mut self, e: E)), &method),
            [
                Problem::NotAsync,
                Problem::Generic,
                Problem::WrongReceiver,
                Problem::Arity(1),
                Problem::MissingOutput
            ]
        );
        // A missing `self` is one problem, not also a wrong count.
        assert_eq!(
            problems(quote::quote!(async fn a(c: C, e: E) -> R), &method),
            [Problem::MissingReceiver]
        );
        let free = Expect {
            receiver: Receiver::None,
            min_params: 1,
            max_params: 2,
        };
        assert_eq!(
            problems(quote::quote!(async fn a(&self, e: E) -> R), &free),
            [Problem::UnexpectedReceiver]
        );
    }
}
