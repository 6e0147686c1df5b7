//! Putting generated code on the user's token, so that a type error in it is reported there.

use proc_macro2::{Group, Span, TokenStream, TokenTree};

/// `tokens` with every span (also inside groups) set to `span`.
///
/// A user's token has call-site hygiene, as generated code does, so names resolve the same; only
/// where rustc reports an error in the code changes.
pub(crate) fn respan(tokens: TokenStream, span: Span) -> TokenStream {
    tokens
        .into_iter()
        .map(|tt| match tt {
            TokenTree::Group(g) => {
                let mut group = Group::new(g.delimiter(), respan(g.stream(), span));
                group.set_span(span);
                TokenTree::Group(group)
            }
            mut other => {
                other.set_span(span);
                other
            }
        })
        .collect()
}
