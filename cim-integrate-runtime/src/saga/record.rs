//! The persisted saga log: one [`SagaRecord`] per instance, JSON in the key-value bucket.

use super::events::{SAGA_EVENT_VERSION, SagaEvent};
use crate::id::Identity;
use crate::timestamp::Timestamp;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The format number written into every record; a record with another one is reported as
/// corrupt rather than misread.
pub const RECORD_FORMAT: u32 = 1;

/// Where a saga instance stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaStatus {
    /// Running its steps forward.
    Running,
    /// A step failed; running compensations in reverse.
    Compensating,
    /// Every step completed. Final.
    Completed,
    /// A step failed and every completed step was compensated. Final.
    Compensated,
    /// A compensation failed for good; left for a person. Listed by
    /// [`SagaRunner::needs_attention`](super::SagaRunner::needs_attention), not resumed, driven on
    /// by [`SagaRunner::retry_compensation`](super::SagaRunner::retry_compensation).
    NeedsAttention,
}

impl SagaStatus {
    /// `true` for a status no runner drives on by itself.
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::NeedsAttention)
    }
}

/// Where one step stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Not started.
    Pending,
    /// An attempt was started (the intent is persisted); its outcome is not (yet) recorded. After
    /// a crash it is run again, with the same idempotency key.
    Running,
    /// Completed; its data changes are persisted.
    Completed,
    /// Failed for good; it caused compensation.
    Failed,
    /// Its compensation was started; its outcome is not (yet) recorded.
    Compensating,
    /// Its compensation completed.
    Compensated,
    /// Completed, and declared to need no compensation: skipped while compensating.
    NotCompensated,
    /// Its compensation failed for good: the saga needs attention.
    CompensationFailed,
}

/// The log entry of one step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// The step's name.
    pub name: String,
    /// Its state.
    pub state: StepState,
    /// Attempts started, crashed ones included.
    pub attempts: u32,
    /// Compensation attempts started, crashed ones included (reset by
    /// [`retry_compensation`](super::SagaRunner::retry_compensation)).
    pub compensation_attempts: u32,
    /// The last error of the step or its compensation.
    pub error: Option<String>,
}

/// The persisted state and log of one saga instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(bound(deserialize = "D: serde::de::DeserializeOwned"))]
pub struct SagaRecord<D> {
    /// [`RECORD_FORMAT`].
    pub format: u32,
    /// The saga type's name.
    pub saga: String,
    /// This instance's id (the key in the bucket).
    pub id: String,
    /// The identity of the message that started it (a fresh root for a direct start); its
    /// correlation id is the saga's.
    pub identity: Identity,
    /// When it started.
    pub started_at: Timestamp,
    /// The W3C `traceparent` of the span that started it (feature `otel`): steps run in another
    /// trace (resumed after a restart, or by another runner) link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace: Option<String>,
    /// Where it stands.
    pub status: SagaStatus,
    /// The saga's data, as of the last completed step or compensation.
    pub data: D,
    /// One entry per step of the table, in order.
    pub steps: Vec<StepRecord>,
    /// Lifecycle events numbered so far (their message ids derive from the number).
    pub event_seq: u32,
    /// Lifecycle events decided by a write whose publication was not yet acknowledged when the
    /// record was written: published after the write that decided them, they leave the outbox
    /// with the first write after their acknowledgement. A record in the settled bucket keeps its
    /// final write's events, acknowledged before the active record was deleted
    /// ([`SagaRunner::status`](super::SagaRunner::status) reports that outbox empty).
    pub outbox: Vec<SagaEvent>,
    /// The runner instance that wrote last.
    pub owner: String,
    /// Until when (Unix milliseconds) `owner` may be driving it: other runners leave it alone
    /// until then.
    pub lease_until_ms: i64,
    /// How many times [`retry_compensation`](super::SagaRunner::retry_compensation) was used.
    pub round: u32,
}

impl<D> SagaRecord<D> {
    /// The saga's correlation id.
    pub fn correlation_id(&self) -> crate::id::CorrelationId {
        self.identity.correlation_id
    }
    /// The entry of the step named `name`.
    pub fn step(&self, name: &str) -> Option<&StepRecord> {
        self.steps.iter().find(|s| s.name == name)
    }
}

/// Encodes a record's writes, producing the bytes of `serde_json::to_vec` of the record: the
/// fields fixed at creation (ids, identity, start time) are serialised once, the others written
/// by hand on every write (only the saga's data goes through serde each time), and each outbox
/// event's JSON is made once ([`event_json`](Self::event_json)), for the record and its payload.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    /// `{"format":..,"started_at":".."` (no closing brace), once made.
    head: Vec<u8>,
    /// Per step, `{"name":"..","state":"` (the escaped name): made once per runner
    /// ([`step_heads`]), or for the record at hand if its steps are not those.
    step_heads: Arc<[Box<[u8]>]>,
    /// The owner last written, and its JSON string (the runner's own, made once per runner).
    owner: Arc<(String, Vec<u8>)>,
    /// The JSON of the events made so far and still in the outbox, by number.
    events: Vec<(u32, bytes::Bytes)>,
    /// Where records and events are written before they are copied out at their exact size (a
    /// `Bytes` made from a `Vec` whose capacity exceeds its length allocates a second time).
    buf: Vec<u8>,
    /// Where `buf` came from and goes back to when this encoder is dropped.
    buffers: Option<Arc<Buffers>>,
}

impl Drop for Encoder {
    fn drop(&mut self) {
        if let Some(buffers) = &self.buffers {
            buffers.give(std::mem::take(&mut self.buf));
        }
    }
}

/// Encoding buffers of finished sagas, for the next ones (one set per runner). Without them
/// every saga's first write allocates a buffer of about a record's size (most of a KiB), the size
/// at which glibc's allocator leaves its per-thread cache for its slower bins.
#[derive(Debug, Default)]
pub(crate) struct Buffers(std::sync::Mutex<Vec<Vec<u8>>>);

impl Buffers {
    /// Buffers kept at most: about the sagas a runner drives at once.
    const KEPT: usize = 64;
    /// A buffer larger than this (a saga with large data) is not kept.
    const LARGEST: usize = 64 * 1024;

    fn take(&self) -> Vec<u8> {
        self.0.lock().ok().and_then(|mut kept| kept.pop()).unwrap_or_default()
    }

    fn give(&self, mut buf: Vec<u8>) {
        if buf.capacity() == 0 || buf.capacity() > Self::LARGEST {
            return;
        }
        if let Ok(mut kept) = self.0.lock()
            && kept.len() < Self::KEPT
        {
            buf.clear();
            kept.push(buf);
        }
    }
}

/// `{"format":..,"started_at":".."` (no closing brace: the changing fields follow), written as
/// serde_json writes those fields of `rec`.
fn head<D>(rec: &SagaRecord<D>) -> serde_json::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(256);
    let mut uuid = uuid::Uuid::encode_buffer();
    out.extend_from_slice(b"{\"format\":");
    out.extend_from_slice(itoa::Buffer::new().format(rec.format).as_bytes());
    out.extend_from_slice(b",\"saga\":");
    put_str(&mut out, &rec.saga)?;
    out.extend_from_slice(b",\"id\":");
    put_str(&mut out, &rec.id)?;
    let ids = &rec.identity;
    for (key, id) in [
        (&b",\"identity\":{\"message_id\":"[..], ids.message_id.as_uuid()),
        (b",\"correlation_id\":", ids.correlation_id.as_uuid()),
        (b",\"causation_id\":", ids.causation_id.as_uuid()),
    ] {
        out.extend_from_slice(key);
        // A hyphenated UUID and an RFC 3339 time need no escapes.
        put_plain(&mut out, id.hyphenated().encode_lower(&mut uuid));
    }
    out.extend_from_slice(b"},\"started_at\":");
    put_plain(&mut out, &rec.started_at.to_rfc3339());
    if let Some(trace) = &rec.trace {
        out.extend_from_slice(b",\"trace\":");
        put_str(&mut out, trace)?;
    }
    Ok(out)
}

/// `owner` and its JSON string, for [`Encoder::new`].
pub(crate) fn owner(owner: &str) -> serde_json::Result<Arc<(String, Vec<u8>)>> {
    let mut json = Vec::with_capacity(owner.len() + 2);
    put_str(&mut json, owner)?;
    Ok(Arc::new((owner.to_owned(), json)))
}

/// `{"name":"..","state":"` per step named in `names`, for [`Encoder::new`].
pub(crate) fn step_heads<'a>(names: impl IntoIterator<Item = &'a str>) -> serde_json::Result<Arc<[Box<[u8]>]>> {
    names
        .into_iter()
        .map(|name| {
            let mut h = b"{\"name\":".to_vec();
            put_str(&mut h, name)?;
            h.extend_from_slice(b",\"state\":\"");
            Ok(h.into_boxed_slice())
        })
        .collect()
}

impl Encoder {
    /// An encoder for records whose steps are named as `step_heads` were made, mostly written
    /// by `owner` ([`owner`]).
    pub(crate) fn new(step_heads: Arc<[Box<[u8]>]>, owner: Arc<(String, Vec<u8>)>) -> Self {
        Self {
            head: Vec::new(),
            step_heads,
            owner,
            events: Vec::new(),
            buf: Vec::new(),
            buffers: None,
        }
    }

    /// The same, writing into a buffer of `buffers` (given back when dropped).
    pub(crate) fn with_buffers(mut self, buffers: Arc<Buffers>) -> Self {
        self.buf = buffers.take();
        self.buffers = Some(buffers);
        self
    }

    /// The JSON of `event` of the saga `saga` id `id` (as `serde_json::to_vec` writes the event,
    /// a lean one completed first: [`SagaEvent::is_lean`]), made once per event: it is both the
    /// event's payload and its entry in the record's outbox.
    pub(crate) fn event_json(&mut self, saga: &str, id: &str, event: &SagaEvent) -> serde_json::Result<bytes::Bytes> {
        if let Some((_, json)) = self.events.iter().find(|(seq, _)| *seq == event.seq) {
            return Ok(json.clone());
        }
        let (version, saga, id) = if event.is_lean() {
            (SAGA_EVENT_VERSION, saga, id)
        } else {
            (event.version.as_str(), event.saga.as_str(), event.saga_id.as_str())
        };
        let mut out = std::mem::take(&mut self.buf);
        out.clear();
        out.reserve(128);
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b"{\"version\":");
        put_str(&mut out, version)?;
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(event.kind.token().as_bytes());
        out.extend_from_slice(b"\",\"saga\":");
        put_str(&mut out, saga)?;
        out.extend_from_slice(b",\"saga_id\":");
        put_str(&mut out, id)?;
        if let Some(step) = &event.step {
            out.extend_from_slice(b",\"step\":");
            put_str(&mut out, step)?;
        }
        if let Some(error) = &event.error {
            out.extend_from_slice(b",\"error\":");
            put_str(&mut out, error)?;
        }
        if let Some(attempts) = event.attempts {
            out.extend_from_slice(b",\"attempts\":");
            out.extend_from_slice(num.format(attempts).as_bytes());
        }
        out.extend_from_slice(b",\"seq\":");
        out.extend_from_slice(num.format(event.seq).as_bytes());
        out.push(b'}');
        let json = bytes::Bytes::copy_from_slice(&out);
        self.buf = out;
        self.events.push((event.seq, json.clone()));
        Ok(json)
    }

    /// The JSON of `rec`. `rec`'s fixed fields (and its step names) must be those of the first
    /// record encoded.
    pub(crate) fn encode<D: Serialize>(&mut self, rec: &SagaRecord<D>) -> serde_json::Result<bytes::Bytes> {
        if self.head.is_empty() {
            self.head = head(rec)?;
        }
        let same_steps = self.step_heads.len() == rec.steps.len()
            && self.step_heads.iter().zip(&rec.steps).all(|(head, step)| {
                // `{"name":` + the name as a JSON string; a name needing escapes never matches
                // (and is made afresh).
                head.get(9..9 + step.name.len()) == Some(step.name.as_bytes()) && head.len() == step.name.len() + 20
            });
        if !same_steps {
            self.step_heads = step_heads(rec.steps.iter().map(|s| s.name.as_str()))?;
        }
        if self.owner.1.is_empty() || self.owner.0 != rec.owner {
            self.owner = Arc::new((rec.owner.clone(), serde_json::to_vec(&rec.owner)?));
        }
        // Events acknowledged meanwhile left the outbox: their JSON is not needed again.
        self.events.retain(|(seq, _)| rec.outbox.iter().any(|e| e.seq == *seq));
        for event in &rec.outbox {
            self.event_json(&rec.saga, &rec.id, event)?;
        }
        let mut out = std::mem::take(&mut self.buf);
        out.clear();
        let events_len: usize = self.events.iter().map(|(_, json)| json.len() + 1).sum();
        out.reserve(self.head.len() + 160 * rec.steps.len() + events_len + self.owner.1.len() + 160);
        out.extend_from_slice(&self.head);
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(status_str(rec.status).as_bytes());
        out.extend_from_slice(b"\",\"data\":");
        serde_json::to_writer(&mut out, &rec.data)?;
        out.extend_from_slice(b",\"steps\":[");
        for (i, (step, head)) in rec.steps.iter().zip(self.step_heads.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(head);
            out.extend_from_slice(state_str(step.state).as_bytes());
            out.extend_from_slice(b"\",\"attempts\":");
            out.extend_from_slice(num.format(step.attempts).as_bytes());
            out.extend_from_slice(b",\"compensation_attempts\":");
            out.extend_from_slice(num.format(step.compensation_attempts).as_bytes());
            out.extend_from_slice(b",\"error\":");
            match &step.error {
                Some(e) => put_str(&mut out, e)?,
                None => out.extend_from_slice(b"null"),
            }
            out.push(b'}');
        }
        out.extend_from_slice(b"],\"event_seq\":");
        out.extend_from_slice(num.format(rec.event_seq).as_bytes());
        out.extend_from_slice(b",\"outbox\":[");
        for (i, event) in rec.outbox.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            if let Some((_, json)) = self.events.iter().find(|(seq, _)| *seq == event.seq) {
                out.extend_from_slice(json);
            }
        }
        out.extend_from_slice(b"],\"owner\":");
        out.extend_from_slice(&self.owner.1);
        out.extend_from_slice(b",\"lease_until_ms\":");
        out.extend_from_slice(num.format(rec.lease_until_ms).as_bytes());
        out.extend_from_slice(b",\"round\":");
        out.extend_from_slice(num.format(rec.round).as_bytes());
        out.push(b'}');
        let json = bytes::Bytes::copy_from_slice(&out);
        self.buf = out;
        Ok(json)
    }
}

/// `s` as a JSON string, as serde_json writes it: copied as it is unless it holds a character
/// serde_json escapes (a control character, `"` or `\\`).
fn put_str(out: &mut Vec<u8>, s: &str) -> serde_json::Result<()> {
    if s.bytes().all(|b| !ESCAPED[usize::from(b)]) {
        put_plain(out, s);
        Ok(())
    } else {
        serde_json::to_writer(out, s)
    }
}

/// `s`, which holds nothing serde_json escapes, as a JSON string.
fn put_plain(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// The bytes serde_json escapes in a string: control characters, `"` and `\\`.
const ESCAPED: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = true;
        b += 1;
    }
    table[b'"' as usize] = true;
    table[b'\\' as usize] = true;
    table
};

/// `status` as serde writes it (without quotes).
fn status_str(status: SagaStatus) -> &'static str {
    match status {
        SagaStatus::Running => "running",
        SagaStatus::Compensating => "compensating",
        SagaStatus::Completed => "completed",
        SagaStatus::Compensated => "compensated",
        SagaStatus::NeedsAttention => "needs_attention",
    }
}

/// `state` as serde writes it (without quotes).
fn state_str(state: StepState) -> &'static str {
    match state {
        StepState::Pending => "pending",
        StepState::Running => "running",
        StepState::Completed => "completed",
        StepState::Failed => "failed",
        StepState::Compensating => "compensating",
        StepState::Compensated => "compensated",
        StepState::NotCompensated => "not_compensated",
        StepState::CompensationFailed => "compensation_failed",
    }
}

/// Why a stored record cannot be used.
pub(crate) fn decode<D: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<SagaRecord<D>, String> {
    #[derive(Deserialize)]
    struct Format {
        format: Option<u32>,
    }
    let f: Format = serde_json::from_slice(bytes).map_err(|e| format!("not a saga record: {e}"))?;
    match f.format {
        Some(RECORD_FORMAT) => {}
        Some(other) => return Err(format!("record format {other}, this runtime reads {RECORD_FORMAT}")),
        None => return Err("not a saga record: no `format` field".to_owned()),
    }
    serde_json::from_slice(bytes).map_err(|e| format!("invalid saga record: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_records_are_errors_not_panics() {
        for bad in [
            &b""[..],
            b"null",
            b"[]",
            b"{}",
            br#"{"format":2}"#,
            br#"{"format":1}"#,
            br#"{"format":"1"}"#,
            b"\xff\xfe",
        ] {
            assert!(decode::<u32>(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn round_trip() {
        let r = SagaRecord {
            format: RECORD_FORMAT,
            saga: "s".into(),
            id: "a".into(),
            identity: Identity::root(),
            started_at: Timestamp::now(),
            trace: None,
            status: SagaStatus::Running,
            data: 7u32,
            steps: vec![StepRecord {
                name: "x".into(),
                state: StepState::Pending,
                attempts: 0,
                compensation_attempts: 0,
                error: None,
            }],
            event_seq: 0,
            outbox: vec![],
            owner: "me".into(),
            lease_until_ms: 0,
            round: 0,
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(decode::<u32>(&bytes).unwrap(), r);
        assert!(decode::<String>(&bytes).unwrap_err().contains("invalid saga record"));
    }

    #[test]
    fn the_encoder_writes_what_serde_writes() {
        let mut r = SagaRecord {
            format: RECORD_FORMAT,
            saga: "s".into(),
            id: "a-\"quoted\"".into(),
            identity: Identity::root(),
            started_at: Timestamp::now(),
            trace: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 \"x\"".into()),
            status: SagaStatus::Running,
            data: vec!["x".to_owned()],
            steps: vec![StepRecord {
                name: "x".into(),
                state: StepState::Running,
                attempts: 1,
                compensation_attempts: 0,
                error: Some("bad\nline".into()),
            }],
            event_seq: 0,
            outbox: vec![],
            owner: "me".into(),
            lease_until_ms: -5,
            round: 0,
        };
        // Step heads made per runner are used as they are for records whose steps they name.
        let heads = step_heads(["x"]).unwrap();
        let mut shared = Encoder::new(heads.clone(), owner("me").unwrap());
        assert_eq!(shared.encode(&r).unwrap(), serde_json::to_vec(&r).unwrap());
        assert!(Arc::ptr_eq(&shared.step_heads, &heads));
        let mut other = Encoder::new(step_heads(["y"]).unwrap(), owner("someone \"else\"").unwrap());
        assert_eq!(other.encode(&r).unwrap(), serde_json::to_vec(&r).unwrap());
        let mut encoder = Encoder::default();
        let statuses = [
            SagaStatus::Running,
            SagaStatus::Compensating,
            SagaStatus::Completed,
            SagaStatus::Compensated,
            SagaStatus::NeedsAttention,
        ];
        let states = [
            StepState::Pending,
            StepState::Running,
            StepState::Completed,
            StepState::Failed,
            StepState::Compensating,
            StepState::Compensated,
            StepState::NotCompensated,
            StepState::CompensationFailed,
        ];
        for i in 0..10u32 {
            assert_eq!(encoder.encode(&r).unwrap(), serde_json::to_vec(&r).unwrap());
            r.status = statuses[i as usize % statuses.len()];
            r.steps[0].state = states[i as usize % states.len()];
            r.steps[0].attempts += 1;
            r.steps[0].error = (i % 2 == 0).then(|| format!("e\"{i}"));
            r.data.push("y".into());
            r.round += 1;
            r.event_seq += 1;
            r.lease_until_ms += 1_000;
            if i == 4 {
                r.owner = "other \\ owner".into();
            }
            super::super::runner::emit(
                &mut r,
                super::super::events::SagaEventKind::StepFailed,
                Some("x"),
                Some("bad \"x\"".into()),
                Some(i),
            );
            if i % 3 == 0 {
                r.outbox.remove(0);
            }
        }
    }

    /// Events the runner keeps lean (no version, saga or id of their own) are written as the
    /// complete ones: the record's JSON and the events' payloads are what serde writes.
    #[test]
    fn lean_events_are_written_as_complete_ones() {
        use super::super::events::SagaEventKind;
        use super::super::runner::{emit, note};
        let mut lean = running("shop", "o-1", 7u32);
        let mut complete = lean.clone();
        for (kind, step) in [
            (SagaEventKind::Started, None),
            (SagaEventKind::StepCompleted, Some("pay")),
        ] {
            note(&mut lean, kind, step, None, None);
            emit(&mut complete, kind, step, None, None);
        }
        assert!(lean.outbox.iter().all(SagaEvent::is_lean));
        assert!(!complete.outbox.iter().any(SagaEvent::is_lean));
        let mut encoder = Encoder::default();
        assert_eq!(encoder.encode(&lean).unwrap(), serde_json::to_vec(&complete).unwrap());
        for (l, c) in lean.outbox.iter().zip(&complete.outbox) {
            assert_eq!(
                encoder.event_json("shop", "o-1", l).unwrap(),
                serde_json::to_vec(c).unwrap()
            );
        }
    }

    /// A running record of no steps, written by `me`.
    fn running<D>(saga: &str, id: &str, data: D) -> SagaRecord<D> {
        SagaRecord {
            format: RECORD_FORMAT,
            saga: saga.into(),
            id: id.into(),
            identity: Identity::root(),
            started_at: Timestamp::now(),
            trace: None,
            status: SagaStatus::Running,
            data,
            steps: vec![],
            event_seq: 0,
            outbox: vec![],
            owner: "me".into(),
            lease_until_ms: 0,
            round: 0,
        }
    }

    #[test]
    fn encoders_give_their_buffers_back() {
        let buffers = Arc::new(Buffers::default());
        let kept = || buffers.0.lock().unwrap().len();
        let mut encoder = Encoder::default().with_buffers(buffers.clone());
        let rec = running("s", "id-1", vec![0u8; 16]);
        let json = encoder.encode(&rec).unwrap();
        assert_eq!(json, serde_json::to_vec(&rec).unwrap());
        drop(encoder);
        assert_eq!(kept(), 1);
        // The next encoder writes into it; a buffer grown past the limit is dropped.
        let mut encoder = Encoder::default().with_buffers(buffers.clone());
        assert_eq!(kept(), 0);
        assert!(encoder.buf.capacity() >= json.len());
        encoder.buf.reserve(Buffers::LARGEST + 1);
        drop(encoder);
        assert_eq!(kept(), 0);
    }

    #[test]
    fn event_json_is_what_serde_writes() {
        let mut encoder = Encoder::default();
        for (seq, kind) in (0u32..).zip(super::super::runner::EVENT_KINDS) {
            let odd = seq % 2 == 1;
            let event = SagaEvent {
                version: "1.0".into(),
                kind,
                saga: "shop".into(),
                saga_id: if odd { "o-\"1\"\n\u{1}é\\".into() } else { "o-1".into() },
                step: odd.then(|| "charge".into()),
                error: (seq % 3 == 0).then(|| format!("no \t{seq} é \u{7f}")),
                attempts: (seq % 4 == 0).then_some(seq * 1_000),
                seq,
            };
            assert_eq!(
                &encoder.event_json("other", "other", &event).unwrap()[..],
                serde_json::to_vec(&event).unwrap()
            );
        }
    }

    /// A record written by format 1, committed once and never regenerated: it must keep decoding.
    #[test]
    fn golden_format_1_record_decodes() {
        #[derive(Debug, PartialEq, Deserialize)]
        struct Publishing {
            document_id: String,
            title: String,
            published: bool,
        }
        let bytes = include_bytes!("../../tests/fixtures/saga/record_format_1.json");
        let r = decode::<Publishing>(bytes).expect("format 1 decodes");
        assert_eq!(r.status, SagaStatus::Compensated);
        assert_eq!(r.data.title, "Annual report");
        let states: Vec<StepState> = r.steps.iter().map(|s| s.state).collect();
        assert_eq!(
            states,
            [
                StepState::NotCompensated,
                StepState::Compensated,
                StepState::Compensated,
                StepState::Failed
            ]
        );
        assert_eq!(
            r.step("notify").and_then(|s| s.error.as_deref()),
            Some("permanent: mail server down")
        );
        assert_eq!(r.correlation_id().to_string(), "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071");
        assert_eq!(
            (r.event_seq, r.lease_until_ms, r.owner.as_str()),
            (9, 1_795_530_000_000, "pod-a")
        );
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode::<serde_json::Value>(&bytes);
        }
    }
}
