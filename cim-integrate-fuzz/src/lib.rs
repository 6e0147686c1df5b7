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
//! - [`timestamp`]: `Timestamp` from RFC 3339 text (every time header and payload field) and from
//!   nanoseconds. Never panics; what parses writes back and parses to itself, by `FromStr` and by
//!   serde, and lies in the years RFC 3339 can write.
//! - [`traceparent`]: `TraceParent::parse` (the `traceparent` header). Never panics; what parses
//!   writes back (as version `00`) and parses to itself; a version-`00` value writes back as given.
//! - [`saga_event`]: `SagaEvent::decode` (a saga's lifecycle event, from any publisher). Never
//!   panics; what decodes re-encodes and decodes to itself.
//! - [`saga_record`]: the runner's reading of a stored saga record (formats 1 and 2), and its
//!   hand-written encoder against serde. Never panics; a record read is written by the encoder
//!   byte for byte as `serde_json::to_vec` writes it (once, and again with the same encoder), and
//!   what serde writes reads back and writes the same bytes.
//! - [`json()`]: the runtime's JSON reader and writer (payloads, saga and process records) against
//!   serde_json's: both read the same value or fail with the same error, as a `Value` and as a
//!   struct; what reads is written byte for byte as serde_json writes it.
//! - [`dedup_block`]: a dedup block entry's marks (the key-value dedup's per-64-sequences entry):
//!   decoding, the in-place lookup and adding a mark. Never panics; the lookup agrees with the
//!   decoding; a mark added is found, and added to a block as this crate writes them (offsets
//!   below 64, ascending) gives the block with that mark set, still ascending.

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
pub const TARGETS: [&str; 9] = [
    "decode",
    "envelope",
    "subject",
    "timestamp",
    "traceparent",
    "saga_event",
    "saga_record",
    "dedup_block",
    "json",
];

/// Runs target `name` on `data`; `None` for an unknown name.
pub fn run(name: &str, data: &[u8]) -> Option<String> {
    match name {
        "decode" => Some(decode(data)),
        "envelope" => Some(envelope(data)),
        "subject" => Some(subject(data)),
        "timestamp" => Some(timestamp(data)),
        "traceparent" => Some(traceparent(data)),
        "saga_event" => Some(saga_event(data)),
        "saga_record" => Some(saga_record(data)),
        "dedup_block" => Some(dedup_block(data)),
        "json" => Some(json(data)),
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

/// Reads `data` as RFC 3339 text, and its first 16 bytes as nanoseconds since the epoch.
pub fn timestamp(data: &[u8]) -> String {
    let text = String::from_utf8_lossy(data);
    let parsed = match text.parse::<Timestamp>() {
        Ok(t) => {
            let year = t.as_offset_date_time().year();
            assert!((0..=9999).contains(&year), "{text:?} parsed to year {year}");
            let written = t.to_rfc3339();
            assert_eq!(written.parse::<Timestamp>().ok(), Some(t), "{text:?} wrote {written:?}");
            assert_eq!(t.to_string(), written, "Display and to_rfc3339 agree");
            let json = serde_json::to_string(&t).unwrap_or_else(|e| panic!("serialize {t}: {e}"));
            assert_eq!(
                serde_json::from_str::<Timestamp>(&json).ok(),
                Some(t),
                "serde round trip {json}"
            );
            assert_eq!(Timestamp::from_unix_nanos(t.unix_nanos()), Some(t), "nanos round trip");
            // Truncated toward zero, as documented.
            assert_eq!(i128::from(t.unix_millis()), t.unix_nanos() / 1_000_000, "millis of {t}");
            "ok".to_owned()
        }
        Err(e) => {
            assert!(
                serde_json::from_str::<Timestamp>(&serde_json::to_string(&text).unwrap_or_default()).is_err(),
                "serde accepted what FromStr refused: {text:?}"
            );
            // The first words of the reason, as the class.
            e.reason
                .split(|c: char| !c.is_ascii_alphabetic())
                .take(3)
                .collect::<Vec<_>>()
                .join(" ")
        }
    };
    let mut raw = [0u8; 16];
    let n = data.len().min(16);
    raw[..n].copy_from_slice(&data[..n]);
    let nanos = i128::from_le_bytes(raw);
    let from_nanos = match Timestamp::from_unix_nanos(nanos) {
        Some(t) => {
            assert_eq!(t.unix_nanos(), nanos, "from_unix_nanos round trip");
            // Years RFC 3339 cannot write read as the epoch; the rest write back exactly.
            let written = t.to_rfc3339();
            if (0..=9999).contains(&t.as_offset_date_time().year()) {
                assert_eq!(written.parse::<Timestamp>().ok(), Some(t), "{nanos} wrote {written:?}");
            }
            "nanos ok"
        }
        None => "nanos out of range",
    };
    format!("{parsed} | {from_nanos}")
}

/// Reads `data` as a `traceparent` value.
pub fn traceparent(data: &[u8]) -> String {
    use cim_integrate::trace_context::TraceParent;
    let text = String::from_utf8_lossy(data);
    match TraceParent::parse(&text) {
        Ok(tp) => {
            let written = tp.to_string();
            assert_eq!(TraceParent::parse(&written), Ok(tp), "{text:?} wrote {written:?}");
            if text.starts_with("00-") {
                assert_eq!(written, text, "a version-00 value writes back as given");
            }
            format!("ok sampled={}", tp.sampled())
        }
        Err(e) => format!("{e:?}"),
    }
}

/// Decodes `data` as a saga lifecycle event.
pub fn saga_event(data: &[u8]) -> String {
    use cim_integrate::saga::SagaEvent;
    match SagaEvent::decode(data) {
        Ok(e) => {
            let again = serde_json::to_vec(&e).unwrap_or_else(|err| panic!("re-encode failed: {err}"));
            assert_eq!(SagaEvent::decode(&again).as_ref(), Ok(&e), "round trip");
            format!("ok {:?}", e.kind)
        }
        Err(e) => error_class(&e),
    }
}

/// The words of an error message before its first quoted value (serde quotes what it found), as
/// an outcome class.
fn error_class(e: &str) -> String {
    e.split('`')
        .next()
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_alphabetic())
        .filter(|w| w.len() > 2)
        .take(6)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads `data` as a stored saga record; writes what it read with the runner's encoder and with
/// serde, and reads serde's bytes back.
pub fn saga_record(data: &[u8]) -> String {
    use cim_integrate::fuzzing::{decode_saga_record, encode_saga_record};
    let rec = match decode_saga_record(data) {
        Ok(rec) => rec,
        Err(e) => return error_class(&e),
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let serde = serde_json::to_vec(&rec).unwrap_or_else(|e| panic!("serde cannot write a record read: {e}"));
    // The encoder keeps each outbox event's JSON by its number, which the runner gives once per
    // saga; a record numbering two events alike is not one it writes.
    let mut seqs: Vec<u32> = rec.outbox.iter().map(|e| e.seq).collect();
    seqs.sort_unstable();
    seqs.dedup();
    if seqs.len() == rec.outbox.len() {
        let (first, again) =
            encode_saga_record(&rec).unwrap_or_else(|e| panic!("the encoder cannot write a record read: {e}"));
        assert_eq!(text(&first), text(&serde), "the encoder writes what serde writes");
        assert_eq!(
            text(&again),
            text(&serde),
            "the encoder, used again, writes what serde writes"
        );
    }
    let back = decode_saga_record(&serde).unwrap_or_else(|e| panic!("a record written does not read back: {e}"));
    let rewritten = serde_json::to_vec(&back).unwrap_or_else(|e| panic!("serde cannot write it again: {e}"));
    assert_eq!(text(&rewritten), text(&serde), "written, read and written again");
    format!(
        "ok format {} {:?} steps {} outbox {} trace {}",
        rec.format.min(3),
        rec.status,
        rec.steps.len().min(3),
        rec.outbox.len().min(3),
        rec.trace.is_some()
    )
}

/// `data` as a mark (its first byte an offset, taken modulo 64; the next 8 its stored time) and
/// a block entry's value (the rest; none if empty): decodes the value, looks the mark up in it,
/// and adds the mark to it.
pub fn dedup_block(data: &[u8]) -> String {
    use cim_integrate::fuzzing::{DEDUP_BLOCK, decode_dedup_block, dedup_block_holds, dedup_block_with_mark};
    let Some((&first, rest)) = data.split_first() else {
        return "empty".to_owned();
    };
    let offset = first % 64;
    let (nanos, value) = match rest.split_first_chunk::<8>() {
        Some((n, value)) => (i64::from_le_bytes(*n), value),
        None => (0, rest),
    };
    let decoded = decode_dedup_block(value);
    if let Some(marks) = &decoded {
        assert!(marks.iter().all(|(o, _)| u64::from(*o) < DEDUP_BLOCK), "{marks:?}");
        for (o, n) in marks {
            assert!(dedup_block_holds(value, *o, *n), "a decoded mark is not found: {o} {n}");
        }
        assert_eq!(
            dedup_block_holds(value, offset, nanos),
            marks.contains(&(offset, nanos)),
            "the lookup and the decoding disagree"
        );
    }
    let current = (!value.is_empty()).then_some(value);
    let added = dedup_block_with_mark(current, offset, nanos);
    assert!(dedup_block_holds(&added, offset, nanos), "the mark added is not found");
    // A block as this crate writes it: decodable, offsets ascending.
    let written = decoded
        .as_ref()
        .filter(|marks| marks.windows(2).all(|w| w[0].0 < w[1].0));
    if let Some(marks) = written {
        let mut expected: std::collections::BTreeMap<u8, i64> = marks.iter().copied().collect();
        expected.insert(offset, nanos);
        let expected: Vec<(u8, i64)> = expected.into_iter().collect();
        assert_eq!(decode_dedup_block(&added), Some(expected), "the mark set in the block");
    }
    match (&decoded, written) {
        (None, _) if value.is_empty() => "none".to_owned(),
        (None, _) => format!("not a block, {} bytes over", value.len() % 9),
        (Some(_), None) => "unordered".to_owned(),
        (Some(marks), Some(_)) => format!(
            "block of {} {}",
            marks.len().min(4),
            if marks.iter().any(|(o, _)| *o == offset) {
                "replaced"
            } else {
                "added"
            }
        ),
    }
}

/// A payload with strings, numbers, a nested value and a map, read as a struct.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct JsonDoc {
    title: String,
    #[serde(default)]
    tags: Vec<String>,
    #[serde(default)]
    size: Option<f64>,
    #[serde(default)]
    extra: Option<serde_json::Value>,
    #[serde(default)]
    counts: std::collections::BTreeMap<u32, String>,
}

/// Reads `data` with the runtime's JSON reader and with serde_json, as a `Value` and as a struct
/// (the same value or the same error); writes what reads with the runtime's writer and with
/// serde_json (the same bytes).
pub fn json(data: &[u8]) -> String {
    use cim_integrate::fuzzing::json_from_slice;
    let value = json_from_slice::<serde_json::Value>(data).map_err(|e| e.to_string());
    assert_eq!(
        value,
        serde_json::from_slice::<serde_json::Value>(data).map_err(|e| e.to_string()),
        "the reader reads a value as serde_json does"
    );
    let doc = json_from_slice::<JsonDoc>(data).map_err(|e| e.to_string());
    assert_eq!(
        doc,
        serde_json::from_slice::<JsonDoc>(data).map_err(|e| e.to_string()),
        "the reader reads a struct as serde_json does"
    );
    if let Ok(doc) = &doc {
        assert_written_alike(doc, "a struct");
    }
    match &value {
        Ok(v) => {
            assert_written_alike(v, "a value");
            format!("ok {} doc {}", kind(v), doc.is_ok())
        }
        Err(e) => format!("err {}", error_class(e)),
    }
}

/// `v` is written by the runtime's writer byte for byte as serde_json writes it.
fn assert_written_alike<T: serde::Serialize>(v: &T, what: &str) {
    use cim_integrate::fuzzing::json_to_vec;
    let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
    let ours = json_to_vec(v).unwrap_or_else(|e| panic!("the writer cannot write {what} read: {e}"));
    let theirs = serde_json::to_vec(v).unwrap_or_else(|e| panic!("serde cannot write {what} read: {e}"));
    assert_eq!(text(ours), text(theirs), "the writer writes {what} as serde_json does");
}

/// The kind of a JSON value, as an outcome class.
fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "bool",
        serde_json::Value::Number(_) => "number",
        serde_json::Value::String(s) if s.chars().any(|c| c < ' ' || c == '"' || c == '\\') => "escaped string",
        serde_json::Value::String(_) => "string",
        serde_json::Value::Array(_) => "array",
        serde_json::Value::Object(_) => "object",
    }
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
            ("timestamp", b"2026-11-24T13:25:00.12+01:00"),
            (
                "traceparent",
                b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            (
                "saga_event",
                br#"{"version":"1.0","kind":"started","saga":"order","saga_id":"o-1","seq":0}"#,
            ),
            (
                "saga_record",
                include_bytes!("../../cim-integrate-runtime/tests/fixtures/saga/record_format_2.json"),
            ),
            ("dedup_block", b"\x05\x01\0\0\0\0\0\0\0\x01\x02\0\0\0\0\0\0\0"),
            (
                "json",
                br#"{"title":"t\n\u00e9","tags":["a"],"size":1.5,"extra":{"k":[null,true]},"counts":{"7":"x"}}"#,
            ),
        ] {
            assert!(run(target, input).is_some());
        }
    }

    /// The golden records of both formats read, and the encoder writes them as serde does.
    #[test]
    fn golden_saga_records_pass() {
        for golden in [
            &include_bytes!("../../cim-integrate-runtime/tests/fixtures/saga/record_format_1.json")[..],
            include_bytes!("../../cim-integrate-runtime/tests/fixtures/saga/record_format_2.json"),
        ] {
            assert!(saga_record(golden).starts_with("ok format"), "{}", saga_record(golden));
        }
    }

    /// A mark added to a block of one mark, before and after it, and in its place.
    #[test]
    fn dedup_marks_are_added_in_order() {
        let mark = |offset: u8, nanos: i64| {
            let mut v = vec![offset];
            v.extend_from_slice(&nanos.to_le_bytes());
            v
        };
        let block = mark(5, 7);
        for (offset, class) in [(1, "added"), (9, "added"), (5, "replaced")] {
            let input = [mark(offset, 3), block.clone()].concat();
            assert_eq!(dedup_block(&input), format!("block of 1 {class}"));
        }
    }
}

#[cfg(test)]
mod found {
    //! Inputs that broke an invariant once, kept as tests.
    use super::*;

    /// Valid RFC 3339 whose UTC year has five digits: `Timestamp`'s conversion to UTC panicked
    /// (seen while writing the `timestamp` target, twenty-second session).
    #[test]
    fn a_late_time_with_a_negative_offset() {
        assert_eq!(
            timestamp(b"9999-12-31T23:59:59-23:59").split(" | ").next(),
            Some("the instant in")
        );
        let headers = "document.created\nX-Occurred-At:9999-12-31T23:59:59-23:59\n\n{}";
        let _ = envelope(headers.as_bytes());
    }

    /// Valid RFC 3339 whose UTC year is -1 (a second of 60 and a large positive offset on the
    /// first day of year 0): parsed, then written back as 1970 (found by `cargo fuzz` on the
    /// `timestamp` target, from neutral seeds, after 7M executions).
    #[test]
    fn an_early_time_with_a_positive_offset() {
        assert_eq!(
            timestamp(b"0000-01-01T16:16:60+16:17").split(" | ").next(),
            Some("the instant in")
        );
    }

    /// A saga record whose data holds a float of more digits than an `f64` keeps: read as one
    /// `f64`, written as `2.1844674407370954`, read back one unit in the last place away with
    /// serde_json's default float parser (found by the `saga_record` target, twenty-fourth
    /// session, in its first minute).
    #[test]
    fn a_float_in_a_saga_record_comes_back_as_written() {
        let golden = include_str!("../../cim-integrate-runtime/tests/fixtures/saga/record_format_2.json");
        let start = golden.find("\"data\": ").expect("data");
        let end = start + golden[start..].find('}').expect("end of data") + 1;
        let record = format!(
            "{}\"data\": {{\"amount\": 2.18446744073709551616, \"rates\": [1.18446744073709551616e20]}}{}",
            &golden[..start],
            &golden[end..]
        );
        assert!(saga_record(record.as_bytes()).starts_with("ok format 2"));
    }
}
