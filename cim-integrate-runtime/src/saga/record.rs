//! The persisted saga log: one [`SagaRecord`] per instance, JSON in the key-value bucket.

use super::events::{SAGA_EVENT_VERSION, SagaEvent, SagaEventKind};
use crate::id::{CausationId, CorrelationId, Identity, MessageId};
use crate::json::{write_plain, write_str};
use crate::timestamp::Timestamp;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::sync::Arc;

/// The newest record format, written by default ([`RecordFormat::V2`]). Formats 1 and 2 are
/// read; a record of another is reported as corrupt rather than misread.
pub const RECORD_FORMAT: u32 = 2;

/// The format a runner writes its records in
/// ([`SagaRunnerBuilder::record_format`](super::SagaRunnerBuilder::record_format)). Both are
/// read, whichever is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum RecordFormat {
    /// Format 1: every field written, zeros and nulls included, and each outbox event whole (with
    /// its version, saga and id). Runtimes before format 2 read only this one and report a
    /// format-2 record as corrupt (leaving it alone): a fleet upgraded in place writes format 1
    /// until every runner of the saga reads format 2.
    V1,
    /// Format 2, the default: format 1 without what it implies. The identity's correlation and
    /// causation ids when they are the message id (a root message's), a step's zero attempts and
    /// null error, a zero `event_seq` and `round`, an empty outbox, and the version, saga and id
    /// of outbox events (the record's) are left out. A 3-step saga's record is about 40 % smaller.
    #[default]
    V2,
}

impl RecordFormat {
    /// The number written into the record's `format` field.
    pub fn number(self) -> u32 {
        match self {
            Self::V1 => 1,
            Self::V2 => 2,
        }
    }
}

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
    #[serde(default)]
    pub attempts: u32,
    /// Compensation attempts started, crashed ones included (reset by
    /// [`retry_compensation`](super::SagaRunner::retry_compensation)).
    #[serde(default)]
    pub compensation_attempts: u32,
    /// The last error of the step or its compensation.
    #[serde(default)]
    pub error: Option<String>,
}

impl StepRecord {
    /// A step not started yet: no attempts, no error.
    pub(crate) fn pending(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            state: StepState::Pending,
            attempts: 0,
            compensation_attempts: 0,
            error: None,
        }
    }
}

/// The persisted state and log of one saga instance. It is written as JSON in the layout its
/// `format` names ([`RecordFormat`]).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(bound(deserialize = "D: serde::de::DeserializeOwned"))]
pub struct SagaRecord<D> {
    /// The record's format: 1 or 2 ([`RecordFormat`]).
    pub format: u32,
    /// The saga type's name.
    pub saga: String,
    /// This instance's id (the key in the bucket).
    pub id: String,
    /// The identity of the message that started it (a fresh root for a direct start); its
    /// correlation id is the saga's.
    #[serde(deserialize_with = "identity_in")]
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
    #[serde(default)]
    pub event_seq: u32,
    /// Lifecycle events decided by a write whose publication was not yet acknowledged when the
    /// record was written: published after the write that decided them, they leave the outbox
    /// with the first write after their acknowledgement. A record in the settled bucket keeps its
    /// final write's events, acknowledged before the active record was deleted
    /// ([`SagaRunner::status`](super::SagaRunner::status) reports that outbox empty).
    #[serde(default, deserialize_with = "outbox_in")]
    pub outbox: Vec<SagaEvent>,
    /// The runner instance that wrote last.
    pub owner: String,
    /// Until when (Unix milliseconds) `owner` may be driving it: other runners leave it alone
    /// until then.
    pub lease_until_ms: i64,
    /// How many times [`retry_compensation`](super::SagaRunner::retry_compensation) was used.
    #[serde(default)]
    pub round: u32,
}

/// The identity as a record holds it: format 2 leaves out a correlation or causation id that is
/// the message id.
fn identity_in<'de, De: Deserializer<'de>>(d: De) -> Result<Identity, De::Error> {
    #[derive(Deserialize)]
    struct Ids {
        message_id: MessageId,
        correlation_id: Option<CorrelationId>,
        causation_id: Option<CausationId>,
    }
    let ids = Ids::deserialize(d)?;
    Ok(Identity {
        message_id: ids.message_id,
        correlation_id: ids.correlation_id.unwrap_or_else(|| ids.message_id.into()),
        causation_id: ids.causation_id.unwrap_or_else(|| ids.message_id.into()),
    })
}

/// The outbox as a record holds it: format 2 leaves out each event's version, saga and id (the
/// record's); [`decode`] puts them back.
fn outbox_in<'de, De: Deserializer<'de>>(d: De) -> Result<Vec<SagaEvent>, De::Error> {
    #[derive(Deserialize)]
    struct Event {
        #[serde(default)]
        version: String,
        kind: SagaEventKind,
        #[serde(default)]
        saga: String,
        #[serde(default)]
        saga_id: String,
        #[serde(default)]
        step: Option<String>,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        attempts: Option<u32>,
        seq: u32,
    }
    let events = Vec::<Event>::deserialize(d)?;
    Ok(events
        .into_iter()
        .map(|e| SagaEvent {
            version: e.version,
            kind: e.kind,
            saga: e.saga,
            saga_id: e.saga_id,
            step: e.step,
            error: e.error,
            attempts: e.attempts,
            seq: e.seq,
        })
        .collect())
}

/// Written in the layout of the record's `format`: format 1 for 1 (and anything below 2),
/// format 2 otherwise ([`RecordFormat`]). The runner's own writes are made by a hand-written
/// encoder that produces these same bytes.
impl<D: Serialize> Serialize for SagaRecord<D> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let whole = self.format < 2;
        let mut r = s.serialize_struct("SagaRecord", 14)?;
        r.serialize_field("format", &self.format)?;
        r.serialize_field("saga", &self.saga)?;
        r.serialize_field("id", &self.id)?;
        if whole {
            r.serialize_field("identity", &self.identity)?;
        } else {
            r.serialize_field("identity", &CompactIdentity(&self.identity))?;
        }
        r.serialize_field("started_at", &self.started_at)?;
        match &self.trace {
            Some(trace) => r.serialize_field("trace", trace)?,
            None => r.skip_field("trace")?,
        }
        r.serialize_field("status", &self.status)?;
        r.serialize_field("data", &self.data)?;
        if whole {
            r.serialize_field("steps", &self.steps)?;
        } else {
            r.serialize_field("steps", &Each(&self.steps, CompactStep))?;
        }
        if whole || self.event_seq != 0 {
            r.serialize_field("event_seq", &self.event_seq)?;
        } else {
            r.skip_field("event_seq")?;
        }
        if whole || !self.outbox.is_empty() {
            let event = |e| OutboxEvent {
                event: e,
                saga: &self.saga,
                id: &self.id,
                whole,
            };
            r.serialize_field("outbox", &Each(&self.outbox, event))?;
        } else {
            r.skip_field("outbox")?;
        }
        r.serialize_field("owner", &self.owner)?;
        r.serialize_field("lease_until_ms", &self.lease_until_ms)?;
        if whole || self.round != 0 {
            r.serialize_field("round", &self.round)?;
        } else {
            r.skip_field("round")?;
        }
        r.end()
    }
}

/// The items of a slice, each serialised as `f` makes it.
struct Each<'a, T, F>(&'a [T], F);

impl<'a, T, F, O> Serialize for Each<'a, T, F>
where
    F: Fn(&'a T) -> O,
    O: Serialize,
{
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(&self.1))
    }
}

/// A step entry of format 2: its attempts only where not zero, its error only where there is one.
struct CompactStep<'a>(&'a StepRecord);

impl Serialize for CompactStep<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let step = self.0;
        let mut r = s.serialize_struct("StepRecord", 5)?;
        r.serialize_field("name", &step.name)?;
        r.serialize_field("state", &step.state)?;
        for (name, n) in [
            ("attempts", step.attempts),
            ("compensation_attempts", step.compensation_attempts),
        ] {
            if n != 0 {
                r.serialize_field(name, &n)?;
            } else {
                r.skip_field(name)?;
            }
        }
        match &step.error {
            Some(e) => r.serialize_field("error", e)?,
            None => r.skip_field("error")?,
        }
        r.end()
    }
}

/// The identity of format 2: the correlation and causation ids only where they are not the
/// message id.
struct CompactIdentity<'a>(&'a Identity);

impl Serialize for CompactIdentity<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let ids = self.0;
        let own = ids.message_id.as_uuid();
        let mut r = s.serialize_struct("Identity", 3)?;
        r.serialize_field("message_id", &ids.message_id)?;
        if ids.correlation_id.as_uuid() != own {
            r.serialize_field("correlation_id", &ids.correlation_id)?;
        } else {
            r.skip_field("correlation_id")?;
        }
        if ids.causation_id.as_uuid() != own {
            r.serialize_field("causation_id", &ids.causation_id)?;
        } else {
            r.skip_field("causation_id")?;
        }
        r.end()
    }
}

/// An outbox event of a record: in format 1 whole (a lean one completed with the record's saga
/// and id), in format 2 without its version, saga and id.
struct OutboxEvent<'a> {
    event: &'a SagaEvent,
    saga: &'a str,
    id: &'a str,
    whole: bool,
}

impl Serialize for OutboxEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let e = self.event;
        let mut r = s.serialize_struct("SagaEvent", 8)?;
        if self.whole {
            let (version, saga, id) = if e.is_lean() {
                (SAGA_EVENT_VERSION, self.saga, self.id)
            } else {
                (e.version.as_str(), e.saga.as_str(), e.saga_id.as_str())
            };
            r.serialize_field("version", version)?;
            r.serialize_field("kind", &e.kind)?;
            r.serialize_field("saga", saga)?;
            r.serialize_field("saga_id", id)?;
        } else {
            r.serialize_field("kind", &e.kind)?;
        }
        match &e.step {
            Some(step) => r.serialize_field("step", step)?,
            None => r.skip_field("step")?,
        }
        match &e.error {
            Some(error) => r.serialize_field("error", error)?,
            None => r.skip_field("error")?,
        }
        match &e.attempts {
            Some(attempts) => r.serialize_field("attempts", attempts)?,
            None => r.skip_field("attempts")?,
        }
        r.serialize_field("seq", &e.seq)?;
        r.end()
    }
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

/// Encodes a record's writes, producing the bytes of `serde_json::to_vec` of the record (in the
/// layout of its `format`): the fields fixed at creation (ids, identity, start time) are
/// serialised once, the others written by hand on every write (only the saga's data goes through
/// serde each time), and each outbox event's JSON is made once ([`event_json`](Self::event_json)),
/// for the record and its payload.
#[derive(Debug, Default)]
pub(crate) struct Encoder {
    /// `{"format":..,"started_at":".."` (no closing brace), once made, for records of the
    /// format `head_format`.
    head: Vec<u8>,
    head_format: u32,
    /// The format the records encoded are written in (set in them first: [`Self::format`]), if
    /// this encoder is a runner's.
    pub(crate) format: Option<u32>,
    /// Per step, `{"name":"..","state":"` (the escaped name): made once per runner
    /// ([`step_heads`]), or for the record at hand if its steps are not those.
    step_heads: Arc<[Box<[u8]>]>,
    /// The owner last written, and its JSON string (the runner's own, made once per runner).
    owner: Arc<(String, Vec<u8>)>,
    /// The events made so far and still in the outbox: their number, their JSON, and where in
    /// it the fields after the saga's id begin (format 2's outbox entry is `{"kind":".."` and
    /// the rest from there).
    events: Vec<(u32, bytes::Bytes, usize)>,
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
    let whole = rec.format < 2;
    let mut out = Vec::with_capacity(256);
    let mut uuid = uuid::Uuid::encode_buffer();
    out.extend_from_slice(b"{\"format\":");
    out.extend_from_slice(itoa::Buffer::new().format(rec.format).as_bytes());
    out.extend_from_slice(b",\"saga\":");
    write_str(&mut out, &rec.saga)?;
    out.extend_from_slice(b",\"id\":");
    write_str(&mut out, &rec.id)?;
    let ids = &rec.identity;
    let own = ids.message_id.as_uuid();
    for (i, (key, id)) in [
        (&b",\"identity\":{\"message_id\":"[..], own),
        (b",\"correlation_id\":", ids.correlation_id.as_uuid()),
        (b",\"causation_id\":", ids.causation_id.as_uuid()),
    ]
    .into_iter()
    .enumerate()
    {
        if i > 0 && !whole && id == own {
            // Format 2: a correlation or causation id that is the message id is left out.
            continue;
        }
        out.extend_from_slice(key);
        // A hyphenated UUID and an RFC 3339 time need no escapes.
        write_plain(&mut out, id.hyphenated().encode_lower(&mut uuid));
    }
    out.extend_from_slice(b"},\"started_at\":");
    write_plain(
        &mut out,
        rec.started_at.write_rfc3339(&mut [0u8; crate::timestamp::RFC3339_MAX]),
    );
    if let Some(trace) = &rec.trace {
        out.extend_from_slice(b",\"trace\":");
        write_str(&mut out, trace)?;
    }
    Ok(out)
}

/// `owner` and its JSON string, for [`Encoder::new`].
pub(crate) fn owner(owner: &str) -> serde_json::Result<Arc<(String, Vec<u8>)>> {
    let mut json = Vec::with_capacity(owner.len() + 2);
    write_str(&mut json, owner)?;
    Ok(Arc::new((owner.to_owned(), json)))
}

/// `{"name":"..","state":"` per step named in `names`, for [`Encoder::new`].
pub(crate) fn step_heads<'a>(names: impl IntoIterator<Item = &'a str>) -> serde_json::Result<Arc<[Box<[u8]>]>> {
    names
        .into_iter()
        .map(|name| {
            let mut h = b"{\"name\":".to_vec();
            write_str(&mut h, name)?;
            h.extend_from_slice(b",\"state\":\"");
            Ok(h.into_boxed_slice())
        })
        .collect()
}

impl Encoder {
    /// An encoder for records whose steps are named as `step_heads` were made, mostly written
    /// by `owner` ([`owner`]).
    pub(crate) fn new(step_heads: Arc<[Box<[u8]>]>, owner: Arc<(String, Vec<u8>)>) -> Self {
        let mut encoder = Self::default();
        encoder.step_heads = step_heads;
        encoder.owner = owner;
        encoder
    }

    /// The same, writing into a buffer of `buffers` (given back when dropped).
    pub(crate) fn with_buffers(mut self, buffers: Arc<Buffers>) -> Self {
        self.buf = buffers.take();
        self.buffers = Some(buffers);
        self
    }

    /// The same, for records written in `format` (the runner sets it in each record it writes).
    pub(crate) fn writing(mut self, format: RecordFormat) -> Self {
        self.format = Some(format.number());
        self
    }

    /// The JSON of `event` of the saga `saga` id `id` (as `serde_json::to_vec` writes the event,
    /// a lean one completed first: [`SagaEvent::is_lean`]), made once per event: it is both the
    /// event's payload and (in format 1 whole, in format 2 from its fields after the saga's id)
    /// its entry in the record's outbox.
    pub(crate) fn event_json(&mut self, saga: &str, id: &str, event: &SagaEvent) -> serde_json::Result<bytes::Bytes> {
        Ok(self.event(saga, id, event)?.0)
    }

    /// [`event_json`](Self::event_json), and where in it the fields after the saga's id begin.
    fn event(&mut self, saga: &str, id: &str, event: &SagaEvent) -> serde_json::Result<(bytes::Bytes, usize)> {
        if let Some((_, json, rest)) = self.events.iter().find(|(seq, ..)| *seq == event.seq) {
            return Ok((json.clone(), *rest));
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
        write_str(&mut out, version)?;
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(event.kind.token().as_bytes());
        out.extend_from_slice(b"\",\"saga\":");
        write_str(&mut out, saga)?;
        out.extend_from_slice(b",\"saga_id\":");
        write_str(&mut out, id)?;
        let rest = out.len();
        if let Some(step) = &event.step {
            out.extend_from_slice(b",\"step\":");
            write_str(&mut out, step)?;
        }
        if let Some(error) = &event.error {
            out.extend_from_slice(b",\"error\":");
            write_str(&mut out, error)?;
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
        self.events.push((event.seq, json.clone(), rest));
        Ok((json, rest))
    }

    /// The JSON of `rec`, in the layout of its `format`. `rec`'s fixed fields (and its step
    /// names) must be those of the first record encoded.
    pub(crate) fn encode<D: Serialize>(&mut self, rec: &SagaRecord<D>) -> serde_json::Result<bytes::Bytes> {
        if self.head.is_empty() || self.head_format != rec.format {
            self.head = head(rec)?;
            self.head_format = rec.format;
        }
        let whole = rec.format < 2;
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
        self.events.retain(|(seq, ..)| rec.outbox.iter().any(|e| e.seq == *seq));
        for event in &rec.outbox {
            self.event(&rec.saga, &rec.id, event)?;
        }
        let mut out = std::mem::take(&mut self.buf);
        out.clear();
        let events_len: usize = self.events.iter().map(|(_, json, _)| json.len() + 1).sum();
        out.reserve(self.head.len() + 160 * rec.steps.len() + events_len + self.owner.1.len() + 160);
        out.extend_from_slice(&self.head);
        let mut num = itoa::Buffer::new();
        out.extend_from_slice(b",\"status\":\"");
        out.extend_from_slice(status_str(rec.status).as_bytes());
        out.extend_from_slice(b"\",\"data\":");
        crate::json::to_writer(&mut out, &rec.data)?;
        out.extend_from_slice(b",\"steps\":[");
        for (i, (step, head)) in rec.steps.iter().zip(self.step_heads.iter()).enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(head);
            out.extend_from_slice(state_str(step.state).as_bytes());
            out.push(b'"');
            for (key, n) in [
                (&b",\"attempts\":"[..], step.attempts),
                (b",\"compensation_attempts\":", step.compensation_attempts),
            ] {
                if whole || n != 0 {
                    out.extend_from_slice(key);
                    out.extend_from_slice(num.format(n).as_bytes());
                }
            }
            match &step.error {
                Some(e) => {
                    out.extend_from_slice(b",\"error\":");
                    write_str(&mut out, e)?;
                }
                None if whole => out.extend_from_slice(b",\"error\":null"),
                None => {}
            }
            out.push(b'}');
        }
        out.push(b']');
        if whole || rec.event_seq != 0 {
            out.extend_from_slice(b",\"event_seq\":");
            out.extend_from_slice(num.format(rec.event_seq).as_bytes());
        }
        if whole || !rec.outbox.is_empty() {
            out.extend_from_slice(b",\"outbox\":[");
            for (i, event) in rec.outbox.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                if let Some((_, json, rest)) = self.events.iter().find(|(seq, ..)| *seq == event.seq) {
                    if whole {
                        out.extend_from_slice(json);
                    } else {
                        out.extend_from_slice(b"{\"kind\":\"");
                        out.extend_from_slice(event.kind.token().as_bytes());
                        out.push(b'"');
                        out.extend_from_slice(json.get(*rest..).unwrap_or_default());
                    }
                }
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"owner\":");
        out.extend_from_slice(&self.owner.1);
        out.extend_from_slice(b",\"lease_until_ms\":");
        out.extend_from_slice(num.format(rec.lease_until_ms).as_bytes());
        if whole || rec.round != 0 {
            out.extend_from_slice(b",\"round\":");
            out.extend_from_slice(num.format(rec.round).as_bytes());
        }
        out.push(b'}');
        let json = bytes::Bytes::copy_from_slice(&out);
        self.buf = out;
        Ok(json)
    }
}

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

/// Why a stored record cannot be used. Formats 1 and 2 are read; the outbox events a format-2
/// record holds without their version, saga and id get them back (the record's).
pub(crate) fn decode<D: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<SagaRecord<D>, String> {
    #[derive(Deserialize)]
    struct Format {
        format: Option<u32>,
    }
    let f: Format = crate::json::from_slice(bytes).map_err(|e| format!("not a saga record: {e}"))?;
    match f.format {
        Some(1 | 2) => {}
        Some(other) => return Err(format!("record format {other}, this runtime reads 1 and 2")),
        None => return Err("not a saga record: no `format` field".to_owned()),
    }
    let mut rec: SagaRecord<D> = crate::json::from_slice(bytes).map_err(|e| format!("invalid saga record: {e}"))?;
    for event in &mut rec.outbox {
        if event.version.is_empty() {
            SAGA_EVENT_VERSION.clone_into(&mut event.version);
            event.saga.clone_from(&rec.saga);
            event.saga_id.clone_from(&rec.id);
        }
    }
    Ok(rec)
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
            br#"{"format":3}"#,
            br#"{"format":1}"#,
            br#"{"format":"1"}"#,
            b"\xff\xfe",
        ] {
            assert!(decode::<u32>(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn round_trip() {
        for format in [RecordFormat::V1, RecordFormat::V2] {
            let mut r = running("s", "a", 7u32);
            r.format = format.number();
            r.steps.push(StepRecord::pending("x"));
            let bytes = serde_json::to_vec(&r).unwrap();
            assert_eq!(decode::<u32>(&bytes).unwrap(), r);
            assert!(decode::<String>(&bytes).unwrap_err().contains("invalid saga record"));
            r.identity = Identity::root().child();
            r.steps[0].attempts = 2;
            r.steps[0].compensation_attempts = 1;
            r.steps[0].error = Some("e".into());
            r.round = 3;
            super::super::runner::emit(&mut r, SagaEventKind::StepFailed, Some("x"), Some("e".into()), Some(2));
            let bytes = serde_json::to_vec(&r).unwrap();
            assert_eq!(decode::<u32>(&bytes).unwrap(), r, "{format:?}");
        }
    }

    /// Format 2 leaves out what format 1 writes and the record implies; the rest is the same.
    #[test]
    fn format_2_is_format_1_without_what_is_implied() {
        let mut whole = running("bench", "c32-0-123", vec![0u8, 1, 2]);
        whole.format = 1;
        whole.owner = format!("bench-{}", uuid::Uuid::now_v7());
        whole.steps = ["s1", "s2", "s3"]
            .into_iter()
            .map(|name| StepRecord {
                name: name.into(),
                state: StepState::Completed,
                attempts: 1,
                compensation_attempts: 0,
                error: None,
            })
            .collect();
        let mut compact = whole.clone();
        compact.format = 2;
        let (w, c) = (
            serde_json::to_vec(&whole).unwrap(),
            serde_json::to_vec(&compact).unwrap(),
        );
        assert!(
            c.len() * 10 < w.len() * 7,
            "format 2 {} bytes, format 1 {}",
            c.len(),
            w.len()
        );
        let c: serde_json::Value = serde_json::from_slice(&c).unwrap();
        assert_eq!(c["identity"].as_object().map(|o| o.len()), Some(1), "{c}");
        assert_eq!(
            c["steps"][0],
            serde_json::json!({"name": "s1", "state": "completed", "attempts": 1})
        );
        for absent in ["event_seq", "outbox", "round", "trace"] {
            assert!(c.get(absent).is_none(), "{absent} in {c}");
        }
        let mut expanded = c;
        expanded["format"] = 1.into();
        let ids = whole.identity.message_id.to_string();
        expanded["identity"]["correlation_id"] = ids.clone().into();
        expanded["identity"]["causation_id"] = ids.into();
        for step in expanded["steps"].as_array_mut().unwrap() {
            step["compensation_attempts"] = 0.into();
            step["error"] = serde_json::Value::Null;
        }
        expanded["event_seq"] = 0.into();
        expanded["outbox"] = serde_json::json!([]);
        expanded["round"] = 0.into();
        assert_eq!(expanded, serde_json::from_slice::<serde_json::Value>(&w).unwrap());
    }

    #[test]
    fn the_encoder_writes_what_serde_writes() {
        for format in [RecordFormat::V1, RecordFormat::V2] {
            the_encoder_writes_what_serde_writes_in(format);
        }
    }

    fn the_encoder_writes_what_serde_writes_in(format: RecordFormat) {
        let mut r = SagaRecord {
            format: format.number(),
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
        // A runner's encoder sets its format in the record; here it is the record's own.
        assert_eq!(Encoder::default().writing(format).format, Some(r.format));
        for i in 0..10u32 {
            assert_eq!(encoder.encode(&r).unwrap(), serde_json::to_vec(&r).unwrap());
            r.status = STATUSES[i as usize % STATUSES.len()];
            r.steps[0].state = STATES[i as usize % STATES.len()];
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
            if i == 6 {
                // Another identity: the encoder's fixed head is made again only for a new one.
                r.identity = Identity::root().child();
                encoder = Encoder::default();
            }
            if i == 7 {
                r.steps[0].attempts = 0;
                r.steps[0].compensation_attempts = 3;
                r.round = 0;
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

    /// Every status, for tests that go through them.
    const STATUSES: [SagaStatus; 5] = [
        SagaStatus::Running,
        SagaStatus::Compensating,
        SagaStatus::Completed,
        SagaStatus::Compensated,
        SagaStatus::NeedsAttention,
    ];

    /// Every step state, for tests that go through them.
    const STATES: [StepState; 8] = [
        StepState::Pending,
        StepState::Running,
        StepState::Completed,
        StepState::Failed,
        StepState::Compensating,
        StepState::Compensated,
        StepState::NotCompensated,
        StepState::CompensationFailed,
    ];

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

    /// The data of the golden records' saga.
    #[derive(Debug, PartialEq, Deserialize)]
    struct Publishing {
        document_id: String,
        title: String,
        published: bool,
    }

    /// A record written by format 1, committed once and never regenerated: it must keep decoding.
    #[test]
    fn golden_format_1_record_decodes() {
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

    /// A record written by format 2, committed once and never regenerated: it must keep decoding,
    /// with what format 2 leaves out put back.
    #[test]
    fn golden_format_2_record_decodes() {
        let bytes = include_bytes!("../../tests/fixtures/saga/record_format_2.json");
        let r = decode::<Publishing>(bytes).expect("format 2 decodes");
        assert_eq!(
            (r.format, r.status, r.data.published),
            (2, SagaStatus::Compensating, true)
        );
        let ids = &r.identity;
        assert_eq!(ids.message_id.to_string(), "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071");
        assert_eq!(ids.correlation_id.to_string(), "0192f3c4-0000-7f80-9a1b-2c3d4e5f6000");
        assert_eq!(
            ids.causation_id.as_uuid(),
            ids.message_id.as_uuid(),
            "left out: the message id"
        );
        let steps: Vec<(StepState, u32, u32, Option<&str>)> = r
            .steps
            .iter()
            .map(|s| (s.state, s.attempts, s.compensation_attempts, s.error.as_deref()))
            .collect();
        assert_eq!(
            steps,
            [
                (StepState::NotCompensated, 1, 0, None),
                (StepState::Compensating, 1, 1, None),
                (StepState::Failed, 2, 0, Some("permanent: index full")),
                (StepState::Pending, 0, 0, None),
            ]
        );
        assert_eq!((r.event_seq, r.round, r.owner.as_str()), (6, 0, "pod-b"));
        let failed = &r.outbox[0];
        assert_eq!(
            (failed.version.as_str(), failed.saga.as_str(), failed.saga_id.as_str()),
            (SAGA_EVENT_VERSION, "document_publishing", r.id.as_str()),
            "an outbox event gets the record's version, saga and id back"
        );
        assert_eq!(
            (failed.kind, failed.step.as_deref(), failed.attempts, failed.seq),
            (SagaEventKind::StepFailed, Some("index"), Some(2), 4)
        );
        assert_eq!((r.outbox[1].kind, r.outbox[1].seq), (SagaEventKind::Compensating, 5));
        // Written again in format 2, it reads the same.
        let again = serde_json::to_vec(&decode::<serde_json::Value>(bytes).unwrap()).unwrap();
        assert_eq!(decode::<Publishing>(&again).unwrap(), r);
    }

    /// Arbitrary text for a record's strings: any character (control characters, quotes,
    /// backslashes and non-ASCII included), short.
    fn text() -> impl proptest::strategy::Strategy<Value = String> {
        use proptest::strategy::Strategy as _;
        proptest::collection::vec(
            proptest::prop_oneof![
                proptest::char::range('\u{0}', '\u{7f}'),
                proptest::prelude::any::<char>(),
            ],
            0..12,
        )
        .prop_map(|chars| chars.into_iter().collect())
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256)) {
            let _ = decode::<serde_json::Value>(&bytes);
        }

        /// The encoder writes byte for byte what serde writes, for records of any strings (ids,
        /// names, errors, owners that need escapes, or not), any numbers and both formats, over
        /// a run of writes of one saga (what one encoder sees); and what it writes decodes to
        /// the record.
        #[test]
        fn the_encoder_writes_what_serde_writes_for_any_record(
            v2 in proptest::prelude::any::<bool>(),
            (saga, id, owner, other_owner) in (text(), text(), text(), text()),
            trace in proptest::option::of(text()),
            names in proptest::collection::vec(text(), 0..4),
            writes in proptest::collection::vec(
                (
                    0usize..5,
                    0usize..8,
                    proptest::prelude::any::<u32>(),
                    proptest::option::of(text()),
                    proptest::prelude::any::<i64>(),
                    proptest::option::of((0usize..4, proptest::option::of(text()), proptest::option::of(proptest::prelude::any::<u32>()))),
                    text(),
                ),
                1..6,
            ),
        ) {
            use super::super::events::SagaEventKind;
            let kinds = [
                SagaEventKind::Started,
                SagaEventKind::StepCompleted,
                SagaEventKind::StepFailed,
                SagaEventKind::Compensating,
            ];
            let mut r = SagaRecord {
                format: if v2 { 2 } else { 1 },
                trace,
                steps: names.iter().map(StepRecord::pending).collect(),
                owner,
                ..running(&saga, &id, Vec::<String>::new())
            };
            let mut encoder = Encoder::default();
            for (i, (status, state, attempts, error, lease, event, datum)) in writes.into_iter().enumerate() {
                r.status = STATUSES[status];
                if let Some(step) = r.steps.get_mut(i % names.len().max(1)) {
                    step.state = STATES[state];
                    step.attempts = attempts;
                    step.compensation_attempts = attempts / 2;
                    step.error = error;
                }
                r.lease_until_ms = lease;
                r.round = attempts % 3;
                r.data.push(datum);
                if i == 2 {
                    r.owner.clone_from(&other_owner);
                }
                if let Some((kind, error, attempts)) = event {
                    let step = names.first().map(String::as_str);
                    super::super::runner::emit(&mut r, kinds[kind], step, error, attempts);
                    r.event_seq += 1;
                }
                if i % 3 == 2 && !r.outbox.is_empty() {
                    r.outbox.remove(0);
                }
                let written = encoder.encode(&r).expect("encode");
                proptest::prop_assert_eq!(&written[..], &serde_json::to_vec(&r).expect("serde")[..]);
                proptest::prop_assert_eq!(&decode::<Vec<String>>(&written).expect("decode"), &r);
            }
        }
    }
}
