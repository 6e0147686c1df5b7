//! Dead letters: list with filters, inspect, group by failure fingerprint, redrive to their
//! handler, purge.
//!
//! A dead letter is a message of `DEAD_LETTERS` on `dlq.{set}.{handler}`: the original's headers
//! and payload plus the `X-Dead-Letter-*` headers the host wrote (see
//! [`service`](crate::service)). Its *sequence* in `DEAD_LETTERS` names it.
//!
//! **Redrive.** A redriven letter is published on `dlq.{set}.{handler}.redrive`, which only that
//! handler's redrive consumer reads (every host runs one per handler), with the original's
//! headers and payload, the original identity written out in full (`X-Message-ID`,
//! `X-Correlation-ID`, `X-Causation-ID`: the handler sees the message id, correlation and
//! causation it saw the first time), `X-Redrive-Count` one more than the letter's, and the
//! original subject and position (`X-Redrive-Subject`, `-Stream`, `-Sequence`, `-Stored`: the
//! handler's mark of the redriven copy names the original too, see
//! [`dedup`](crate::dedup)). Once the server
//! has stored it, the letter is deleted. The handler runs it through its own pipeline with the
//! de-duplication mark always read for a redriven message, so:
//! - interrupted between the publish and the delete, a repeat publishes the same message again
//!   (its `Nats-Msg-Id` is derived from the letter and the redrive count: within the stream's
//!   duplicate window the server drops it, after it the handler finds its mark);
//! - a letter redriven twice, or a message dead-lettered by several handlers and redriven to
//!   each, is handled at most once per handler;
//! - a handler that fails again dead-letters it again, with `X-Redrive-Count` kept.

use super::{Ops, OpsError, not_found, transport};
use crate::envelope::{Envelope, ReceivedFrom};
use crate::headers::{self, Headers};
use crate::id::Identity;
use crate::monitor::DeadLetterReason;
use crate::service::{
    DEAD_LETTER_AT, DEAD_LETTER_DELIVERIES, DEAD_LETTER_HANDLER, DEAD_LETTER_HEADERS_OMITTED, DEAD_LETTER_KIND,
    DEAD_LETTER_ORIGINAL_MSG_ID, DEAD_LETTER_PAYLOAD_OMITTED, DEAD_LETTER_REASON, DEAD_LETTER_SEQUENCE,
    DEAD_LETTER_STORED, DEAD_LETTER_STREAM, DEAD_LETTER_STREAM_NAME, DEAD_LETTER_SUBJECT, DEAD_LETTER_TOKEN,
    REDRIVE_COUNT, REDRIVE_SEQUENCE, REDRIVE_STORED, REDRIVE_STREAM, REDRIVE_SUBJECT, REDRIVE_TOKEN,
};
use crate::subject::Subject;
use crate::timestamp::Timestamp;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::pull};
use bytes::Bytes;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// How many letters one fetch of a listing asks for.
const PAGE: usize = 512;

/// One dead letter.
///
/// As JSON (`--json`, the console's API), the payload is exact: `payload` is its text and
/// `payload_encoding` is `"utf-8"` when it is valid UTF-8; otherwise `payload` holds its bytes in
/// standard base64 and `payload_encoding` is `"base64"` (a foreign client may publish anything,
/// and an undecodable payload is where the bytes matter).
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetter {
    /// Its sequence in `DEAD_LETTERS`: its name for [`Ops::dead_letter`], redrive and purge.
    pub sequence: u64,
    /// The handler's durable name (`{set}-{handler}`), from `X-Dead-Letter-Handler`.
    pub handler: String,
    /// The handler set (service or `#[handlers]` domain) and the handler's name, from the
    /// letter's subject `dlq.{set}.{handler}`.
    pub set: String,
    /// The handler's name within its set.
    pub name: String,
    /// What kind of failure (`None` for letters written before kinds were recorded).
    #[serde(serialize_with = "kind_str")]
    pub kind: Option<DeadLetterReason>,
    /// The reason the host gave.
    pub reason: String,
    /// The original's subject, without the deployment prefix.
    pub subject: String,
    /// The original's stream, as the host names it (without the deployment prefix, like
    /// [`subject`](Self::subject)), where it still is unless the stream's limits removed it.
    pub stream: String,
    /// The original's sequence in [`stream`](Self::stream).
    pub stream_sequence: u64,
    /// When [`stream`](Self::stream) stored the original (`None` for letters written before
    /// `X-Dead-Letter-Stored`). A redrive carries it on (`X-Redrive-Stored`), so that the
    /// handler's de-duplication mark of the redriven copy also names the original.
    pub stored: Option<Timestamp>,
    /// How often the original had been delivered when it was dead-lettered.
    pub deliveries: u64,
    /// When it was dead-lettered.
    pub at: Option<Timestamp>,
    /// How often it has been redriven before (0: never).
    pub redrives: u32,
    /// The original's identity, as its handler saw it.
    pub identity: Identity,
    /// The original's event type (`X-Event-Type`), if it had one.
    pub event_type: Option<String>,
    /// The original's headers (without the dead letter's own), in stored order.
    pub headers: Vec<(String, String)>,
    /// The original's payload (empty if [`payload_omitted`](Self::payload_omitted)).
    #[serde(flatten, serialize_with = "payload_json")]
    pub payload: Bytes,
    /// The original's payload size, when the letter could not carry it.
    pub payload_omitted: Option<u64>,
    /// How many of the original's headers the letter could not carry.
    pub headers_omitted: Option<u64>,
    /// The letter's own `Nats-Msg-Id` (what a redrive's id is derived from).
    #[serde(skip)]
    letter_id: Option<String>,
}

fn kind_str<S: serde::Serializer>(k: &Option<DeadLetterReason>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.map_or("unknown", DeadLetterReason::as_str))
}

/// `payload` and `payload_encoding`: the text when it is UTF-8, else base64.
fn payload_json<S: serde::Serializer>(p: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    use base64::Engine as _;
    use serde::ser::SerializeMap;
    let mut map = s.serialize_map(Some(2))?;
    match std::str::from_utf8(p) {
        Ok(text) => {
            map.serialize_entry("payload", text)?;
            map.serialize_entry("payload_encoding", "utf-8")?;
        }
        Err(_) => {
            map.serialize_entry("payload", &base64::engine::general_purpose::STANDARD.encode(p))?;
            map.serialize_entry("payload_encoding", "base64")?;
        }
    }
    map.end()
}

impl DeadLetter {
    /// The failure fingerprint: handler, kind and the reason with its variable parts (numbers,
    /// ids, sequences) replaced, so that one cause makes one group.
    pub fn fingerprint(&self) -> String {
        format!(
            "{}|{}|{}",
            self.handler,
            self.kind.map_or("unknown", DeadLetterReason::as_str),
            normalise(&self.reason)
        )
    }

    /// The kind's label (`permanent`, `undecodable`, `exhausted`, `invalid_envelope`, or
    /// `unknown`).
    pub fn kind_label(&self) -> &'static str {
        self.kind.map_or("unknown", DeadLetterReason::as_str)
    }
}

/// The reason with its variable parts replaced: UUIDs by `<id>`, runs of digits by `#`, so that
/// "expected 5, got 7 at line 3" and "expected 50, got 70 at line 1" group together.
pub fn normalise(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(c) = rest.chars().next() {
        if rest.len() >= 36
            && rest.is_char_boundary(36)
            && uuid::Uuid::try_parse(&rest[..36]).is_ok()
            && rest.as_bytes()[8] == b'-'
        {
            out.push_str("<id>");
            rest = &rest[36..];
        } else if c.is_ascii_digit() {
            out.push('#');
            rest = rest.trim_start_matches(|c: char| c.is_ascii_digit());
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

/// Which dead letters an operation applies to. Every set field must match; the default matches
/// every letter.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DeadLetterFilter {
    /// The handler's durable name (`{set}-{handler}`) or its name within its set.
    pub handler: Option<String>,
    /// The failure kind.
    #[serde(skip)]
    pub kind: Option<DeadLetterReason>,
    /// Dead-lettered at or after.
    pub since: Option<Timestamp>,
    /// Dead-lettered before.
    pub until: Option<Timestamp>,
    /// The failure fingerprint ([`DeadLetter::fingerprint`], [`DeadLetterGroup::fingerprint`]).
    pub fingerprint: Option<String>,
    /// Only these sequences.
    pub sequences: Option<Vec<u64>>,
}

impl DeadLetterFilter {
    /// Every letter.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only the letter with this sequence.
    pub fn sequence(sequence: u64) -> Self {
        Self {
            sequences: Some(vec![sequence]),
            ..Self::default()
        }
    }

    /// Only the letters of this failure group.
    pub fn group(fingerprint: impl Into<String>) -> Self {
        Self {
            fingerprint: Some(fingerprint.into()),
            ..Self::default()
        }
    }

    /// Only the letters of this handler (durable name or name within its set).
    pub fn handler(mut self, handler: impl Into<String>) -> Self {
        self.handler = Some(handler.into());
        self
    }

    /// Only letters of this kind.
    pub fn kind(mut self, kind: DeadLetterReason) -> Self {
        self.kind = Some(kind);
        self
    }

    /// Only letters dead-lettered at or after `since` and before `until`.
    pub fn between(mut self, since: Option<Timestamp>, until: Option<Timestamp>) -> Self {
        self.since = since;
        self.until = until;
        self
    }

    /// Whether `letter` is selected.
    pub fn matches(&self, letter: &DeadLetter) -> bool {
        let at = letter.at.map(|t| t.unix_millis());
        self.handler
            .as_deref()
            .is_none_or(|h| h == letter.handler || h == letter.name)
            && self.kind.is_none_or(|k| letter.kind == Some(k))
            && self.since.is_none_or(|s| at.is_some_and(|a| a >= s.unix_millis()))
            && self.until.is_none_or(|u| at.is_some_and(|a| a < u.unix_millis()))
            && self.fingerprint.as_deref().is_none_or(|f| f == letter.fingerprint())
            && self.sequences.as_ref().is_none_or(|s| s.contains(&letter.sequence))
    }
}

/// Dead letters with one failure fingerprint.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetterGroup {
    /// The fingerprint ([`DeadLetter::fingerprint`]): select the group with
    /// [`DeadLetterFilter::group`].
    pub fingerprint: String,
    /// The handler.
    pub handler: String,
    /// The failure kind's label.
    pub kind: String,
    /// The normalised reason.
    pub reason: String,
    /// One reason as written (the newest letter's).
    pub example: String,
    /// How many letters.
    pub count: usize,
    /// The oldest letter's time.
    pub first: Option<Timestamp>,
    /// The newest letter's time.
    pub last: Option<Timestamp>,
    /// The letters' sequences, oldest first.
    pub sequences: Vec<u64>,
}

/// Where a redrive stands, given to the progress callback after each letter.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RedriveProgress {
    /// Letters done (redriven or skipped).
    pub done: usize,
    /// Letters selected.
    pub total: usize,
}

/// What a redrive did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RedriveReport {
    /// The letters redriven (sequence in `DEAD_LETTERS`, and the handler they went to).
    pub redriven: Vec<(u64, String)>,
    /// The letters that could not be redriven, and why (they stay).
    pub skipped: Vec<(u64, String)>,
}

/// What a purge did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PurgeReport {
    /// The sequences deleted.
    pub purged: Vec<u64>,
}

impl Ops {
    /// The dead letters selected by `filter`, oldest first. No `DEAD_LETTERS` stream (no host
    /// has started yet) is no letters.
    pub async fn dead_letters(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetter>, OpsError> {
        let Some(stream) = self.dead_letter_stream().await? else {
            return Ok(Vec::new());
        };
        let mut letters = Vec::new();
        if let Some(seqs) = &filter.sequences {
            for &seq in seqs {
                if let Some(l) = self.letter_at(&stream, seq).await?
                    && filter.matches(&l)
                {
                    letters.push(l);
                }
            }
            letters.sort_by_key(|l| l.sequence);
            return Ok(letters);
        }
        let deliver_policy = match filter.since {
            // A letter is stored when it is written, so nothing older is selected.
            Some(s) => jetstream::consumer::DeliverPolicy::ByStartTime {
                start_time: time::OffsetDateTime::from_unix_timestamp_nanos(
                    i128::from(s.unix_millis()).saturating_mul(1_000_000),
                )
                .map_err(|e| OpsError::Invalid(format!("since: {e}")))?,
            },
            None => jetstream::consumer::DeliverPolicy::All,
        };
        let config = pull::Config {
            filter_subject: self.subject(&format!("{DEAD_LETTER_TOKEN}.*.*")),
            deliver_policy,
            ..Default::default()
        };
        crate::transport::nats::scan(
            &stream,
            config,
            PAGE,
            "reading dead letters",
            |letters: &mut Vec<_>, m, info| {
                let letter = self.parse(info.stream_sequence, &m.subject, m.headers.as_ref(), m.payload.clone())?;
                if filter.matches(&letter) {
                    letters.push(letter);
                }
                Ok::<_, OpsError>(())
            },
        )
        .await
    }

    /// The dead letter with sequence `sequence` in `DEAD_LETTERS`.
    pub async fn dead_letter(&self, sequence: u64) -> Result<DeadLetter, OpsError> {
        let not_found = || OpsError::NotFound(format!("dead letter #{sequence}"));
        let stream = self.dead_letter_stream().await?.ok_or_else(not_found)?;
        self.letter_at(&stream, sequence).await?.ok_or_else(not_found)
    }

    /// The selected letters grouped by failure fingerprint, largest group first.
    pub async fn dead_letter_groups(&self, filter: &DeadLetterFilter) -> Result<Vec<DeadLetterGroup>, OpsError> {
        Ok(group(&self.dead_letters(filter).await?))
    }

    /// Sends the selected letters back to their handlers (see the [module](self) for what is
    /// guaranteed), calling `progress` after each. A letter that cannot be redriven (its payload
    /// was omitted and the original is no longer in its stream) is skipped and stays.
    pub async fn redrive(
        &self,
        filter: &DeadLetterFilter,
        mut progress: impl FnMut(RedriveProgress),
    ) -> Result<RedriveReport, OpsError> {
        let letters = self.dead_letters(filter).await?;
        let Some(stream) = self.dead_letter_stream().await? else {
            return Ok(RedriveReport::default());
        };
        let total = letters.len();
        let mut report = RedriveReport::default();
        for (i, letter) in letters.into_iter().enumerate() {
            match self.redrive_one(&stream, letter).await? {
                Ok((seq, handler)) => report.redriven.push((seq, handler)),
                Err(skip) => report.skipped.push(skip),
            }
            progress(RedriveProgress { done: i + 1, total });
        }
        Ok(report)
    }

    /// Deletes the selected letters.
    pub async fn purge_dead_letters(&self, filter: &DeadLetterFilter) -> Result<PurgeReport, OpsError> {
        let letters = self.dead_letters(filter).await?;
        let Some(stream) = self.dead_letter_stream().await? else {
            return Ok(PurgeReport::default());
        };
        let mut report = PurgeReport::default();
        for l in letters {
            delete(&stream, l.sequence).await?;
            report.purged.push(l.sequence);
        }
        Ok(report)
    }

    async fn redrive_one(
        &self,
        stream: &jetstream::stream::Stream,
        mut letter: DeadLetter,
    ) -> Result<Result<(u64, String), (u64, String)>, OpsError> {
        let seq = letter.sequence;
        if letter.payload_omitted.is_some() || letter.headers_omitted.is_some() {
            // The letter could not carry the original: take it from its stream.
            match self.original(&letter).await? {
                Some((headers, payload)) => {
                    letter.headers = headers;
                    letter.payload = payload;
                }
                None => {
                    return Ok(Err((
                        seq,
                        format!(
                            "the letter does not carry the original and {} #{} is gone",
                            letter.stream, letter.stream_sequence
                        ),
                    )));
                }
            }
        }
        let letter_id = letter.letter_id.clone().unwrap_or_else(|| format!("dead-letter-{seq}"));
        let count = letter.redrives.saturating_add(1);
        let mut map = HeaderMap::new();
        let identity_names = [headers::MESSAGE_ID, headers::CORRELATION_ID, headers::CAUSATION_ID];
        for (n, v) in letter.headers.iter().filter(|(n, _)| {
            !identity_names.contains(&n.as_str())
                && ![
                    REDRIVE_COUNT,
                    REDRIVE_SUBJECT,
                    REDRIVE_STREAM,
                    REDRIVE_SEQUENCE,
                    REDRIVE_STORED,
                ]
                .contains(&n.as_str())
        }) {
            map.append(n.as_str(), v.as_str());
        }
        let id = letter.identity;
        map.insert(headers::MESSAGE_ID, id.message_id.to_string().as_str());
        map.insert(headers::CORRELATION_ID, id.correlation_id.to_string().as_str());
        map.insert(headers::CAUSATION_ID, id.causation_id.to_string().as_str());
        let redrive_id = crate::id::derived_uuid(&[b"redrive", letter_id.as_bytes(), &count.to_be_bytes()]);
        map.insert(headers::NATS_MSG_ID, redrive_id.to_string().as_str());
        map.insert(REDRIVE_COUNT, count.to_string().as_str());
        map.insert(REDRIVE_SUBJECT, letter.subject.as_str());
        map.insert(REDRIVE_STREAM, letter.stream.as_str());
        map.insert(REDRIVE_SEQUENCE, letter.stream_sequence.to_string().as_str());
        if let Some(stored) = letter.stored {
            map.insert(REDRIVE_STORED, stored.to_rfc3339().as_str());
        }
        let subject = self.subject(&format!(
            "{DEAD_LETTER_TOKEN}.{}.{}.{REDRIVE_TOKEN}",
            letter.set, letter.name
        ));
        self.js()
            .publish_with_headers(subject, map, letter.payload.clone())
            .await
            .map_err(|e| transport("publishing a redrive", &e))?
            .await
            .map_err(|e| transport("publishing a redrive", &e))?;
        delete(stream, seq).await?;
        tracing::info!(sequence = seq, handler = %letter.handler, redrive = count, "dead letter redriven");
        Ok(Ok((seq, letter.handler)))
    }

    /// The original of `letter` from its stream, if it is still there.
    async fn original(&self, letter: &DeadLetter) -> Result<Option<(Vec<(String, String)>, Bytes)>, OpsError> {
        let stream = match self.js().get_stream(self.stream_name(&letter.stream)).await {
            Ok(s) => s,
            Err(e) if not_found(&e) => return Ok(None),
            Err(e) => return Err(transport("reading the original", &e)),
        };
        match stream.get_raw_message(letter.stream_sequence).await {
            Ok(m) => Ok(Some((header_pairs(Some(&m.headers)), m.payload))),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(transport("reading the original", &e)),
        }
    }

    async fn dead_letter_stream(&self) -> Result<Option<jetstream::stream::Stream>, OpsError> {
        match self.js().get_stream(self.stream_name(DEAD_LETTER_STREAM_NAME)).await {
            Ok(s) => Ok(Some(s)),
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(transport("opening the dead-letter stream", &e)),
        }
    }

    async fn letter_at(&self, stream: &jetstream::stream::Stream, seq: u64) -> Result<Option<DeadLetter>, OpsError> {
        match stream.get_raw_message(seq).await {
            Ok(m) => {
                // A redrive on its way, not a letter.
                if m.subject.split('.').count() != 3 + self.prefix().map_or(0, |p| p.as_str().split('.').count()) {
                    return Ok(None);
                }
                self.parse(seq, &m.subject, Some(&m.headers), m.payload).map(Some)
            }
            Err(e) if not_found(&e) => Ok(None),
            Err(e) => Err(transport("reading a dead letter", &e)),
        }
    }

    fn parse(
        &self,
        sequence: u64,
        subject: &str,
        map: Option<&HeaderMap>,
        payload: Bytes,
    ) -> Result<DeadLetter, OpsError> {
        let corrupt = |what: &str| OpsError::Corrupt(format!("dead letter #{sequence}: {what}"));
        let subject = self.unprefixed(subject);
        let mut tokens = subject.split('.');
        let (Some(_dlq), Some(set), Some(name), None) = (tokens.next(), tokens.next(), tokens.next(), tokens.next())
        else {
            return Err(corrupt(&format!("subject `{subject}` is not dlq.{{set}}.{{handler}}")));
        };
        let all = header_pairs(map);
        let get = |n: &str| all.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        let num = |n: &str| get(n).and_then(|v| v.trim().parse::<u64>().ok());
        // Where the original was first stored: a letter of a redriven message points at the
        // redrive, its `X-Redrive-*` headers at the original.
        let (orig_subject, orig_stream, orig_seq, orig_stored) = match get(REDRIVE_SUBJECT) {
            Some(s) => (
                s,
                get(REDRIVE_STREAM).unwrap_or(""),
                num(REDRIVE_SEQUENCE).unwrap_or(0),
                get(REDRIVE_STORED),
            ),
            None => (
                get(DEAD_LETTER_SUBJECT).unwrap_or(""),
                get(DEAD_LETTER_STREAM).unwrap_or(""),
                num(DEAD_LETTER_SEQUENCE).unwrap_or(0),
                get(DEAD_LETTER_STORED),
            ),
        };
        let own = |n: &str| n.starts_with("X-Dead-Letter-") || n == DEAD_LETTER_DELIVERIES || n == headers::NATS_MSG_ID;
        let mut original: Vec<(String, String)> = all.iter().filter(|(n, _)| !own(n)).cloned().collect();
        if let Some(id) = get(DEAD_LETTER_ORIGINAL_MSG_ID) {
            original.push((headers::NATS_MSG_ID.to_owned(), id.to_owned()));
        }
        let identity = original_identity(orig_subject, orig_stream, orig_seq, &original, &payload)
            .ok_or_else(|| corrupt(&format!("original subject `{orig_subject}` is not a subject")))?;
        let event_type = original
            .iter()
            .find(|(n, _)| n == headers::EVENT_TYPE)
            .map(|(_, v)| v.clone());
        Ok(DeadLetter {
            sequence,
            handler: get(DEAD_LETTER_HANDLER).unwrap_or("").to_owned(),
            set: set.to_owned(),
            name: name.to_owned(),
            kind: get(DEAD_LETTER_KIND).and_then(DeadLetterReason::parse),
            reason: get(DEAD_LETTER_REASON).unwrap_or("").to_owned(),
            subject: orig_subject.to_owned(),
            stream: orig_stream.to_owned(),
            stream_sequence: orig_seq,
            stored: orig_stored.and_then(|t| t.trim().parse().ok()),
            deliveries: num(DEAD_LETTER_DELIVERIES).unwrap_or(0),
            at: get(DEAD_LETTER_AT).and_then(|t| t.trim().parse().ok()),
            redrives: num(REDRIVE_COUNT).map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX)),
            identity,
            event_type,
            headers: original
                .into_iter()
                .filter(|(n, _)| n != headers::NATS_MSG_ID || get(DEAD_LETTER_ORIGINAL_MSG_ID).is_some())
                .collect(),
            payload,
            payload_omitted: num(DEAD_LETTER_PAYLOAD_OMITTED),
            headers_omitted: num(DEAD_LETTER_HEADERS_OMITTED),
            letter_id: get(headers::NATS_MSG_ID).map(str::to_owned),
        })
    }
}

/// The identity the handler computed for the original (the same rules: `X-Message-ID`, else a
/// UUID `Nats-Msg-Id`, else derived).
fn original_identity(
    subject: &str,
    stream: &str,
    seq: u64,
    original: &[(String, String)],
    payload: &Bytes,
) -> Option<Identity> {
    let subject = Subject::new(subject).ok()?;
    let mut hdrs = Headers::new();
    for (n, v) in original {
        hdrs.push_received(n.clone(), v.clone());
    }
    let from = ReceivedFrom {
        stream: (!stream.is_empty()).then(|| Arc::from(stream)),
        stream_sequence: (seq > 0).then_some(seq),
        published: None,
    };
    let env = Envelope::from_received_subject(subject, &hdrs, payload.clone(), &from);
    Some(*env.identity())
}

/// Groups letters by fingerprint, largest group first (then by handler).
pub fn group(letters: &[DeadLetter]) -> Vec<DeadLetterGroup> {
    let mut groups: BTreeMap<String, DeadLetterGroup> = BTreeMap::new();
    for l in letters {
        let g = groups.entry(l.fingerprint()).or_insert_with(|| DeadLetterGroup {
            fingerprint: l.fingerprint(),
            handler: l.handler.clone(),
            kind: l.kind_label().to_owned(),
            reason: normalise(&l.reason),
            example: l.reason.clone(),
            count: 0,
            first: l.at,
            last: l.at,
            sequences: Vec::new(),
        });
        g.count += 1;
        g.sequences.push(l.sequence);
        g.example.clone_from(&l.reason);
        g.last = l.at.or(g.last);
    }
    let mut out: Vec<_> = groups.into_values().collect();
    out.sort_by(|a, b| b.count.cmp(&a.count).then_with(|| a.handler.cmp(&b.handler)));
    out
}

fn header_pairs(map: Option<&HeaderMap>) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(map) = map {
        for (name, values) in map.iter() {
            for v in values {
                out.push((name.to_string(), v.as_str().to_owned()));
            }
        }
    }
    out
}

async fn delete(stream: &jetstream::stream::Stream, seq: u64) -> Result<(), OpsError> {
    match stream.delete_message(seq).await {
        Ok(_) => Ok(()),
        // Deleted meanwhile (a concurrent redrive or purge): done.
        Err(e) if not_found(&e) => Ok(()),
        Err(e) => Err(transport("deleting a dead letter", &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_are_normalised_so_one_cause_is_one_group() {
        assert_eq!(
            normalise("expected 5, got 70 at line 3"),
            normalise("expected 50, got 7 at line 12")
        );
        assert_eq!(
            normalise("order 0191e5c4-9a7e-7c3e-8e0a-6f1f2c3d4e5f not found"),
            "order <id> not found"
        );
        assert_eq!(normalise("missing field `title`"), "missing field `title`");
        assert_eq!(normalise(""), "");
        assert_eq!(normalise("ünïcödé 1"), "ünïcödé #");
    }
}
