//! Accumulates user errors so that one expansion reports all of them at once, each on its own
//! span (as serde_derive's `Ctxt`).

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::fmt::Display;

/// The errors found so far.
#[derive(Default)]
pub(crate) struct Errors(Option<syn::Error>);

impl Errors {
    /// Records an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        match &mut self.0 {
            Some(all) => all.combine(error),
            None => self.0 = Some(error),
        }
    }

    /// Records an error spanned on `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// How many errors were recorded.
    pub(crate) fn count(&self) -> usize {
        self.0.as_ref().map_or(0, |e| e.clone().into_iter().count())
    }

    /// `Err` with every recorded error, if there is any.
    pub(crate) fn finish(self) -> Result<(), syn::Error> {
        self.0.map_or(Ok(()), Err)
    }
}

/// The `compile_error!`s of `error` beside `item`, so that one mistake gives one error and the
/// item stays visible to the rest of the crate (thiserror's fallback).
pub(crate) fn with_item(error: syn::Error, item: impl ToTokens) -> TokenStream {
    let mut out = error.into_compile_error();
    item.to_tokens(&mut out);
    out
}
