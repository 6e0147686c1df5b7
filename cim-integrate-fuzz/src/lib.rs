//! Fuzz targets of cim-integrate, as plain functions over bytes, and the checks they make.
//!
//! Each target feeds arbitrary bytes to one parser and **panics when an invariant breaks**, as a
//! libFuzzer target would; the driver (`src/bin/cim-fuzz.rs`) catches the panic and saves the
//! input. Every target returns a short *outcome class* (which error variant, which branch), which
//! the driver uses as cheap feedback: an input producing a class not seen before joins the corpus.
//!
//! - [`decode`]: `Versioned::decode` of a three-version `#[domain_event]` (and a two-version one).
//!   Never panics; a decoded value re-encodes and decodes to itself; the version tag scanner agrees
//!   with the decoder on which version was read.
//! - [`envelope`]: `Envelope::from_received` over arbitrary subject, header lines and payload.
//!   Never panics; only an invalid subject is an error; identities are derived deterministically
//!   (two parses agree); `to_headers` of the result parses back to the same identity.
//! - [`subject()`]: `Subject::new`, `SubjectPattern::new`, `pattern_matches`, `patterns_overlap`
//!   against a split-on-dots reference.

#[path = "../../tests/domain_event_examples/mod.rs"]
#[allow(dead_code, missing_docs)]
mod examples;

use bytes::Bytes;
use cim_integrate::envelope::{Envelope, ReceivedFrom};
use cim_integrate::event::{self, DecodeError, Versioned};
use cim_integrate::subject::{self, MAX_SUBJECT_LEN, Subject, SubjectPattern};
use cim_integrate::{Headers, Timestamp};
use std::sync::Arc;

/// The targets, by name.
pub const TARGETS: [&str; 3] = ["decode", "envelope", "subject"];

/// Runs target `name` on `data`; `None` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> Option<String> {
    match name {
        "decode" => Some(decode(data)),
        "envelope" => Some(envelope(data)),
        "subject" => Some(subject(data)),
        _ => None,
    }
}

fn class(e: &DecodeError) -> String {
    // The variant, and for invalid JSON the first words of serde's message (no positions, no
    // values), so that classes stay few and meaningful.
    let debug = format!("{e:?}");
    let variant: String = debug.chars().take_while(|c| c.is_ascii_alphanumeric()).collect();
    match e {
        DecodeError::InvalidJson { reason, version, .. } => {
            let words: Vec<&str> = reason
                .split(|c: char| !c.is_ascii_alphabetic())
                .filter(|w| w.len() > 2)
                .take(3)
                .collect();
            format!("{variant} tagged={} {}", version.is_some(), words.join(" "))
        }
        _ => variant,
    }
}

/// Decodes `data` as `DocumentCreated` (3 versions) and `PersonRegistered` (2 versions).
pub fn decode(data: &[u8]) -> String {
    use examples::{DocumentCreated, PersonRegistered};
    let tag = event::read_version_tag(DocumentCreated::TYPE_NAME, DocumentCreated::VERSIONS, data);
    let out = match DocumentCreated::decode(data) {
        Ok(value) => {
            let tag = tag.unwrap_or_else(|e| panic!("decoded, but the tag scanner failed: {e}"));
            assert!(
                DocumentCreated::VERSIONS.contains(&tag.as_ref()),
                "decoded an unknown version {tag}"
            );
            let again = value.encode().unwrap_or_else(|e| panic!("re-encode failed: {e}"));
            let back = DocumentCreated::decode(&again).unwrap_or_else(|e| panic!("re-decode failed: {e}"));
            assert_eq!(back, value, "encode/decode round trip");
            format!("ok {tag}")
        }
        Err(e) => {
            if let DecodeError::UnknownVersion { version, .. } = &e {
                assert!(
                    !DocumentCreated::VERSIONS.contains(&version.as_str()),
                    "known version reported unknown"
                );
            }
            class(&e)
        }
    };
    let person = match PersonRegistered::decode(data) {
        Ok(value) => {
            let again = value.encode().unwrap_or_else(|e| panic!("re-encode failed: {e}"));
            assert_eq!(PersonRegistered::decode(&again).ok(), Some(value), "round trip");
            "ok".to_owned()
        }
        Err(e) => class(&e),
    };
    format!("{out} | {person}")
}

/// Splits `data` into a subject (first line), header lines `name:value` up to an empty line,
/// and the payload (the rest), and rebuilds an envelope from them.
pub fn envelope(data: &[u8]) -> String {
    let (subject, rest) = split_line(data);
    let subject = String::from_utf8_lossy(subject).into_owned();
    let mut headers = Headers::new();
    let mut rest = rest;
    let mut rejected = 0;
    loop {
        if rest.is_empty() {
            break;
        }
        let (line, tail) = split_line(rest);
        rest = tail;
        if line.is_empty() {
            break;
        }
        let line = String::from_utf8_lossy(line);
        let (name, value) = line.split_once(':').unwrap_or((&line, ""));
        if headers.append(name, value).is_err() {
            rejected += 1;
        }
    }
    let payload = Bytes::copy_from_slice(rest);
    let from = ReceivedFrom {
        stream: (!payload.len().is_multiple_of(3)).then(|| Arc::from("DOCUMENT_EVENTS")),
        stream_sequence: payload.len().is_multiple_of(2).then_some(payload.len() as u64 + 1),
        published: payload.len().is_multiple_of(5).then(Timestamp::now),
    };
    let first = Envelope::from_received(&subject, &headers, payload.clone(), &from);
    let second = Envelope::from_received(&subject, &headers, payload.clone(), &from);
    match (first, second) {
        (Ok(a), Ok(b)) => {
            assert!(
                Subject::new(&subject).is_ok(),
                "accepted an invalid subject {subject:?}"
            );
            assert_eq!(a.identity(), b.identity(), "identity derivation is not deterministic");
            let round =
                Envelope::from_received(a.subject().as_str(), &a.to_headers(), payload, &ReceivedFrom::default())
                    .unwrap_or_else(|e| panic!("our own headers do not parse: {e}"));
            assert_eq!(round.identity(), a.identity(), "to_headers/from_received round trip");
            assert_eq!(round.event_type(), a.event_type(), "event type round trip");
            assert_eq!(round.event_version(), a.event_version(), "event version round trip");
            assert!(!round.is_derived(), "our own headers give a derived identity");
            format!(
                "ok derived={} headers={} rejected={}",
                a.is_derived(),
                headers.len().min(4),
                rejected.min(2)
            )
        }
        (Err(_), Err(_)) => {
            assert!(Subject::new(&subject).is_err(), "refused a valid subject {subject:?}");
            "invalid subject".to_owned()
        }
        _ => panic!("two parses of the same input disagree"),
    }
}

fn split_line(data: &[u8]) -> (&[u8], &[u8]) {
    match data.iter().position(|b| *b == b'\n') {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[]),
    }
}

fn reference_valid(s: &str, wildcards: bool) -> bool {
    if s.is_empty() || s.len() > MAX_SUBJECT_LEN {
        return false;
    }
    let tokens: Vec<&str> = s.split('.').collect();
    tokens.iter().enumerate().all(|(i, t)| {
        if wildcards && *t == "*" {
            return true;
        }
        if wildcards && *t == ">" {
            return i == tokens.len() - 1;
        }
        !t.is_empty() && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    })
}

fn reference_match(p: &[&str], s: &[&str]) -> bool {
    match (p.split_first(), s.split_first()) {
        (Some((&">", _)), Some(_)) => true,
        (Some((pt, pr)), Some((st, sr))) => (*pt == "*" || pt == st) && reference_match(pr, sr),
        (None, None) => true,
        _ => false,
    }
}

fn reference_overlap(a: &[&str], b: &[&str]) -> bool {
    match (a.split_first(), b.split_first()) {
        (Some((&">", _)), Some(_)) | (Some(_), Some((&">", _))) => true,
        (Some((at, ar)), Some((bt, br))) => (*at == "*" || *bt == "*" || at == bt) && reference_overlap(ar, br),
        (None, None) => true,
        _ => false,
    }
}

/// Splits `data` at the first newline into a pattern and a subject and checks every subject rule
/// against the reference.
pub fn subject(data: &[u8]) -> String {
    let (p, s) = split_line(data);
    let p = String::from_utf8_lossy(p).into_owned();
    let s = String::from_utf8_lossy(s).into_owned();
    let s_ok = Subject::new(&s).is_ok();
    let p_ok = SubjectPattern::new(&p).is_ok();
    assert_eq!(s_ok, reference_valid(&s, false), "Subject::new({s:?})");
    assert_eq!(p_ok, reference_valid(&p, true), "SubjectPattern::new({p:?})");
    assert_eq!(subject::is_valid_subject(&s), s_ok);
    assert_eq!(subject::is_valid_pattern(&p), p_ok);
    let pt: Vec<&str> = p.split('.').collect();
    let st: Vec<&str> = s.split('.').collect();
    let matches = subject::pattern_matches(&p, &s);
    assert_eq!(
        matches,
        p_ok && s_ok && reference_match(&pt, &st),
        "pattern_matches({p:?}, {s:?})"
    );
    if let (Ok(pattern), Ok(subj)) = (SubjectPattern::new(&p), Subject::new(&s)) {
        assert_eq!(pattern.matches(&subj), matches);
    }
    let s_as_pattern_ok = reference_valid(&s, true);
    let overlap = subject::patterns_overlap(&p, &s);
    assert_eq!(overlap, subject::patterns_overlap(&s, &p), "overlap is symmetric");
    assert_eq!(
        overlap,
        p_ok && s_as_pattern_ok && reference_overlap(&pt, &st),
        "patterns_overlap({p:?}, {s:?})"
    );
    format!("subject={s_ok} pattern={p_ok} match={matches} overlap={overlap}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_pass() {
        for (target, input) in [
            (
                "decode",
                &br#"{"version":"1.0","document_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071","title":"t"}"#[..],
            ),
            (
                "envelope",
                b"document.created\nX-Message-ID:0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071\n\n{}",
            ),
            ("subject", b"document.*\ndocument.created"),
        ] {
            assert!(run(target, input).is_some());
        }
    }
}
