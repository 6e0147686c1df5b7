//! Parsing of `key = value, ...` attribute arguments, shared by the attribute macros: every key
//! is one of a known list, appears at most once, and a bad key or value is reported without
//! stopping, so that all mistakes are reported together.

use crate::errors::Errors;
use proc_macro2::{TokenStream, TokenTree};
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};
use syn::spanned::Spanned;
use syn::{Ident, LitInt, LitStr, Path};

/// One argument of a macro (serde_derive's `Attr<T>`): its typed value and the key it was given
/// under, for spans. The key is kept even when the value was rejected, so that a rule asking
/// whether the argument was given does not also report it missing (one mistake, one error).
pub(crate) struct Attr<T> {
    key: Option<Ident>,
    value: Option<T>,
}

impl<T> Default for Attr<T> {
    fn default() -> Self {
        Self { key: None, value: None }
    }
}

impl<T> Attr<T> {
    /// Records `key` and, if it parsed, its value; passes a parse error on to be recorded.
    pub(crate) fn set(&mut self, key: &Ident, parsed: syn::Result<T>) -> syn::Result<()> {
        self.key = Some(key.clone());
        self.value = Some(parsed?);
        Ok(())
    }

    /// The value, if the argument was given with a valid one.
    pub(crate) fn get(&self) -> Option<&T> {
        self.value.as_ref()
    }

    /// The value, taken.
    pub(crate) fn take(self) -> Option<T> {
        self.value
    }

    /// Whether the argument was given, valid or not.
    pub(crate) fn given(&self) -> bool {
        self.key.is_some()
    }

    /// The key as written, if the argument was given.
    pub(crate) fn key(&self) -> Option<&Ident> {
        self.key.as_ref()
    }
}

/// Parses `attr` as comma-separated `key = value` pairs. Each known key's value tokens go to
/// `on_value`, which records what it parsed (in an [`Attr`]); unknown and duplicate keys, a
/// missing `=` and `on_value`'s failures are recorded in `errors`.
pub(crate) fn parse(
    attr: TokenStream,
    macro_name: &str,
    keys: &[&str],
    errors: &mut Errors,
    mut on_value: impl FnMut(&Ident, TokenStream) -> syn::Result<()>,
) {
    let mut seen: Vec<String> = Vec::new();
    let parser = |input: ParseStream| {
        while !input.is_empty() {
            let key = match input.call(Ident::parse_any) {
                Ok(key) => key,
                Err(_) => {
                    let found = skip_to_comma(input)?;
                    errors.spanned(found, format!("expected `key = value`; {}", expected(keys)));
                    continue;
                }
            };
            let name = key.to_string();
            let value = if input.peek(syn::Token![=]) {
                input.parse::<syn::Token![=]>()?;
                Some(skip_to_comma(input)?)
            } else {
                skip_to_comma(input)?;
                None
            };
            if !keys.contains(&name.as_str()) {
                let hint = closest(&name, keys)
                    .map(|k| format!(" (did you mean `{k}`?)"))
                    .unwrap_or_default();
                errors.spanned(
                    &key,
                    format!("unknown `{macro_name}` argument `{name}`{hint}; {}", expected(keys)),
                );
            } else if seen.contains(&name) {
                errors.spanned(
                    &key,
                    format!("duplicate `{macro_name}` argument `{name}`; give it once"),
                );
            } else {
                seen.push(name.clone());
                match value {
                    Some(value) if value.is_empty() => {
                        errors.spanned(&key, format!("missing value after `{name} =`"));
                    }
                    Some(value) => {
                        if let Err(error) = on_value(&key, value) {
                            errors.push(error);
                        }
                    }
                    None => errors.spanned(&key, format!("expected `=` after `{name}`: `{name} = ...`")),
                }
            }
        }
        Ok(())
    };
    if let Err(error) = parser.parse2(attr) {
        errors.push(error);
    }
}

/// The typed values shared by every macro's arguments: each kind of value is parsed in one place,
/// with one message naming an example of the fix.
///
/// A string literal: `key = "..."`. `example` is a whole argument, e.g. `version = "1.0"`.
pub(crate) fn string(value: TokenStream, example: &str) -> syn::Result<LitStr> {
    syn::parse2::<LitStr>(value.clone())
        .map_err(|_| syn::Error::new(value.span(), format!("expected a string literal, e.g. `{example}`")))
}

/// A name that becomes a subject token or a consumer name (`name = "onboarding"`): a string
/// literal of `[A-Za-z0-9_-]+`; `what` names it in the message ("process name").
pub(crate) fn token(value: TokenStream, example: &str, what: &str) -> syn::Result<LitStr> {
    let lit = string(value, example)?;
    crate::subject::check_token(&lit, what)?;
    Ok(lit)
}

/// A literal of type `L` (`LitBool`, `LitInt`, ...); `expected` describes it with an example.
pub(crate) fn literal<L: syn::parse::Parse>(value: TokenStream, expected: &str) -> syn::Result<L> {
    syn::parse2::<L>(value.clone()).map_err(|_| syn::Error::new_spanned(value, format!("expected {expected}")))
}

/// `crate = "::path"`: the path of the facade crate, for every macro.
pub(crate) fn krate(value: TokenStream) -> syn::Result<Path> {
    let lit = string(value, "crate = \"::cim_integrate\"")?;
    lit.parse_with(Path::parse_mod_style).map_err(|_| {
        syn::Error::new(
            lit.span(),
            "expected the path of the facade crate, e.g. `crate = \"::cim_integrate\"`",
        )
    })
}

/// The facade's path: the `crate = "..."` override or `::cim_integrate`.
pub(crate) fn facade(krate: &Attr<Path>) -> Path {
    krate.get().cloned().unwrap_or_else(|| {
        // Built, not parsed: `parse_quote!` would quote and parse on every expansion.
        let name = Ident::new("cim_integrate", proc_macro2::Span::call_site());
        Path {
            leading_colon: Some(Default::default()),
            segments: std::iter::once(syn::PathSegment::from(name)).collect(),
        }
    })
}

/// `krate` followed by `segments` (`::cim_integrate::__private::event`), as a path: quoting a
/// path pushes its tokens one by one, where a quoted `TokenStream` is one more round trip to the
/// compiler each time it is interpolated.
pub(crate) fn extend_path(krate: &Path, segments: &[&str]) -> Path {
    let mut path = krate.clone();
    for segment in segments {
        let ident = Ident::new(segment, proc_macro2::Span::call_site());
        path.segments.push(syn::PathSegment::from(ident));
    }
    path
}

/// A duration argument: the literal (for spans) and its value in milliseconds.
pub(crate) struct DurationArg {
    pub(crate) lit: LitStr,
    pub(crate) millis: u64,
}

/// `key = "500ms"` (units `ms`, `s`, `m`, `h`), positive.
pub(crate) fn duration(value: TokenStream, key: &str) -> syn::Result<DurationArg> {
    let lit = syn::parse2::<LitStr>(value.clone()).map_err(|_| {
        syn::Error::new(
            value.span(),
            format!("expected a duration such as `{key} = \"500ms\"` (units: ms, s, m, h)"),
        )
    })?;
    let millis = parse_duration_ms(&lit.value()).filter(|ms| *ms > 0).ok_or_else(|| {
        syn::Error::new(
            lit.span(),
            format!(
                "invalid duration `{}`: write a positive number and a unit, e.g. `\"500ms\"`, `\"2s\"`, `\"1m\"`, `\"1h\"`",
                lit.value()
            ),
        )
    })?;
    Ok(DurationArg { lit, millis })
}

/// `"500ms"`, `"2s"`, `"1m"`, `"1h"` in milliseconds.
pub(crate) fn parse_duration_ms(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let factor = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(factor)
}

/// A count argument: the literal (for spans) and its value.
pub(crate) struct CountArg {
    pub(crate) lit: LitInt,
    pub(crate) value: u32,
}

/// `key = 3`: a whole number of at least 1. `why` says what it counts, when that helps.
pub(crate) fn count(value: TokenStream, key: &str) -> syn::Result<CountArg> {
    let expected = || format!("expected a whole number of at least 1, e.g. `{key} = 3`");
    let lit = syn::parse2::<LitInt>(value.clone()).map_err(|_| syn::Error::new(value.span(), expected()))?;
    match lit.base10_parse::<u32>() {
        Ok(value) if value > 0 => Ok(CountArg { lit, value }),
        _ => Err(syn::Error::new(lit.span(), expected())),
    }
}

/// `[A, B]`: paths in brackets; `expected` is the message for anything else.
pub(crate) fn bracketed_paths(value: TokenStream, expected: &str) -> syn::Result<Vec<Path>> {
    let parser = |input: ParseStream| {
        if !input.peek(syn::token::Bracket) {
            return Err(input.error(expected));
        }
        let content;
        syn::bracketed!(content in input);
        let paths = syn::punctuated::Punctuated::<Path, syn::Token![,]>::parse_terminated(&content)
            .map_err(|e| syn::Error::new(e.span(), expected))?;
        Ok(paths.into_iter().collect())
    };
    parser.parse2(value)
}

/// Consumes tokens up to (and including) the next top-level comma; returns those before it.
fn skip_to_comma(input: ParseStream) -> syn::Result<TokenStream> {
    let mut taken = TokenStream::new();
    while !input.is_empty() {
        if input.peek(syn::Token![,]) {
            input.parse::<syn::Token![,]>()?;
            break;
        }
        taken.extend([input.parse::<TokenTree>()?]);
    }
    Ok(taken)
}

/// "expected one of `a`, `b`, `c`".
pub(crate) fn expected(keys: &[&str]) -> String {
    let keys: Vec<String> = keys.iter().map(|k| format!("`{k}`")).collect();
    format!("expected one of {}", keys.join(", "))
}

/// The known key nearest to a misspelt one, if it is near enough to be a typo.
fn closest<'k>(name: &str, keys: &[&'k str]) -> Option<&'k str> {
    keys.iter()
        .map(|k| (distance(name, k), *k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min()
        .map(|(_, k)| k)
}

/// Levenshtein distance.
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions() {
        let keys = ["subject", "version", "previous", "crate"];
        assert_eq!(closest("subjct", &keys), Some("subject"));
        assert_eq!(closest("versoin", &keys), Some("version"));
        assert_eq!(closest("prev", &keys), None);
        assert_eq!(closest("name", &keys), None);
    }
}
