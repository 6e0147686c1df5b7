//! Accumulates user errors so that one expansion reports all of them at once, each on its own
//! span (serde_derive's `internals/ctxt.rs`).
//!
//! The collector must be consumed with [`Errors::finish`]: dropping it unchecked is a bug in the
//! macro (an error found and then lost), caught by a panic in `Drop` in this crate's tests and
//! debug builds. In release builds of the macro a forgotten check is silent rather than a panic,
//! so that user code never sees the macro crash.

use proc_macro2::TokenStream;
use quote::ToTokens;
use std::fmt::Display;

/// The errors found so far.
pub(crate) struct Errors {
    /// `None` once [`Errors::finish`] took them.
    errors: Option<Vec<syn::Error>>,
}

impl Default for Errors {
    fn default() -> Self {
        Self {
            errors: Some(Vec::new()),
        }
    }
}

impl Errors {
    fn list(&mut self) -> &mut Vec<syn::Error> {
        self.errors.get_or_insert_with(Vec::new)
    }

    /// Records an error.
    pub(crate) fn push(&mut self, error: syn::Error) {
        self.list().push(error);
    }

    /// Records an error spanned on `tokens`.
    pub(crate) fn spanned(&mut self, tokens: impl ToTokens, message: impl Display) {
        self.push(syn::Error::new_spanned(tokens, message));
    }

    /// How many errors were recorded.
    pub(crate) fn count(&self) -> usize {
        self.errors.as_ref().map_or(0, Vec::len)
    }

    /// `Err` with every recorded error, if there is any. Consumes the collector (the check).
    pub(crate) fn finish(mut self) -> Result<(), syn::Error> {
        let errors = self.errors.take().unwrap_or_default();
        let mut all: Option<syn::Error> = None;
        for error in errors {
            match &mut all {
                Some(all) => all.combine(error),
                None => all = Some(error),
            }
        }
        all.map_or(Ok(()), Err)
    }
}

impl Drop for Errors {
    fn drop(&mut self) {
        if cfg!(debug_assertions) && !std::thread::panicking() && self.errors.is_some() {
            panic!("an `Errors` was dropped without `finish()`: its errors would be lost");
        }
    }
}

/// Finishes `errors` and emits every error beside `item` (or the item alone if there is none).
pub(crate) fn emit(errors: Errors, item: impl ToTokens) -> TokenStream {
    match errors.finish() {
        Ok(()) => item.into_token_stream(),
        Err(error) => with_item(error, item),
    }
}

/// The `compile_error!`s of `error` beside `item`, so that one mistake gives one error and the
/// item stays visible to the rest of the crate (thiserror's fallback).
pub(crate) fn with_item(error: syn::Error, item: impl ToTokens) -> TokenStream {
    let mut out = error.into_compile_error();
    item.to_tokens(&mut out);
    out
}
