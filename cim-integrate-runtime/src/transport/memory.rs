//! The embedded transport: JetStream semantics in process, with no server.
//!
//! Same behaviour as NATS JetStream (`transport::nats`, feature `nats`), checked by the one
//! conformance suite (`cim_integrate_runtime::conformance`, feature `testing`):
//!
//! - streams capture disjoint subject sets; publishing to a subject no stream captures fails with
//!   [`TransportError::NoStream`]; payloads over 1 MiB (headers included) are refused;
//! - a publish whose `Nats-Msg-Id` was seen within the stream's duplicate window is acknowledged
//!   as a duplicate of the original sequence and not stored again;
//! - durable consumers remember their position; several handles on one durable share its
//!   messages; unacknowledged deliveries come back after the ack wait (or the back-off delay),
//!   naks come back after their delay, and after `max_deliver` deliveries a message is dropped
//!   from the consumer; redeliveries are served before new messages;
//! - a consumer with an [inactive threshold](ConsumerSpec::inactive_threshold) is removed once
//!   it has been idle that long: nobody waiting in [`Consumer::next`] and no delivery awaiting
//!   its acknowledgement (an unacknowledged delivery counts as activity until its ack wait ends);
//! - key-value buckets have bucket-wide revisions, compare-and-set, tombstones and a TTL;
//! - a request reaches one member of every queue group serving its subject (round robin),
//!   [`TransportError::NoResponders`] if there is none, and times out if nobody answers.
//!
//! All time-dependent behaviour (ack wait, nak delays, duplicate window, max age, TTL) runs on
//! tokio's clock, so tests can use paused time (`#[tokio::test(start_paused = true)]`).

use super::request::ReplySink;
use super::{
    Acker, Consumer, ConsumerSpec, DEFAULT_MAX_PAYLOAD, DeliverPolicy, Delivery, DeliveryInfo, Deployment,
    IncomingRequest, KeyValue, KeyValueNow, KvEntry, KvError, KvSpec, OutboundMessage, PublishAck, Reply, ReplyHandle,
    Request, Responder, StreamSpec, Transport, TransportError, check_key,
};
use crate::clock::later;
use crate::fast_hash::FastMap;
use crate::headers::Headers;
use crate::id_window::IdWindow;
use crate::subject::Subject;
use crate::timestamp::Timestamp;
use bytes::Bytes;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// Locks a mutex, recovering the data if a panicking thread poisoned it (the state is only
/// mutated in small, non-panicking sections).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for reading a read-write lock.
fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

/// [`lock`] for writing a read-write lock.
fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// The in-memory transport. Cheap to clone; clones share state.
///
/// ```
/// use cim_integrate_runtime::transport::{memory::MemoryTransport, ConsumerSpec, StreamSpec, Transport, Consumer};
/// use cim_integrate_runtime::{Envelope, subject, subject_pattern};
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let t = MemoryTransport::new();
/// t.ensure_stream(&StreamSpec::for_domain("document", None)?).await?;
/// let env = Envelope::root(subject!("document.created"), &br#"{"version":"1.0"}"#[..]);
/// let ack = t.publish_and_wait(env.into()).await?;
/// assert_eq!(ack.sequence, 1);
/// let mut c = t.consumer(&ConsumerSpec::new("DOCUMENT_EVENTS", "notify", subject_pattern!("document.>"))).await?;
/// let d = c.next().await?;
/// assert_eq!(d.subject(), "document.created");
/// d.ack().await?;
/// # Ok::<(), cim_integrate_runtime::transport::TransportError>(()) }).unwrap();
/// ```
#[derive(Clone, Default)]
pub struct MemoryTransport {
    inner: Arc<Inner>,
    deployment: Arc<Deployment>,
}

impl std::fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let streams: Vec<String> = read(&self.inner.streams).iter().map(|s| s.spec.name.clone()).collect();
        f.debug_struct("MemoryTransport")
            .field("streams", &streams)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct Inner {
    /// Read by every publish, for as long as it writes into its stream (no reference count
    /// taken per publish); written only when a stream is added.
    streams: RwLock<Vec<Arc<MemStream>>>,
    buckets: Mutex<HashMap<String, Arc<MemBucket>>>,
    responders: Mutex<Vec<MemResponder>>,
    round_robin: std::sync::atomic::AtomicUsize,
    /// Publishes stored so far, across streams: each stored message's place in that order.
    stored: std::sync::atomic::AtomicU64,
    /// Requests sent and not yet answered, timed out or refused.
    requests_in_flight: std::sync::atomic::AtomicUsize,
    /// Set by [`MemoryTransport::record_requests`]: the requests answered since.
    request_log: Mutex<Option<Vec<RecordedRequest>>>,
    /// Whether `request_log` is on (read without the lock on every request).
    recording: std::sync::atomic::AtomicBool,
}

/// One queue-group member: where its requests go.
struct MemResponder {
    pattern: crate::subject::SubjectPattern,
    group: Arc<str>,
    tx: tokio::sync::mpsc::Sender<IncomingRequest>,
}

/// Requests waiting in one responder before further ones are dropped (as a slow NATS
/// subscriber's are).
const RESPONDER_CAPACITY: usize = 1024;

/// The reply path of an in-memory request: the first reply wins.
struct MemReply(tokio::sync::mpsc::Sender<Reply>);

impl ReplySink for MemReply {
    fn send(self: Box<Self>, reply: Reply) -> futures::future::BoxFuture<'static, Result<(), TransportError>> {
        // A requester that gave up is not an error, as in NATS.
        let _ = self.0.try_send(reply);
        Box::pin(std::future::ready(Ok(())))
    }
}

struct MemStream {
    spec: StreamSpec,
    /// `spec.subjects`, prepared.
    subjects: Vec<Matcher>,
    name: Arc<str>,
    state: Mutex<StreamState>,
    /// Woken on every publish, ack, nak, term and consumer deletion.
    changed: Notify,
    /// Calls of [`Consumer::next`] about to wait on `changed` (or waiting): without any, a
    /// change wakes nobody and `changed` is not touched.
    sleepers: std::sync::atomic::AtomicUsize,
    /// Tells the wall-clock time of a stored message, and of a durable's creation, from the
    /// one read of tokio's clock a publish (or a consumer's creation) makes anyway, as the
    /// key-value buckets' does.
    clock: crate::clock::Clock,
}

impl MemStream {
    /// Wakes the consumers waiting for a change; call after the change, with the state
    /// unlocked.
    fn wake(&self) {
        // SeqCst pairs with the sleeper's increment: a sleeper that this load misses counted
        // itself after the change was made, and checks the state again before it waits.
        if self.sleepers.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            self.changed.notify_waiters();
        }
    }
}

/// A `Nats-Msg-Id` as the duplicate window keeps it: a UUID in its canonical text (what every
/// envelope writes) as its 16 bytes, anything else as text.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum MsgId {
    Uuid(uuid::Uuid),
    Text(Box<str>),
}

impl MsgId {
    /// The message id of `headers`, without formatting the id of an envelope's headers.
    fn of(headers: &Headers) -> Option<Self> {
        if let Some(stamp) = headers.stamp() {
            return Some(Self::Uuid(stamp.identity.message_id.into_uuid()));
        }
        let text = headers.get(crate::headers::NATS_MSG_ID)?;
        Some(crate::id::canonical_uuid(text).map_or_else(|| Self::Text(text.into()), Self::Uuid))
    }
}

#[derive(Default)]
struct StreamState {
    /// Stored messages in sequence order; contiguous from `messages[0].seq`.
    messages: VecDeque<Stored>,
    last_seq: u64,
    /// The duplicate window: ids stored, with when and under which sequence.
    dedup: IdWindow<MsgId, u64>,
    consumers: Consumers,
    /// Nothing stored expires before this (a duplicate id leaving the window, a message past
    /// the max age); `None`: nothing can expire until something is stored. Lets
    /// [`StreamState::expire`] return at once, unless a consumer has an inactive threshold.
    next_expiry: Option<Instant>,
    /// The names of every durable created on this stream, deleted ones too: a durable of a
    /// name never used before counts every delivery of every message the stream holds.
    names_used: Vec<Arc<str>>,
}

/// The durables of one stream. Looked up by name; a handle holds the very name this list keeps
/// (see [`Transport::consumer`]), so the common lookup compares pointers, no text. A
/// stream has a handful of durables: a list, not a map.
#[derive(Default)]
struct Consumers {
    list: Vec<(Arc<str>, ConsumerState)>,
    /// How many have an inactive threshold (then every [`StreamState::expire`] looks at them).
    with_threshold: usize,
}

impl Consumers {
    fn position(&self, name: &str) -> Option<usize> {
        let ptr = name.as_ptr();
        self.list
            .iter()
            .position(|(n, _)| n.as_ptr() == ptr && n.len() == name.len())
            .or_else(|| self.list.iter().position(|(n, _)| **n == *name))
    }

    fn get(&self, name: &str) -> Option<&ConsumerState> {
        self.position(name).map(|i| &self.list[i].1)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut ConsumerState> {
        self.position(name).map(|i| &mut self.list[i].1)
    }

    /// The name as kept here (the `Arc` handles should hold).
    fn key(&self, name: &str) -> Option<&Arc<str>> {
        self.position(name).map(|i| &self.list[i].0)
    }

    fn insert(&mut self, name: Arc<str>, c: ConsumerState) {
        self.remove(&name);
        self.list.push((name, c));
        self.recount();
    }

    fn remove(&mut self, name: &str) -> Option<ConsumerState> {
        let i = self.position(name)?;
        let (_, c) = self.list.swap_remove(i);
        self.recount();
        Some(c)
    }

    fn retain(&mut self, mut keep: impl FnMut(&Arc<str>, &ConsumerState) -> bool) {
        self.list.retain(|(n, c)| keep(n, c));
        self.recount();
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut ConsumerState> {
        self.list.iter_mut().map(|(_, c)| c)
    }

    /// Counts the thresholds again: after any change of the list or of a spec.
    fn recount(&mut self) {
        self.with_threshold = self
            .list
            .iter()
            .filter(|(_, c)| c.spec.inactive_threshold.is_some())
            .count();
    }
}

/// A subject pattern prepared for matching many subjects: the common shapes (a literal subject,
/// `prefix.>`) are told apart once, not on every match.
#[derive(Debug, Clone)]
enum Matcher {
    Literal(Box<str>),
    /// `prefix.>`: the prefix with its trailing dot.
    Prefix(Box<str>),
    Other(crate::subject::SubjectPattern),
}

impl Matcher {
    fn new(pattern: &crate::subject::SubjectPattern) -> Self {
        let p = pattern.as_str();
        let wild = |s: &str| s.bytes().any(|b| b == b'*' || b == b'>');
        if !wild(p) {
            return Self::Literal(p.into());
        }
        match p.strip_suffix('>') {
            Some(prefix) if prefix.ends_with('.') && !wild(prefix) => Self::Prefix(prefix.into()),
            _ => Self::Other(pattern.clone()),
        }
    }

    /// `true` if the valid subject `subject` matches (as [`SubjectPattern::matches_valid`](crate::subject::SubjectPattern)).
    #[inline]
    fn matches(&self, subject: &str) -> bool {
        match self {
            Self::Literal(p) => **p == *subject,
            Self::Prefix(p) => subject.len() > p.len() && subject.as_bytes().starts_with(p.as_bytes()),
            Self::Other(p) => p.matches_valid(subject),
        }
    }
}

struct Stored {
    seq: u64,
    /// Its place among every publish stored by this transport.
    order: u64,
    subject: Subject,
    headers: Headers,
    payload: Bytes,
    /// When it was stored, by the wall clock (told by the stream's [`clock`](MemStream::clock)
    /// from `stored_at`, once, at publish: every delivery of it reports this).
    published: Timestamp,
    /// When it was stored, by tokio's clock: its expiry.
    stored_at: Instant,
}

struct ConsumerState {
    spec: ConsumerSpec,
    /// `spec.filter`, prepared.
    filter: Matcher,
    /// When the durable was created, told by the stream's clock (as stored messages' times are).
    created: Timestamp,
    /// Next stream sequence to consider for a first delivery.
    next_seq: u64,
    /// Consumer sequence of the last delivery.
    delivery_seq: u64,
    /// Delivered, not yet acknowledged or terminated: stream sequence -> state.
    pending: PendingSet,
    /// No pending delivery is due for redelivery before this (a lower bound of their
    /// `redeliver_at`): until then the pending ones need not be looked at.
    next_due: Instant,
    /// Calls of [`Consumer::next`] waiting on this consumer now.
    waiting: usize,
    /// The last activity: creation, the end of a wait, an acknowledgement.
    active_at: Instant,
}

/// The error of a durable `name` of `stream` that is not there. Out of line: the path of every
/// delivery stays short.
#[cold]
#[inline(never)]
fn consumer_gone(stream: &str, name: &str) -> TransportError {
    TransportError::ConsumerNotFound {
        stream: stream.to_owned(),
        consumer: name.to_owned(),
    }
}

impl ConsumerState {
    /// The pending delivery due for redelivery now with the lowest sequence, and when the next
    /// one falls due; drops those that have used up `max_deliver`. Out of line: asked only once
    /// a pending delivery's redelivery time has come (`next_due`), so the code of every
    /// delivery stays short.
    #[cold]
    #[inline(never)]
    fn due_redelivery(&mut self, now: Instant, stream: &MemStream, name: &str) -> (Option<u64>, Option<Instant>) {
        let max_deliver = self.spec.max_deliver.map_or(u64::MAX, u64::from);
        let mut wake: Option<Instant> = None;
        let mut due = None;
        self.pending.retain(|seq, p| {
            if p.redeliver_at > now {
                wake = Some(wake.map_or(p.redeliver_at, |w| w.min(p.redeliver_at)));
                return true;
            }
            if p.delivered >= max_deliver {
                tracing::debug!(stream = %stream.name, consumer = %name, seq, "max deliveries reached");
                return false;
            }
            if due.is_none() {
                due = Some(seq);
            }
            true
        });
        // Others may be due too: look again next time, until none is.
        self.next_due = if due.is_some() { now } else { wake.unwrap_or(now) };
        (due, wake)
    }

    /// `true` if the consumer has an inactive threshold and has been idle longer.
    fn inactive(&self, now: Instant) -> bool {
        let Some(threshold) = self.spec.inactive_threshold else {
            return false;
        };
        if self.waiting > 0 {
            return false;
        }
        let last = self
            .pending
            .values()
            .map(|p| p.redeliver_at)
            .fold(self.active_at, Instant::max);
        last + threshold <= now
    }
}

/// A consumer's pending deliveries by stream sequence, in sequence order. First deliveries come
/// in rising sequence, so a new one is appended; settled ones leave a hole, dropped from the
/// ends at once and from the middle when holes outnumber the live entries (a delivery that
/// stays pending long does not make the holes behind it pile up). Finding one is a binary
/// search: no tree nodes to allocate, walk and free per message.
#[derive(Default)]
struct PendingSet {
    entries: VecDeque<(u64, Option<Pending>)>,
    live: usize,
}

impl PendingSet {
    fn len(&self) -> usize {
        self.live
    }

    fn is_empty(&self) -> bool {
        self.live == 0
    }

    fn index(&self, seq: u64) -> Result<usize, usize> {
        // Most deliveries are settled in the order they were made: the first entry.
        match self.entries.front() {
            Some((first, _)) if *first == seq => Ok(0),
            _ => self.entries.binary_search_by_key(&seq, |(s, _)| *s),
        }
    }

    fn get_mut(&mut self, seq: u64) -> Option<&mut Pending> {
        let i = self.index(seq).ok()?;
        self.entries[i].1.as_mut()
    }

    /// The entry of `seq`, made with `make` if there is none.
    fn get_or_insert(&mut self, seq: u64, make: impl FnOnce() -> Pending) -> &mut Pending {
        let i = if self.entries.back().is_none_or(|(last, _)| *last < seq) {
            self.entries.push_back((seq, None));
            self.entries.len() - 1
        } else {
            match self.index(seq) {
                Ok(i) => i,
                Err(i) => {
                    self.entries.insert(i, (seq, None));
                    i
                }
            }
        };
        let slot = &mut self.entries[i].1;
        if slot.is_none() {
            self.live += 1;
        }
        slot.get_or_insert_with(make)
    }

    fn remove(&mut self, seq: u64) -> Option<Pending> {
        let i = self.index(seq).ok()?;
        let p = self.entries[i].1.take()?;
        self.live -= 1;
        self.tidy();
        Some(p)
    }

    /// Keeps the entries for which `keep` is `true`.
    fn retain(&mut self, mut keep: impl FnMut(u64, &mut Pending) -> bool) {
        for (seq, slot) in &mut self.entries {
            if let Some(p) = slot
                && !keep(*seq, p)
            {
                *slot = None;
                self.live -= 1;
            }
        }
        self.tidy();
    }

    fn iter(&self) -> impl Iterator<Item = (u64, &Pending)> {
        self.entries.iter().filter_map(|(seq, p)| p.as_ref().map(|p| (*seq, p)))
    }

    fn values(&self) -> impl Iterator<Item = &Pending> {
        self.iter().map(|(_, p)| p)
    }

    /// Drops holes at the ends, and every hole once they outnumber the live entries.
    fn tidy(&mut self) {
        while self.entries.front().is_some_and(|(_, p)| p.is_none()) {
            self.entries.pop_front();
        }
        while self.entries.back().is_some_and(|(_, p)| p.is_none()) {
            self.entries.pop_back();
        }
        if self.entries.len() > 2 * self.live + 64 {
            self.entries.retain(|(_, p)| p.is_some());
        }
    }
}

struct Pending {
    delivered: u64,
    redeliver_at: Instant,
    /// Given back (nak) and waiting for its redelivery, rather than being handled.
    naked: bool,
}

enum Step {
    Deliver(Delivery<MemoryAcker>),
    Wait(Option<Instant>),
}

impl StreamState {
    fn first_seq(&self) -> u64 {
        self.messages.front().map_or(self.last_seq + 1, |m| m.seq)
    }

    /// Drops messages past the stream's max age, duplicate ids past the window and consumers
    /// idle past their inactive threshold.
    fn expire(&mut self, spec: &StreamSpec, now: Instant) {
        if self.consumers.with_threshold == 0 && self.next_expiry.is_none_or(|at| at > now) {
            return;
        }
        self.consumers.retain(|name, c| {
            let keep = !c.inactive(now);
            if !keep {
                tracing::debug!(stream = %spec.name, consumer = %name, "inactive consumer removed");
            }
            keep
        });
        if let Some(age) = spec.max_age.or(spec.settings.max_age) {
            while self.messages.front().is_some_and(|m| later(m.stored_at, age) <= now) {
                self.messages.pop_front();
            }
            let first = self.first_seq();
            for c in self.consumers.values_mut() {
                c.pending.retain(|seq, _| seq >= first);
            }
        }
        self.dedup.expire(now, spec.duplicate_window);
        let age = spec.max_age.or(spec.settings.max_age);
        let message = age.and_then(|age| self.messages.front().map(|m| later(m.stored_at, age)));
        let id = self.dedup.oldest().map(|at| later(at, spec.duplicate_window));
        self.next_expiry = message.into_iter().chain(id).min();
    }

    /// Notes that something stored now expires at `at` (see `next_expiry`).
    fn expires_at(&mut self, at: Instant) {
        self.next_expiry = Some(self.next_expiry.map_or(at, |t| t.min(at)));
    }

    /// The next delivery for durable `name`, or how long to wait for one. `touch`: a delivery
    /// made is the consumer's last activity.
    fn next_step(&mut self, handle: &Arc<ConsumerRef>, now: Instant, touch: bool) -> Result<Step, TransportError> {
        let ConsumerRef { stream, name } = &**handle;
        let first_seq = self.first_seq();
        let StreamState {
            messages, consumers, ..
        } = self;
        let Some(c) = consumers.get_mut(name) else {
            return Err(consumer_gone(&stream.spec.name, name));
        };
        // Redeliveries first, lowest sequence first; drop those that have used up max_deliver.
        let (due, wake) = if c.pending.is_empty() {
            (None, None)
        } else if c.next_due > now {
            (None, Some(c.next_due))
        } else {
            c.due_redelivery(now, stream, name)
        };
        let seq = match due {
            Some(seq) => Some(seq),
            None if c.pending.len() < c.spec.max_ack_pending as usize => {
                let start = c.next_seq.max(first_seq);
                let skip = usize::try_from(start - first_seq).unwrap_or(usize::MAX);
                let filter = &c.filter;
                let found = messages
                    .range(skip.min(messages.len())..)
                    .find(|m| filter.matches(m.subject.as_str()))
                    .map(|m| m.seq);
                c.next_seq = found.map_or(first_seq + messages.len() as u64, |s| s + 1);
                found
            }
            None => None,
        };
        let Some(seq) = seq else { return Ok(Step::Wait(wake)) };
        let idx = usize::try_from(seq - first_seq).unwrap_or(usize::MAX);
        let Some(m) = messages.get(idx) else {
            return Ok(Step::Wait(wake));
        };
        let p = c.pending.get_or_insert(seq, || Pending {
            delivered: 0,
            redeliver_at: now,
            naked: false,
        });
        p.delivered += 1;
        p.naked = false;
        p.redeliver_at = later(now, c.spec.redelivery_delay(p.delivered));
        c.next_due = c.next_due.min(p.redeliver_at);
        c.delivery_seq += 1;
        if touch {
            c.active_at = now;
        }
        let info = DeliveryInfo {
            stream: stream.name.clone(),
            consumer: name.clone(),
            stream_sequence: seq,
            consumer_sequence: c.delivery_seq,
            delivered: p.delivered,
            published: m.published,
            // This process's own counts: never lost while the process lives.
            resumed: None,
        };
        let acker = MemoryAcker {
            consumer: handle.clone(),
            seq,
        };
        Ok(Step::Deliver(Delivery::stored(
            m.subject.clone(),
            m.headers.clone(),
            m.payload.clone(),
            info,
            acker,
            Some(now),
        )))
    }
}

impl MemoryTransport {
    /// An empty transport: no streams, no buckets.
    pub fn new() -> Self {
        Self::default()
    }

    /// The same transport (same streams and buckets) provisioning new assets under
    /// `deployment`. In memory there is one copy whatever the replicas; they are recorded, so
    /// that drift is reported as on a server.
    pub fn with_deployment(&self, deployment: Deployment) -> Self {
        Self {
            inner: self.inner.clone(),
            deployment: Arc::new(deployment),
        }
    }

    fn stream_named(&self, name: &str) -> Option<Arc<MemStream>> {
        read(&self.inner.streams).iter().find(|s| s.spec.name == name).cloned()
    }

    /// Number of messages stored in a stream (for tests and diagnostics).
    pub fn stream_len(&self, stream: &str) -> Option<usize> {
        let s = self.stream_named(stream)?;
        let mut st = lock(&s.state);
        st.expire(&s.spec, Instant::now());
        Some(st.messages.len())
    }

    /// The names of the streams, in the order they were created.
    pub fn stream_names(&self) -> Vec<String> {
        read(&self.inner.streams).iter().map(|s| s.spec.name.clone()).collect()
    }

    /// Every message stored in `stream` (and not expired), in sequence order, each with its
    /// envelope as a consumer would rebuild it. Empty for an unknown stream. For test hosts and
    /// diagnostics: it copies the stream.
    pub fn stored(&self, stream: &str) -> Vec<StoredMessage> {
        let Some(s) = self.stream_named(stream) else {
            return Vec::new();
        };
        let mut st = lock(&s.state);
        st.expire(&s.spec, Instant::now());
        st.messages
            .iter()
            .map(|m| {
                let from = crate::envelope::ReceivedFrom {
                    stream: Some(s.name.clone()),
                    stream_sequence: Some(m.seq),
                    published: Some(m.published),
                };
                StoredMessage {
                    stream: s.spec.name.clone(),
                    sequence: m.seq,
                    order: m.order,
                    headers: m.headers.clone(),
                    envelope: crate::envelope::Envelope::from_received_subject(
                        m.subject.clone(),
                        &m.headers,
                        m.payload.clone(),
                        &from,
                    ),
                }
            })
            .collect()
    }

    /// What durable `durable` on `stream` has not settled yet: messages it has not been
    /// delivered, deliveries in flight, and those given back waiting for their redelivery.
    /// `None` if there is no such consumer. For test hosts deciding that a host is quiet.
    pub fn consumer_progress(&self, stream: &str, durable: &str) -> Option<ConsumerProgress> {
        let s = self.stream_named(stream)?;
        let now = Instant::now();
        let mut st = lock(&s.state);
        st.expire(&s.spec, now);
        let first_seq = st.first_seq();
        let c = st.consumers.get(durable)?;
        let start = c.next_seq.max(first_seq);
        let skip = usize::try_from(start - first_seq).unwrap_or(usize::MAX);
        let undelivered = st
            .messages
            .range(skip.min(st.messages.len())..)
            .filter(|m| c.filter.matches(m.subject.as_str()))
            .map(|m| m.seq)
            .collect();
        let mut progress = ConsumerProgress {
            stream: s.spec.name.clone(),
            durable: durable.to_owned(),
            undelivered,
            in_flight: Vec::new(),
            due: Vec::new(),
            waiting: Vec::new(),
        };
        for (seq, p) in c.pending.iter() {
            if p.redeliver_at <= now {
                progress.due.push(seq);
            } else if p.naked {
                progress.waiting.push((seq, p.redeliver_at - now));
            } else {
                progress.in_flight.push(seq);
            }
        }
        Some(progress)
    }

    /// Requests sent through this transport (commands) that are waiting for their answer now.
    pub fn requests_in_flight(&self) -> usize {
        self.inner.requests_in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// From now on, every request that gets an answer or fails is recorded, with its answer, for
    /// [`recorded_requests`](Self::recorded_requests) (test hosts: commands sent by anyone).
    pub fn record_requests(&self) {
        let mut log = lock(&self.inner.request_log);
        if log.is_none() {
            *log = Some(Vec::new());
        }
        self.inner.recording.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// The requests recorded since [`record_requests`](Self::record_requests), in the order
    /// they were answered (or failed). Empty if recording is off.
    pub fn recorded_requests(&self) -> Vec<RecordedRequest> {
        lock(&self.inner.request_log).clone().unwrap_or_default()
    }

    async fn request_inner(&self, request: &Request, timeout: Duration) -> Result<Reply, TransportError> {
        let size = request.payload.len()
            + request
                .headers
                .iter()
                .map(|(n, v)| n.len() + v.len() + 4)
                .sum::<usize>();
        if size > DEFAULT_MAX_PAYLOAD {
            return Err(TransportError::PayloadTooLarge {
                size,
                max: DEFAULT_MAX_PAYLOAD,
            });
        }
        let deadline = Instant::now() + timeout;
        let (reply_tx, mut reply_rx) = tokio::sync::mpsc::channel::<Reply>(1);
        let delivered = {
            let mut responders = lock(&self.inner.responders);
            responders.retain(|r| !r.tx.is_closed());
            let turn = self
                .inner
                .round_robin
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let mut groups: Vec<Arc<str>> = Vec::new();
            for r in responders.iter().filter(|r| r.pattern.matches(&request.subject)) {
                if !groups.contains(&r.group) {
                    groups.push(r.group.clone());
                }
            }
            let mut delivered = 0;
            for group in groups {
                let members: Vec<&MemResponder> = responders
                    .iter()
                    .filter(|r| r.group == group && r.pattern.matches(&request.subject))
                    .collect();
                // One member per group, in turn; a full one passes the request to the next.
                for i in 0..members.len() {
                    let member = members[(turn + i) % members.len()];
                    let incoming = IncomingRequest::new(
                        request.subject.to_string(),
                        request.headers.clone(),
                        request.payload.clone(),
                        ReplyHandle::new(MemReply(reply_tx.clone())),
                    );
                    if member.tx.try_send(incoming).is_ok() {
                        delivered += 1;
                        break;
                    }
                }
            }
            delivered
        };
        drop(reply_tx);
        if delivered == 0 {
            return Err(TransportError::NoResponders {
                subject: request.subject.to_string(),
            });
        }
        let timed_out = || TransportError::Timeout(format!("no reply to the request to `{}`", request.subject));
        match tokio::time::timeout_at(deadline, reply_rx.recv()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => {
                // Every responder dropped the request unanswered: as on NATS, the requester
                // learns it only by timing out.
                tokio::time::sleep_until(deadline).await;
                Err(timed_out())
            }
            Err(_) => Err(timed_out()),
        }
    }

    fn record_request(&self, request: &Request, outcome: &Result<Reply, TransportError>) {
        if !self.inner.recording.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let from = crate::envelope::ReceivedFrom::default();
        let recorded = RecordedRequest {
            envelope: crate::envelope::Envelope::from_received_subject(
                request.subject.clone(),
                &request.headers,
                request.payload.clone(),
                &from,
            ),
            reply: outcome.as_ref().map(|r| r.payload.clone()).map_err(Clone::clone),
        };
        if let Some(log) = lock(&self.inner.request_log).as_mut() {
            log.push(recorded);
        }
    }

    fn do_publish(&self, msg: OutboundMessage) -> Result<PublishAck, TransportError> {
        // Held (for reading) while the stream is written: lock order streams, then a stream's
        // state; nothing takes them the other way round.
        let streams = read(&self.inner.streams);
        let stream = streams
            .iter()
            .find(|s| s.subjects.iter().any(|p| p.matches(msg.subject.as_str())))
            .ok_or_else(|| TransportError::NoStream {
                subject: msg.subject.to_string(),
            })?;
        let now = Instant::now();
        let mut st = lock(&stream.state);
        st.expire(&stream.spec, now);
        let msg_id = MsgId::of(&msg.headers);
        if let Some(id) = &msg_id
            && let Some((_, &sequence)) = st.dedup.get(id)
        {
            return Ok(PublishAck {
                stream: stream.name.clone(),
                sequence,
                duplicate: true,
            });
        }
        st.last_seq += 1;
        let seq = st.last_seq;
        if let Some(id) = msg_id {
            st.dedup.insert(id, now, seq);
            st.expires_at(later(now, stream.spec.duplicate_window));
        }
        if let Some(age) = stream.spec.max_age.or(stream.spec.settings.max_age) {
            st.expires_at(later(now, age));
        }
        let order = self.inner.stored.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st.messages.push_back(Stored {
            seq,
            order,
            subject: msg.subject,
            headers: msg.headers,
            payload: msg.payload,
            published: stream.clock.timestamp_at(now),
            stored_at: now,
        });
        drop(st);
        stream.wake();
        Ok(PublishAck {
            stream: stream.name.clone(),
            sequence: seq,
            duplicate: false,
        })
    }
}

/// The size of `msg` (payload and headers) if it is over the limit; `None` if it fits. Envelope
/// headers are measured by an upper bound first, so that a message well within the limit does
/// not have its identity headers formatted.
fn oversize(msg: &OutboundMessage) -> Option<usize> {
    if msg.payload.len() + msg.headers.max_wire_len() <= DEFAULT_MAX_PAYLOAD {
        return None;
    }
    let size = msg.payload.len() + msg.headers.iter().map(|(n, v)| n.len() + v.len() + 4).sum::<usize>();
    (size > DEFAULT_MAX_PAYLOAD).then_some(size)
}

impl Transport for MemoryTransport {
    type Consumer = MemoryConsumer;
    type KeyValue = MemoryKeyValue;
    type AckFuture = std::future::Ready<Result<PublishAck, TransportError>>;

    fn deployment(&self) -> &Deployment {
        &self.deployment
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), TransportError> {
        let spec = &spec.deployed(&self.deployment);
        spec.validate()?;
        let mut streams = write(&self.inner.streams);
        if let Some(existing) = streams.iter().find(|s| s.spec.name == spec.name) {
            return match spec.differences(&existing.spec) {
                None => {
                    if let Some(d) = spec.settings.drift(&existing.spec.settings) {
                        super::deploy::report_drift(&spec.name, &d);
                    }
                    Ok(())
                }
                Some(detail) => Err(TransportError::StreamConflict {
                    stream: spec.name.clone(),
                    detail,
                }),
            };
        }
        for other in streams.iter() {
            for mine in &spec.subjects {
                if other.spec.subjects.iter().any(|p| p.overlaps(mine)) {
                    return Err(TransportError::StreamOverlap {
                        stream: spec.name.clone(),
                        other: other.spec.name.clone(),
                        pattern: mine.to_string(),
                    });
                }
            }
        }
        streams.push(Arc::new(MemStream {
            spec: spec.clone(),
            subjects: spec.subjects.iter().map(Matcher::new).collect(),
            name: Arc::from(spec.name.as_str()),
            state: Mutex::new(StreamState::default()),
            changed: Notify::new(),
            sleepers: std::sync::atomic::AtomicUsize::new(0),
            clock: crate::clock::Clock::new(),
        }));
        Ok(())
    }

    async fn publish(&self, message: OutboundMessage) -> Result<Self::AckFuture, TransportError> {
        if let Some(size) = oversize(&message) {
            return Err(TransportError::PayloadTooLarge {
                size,
                max: DEFAULT_MAX_PAYLOAD,
            });
        }
        // Like a server, failures to store come back with the acknowledgement.
        Ok(std::future::ready(self.do_publish(message)))
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<MemoryConsumer, TransportError> {
        spec.validate()?;
        let stream = self
            .stream_named(&spec.stream)
            .ok_or_else(|| TransportError::StreamNotFound {
                stream: spec.stream.clone(),
            })?;
        let name: Arc<str> = Arc::from(spec.durable.as_str());
        let now = Instant::now();
        let mut st = lock(&stream.state);
        st.expire(&stream.spec, now);
        let first_new = st.last_seq + 1;
        match st.consumers.get_mut(&name) {
            Some(existing) => {
                if let Some(detail) = spec.immutable_differences(&existing.spec) {
                    return Err(TransportError::ConsumerConflict {
                        stream: spec.stream.clone(),
                        consumer: spec.durable.clone(),
                        detail,
                    });
                }
                existing.spec = spec.clone();
                existing.filter = Matcher::new(&spec.filter);
                existing.active_at = now;
                st.consumers.recount();
            }
            None => {
                let next_seq = match spec.deliver {
                    DeliverPolicy::All => 1,
                    DeliverPolicy::New => first_new,
                };
                // This process counts every delivery of its streams. A durable of a name never
                // used on this stream is the first to deliver anything under it: its counts
                // cover every message, so it reports the earliest time (the handler
                // de-duplication then reads no mark on a first delivery). A durable made again
                // after one of its name was deleted reports its creation: the earlier one may
                // have handled what was stored before.
                let created = if st.names_used.iter().any(|n| **n == *name) {
                    stream.clock.timestamp_at(now)
                } else {
                    st.names_used.push(name.clone());
                    Timestamp::UNIX_EPOCH
                };
                st.consumers.insert(
                    name.clone(),
                    ConsumerState {
                        spec: spec.clone(),
                        filter: Matcher::new(&spec.filter),
                        next_seq,
                        delivery_seq: 0,
                        pending: PendingSet::default(),
                        next_due: now,
                        waiting: 0,
                        active_at: now,
                        created,
                    },
                );
            }
        }
        let created = st
            .consumers
            .get(&name)
            .map_or_else(|| stream.clock.timestamp_at(now), |c| c.created);
        // The name as the stream keeps it: lookups by this handle compare pointers.
        let name = st.consumers.key(&name).cloned().unwrap_or(name);
        drop(st);
        Ok(MemoryConsumer {
            handle: Arc::new(ConsumerRef { stream, name }),
            created,
        })
    }

    async fn delete_consumer(&self, stream: &str, durable: &str) -> Result<(), TransportError> {
        let not_found = || consumer_gone(stream, durable);
        let s = self.stream_named(stream).ok_or_else(not_found)?;
        let removed = {
            let mut st = lock(&s.state);
            st.expire(&s.spec, Instant::now());
            st.consumers.remove(durable)
        };
        s.wake();
        removed.map(|_| ()).ok_or_else(not_found)
    }

    async fn key_value(&self, spec: &KvSpec) -> Result<MemoryKeyValue, KvError> {
        spec.validate()?;
        let mut buckets = lock(&self.inner.buckets);
        let spec = &spec.deployed(&self.deployment);
        if let Some(b) = buckets.get(&spec.bucket) {
            if let Some(detail) = spec.differences(&b.spec) {
                return Err(KvError::BucketConflict {
                    bucket: spec.bucket.clone(),
                    detail,
                });
            }
            if let Some(d) = spec.settings.drift(&b.spec.settings) {
                super::deploy::report_drift(&format!("KV_{}", spec.bucket), &d);
            }
            return Ok(MemoryKeyValue { bucket: b.clone() });
        }
        let b = Arc::new(MemBucket {
            spec: spec.clone(),
            state: Mutex::new(BucketState::default()),
            anchor: crate::clock::Clock::new(),
        });
        buckets.insert(spec.bucket.clone(), b.clone());
        Ok(MemoryKeyValue { bucket: b })
    }

    async fn flush(&self) -> Result<(), TransportError> {
        Ok(())
    }

    async fn request(&self, request: Request, timeout: Duration) -> Result<Reply, TransportError> {
        let _in_flight = InFlightRequest::enter(&self.inner.requests_in_flight);
        let outcome = self.request_inner(&request, timeout).await;
        self.record_request(&request, &outcome);
        outcome
    }

    async fn serve(
        &self,
        pattern: &crate::subject::SubjectPattern,
        queue_group: &str,
    ) -> Result<Responder, TransportError> {
        super::check_queue_group(queue_group)?;
        let (tx, rx) = tokio::sync::mpsc::channel(RESPONDER_CAPACITY);
        lock(&self.inner.responders).push(MemResponder {
            pattern: pattern.clone(),
            group: Arc::from(queue_group),
            tx,
        });
        let requests = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|r| (r, rx)) });
        Ok(Responder::new(
            pattern.to_string(),
            queue_group.to_owned(),
            Box::pin(requests),
        ))
    }
}

/// A handle on an in-memory durable consumer.
pub struct MemoryConsumer {
    handle: Arc<ConsumerRef>,
    created: Timestamp,
}

/// A durable consumer of a stream, as its handle and its deliveries' ackers share it: one
/// reference count per delivery, not one for the stream and one for the name.
struct ConsumerRef {
    stream: Arc<MemStream>,
    /// The name as the stream keeps it: lookups by it compare pointers.
    name: Arc<str>,
}

impl std::fmt::Debug for MemoryConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryConsumer")
            .field("stream", &self.handle.stream.name)
            .field("name", &self.handle.name)
            .finish()
    }
}

impl Consumer for MemoryConsumer {
    type Acker = MemoryAcker;

    fn created(&self) -> Option<Timestamp> {
        Some(self.created)
    }

    fn in_process(&self) -> bool {
        true
    }

    fn try_next(&mut self) -> Option<Result<Delivery<MemoryAcker>, TransportError>> {
        let now = Instant::now();
        let stream = &self.handle.stream;
        let mut st = lock(&stream.state);
        st.expire(&stream.spec, now);
        match st.next_step(&self.handle, now, true) {
            Ok(Step::Deliver(d)) => Some(Ok(d)),
            Ok(Step::Wait(_)) => None,
            Err(e) => Some(Err(e)),
        }
    }

    async fn next(&mut self) -> Result<Delivery<MemoryAcker>, TransportError> {
        // A delivery ready now is taken under one lock: entering and leaving the wait at the
        // same instant, which nobody can observe, is skipped.
        if let Some(ready) = self.try_next() {
            return ready;
        }
        let stream = &self.handle.stream;
        let _waiting = Waiting::enter(stream, &self.handle.name);
        let _sleeper = Sleeper::enter(stream);
        loop {
            let changed = stream.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let step = {
                let now = Instant::now();
                let mut st = lock(&stream.state);
                st.expire(&stream.spec, now);
                st.next_step(&self.handle, now, false)?
            };
            match step {
                Step::Deliver(d) => return Ok(d),
                Step::Wait(Some(at)) => {
                    tokio::select! {
                        () = changed => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
                Step::Wait(None) => changed.await,
            }
        }
    }
}

/// Counts a call of [`Consumer::next`] among the stream's sleepers (see [`MemStream::wake`])
/// while it lasts.
struct Sleeper<'a>(&'a MemStream);

impl<'a> Sleeper<'a> {
    fn enter(stream: &'a MemStream) -> Self {
        stream.sleepers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(stream)
    }
}

impl Drop for Sleeper<'_> {
    fn drop(&mut self) {
        self.0.sleepers.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Counts a call of [`Consumer::next`] as waiting on its consumer while it lasts (so an inactive
/// threshold does not remove a consumer someone waits on); its end is the consumer's last
/// activity.
struct Waiting {
    stream: Arc<MemStream>,
    name: Arc<str>,
}

impl Waiting {
    fn enter(stream: &Arc<MemStream>, name: &Arc<str>) -> Self {
        {
            let mut st = lock(&stream.state);
            st.expire(&stream.spec, Instant::now());
            if let Some(c) = st.consumers.get_mut(name) {
                c.waiting += 1;
            }
        }
        Self {
            stream: stream.clone(),
            name: name.clone(),
        }
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut st = lock(&self.stream.state);
        if let Some(c) = st.consumers.get_mut(&self.name) {
            c.waiting = c.waiting.saturating_sub(1);
            c.active_at = Instant::now();
        }
    }
}

/// Acknowledges one in-memory delivery.
pub struct MemoryAcker {
    consumer: Arc<ConsumerRef>,
    seq: u64,
}

impl std::fmt::Debug for MemoryAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryAcker")
            .field("consumer", &self.consumer.name)
            .field("seq", &self.seq)
            .finish()
    }
}

impl MemoryAcker {
    /// Runs `f` on the consumer's state (with the time, if `timed`: the activity time only
    /// matters to a consumer with an inactive threshold, so an ack does not read the clock for
    /// one without).
    fn with_pending(&self, timed: bool, f: impl FnOnce(&mut ConsumerState, Instant)) {
        let ConsumerRef { stream, name } = &*self.consumer;
        {
            let mut st = lock(&stream.state);
            if let Some(c) = st.consumers.get_mut(name) {
                let now = if timed || c.spec.inactive_threshold.is_some() {
                    let now = Instant::now();
                    c.active_at = now;
                    now
                } else {
                    c.active_at
                };
                f(c, now);
            }
        }
        stream.wake();
    }
}

impl Acker for MemoryAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        self.with_pending(false, |c, _| {
            c.pending.remove(self.seq);
        });
        Ok(())
    }

    async fn nak(&self, delay: Option<Duration>) -> Result<(), TransportError> {
        self.with_pending(true, |c, now| {
            if let Some(p) = c.pending.get_mut(self.seq) {
                p.redeliver_at = later(now, delay.unwrap_or_default());
                p.naked = true;
                c.next_due = c.next_due.min(p.redeliver_at);
            }
        });
        Ok(())
    }

    async fn term(&self) -> Result<(), TransportError> {
        self.with_pending(false, |c, _| {
            c.pending.remove(self.seq);
        });
        Ok(())
    }

    async fn in_progress(&self) -> Result<(), TransportError> {
        self.with_pending(true, |c, now| {
            let spec = &c.spec;
            if let Some(p) = c.pending.get_mut(self.seq) {
                p.redeliver_at = later(now, spec.redelivery_delay(p.delivered));
            }
        });
        Ok(())
    }
}

struct MemBucket {
    spec: KvSpec,
    state: Mutex<BucketState>,
    /// Tells an entry's wall-clock time from its write's [`Instant`]: one clock read per write,
    /// not two (a read of the clock costs about 40 ns on a virtual machine, several times a
    /// saga's or a mark's own bookkeeping).
    anchor: crate::clock::Clock,
}

#[derive(Default)]
struct BucketState {
    last_revision: u64,
    entries: FastMap<String, KvRecord>,
    writes_since_sweep: usize,
}

struct KvRecord {
    /// `None` is a tombstone.
    value: Option<Bytes>,
    revision: u64,
    /// When it was written (its wall-clock time is told by the bucket's anchor clock).
    written: Instant,
}

impl BucketState {
    /// The latest record of `key` that has not expired.
    fn latest(&self, key: &str, ttl: Option<Duration>, now: Instant) -> Option<&KvRecord> {
        self.entries
            .get(key)
            .filter(|r| ttl.is_none_or(|ttl| later(r.written, ttl) > now))
    }

    fn write(&mut self, key: &str, value: Option<Bytes>, ttl: Option<Duration>, now: Instant) -> u64 {
        let rec = self.next_record(value, ttl, now);
        match self.entries.get_mut(key) {
            Some(r) => *r = rec,
            None => {
                self.entries.insert(key.to_owned(), rec);
            }
        }
        self.last_revision
    }

    /// [`write`](Self::write) of a key given as an owned string: kept as the map's key (no copy).
    fn write_owned(&mut self, key: String, value: Option<Bytes>, ttl: Option<Duration>, now: Instant) -> u64 {
        let rec = self.next_record(value, ttl, now);
        self.entries.insert(key, rec);
        self.last_revision
    }

    /// The record of the next write (its revision taken), after sweeping expired entries now and
    /// then, so that a bucket of TTL'd marks stays bounded.
    fn next_record(&mut self, value: Option<Bytes>, ttl: Option<Duration>, now: Instant) -> KvRecord {
        self.writes_since_sweep += 1;
        if let Some(ttl) = ttl
            && self.writes_since_sweep > self.entries.len().max(1024)
        {
            self.entries.retain(|_, r| later(r.written, ttl) > now);
            self.writes_since_sweep = 0;
        }
        self.last_revision += 1;
        KvRecord {
            value,
            revision: self.last_revision,
            written: now,
        }
    }
}

/// A handle on an in-memory key-value bucket.
#[derive(Clone)]
pub struct MemoryKeyValue {
    bucket: Arc<MemBucket>,
}

impl std::fmt::Debug for MemoryKeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryKeyValue")
            .field("bucket", &self.bucket.spec.bucket)
            .finish()
    }
}

impl MemoryKeyValue {
    fn with_state<R>(
        &self,
        key: Option<&str>,
        f: impl FnOnce(&mut BucketState, Instant) -> Result<R, KvError>,
    ) -> Result<R, KvError> {
        if let Some(key) = key {
            check_key(key)?;
        }
        let mut st = lock(&self.bucket.state);
        f(&mut st, Instant::now())
    }

    fn current_revision(st: &BucketState, key: &str, ttl: Option<Duration>, now: Instant) -> u64 {
        st.latest(key, ttl, now).map_or(0, |r| r.revision)
    }
}

impl KeyValue for MemoryKeyValue {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| {
            Ok(st.latest(key, ttl, now).and_then(|r| {
                r.value.as_ref().map(|v| KvEntry {
                    key: key.to_owned(),
                    value: v.clone(),
                    revision: r.revision,
                    created: self.bucket.anchor.timestamp_at(r.written),
                })
            }))
        })
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| {
            if st.latest(key, ttl, now).is_some_and(|r| r.value.is_some()) {
                return Err(KvError::AlreadyExists { key: key.to_owned() });
            }
            Ok(st.write(key, Some(value), ttl, now))
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| {
            if Self::current_revision(st, key, ttl, now) != expected {
                return Err(KvError::Conflict {
                    key: key.to_owned(),
                    expected,
                });
            }
            Ok(st.write(key, Some(value), ttl, now))
        })
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| Ok(st.write(key, Some(value), ttl, now)))
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| {
            if let Some(expected) = expected
                && Self::current_revision(st, key, ttl, now) != expected
            {
                return Err(KvError::Conflict {
                    key: key.to_owned(),
                    expected,
                });
            }
            st.write(key, None, ttl, now);
            Ok(())
        })
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(None, |st, now| {
            let mut keys: Vec<String> = st
                .entries
                .iter()
                .filter(|(_, r)| r.value.is_some() && ttl.is_none_or(|ttl| later(r.written, ttl) > now))
                .map(|(k, _)| k.clone())
                .collect();
            keys.sort_unstable();
            Ok(keys)
        })
    }

    async fn purge_tombstones(&self, older_than: Duration) -> Result<usize, KvError> {
        self.with_state(None, |st, now| {
            let before = st.entries.len();
            st.entries
                .retain(|_, r| r.value.is_some() || now.saturating_duration_since(r.written) < older_than);
            Ok(before - st.entries.len())
        })
    }

    fn at_once(&self) -> Option<&dyn KeyValueNow> {
        Some(self)
    }
}

impl KeyValueNow for MemoryKeyValue {
    fn contains_now(&self, key: &str) -> Result<bool, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| {
            Ok(st.latest(key, ttl, now).is_some_and(|r| r.value.is_some()))
        })
    }

    fn put_now(&self, key: String, value: Bytes) -> Result<u64, KvError> {
        let ttl = self.bucket.spec.max_age;
        check_key(&key)?;
        let mut st = lock(&self.bucket.state);
        Ok(st.write_owned(key, Some(value), ttl, Instant::now()))
    }

    fn get_now(&self, key: &str) -> Result<Option<Bytes>, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| {
            Ok(st.latest(key, ttl, now).and_then(|r| r.value.clone()))
        })
    }

    fn update_now(&self, key: &str, update: &mut dyn FnMut(Option<&Bytes>) -> Bytes) -> Result<u64, KvError> {
        let ttl = self.bucket.spec.max_age;
        self.with_state(Some(key), |st, now| {
            let value = update(st.latest(key, ttl, now).and_then(|r| r.value.as_ref()));
            Ok(st.write(key, Some(value), ttl, now))
        })
    }
}

/// A message stored in a stream of the embedded transport, as [`MemoryTransport::stored`]
/// returns it.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    /// The stream that stored it.
    pub stream: String,
    /// Its sequence in that stream.
    pub sequence: u64,
    /// Its place among every message this transport stored, across streams (0 first): the order
    /// in which messages were published.
    pub order: u64,
    /// Its headers as stored.
    pub headers: Headers,
    /// Its envelope, rebuilt as a consumer would (identity read or derived).
    pub envelope: crate::envelope::Envelope,
}

/// What one durable consumer has not settled, as [`MemoryTransport::consumer_progress`] returns
/// it. Every list holds stream sequences, lowest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerProgress {
    /// The stream.
    pub stream: String,
    /// The durable.
    pub durable: String,
    /// Stored messages its filter matches that it has not been delivered yet.
    pub undelivered: Vec<u64>,
    /// Delivered and neither acknowledged, given back nor terminated: being handled.
    pub in_flight: Vec<u64>,
    /// Due for redelivery now (given back with a delay that has passed, or an ack wait that ran
    /// out).
    pub due: Vec<u64>,
    /// Given back (nak) with a delay that has not passed: waiting on a timer, with the time left.
    pub waiting: Vec<(u64, Duration)>,
}

impl ConsumerProgress {
    /// `true` if nothing is undelivered, in flight or due: at most messages waiting on a timer.
    pub fn is_quiet(&self) -> bool {
        self.undelivered.is_empty() && self.in_flight.is_empty() && self.due.is_empty()
    }
}

/// A request (a command) sent through the embedded transport and its outcome, recorded after
/// [`MemoryTransport::record_requests`].
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request, as its responder saw it.
    pub envelope: crate::envelope::Envelope,
    /// The reply's payload, or why there was none (no responders, timeout).
    pub reply: Result<Bytes, TransportError>,
}

/// Counts one request in flight while it lasts.
struct InFlightRequest<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> InFlightRequest<'a> {
    fn enter(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(count)
    }
}

impl Drop for InFlightRequest<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Envelope;
    use crate::headers::NATS_MSG_ID;

    #[test]
    fn pending_set_keeps_sequence_order_and_drops_its_holes() {
        let now = Instant::now();
        let pending = |delivered| Pending {
            delivered,
            redeliver_at: now,
            naked: false,
        };
        let mut set = PendingSet::default();
        for seq in [3, 5, 9, 10] {
            set.get_or_insert(seq, || pending(1));
        }
        // Out of order (not made by a consumer, but kept right).
        set.get_or_insert(4, || pending(1));
        assert_eq!(
            set.get_or_insert(5, || pending(7)).delivered,
            1,
            "an existing entry is kept"
        );
        assert_eq!(set.iter().map(|(s, _)| s).collect::<Vec<_>>(), [3, 4, 5, 9, 10]);
        assert!(set.remove(5).is_some());
        assert!(set.remove(5).is_none());
        assert!(set.get_mut(5).is_none());
        set.get_mut(9).unwrap().delivered = 2;
        assert_eq!(set.len(), 4);
        set.retain(|seq, _| seq != 3);
        assert_eq!(
            set.iter().map(|(s, p)| (s, p.delivered)).collect::<Vec<_>>(),
            [(4, 1), (9, 2), (10, 1)]
        );
        for seq in [4, 9, 10] {
            set.remove(seq);
        }
        assert!(set.is_empty());
        assert!(set.entries.is_empty(), "no holes left behind");
        // One long-pending delivery: the holes of the many settled after it are dropped.
        for seq in 1..=10_000 {
            set.get_or_insert(seq, || pending(1));
        }
        for seq in 2..10_000 {
            set.remove(seq);
        }
        assert_eq!(set.len(), 2);
        assert!(set.entries.len() <= 2 * 2 + 64 + 1, "{}", set.entries.len());
        assert_eq!(set.iter().map(|(s, _)| s).collect::<Vec<_>>(), [1, 10_000]);
        set.get_or_insert(10_001, || pending(1));
        assert!(set.get_mut(10_000).is_some() && set.get_mut(1).is_some());
    }

    /// A durable of a name never used on the stream counts every delivery of every message: it
    /// reports the earliest time. One made again after its name was deleted reports its
    /// creation (the earlier one may have handled what was stored before), and so does another
    /// handle on it.
    #[tokio::test]
    async fn a_new_durable_name_counts_every_delivery_a_reused_one_does_not() {
        let t = document_stream().await;
        t.publish_and_wait(Envelope::root(crate::subject!("document.created"), &b"{}"[..]).into())
            .await
            .unwrap();
        let spec = ConsumerSpec::new("DOCUMENT_EVENTS", "index", crate::subject_pattern!("document.created"));
        let first = t.consumer(&spec).await.unwrap();
        assert_eq!(first.created(), Some(Timestamp::UNIX_EPOCH));
        t.delete_consumer("DOCUMENT_EVENTS", "index").await.unwrap();
        let before = Timestamp::now();
        let again = t.consumer(&spec).await.unwrap();
        let created = again.created().unwrap();
        assert!(created >= before, "{created:?}");
        assert_eq!(t.consumer(&spec).await.unwrap().created(), Some(created));
        let other = ConsumerSpec::new("DOCUMENT_EVENTS", "audit", crate::subject_pattern!("document.created"));
        assert_eq!(t.consumer(&other).await.unwrap().created(), Some(Timestamp::UNIX_EPOCH));
    }

    /// A transport with the `document` domain's stream.
    async fn document_stream() -> MemoryTransport {
        let t = MemoryTransport::new();
        t.ensure_stream(&StreamSpec::for_domain("document", None).unwrap())
            .await
            .unwrap();
        t
    }

    /// A delivery tells when it was handed over, by tokio's clock (the handler's run is timed
    /// from it), whether taken at once or after a wait; one rebuilt from its parts does not.
    #[tokio::test(start_paused = true)]
    async fn a_delivery_tells_when_it_was_handed_over() {
        let t = document_stream().await;
        let publish = || t.publish_and_wait(Envelope::root(crate::subject!("document.created"), &b"{}"[..]).into());
        publish().await.unwrap();
        let spec = ConsumerSpec::new("DOCUMENT_EVENTS", "index", crate::subject_pattern!("document.created"));
        let mut c = t.consumer(&spec).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let at_once = c.try_next().unwrap().unwrap();
        assert_eq!(at_once.taken(), Some(Instant::now()));
        let waiting = tokio::spawn(async move { c.next().await.unwrap() });
        tokio::time::advance(Duration::from_secs(2)).await;
        publish().await.unwrap();
        let waited = waiting.await.unwrap();
        assert_eq!(waited.taken(), Some(Instant::now()));
        assert_eq!(
            waited.taken().unwrap() - at_once.taken().unwrap(),
            Duration::from_secs(2)
        );
        let (subject, headers, payload, info, acker) = waited.into_parts();
        assert_eq!(Delivery::new(subject, headers, payload, info, acker).taken(), None);
    }

    /// The transports that wrap the embedded one (a prefix, the runtime choice) hand its
    /// deliveries on with the time they were taken.
    #[tokio::test(start_paused = true)]
    async fn wrapping_transports_keep_when_a_delivery_was_handed_over() {
        let spec = ConsumerSpec::new("DOCUMENT_EVENTS", "index", crate::subject_pattern!("document.created"));
        let prefixed = crate::transport::Prefixed::new(MemoryTransport::new(), Some(crate::subject!("prod")));
        prefixed
            .ensure_stream(&StreamSpec::for_domain("document", None).unwrap())
            .await
            .unwrap();
        let mut c = prefixed.consumer(&spec).await.unwrap();
        let env = Envelope::root(crate::subject!("document.created"), &b"{}"[..]);
        prefixed.publish_and_wait(env.into()).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = c.next().await.unwrap();
        assert_eq!((d.subject(), d.taken()), ("document.created", Some(Instant::now())));
        let any = crate::transport::any::AnyTransport::from(document_stream().await);
        let mut c = any.consumer(&spec).await.unwrap();
        let env = Envelope::root(crate::subject!("document.created"), &b"{}"[..]);
        any.publish_and_wait(env.into()).await.unwrap();
        tokio::time::advance(Duration::from_secs(1)).await;
        let d = c.try_next().unwrap().unwrap();
        assert_eq!(d.taken(), Some(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn consumer_progress_tells_undelivered_in_flight_waiting_and_due() {
        let t = document_stream().await;
        let spec = ConsumerSpec::new("DOCUMENT_EVENTS", "index", crate::subject_pattern!("document.created"));
        let mut c = t.consumer(&spec).await.unwrap();
        for subject in [crate::subject!("document.created"), crate::subject!("document.deleted")] {
            t.publish_and_wait(Envelope::root(subject, &b"{}"[..]).into())
                .await
                .unwrap();
        }
        t.publish_and_wait(Envelope::root(crate::subject!("document.created"), &b"{}"[..]).into())
            .await
            .unwrap();
        let progress = || t.consumer_progress("DOCUMENT_EVENTS", "index").unwrap();
        // Only what the filter matches is waiting for the consumer.
        assert_eq!(progress().undelivered, [1, 3]);
        assert!(!progress().is_quiet());
        let first = c.next().await.unwrap();
        assert_eq!((progress().undelivered, progress().in_flight), (vec![3], vec![1]));
        first.nak(Some(Duration::from_secs(5))).await.unwrap();
        assert_eq!(progress().waiting, [(1, Duration::from_secs(5))]);
        assert!(progress().in_flight.is_empty());
        let third = c.next().await.unwrap();
        third.ack().await.unwrap();
        assert!(progress().is_quiet(), "{:?}", progress());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!((progress().due, progress().waiting), (vec![1], vec![]));
        let again = c.next().await.unwrap();
        assert_eq!(
            progress().in_flight,
            [1],
            "a redelivery is in flight again, not waiting"
        );
        again.ack().await.unwrap();
        assert!(progress().is_quiet());
        assert!(t.consumer_progress("DOCUMENT_EVENTS", "nobody").is_none());
        let stored = t.stored("DOCUMENT_EVENTS");
        assert_eq!(stored.iter().map(|m| m.order).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(stored[1].envelope.subject().as_str(), "document.deleted");
    }

    #[tokio::test(start_paused = true)]
    async fn requests_are_counted_in_flight_and_recorded_with_their_answers() {
        let t = MemoryTransport::new();
        t.record_requests();
        let mut responder = t
            .serve(&crate::subject_pattern!("commands.doc.create"), "q")
            .await
            .unwrap();
        let request = |t: MemoryTransport| async move {
            let env = Envelope::root(crate::subject!("commands.doc.create"), &b"{}"[..]);
            t.request(Request::from(&env), Duration::from_secs(1)).await
        };
        let pending = tokio::spawn(request(t.clone()));
        let incoming = responder.next().await.unwrap();
        assert_eq!(t.requests_in_flight(), 1);
        incoming
            .respond(Reply {
                headers: Headers::new(),
                payload: Bytes::from_static(b"ok"),
            })
            .await
            .unwrap();
        pending.await.unwrap().unwrap();
        assert_eq!(t.requests_in_flight(), 0);
        drop(responder);
        let none = request(t.clone()).await;
        assert!(matches!(none, Err(TransportError::NoResponders { .. })), "{none:?}");
        let log = t.recorded_requests();
        assert_eq!(log.len(), 2);
        assert_eq!(log[0].reply.as_deref().ok(), Some(&b"ok"[..]));
        assert!(log[1].reply.is_err());
        assert_eq!(t.requests_in_flight(), 0);
    }

    #[tokio::test]
    async fn envelope_and_text_ids_share_the_duplicate_window() {
        let t = document_stream().await;
        let env = Envelope::root(crate::subject!("document.created"), &b"{}"[..]);
        let first = t.publish_and_wait(env.clone().into()).await.unwrap();
        let copy = |id: String| {
            let mut headers = Headers::new();
            headers.insert(NATS_MSG_ID, id).unwrap();
            OutboundMessage {
                subject: env.subject().clone(),
                headers,
                payload: Bytes::from_static(b"{}"),
            }
        };
        let again = t.publish_and_wait(copy(env.message_id().to_string())).await.unwrap();
        assert!(again.duplicate);
        assert_eq!(again.sequence, first.sequence);
        // Other text is another id, as on a server (which compares the strings).
        let upper = t
            .publish_and_wait(copy(env.message_id().to_string().to_uppercase()))
            .await
            .unwrap();
        assert!(!upper.duplicate);
        let text = t.publish_and_wait(copy("order-42".into())).await.unwrap();
        let text_again = t.publish_and_wait(copy("order-42".into())).await.unwrap();
        assert!(!text.duplicate && text_again.duplicate);
        assert_eq!(t.stream_len("DOCUMENT_EVENTS"), Some(3));
    }
}
