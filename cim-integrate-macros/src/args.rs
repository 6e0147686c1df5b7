//! Parsing of `key = value, ...` attribute arguments, shared by the attribute macros: every key
//! is one of a known list, appears at most once, and a bad key or value is reported without
//! stopping, so that all mistakes are reported together.

use crate::errors::Errors;
use proc_macro2::{TokenStream, TokenTree};
use syn::Ident;
use syn::ext::IdentExt;
use syn::parse::{ParseStream, Parser};

/// Parses `attr` as comma-separated `key = value` pairs. Each known key's value tokens go to
/// `on_value`, which records what it parsed; unknown and duplicate keys, a missing `=` and
/// `on_value`'s failures are recorded in `errors`. Returns the known keys present, even those
/// whose value was wrong, so that callers do not also report them missing.
pub(crate) fn parse(
    attr: TokenStream,
    macro_name: &str,
    keys: &[&str],
    errors: &mut Errors,
    mut on_value: impl FnMut(&Ident, TokenStream) -> syn::Result<()>,
) -> Vec<String> {
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
    seen
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
