//! The subject rule, checked on literals so that the error lands on the literal.
//!
//! A copy of `cim_integrate_runtime::subject::check_subject` (the macro crate cannot depend on
//! the runtime): dot-separated tokens of `[A-Za-z0-9_-]+`, no wildcards, at most 512 bytes. The
//! runtime asserts the same rule again at compile time on `DomainEvent::SUBJECT`, so the two
//! copies cannot drift apart unnoticed.

use syn::LitStr;

/// The longest subject accepted, in bytes (`cim_integrate_runtime::subject::MAX_SUBJECT_LEN`).
const MAX_SUBJECT_LEN: usize = 512;

/// What a concrete subject names, for messages.
#[derive(Clone, Copy)]
pub(crate) enum Concrete {
    /// The subject an event is published on.
    Event,
    /// The subject a command is sent on (after `commands.`).
    Command,
}

impl Concrete {
    fn owner(self) -> &'static str {
        match self {
            Self::Event => "an event's subject",
            Self::Command => "a command's subject",
        }
    }

    fn fix(self) -> &'static str {
        match self {
            Self::Event => "name the one subject this event is published on, e.g. `document.created`",
            Self::Command => "name the one command, `domain.name`, e.g. `document.create`",
        }
    }
}

/// Checks a concrete subject literal; the error explains the rule and names a fix.
pub(crate) fn check_concrete(lit: &LitStr, kind: Concrete) -> syn::Result<()> {
    let subject = lit.value();
    problem(&subject, kind).map_or(Ok(()), |message| Err(syn::Error::new(lit.span(), message)))
}

fn problem(s: &str, kind: Concrete) -> Option<String> {
    const RULE: &str = "subjects are dot-separated tokens of `A-Z a-z 0-9 _ -`, e.g. `document.created`";
    if s.is_empty() {
        return Some(format!("the subject is empty; {RULE}"));
    }
    if s.len() > MAX_SUBJECT_LEN {
        return Some(format!(
            "the subject is {} bytes long; the limit is {MAX_SUBJECT_LEN}",
            s.len()
        ));
    }
    let mut at = 0;
    for token in s.split('.') {
        if token.is_empty() {
            return Some(format!(
                "invalid subject `{s}`: empty token at byte {at} (a leading, trailing or doubled dot); {RULE}"
            ));
        }
        for (i, c) in token.char_indices() {
            match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '_' | '-' => {}
                '*' | '>' => {
                    return Some(format!(
                        "{} must be concrete, but `{s}` has the wildcard `{c}` at byte {}; \
                         wildcards belong in subscriptions only; {}",
                        kind.owner(),
                        at + i,
                        kind.fix(),
                    ));
                }
                _ => {
                    return Some(format!(
                        "invalid subject `{s}`: {c:?} at byte {} is not allowed; {RULE}",
                        at + i
                    ));
                }
            }
        }
        at += token.len() + 1;
    }
    None
}

/// Checks a subscription pattern literal (`*` whole tokens, a final `>`), and that its first
/// token names a domain, because the domain picks the stream (`document.*` reads
/// `DOCUMENT_EVENTS`).
pub(crate) fn check_pattern(lit: &LitStr) -> syn::Result<()> {
    let p = lit.value();
    let err = |m: String| Err(syn::Error::new(lit.span(), m));
    const RULE: &str = "patterns are dot-separated tokens of `A-Z a-z 0-9 _ -`, a whole-token `*`, or a final `>`, \
                        e.g. `document.created`, `document.*`, `document.>`";
    if p.is_empty() || p.len() > MAX_SUBJECT_LEN {
        return err(format!("invalid pattern `{p}`: {RULE}"));
    }
    let tokens: Vec<&str> = p.split('.').collect();
    for (i, t) in tokens.iter().enumerate() {
        let ok = match *t {
            "*" => true,
            ">" => i == tokens.len() - 1,
            t => !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'),
        };
        if !ok {
            return err(format!(
                "invalid pattern `{p}`: token {} (`{t}`) is not allowed; {RULE}",
                i + 1
            ));
        }
    }
    if matches!(tokens[0], "*" | ">") {
        return err(format!(
            "the pattern `{p}` must start with the domain it reads from (`document.*`, not `*.created`): \
             each domain has its own stream"
        ));
    }
    Ok(())
}

/// Checks a single token (a domain or handler name) literal.
pub(crate) fn check_token(lit: &LitStr, what: &str) -> syn::Result<()> {
    let t = lit.value();
    if t.is_empty() || !t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(syn::Error::new(
            lit.span(),
            format!("invalid {what} `{t}`: use one token of `A-Z a-z 0-9 _ -`, e.g. `workflow`"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Concrete;

    fn problem(s: &str) -> Option<String> {
        super::problem(s, Concrete::Event)
    }

    #[test]
    fn follows_the_runtime_rule() {
        for ok in ["document.created", "a", "A-b_9.x", "prod.document.created"] {
            assert_eq!(problem(ok), None, "{ok}");
        }
        for bad in ["", ".a", "a.", "a..b", "a b", "a.*", "a.>", "doc*", "é", "a\tb"] {
            assert!(problem(bad).is_some(), "{bad:?}");
        }
        assert!(problem(&"a".repeat(513)).is_some());
        assert!(problem("document.*").unwrap().contains("wildcard `*` at byte 9"));
        assert!(problem("document created").unwrap().contains("' ' at byte 8"));
    }
}
