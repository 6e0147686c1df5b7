//! Handler de-duplication: a (handler, message id) mark per successful run.
//!
//! The dispatcher writes the mark after the handler succeeded, before the message is
//! acknowledged, and checks it before running the handler whenever the handler may have seen the
//! message before. A redelivery of a message whose mark exists is acknowledged without running
//! the handler.
//!
//! **Which deliveries are checked** ([`DedupCheck`], per service). By default
//! ([`DedupCheck::MaybeSeen`]) the check is skipped on a message's first delivery to a durable
//! that existed when the message was stored, if the consumer has pulled without trouble since
//! before it was stored: the server counts deliveries across every process on the durable, so
//! nobody can have handled it before, and the key-value read (a round trip and work on the
//! server) would only say "not seen". Checked are: redeliveries; messages stored before the
//! durable was created, or less than the clock margin after (a new durable of an old name starts
//! its delivery counts over, and an earlier one may have handled them); messages stored before
//! the consumer handle was opened or last resumed, or less than the margin after
//! ([`DeliveryInfo::resumed`](crate::transport::DeliveryInfo::resumed): a server that lost the
//! count of a delivery, a consumer leader that died or stepped down before replicating it, hands
//! the message out again as a first delivery); copies of a message id in flight beside each
//! other; and every delivery from a transport that cannot say when its durable was created. Not recognised by default: a copy of a message id that was
//! *stored again* as a new stream message (another `Nats-Msg-Id`, or the same one after the
//! stream's duplicate window, two minutes by default) and delivered on its own: it runs again.
//! [`DedupCheck::Always`] checks every delivery and recognises it.
//!
//! **The one window.** If the process dies after the handler succeeded and before the mark is
//! stored, the message is redelivered and the handler runs a second time. Events the handler
//! published through its [`Context`](crate::handler::Context) are *not* duplicated by that second
//! run: their message ids are derived from the incoming message id, the handler and the publish's
//! position, so JetStream's duplicate window drops the re-publish. Other side effects (a database
//! row, an e-mail) must be made idempotent by the user, keyed by
//! [`Context::message_id`](crate::handler::Context::message_id), or written in the same
//! transaction as the user's own mark.
//!
//! **What a mark names.** Under [`DedupCheck::MaybeSeen`] a mark names the *stream message*
//! ([`StreamMessage`]: its stream, sequence and stored time; [`DedupStore::mark_delivery`]): the
//! check only has to recognise the same stream message delivered again (a redelivery, or a
//! message an earlier durable of the same name handled), and the default [`KvDedup`] keeps such
//! marks 64 sequences to a key, writing the marks that finish while a write is in flight
//! together in the next write (group commit). Each message's acknowledgement still waits for the
//! write holding its mark. A redriven dead letter (stored again, with `X-Redrive-Count`) is marked
//! by its message id, so that a later copy of the same redrive finds it, and by its original's
//! block (`X-Redrive-Stream`, `-Sequence`, `-Stored`). A first delivery reads its block only;
//! a redelivery also reads the message-id key. Every run that marks a stream message by its id
//! also marks its block (a redriven copy its original's, a run under [`DedupCheck::Always`] its
//! own), so the block read of a first delivery misses no run. Under
//! [`DedupCheck::Always`] a mark names the message id
//! ([`DedupStore::mark`]), so that a copy stored again as a new stream message is recognised too.
//! Two copies of one id handled beside each other in one process are single-flighted in both
//! modes: the second is a duplicate if the first succeeded, and its own mark is written before it
//! is acknowledged.
//!
//! Marks expire after a TTL (the key-value bucket's max age), so the store stays bounded; a
//! redelivery after the TTL would run the handler again, so keep the TTL well above the longest
//! redelivery horizon (ack wait x max deliveries, plus downtime).
//!
//! **Attempts.** The same store keeps the count of a handler's runs of a stream message beyond
//! the first ([`DedupStore::attempt_started`], written before such a run; [`KvDedup`] under
//! `{handler}.a.{stream}.{sequence}`), so that the dispatcher counts attempts by runs rather than
//! by the server's delivery count alone, which nats-server 2.9 can raise with deliveries that
//! reached nobody.
//!
//! Checks and marks are independent per message, so with handler concurrency above one they run
//! concurrently and pipeline on the wire instead of costing one round trip per message in series.

use crate::fast_hash::FastMap;
use crate::id::MessageId;
use crate::id_window::IdWindow;
use crate::transport::{KeyValue, KvError};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;
use tokio::time::Instant;

/// When a handler reads its de-duplication mark before running
/// ([`ServiceBuilder::dedup_check`](crate::service::ServiceBuilder::dedup_check)).
///
/// Marks are written after every successful run, before the acknowledgement, in both modes; the
/// modes differ only in which deliveries read them first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupCheck {
    /// Read the mark only when the handler may have seen the message before: a redelivery, a
    /// message stored before the durable was created or before the consumer last began or
    /// resumed pulling (or within [`CLOCK_MARGIN`] after either;
    /// [`DeliveryInfo::resumed`](crate::transport::DeliveryInfo::resumed)), a copy of a message
    /// id that is in flight beside another, or a transport that cannot say when the durable was
    /// created. A first delivery of a message stored after both skips the read (one key-value
    /// round trip less per message): what a running service receives undisturbed; the backlog
    /// it finds when it starts is read. Not recognised: a copy of a message id
    /// *stored again* as a new stream message (another `Nats-Msg-Id`, or after the stream's
    /// duplicate window) and delivered on its own.
    #[default]
    MaybeSeen,
    /// Read the mark before every run: a handler runs once per message id, also for copies
    /// stored again as new stream messages (a foreign publisher repeating an id after the
    /// duplicate window, an operator replaying an archive).
    Always,
}

/// How far the clocks of a cluster's servers and its clients may disagree, by default: under
/// [`DedupCheck::MaybeSeen`], a message stored less than this after the durable's creation, or
/// after the consumer last resumed pulling, is checked as if stored before it ([`ServiceBuilder::dedup_clock_margin`](crate::service::ServiceBuilder::dedup_clock_margin)).
pub const CLOCK_MARGIN: Duration = Duration::from_secs(5);

/// The default TTL of de-duplication marks: 24 hours.
pub const DEFAULT_DEDUP_TTL: Duration = Duration::from_secs(24 * 3600);

/// Why a de-duplication check or mark failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("dedup store: {0}")]
pub struct DedupError(pub String);

impl From<KvError> for DedupError {
    fn from(e: KvError) -> Self {
        Self(e.to_string())
    }
}

/// Where (handler, message id) marks are kept.
pub trait DedupStore: Send + Sync + 'static {
    /// `true` if `handler` already handled `id` successfully.
    fn seen<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<bool, DedupError>>;
    /// Records that `handler` handled `id` successfully.
    fn mark<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<(), DedupError>>;

    /// `true` if [`mark_delivery`](Self::mark_delivery) marks the stream message itself (its
    /// stream, sequence and stored time), not its message id. The dispatcher then writes such a
    /// mark beside each mark by id it writes for a stream message (the original of a redriven
    /// copy, a run under [`DedupCheck::Always`]), so that a check of that stream message's first
    /// delivery, which may read its stream-message mark only, finds the run. `false` (the
    /// default): `mark_delivery` marks the id, which the mark by id has done already.
    fn marks_stream_messages(&self) -> bool {
        false
    }

    /// [`seen`](Self::seen), answered at once by a store that never waits (in memory), sparing
    /// the dispatcher a boxed future per message. `None` (the default): use `seen`.
    fn seen_now(&self, _handler: &str, _id: MessageId) -> Option<Result<bool, DedupError>> {
        None
    }

    /// [`mark`](Self::mark), done at once by a store that never waits. `None` (the default): use
    /// `mark`.
    fn mark_now(&self, _handler: &str, _id: MessageId) -> Option<Result<(), DedupError>> {
        None
    }

    /// `true` if `handler` already handled this stream message (under
    /// [`DedupCheck::MaybeSeen`], where a handler's marks only need to recognise the same stream
    /// message delivered again). The default asks [`seen`](Self::seen) for its message id.
    fn seen_delivery<'a>(
        &'a self,
        handler: &'a str,
        delivery: &StreamMessage,
    ) -> BoxFuture<'a, Result<bool, DedupError>> {
        self.seen(handler, delivery.id)
    }

    /// [`seen_delivery`](Self::seen_delivery), answered at once by a store that never waits.
    /// The default asks [`seen_now`](Self::seen_now) for its message id.
    fn seen_delivery_now(&self, handler: &str, delivery: &StreamMessage) -> Option<Result<bool, DedupError>> {
        self.seen_now(handler, delivery.id)
    }

    /// [`mark_delivery`](Self::mark_delivery), done at once by a store that never waits. The
    /// default [`mark_now`](Self::mark_now)s its message id.
    fn mark_delivery_now(&self, handler: &str, delivery: &StreamMessage) -> Option<Result<(), DedupError>> {
        self.mark_now(handler, delivery.id)
    }

    /// Records that `handler` handled this stream message (under [`DedupCheck::MaybeSeen`]).
    /// The default [`mark`](Self::mark)s its message id.
    fn mark_delivery<'a>(
        &'a self,
        handler: &'a str,
        delivery: &StreamMessage,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        self.mark(handler, delivery.id)
    }

    /// The last attempt of `handler` at this stream message that
    /// [`attempt_started`](Self::attempt_started) recorded (`Some(0)`: none yet), read before a
    /// redelivery runs: the dispatcher counts attempts from these records rather than from the
    /// server's delivery count alone, which a pull request left behind by a closed consumer
    /// can raise by deliveries that reached nobody (see [`attempt_started`](Self::attempt_started)).
    /// `None` (the default): this store keeps no such records, and the delivery count is the
    /// attempt count. A store that loses its records on restart (in memory) keeps none.
    fn attempts_started<'a>(
        &'a self,
        _handler: &'a str,
        _delivery: &'a StreamMessage,
    ) -> BoxFuture<'a, Result<Option<u64>, DedupError>> {
        Box::pin(std::future::ready(Ok(None)))
    }

    /// Records that attempt `attempt` (2 or more: first attempts are not recorded) of `handler`
    /// at this stream message starts, before the handler runs, so that a process that dies
    /// during the run leaves its attempt counted. Called only on stores whose
    /// [`attempts_started`](Self::attempts_started) keeps records. Why: nats-server 2.9 hands
    /// a message arriving at a durable whose pull request outlived its subscriber (a host on a
    /// leaf node addressing the hub's JetStream domain, restarting) to that request over and
    /// over, up to the request's batch, each time counted as a delivery that reached nobody; by
    /// the delivery count alone the next host would dead-letter it unattempted.
    fn attempt_started<'a>(
        &'a self,
        _handler: &'a str,
        _delivery: &'a StreamMessage,
        _attempt: u64,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One message of a stream, as a de-duplication mark under [`DedupCheck::MaybeSeen`] names it:
/// its message id, and where and when the stream stored it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamMessage {
    /// The message id.
    pub id: MessageId,
    /// The stream.
    pub stream: std::sync::Arc<str>,
    /// Its sequence in the stream.
    pub sequence: u64,
    /// When the stream stored it (tells a message from one stored under the same sequence by a
    /// stream deleted and created again).
    pub stored: crate::timestamp::Timestamp,
    /// How many times it has been delivered to this durable, this time included. A check of a
    /// first delivery (a durable catching up on messages stored before it) may answer from a
    /// block read earlier, made at or after [`resumed`](Self::resumed): nobody on this durable
    /// can have marked the message since.
    pub delivered: u64,
    /// When the consumer last began or resumed pulling ([`DeliveryInfo::resumed`](crate::transport::DeliveryInfo::resumed)):
    /// a first delivery may be a repeat of one made before it, whose mark a read made before
    /// it would not show. `None`: the transport never loses delivery counts.
    pub resumed: Option<crate::timestamp::Timestamp>,
}

impl StreamMessage {
    /// The stream message with id `id` that `info` describes.
    pub fn of(id: MessageId, info: &crate::transport::DeliveryInfo) -> Self {
        Self {
            id,
            stream: info.stream.clone(),
            sequence: info.stream_sequence,
            stored: info.published,
            delivered: info.delivered,
            resumed: info.resumed,
        }
    }
}

/// Marks in process memory, with a TTL. Lost on restart: for tests and single-process use.
///
/// One short lock per check and per mark; a handler's marks are found by comparing names (a
/// service has a handful of handlers). Marks are kept in the order made, expired oldest first;
/// ids that increase (UUID v7 from one publisher) are found and added with no hashing, others
/// through a map with a fast seeded hash.
#[derive(Debug)]
pub struct MemoryDedup {
    ttl: Duration,
    /// (handler, message id -> when marked)
    marks: Mutex<Vec<(Box<str>, Marks)>>,
}

/// One handler's marks: message ids with when each was marked.
type Marks = IdWindow<MessageId, ()>;

impl MemoryDedup {
    /// A store whose marks expire after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            marks: Mutex::new(Vec::new()),
        }
    }
}

impl Default for MemoryDedup {
    fn default() -> Self {
        Self::new(DEFAULT_DEDUP_TTL)
    }
}

impl MemoryDedup {
    fn check(&self, handler: &str, id: MessageId) -> bool {
        let marked = {
            let marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
            marks
                .iter()
                .find(|(h, _)| **h == *handler)
                .and_then(|(_, m)| m.get(&id).map(|(at, ())| at))
        };
        // The clock is read only for a mark found (most checks find none).
        marked.is_some_and(|at| crate::clock::later(at, self.ttl) > Instant::now())
    }

    fn record(&self, handler: &str, id: MessageId) {
        let now = Instant::now();
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let i = match marks.iter().position(|(h, _)| **h == *handler) {
            Some(i) => i,
            None => {
                marks.push((handler.into(), Marks::default()));
                marks.len() - 1
            }
        };
        let handler_marks = &mut marks[i].1;
        handler_marks.expire(now, self.ttl);
        handler_marks.insert(id, now, ());
    }
}

impl DedupStore for MemoryDedup {
    fn seen<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<bool, DedupError>> {
        Box::pin(std::future::ready(Ok(self.check(handler, id))))
    }

    fn mark<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<(), DedupError>> {
        self.record(handler, id);
        Box::pin(std::future::ready(Ok(())))
    }

    fn seen_now(&self, handler: &str, id: MessageId) -> Option<Result<bool, DedupError>> {
        Some(Ok(self.check(handler, id)))
    }

    fn mark_now(&self, handler: &str, id: MessageId) -> Option<Result<(), DedupError>> {
        self.record(handler, id);
        Some(Ok(()))
    }
}

/// Marks in a key-value bucket, on either transport. The bucket's `max_age` is the TTL. Survives
/// restarts on NATS.
///
/// Two kinds of key:
/// - **Blocks of stream sequences** (what [`DedupStore::mark_delivery`] writes, the default
///   [`DedupCheck::MaybeSeen`]): `{handler}.s.{stream}.{sequence / 64}` holds the handled
///   messages of 64 consecutive stream sequences, each with the time the stream stored it (so a
///   message of a stream deleted and created again under a reused sequence is never taken for a
///   handled one). Marks of one block that are written while a write of that block is in flight
///   wait and go together in the next write (group commit): a busy handler writes one key-value
///   entry per round trip per block instead of one per message, and each message's
///   acknowledgement still waits for the write that holds its mark. Writes are compare-and-set on
///   the block's revision; a write that lost to another process (two instances handling
///   neighbouring messages) reads the block, merges and writes again, so no mark is lost.
/// - **Message ids** (what [`DedupStore::mark`] writes, [`DedupCheck::Always`]):
///   `{handler}.{message id}` -> empty. A check of a redelivery that finds no block mark also
///   reads this key (marks under `Always`, and marks written before block marks).
///
/// A check of a first delivery (a durable catching up on messages stored before it was created)
/// reads each block once and answers its other first deliveries from that read (only an earlier
/// durable of the same name can have marked them, and it is gone), and reads no message-id key:
/// the service marks the block of every stream message it marks by id (see the
/// [module](self)); redeliveries always read the bucket, both keys.
///
/// On a bucket that answers at once (the embedded transport's, [`KeyValue::at_once`]) marks
/// are read and written in place, a block updated in one step with no future and no group
/// commit; the entries are the same.
///
/// A stream whose name is not a valid key token is marked by message id.
#[derive(Debug)]
pub struct KvDedup<K> {
    kv: K,
    blocks: Mutex<FastMap<String, Arc<Block>>>,
    /// How long a read of a block answers first deliveries ([`READ_TRUSTED`]).
    trusted: Duration,
}

impl<K: KeyValue> Clone for KvDedup<K> {
    /// The same bucket; the blocks in flight here are not shared (a clone's writes of a block
    /// merge like another process's).
    fn clone(&self) -> Self {
        Self {
            trusted: self.trusted,
            ..Self::new(self.kv.clone())
        }
    }
}

/// Stream sequences per block key.
pub(crate) const BLOCK: u64 = 64;
/// How long a read of a block answers the block's first deliveries. On this durable nobody can
/// mark them after the read (the server counts its deliveries), but a handler's redrive consumer
/// (another durable, perhaps in another process) marks a redriven copy's original: bounding the
/// read's age bounds how long such a mark can go unseen to about a handler run's length, the
/// window two copies of one id in two processes have anyway. A service catching up goes through
/// a block in milliseconds, so the bound costs it next to nothing.
const READ_TRUSTED: Duration = Duration::from_secs(1);
/// Idle blocks kept in memory (their revision spares a read on the next write).
const BLOCKS_KEPT: usize = 64;

/// One block's marks in this process, and its write in flight.
#[derive(Debug, Default)]
struct Block {
    state: Mutex<BlockState>,
    written: Notify,
    /// Notified when a read of the block's marks ends (see [`BlockState::reading`]).
    read: Notify,
}

#[derive(Debug, Default)]
struct BlockState {
    /// offset in the block -> stored time (unix nanos), committed or waiting for a write.
    marks: std::collections::BTreeMap<u8, i64>,
    /// Marks added so far (a mark's number: this count when it was added).
    added: u64,
    /// Marks that are stored: every mark numbered up to this.
    stored: u64,
    /// The block entry's revision as last written or read here.
    revision: Option<u64>,
    /// Whether a task is writing the block.
    writing: bool,
    /// When the block's marks in the bucket were last read into `marks` (for checks of first
    /// deliveries; a read before a delivery's `resumed` does not answer for it).
    read_at: Option<crate::timestamp::Timestamp>,
    /// A read of the block's marks on its way, stamped when it was sent: the first deliveries
    /// of the block that it answers wait for it instead of reading again (a service catching
    /// up has many of one block in flight at once).
    reading: Option<crate::timestamp::Timestamp>,
}

/// A read of a block's marks on its way ([`BlockState::reading`]); when it ends (answered,
/// failed, or given up with its future), those waiting for it are woken.
struct Reading<'a> {
    block: &'a Block,
    at: crate::timestamp::Timestamp,
}

impl Drop for Reading<'_> {
    fn drop(&mut self) {
        {
            let mut st = self.block.state.lock().unwrap_or_else(|e| e.into_inner());
            if st.reading == Some(self.at) {
                st.reading = None;
            }
        }
        self.block.read.notify_waiters();
    }
}

impl BlockState {
    /// The marks as the entry's value: per mark its offset (1 byte) and stored time (8 bytes,
    /// little endian), in offset order.
    fn encode(&self) -> Bytes {
        let mut v = Vec::with_capacity(self.marks.len() * 9);
        for (offset, nanos) in &self.marks {
            push_mark(&mut v, *offset, *nanos);
        }
        Bytes::from(v)
    }
}

/// One mark as a block entry stores it: its offset (1 byte), its stored time (8 bytes, little
/// endian).
fn push_mark(v: &mut Vec<u8>, offset: u8, nanos: i64) {
    v.push(offset);
    v.extend_from_slice(&nanos.to_le_bytes());
}

/// The marks of a block entry's value; `None` if it is not one (never written by this crate).
pub(crate) fn decode_block(value: &[u8]) -> Option<Vec<(u8, i64)>> {
    if !value.len().is_multiple_of(9) {
        return None;
    }
    value
        .chunks_exact(9)
        .map(|c| {
            let offset = c[0];
            let nanos = i64::from_le_bytes(c[1..9].try_into().ok()?);
            (u64::from(offset) < BLOCK).then_some((offset, nanos))
        })
        .collect()
}

/// Whether a block entry's value holds the mark (`offset`, `nanos`), read in place.
pub(crate) fn block_holds(value: &[u8], offset: u8, nanos: i64) -> bool {
    value.len().is_multiple_of(9)
        && value
            .chunks_exact(9)
            .any(|c| c[0] == offset && c[1..9] == nanos.to_le_bytes())
}

/// A block entry's value with the mark (`offset`, `nanos`) added in offset order (replacing one
/// at the same offset); a value that is not a block's starts over. Copied in at most two runs:
/// marks mostly come in offset order, so most go at the end.
pub(crate) fn with_mark(current: Option<&[u8]>, offset: u8, nanos: i64) -> Bytes {
    let current = current.filter(|v| v.len().is_multiple_of(9)).unwrap_or_default();
    let after_last = current.len() < 9 || current[current.len() - 9] < offset;
    // Where the mark goes: before the first mark at or after its offset.
    let at = if after_last {
        current.len()
    } else {
        current
            .chunks_exact(9)
            .position(|c| c[0] >= offset)
            .map_or(current.len(), |i| i * 9)
    };
    let rest = if current.get(at) == Some(&offset) { at + 9 } else { at };
    let mut v = Vec::with_capacity(current.len() + 9);
    v.extend_from_slice(&current[..at]);
    push_mark(&mut v, offset, nanos);
    v.extend_from_slice(&current[rest..]);
    Bytes::from(v)
}

/// Runs `f` on `parts` joined, on the stack when they fit in 160 bytes (a key built for one
/// call needs no allocation), else in a `String`.
pub(crate) fn joined<R>(parts: &[&str], f: impl FnOnce(&str) -> R) -> R {
    let mut buf = [0u8; 160];
    let mut len = 0;
    for part in parts {
        let Some(slot) = buf.get_mut(len..len + part.len()) else {
            return f(&parts.concat());
        };
        slot.copy_from_slice(part.as_bytes());
        len += part.len();
    }
    // Whole `str`s were copied, so the bytes are UTF-8.
    match std::str::from_utf8(&buf[..len]) {
        Ok(joined) => f(joined),
        Err(_) => f(&parts.concat()),
    }
}

/// The bytes a key token may hold (letters, digits, `-`, `_`, `=`), as a table: the stream's
/// name is checked at every mark.
const KEY_TOKEN_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut i = 0;
    while i < 256 {
        let b = i as u8;
        table[i] = b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'=';
        i += 1;
    }
    table
};

/// Whether `s` can be one token of a key.
fn key_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| KEY_TOKEN_BYTES[usize::from(b)])
}

impl<K: KeyValue> KvDedup<K> {
    /// Marks in `kv`; create it with [`KvSpec::max_age`](crate::transport::KvSpec::max_age) as the TTL.
    pub fn new(kv: K) -> Self {
        Self {
            kv,
            blocks: Mutex::new(FastMap::default()),
            trusted: READ_TRUSTED,
        }
    }

    /// The same store, a block read answering first deliveries for `trusted` (tests).
    #[cfg(test)]
    fn trusting_reads_for(self, trusted: Duration) -> Self {
        Self { trusted, ..self }
    }

    /// `{handler}.{id}`, built in one allocation without the formatting machinery.
    fn key(handler: &str, id: MessageId) -> String {
        Self::with_key(handler, id, str::to_owned)
    }

    /// Runs `f` on the key of [`key`](Self::key), built on the stack when it fits (a read needs
    /// no key of its own).
    fn with_key<R>(handler: &str, id: MessageId, f: impl FnOnce(&str) -> R) -> R {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = id.as_uuid().hyphenated().encode_lower(&mut buf);
        joined(&[handler, ".", id], f)
    }

    /// `{handler}.s.{stream}.{block}` and the message's offset in it, or `None` if the stream's
    /// name cannot be a key token.
    fn block_key(handler: &str, m: &StreamMessage) -> Option<(String, u8)> {
        Self::with_block_key(handler, m, |key, offset| (key.to_owned(), offset))
    }

    /// Runs `f` on [`block_key`](Self::block_key)'s key, built on the stack when it fits, and
    /// the offset; `None` if the stream's name cannot be a key token.
    fn with_block_key<R>(handler: &str, m: &StreamMessage, f: impl FnOnce(&str, u8) -> R) -> Option<R> {
        if !key_token(&m.stream) {
            return None;
        }
        let offset = u8::try_from(m.sequence % BLOCK).ok()?;
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(m.sequence / BLOCK);
        Some(joined(&[handler, ".s.", &m.stream, ".", digits], |key| f(key, offset)))
    }

    /// Runs `f` on `{handler}.a.{stream}.{sequence}`, the key of the attempts started at one
    /// stream message ([`DedupStore::attempt_started`]); `None` if the stream's name cannot be a
    /// key token.
    fn with_attempts_key<R>(handler: &str, m: &StreamMessage, f: impl FnOnce(&str) -> R) -> Option<R> {
        if !key_token(&m.stream) {
            return None;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(m.sequence);
        Some(joined(&[handler, ".a.", &m.stream, ".", digits], f))
    }

    /// The block's state in this process (kept for the next marks).
    fn block(&self, key: &str) -> Arc<Block> {
        let mut blocks = self.blocks.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = blocks.get(key) {
            return b.clone();
        }
        if blocks.len() >= BLOCKS_KEPT {
            // Forget idle blocks: nobody holds them and nothing waits for a write.
            blocks.retain(|_, b| Arc::strong_count(b) > 1);
        }
        blocks.entry(key.to_owned()).or_default().clone()
    }

    /// Whether this process stored the mark (in a write of the block that succeeded).
    fn stored_here(&self, key: &str, offset: u8, nanos: i64) -> bool {
        let Some(block) = self.blocks.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned() else {
            return false;
        };
        let st = block.state.lock().unwrap_or_else(|e| e.into_inner());
        // Every mark is stored, or none waits (a failed write leaves marks unstored).
        st.stored == st.added && st.revision.is_some() && st.marks.get(&offset) == Some(&nanos)
    }

    /// Whether the block holds the mark, reading the block from the bucket only if it was not
    /// read at or after `resumed` (see [`StreamMessage::resumed`]) and within [`READ_TRUSTED`].
    async fn read_once(
        &self,
        key: &str,
        offset: u8,
        nanos: i64,
        resumed: Option<crate::timestamp::Timestamp>,
    ) -> Result<bool, DedupError> {
        let block = self.block(key);
        let now = crate::timestamp::Timestamp::now();
        let trusted = i128::try_from(self.trusted.as_nanos()).unwrap_or(i128::MAX);
        let answers = |at: Option<crate::timestamp::Timestamp>| {
            at.is_some_and(|at| resumed.is_none_or(|r| at >= r) && now.unix_nanos() - at.unix_nanos() <= trusted)
        };
        let at = loop {
            let done = block.read.notified();
            {
                let mut st = block.state.lock().unwrap_or_else(|e| e.into_inner());
                if answers(st.read_at) {
                    return Ok(st.marks.get(&offset) == Some(&nanos));
                }
                if !answers(st.reading) {
                    // Stamped before the read: it shows every mark stored before this time.
                    let at = now;
                    st.reading = st.reading.max(Some(at));
                    break at;
                }
            }
            // A read that answers for this delivery is on its way: its result, or (if it
            // failed or was given up) a read of this delivery's own.
            done.await;
        };
        let reading = Reading { block: &block, at };
        let entry = self.kv.get(key).await?;
        let mut st = block.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(theirs) = entry.as_ref().and_then(|e| decode_block(&e.value)) {
            // Stored marks: merged into this process's (its next write keeps them).
            for (o, n) in theirs {
                st.marks.entry(o).or_insert(n);
            }
        }
        st.read_at = st.read_at.max(Some(at));
        let found = st.marks.get(&offset) == Some(&nanos);
        drop(st);
        drop(reading);
        Ok(found)
    }

    /// Writes the block's marks, merging those another process wrote when a compare-and-set
    /// loses; returns once the write holding mark number `mine` is stored.
    async fn commit(&self, key: &str, block: &Block, mine: u64) -> Result<(), DedupError> {
        loop {
            let written = block.written.notified();
            let turn = {
                let mut st = block.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.stored >= mine {
                    return Ok(());
                }
                if st.writing {
                    None
                } else {
                    st.writing = true;
                    Some((st.encode(), st.added, st.revision))
                }
            };
            let Some((value, upto, revision)) = turn else {
                // Another task writes the block: its write or the next holds this mark.
                written.await;
                continue;
            };
            let result = match revision {
                Some(r) => self.kv.update(key, value, r).await,
                None => self.kv.create(key, value).await,
            };
            let lost = matches!(result, Err(KvError::Conflict { .. } | KvError::AlreadyExists { .. }));
            let read = if lost { Some(self.kv.get(key).await) } else { None };
            let outcome = {
                let mut st = block.state.lock().unwrap_or_else(|e| e.into_inner());
                st.writing = false;
                match (result, read) {
                    (Ok(r), _) => {
                        st.revision = Some(r);
                        st.stored = st.stored.max(upto);
                        Ok(())
                    }
                    (Err(_), Some(Ok(entry))) => {
                        // Another process wrote the block: take its marks, write again.
                        st.revision = entry.as_ref().map(|e| e.revision);
                        if let Some(theirs) = entry.as_ref().and_then(|e| decode_block(&e.value)) {
                            for (offset, nanos) in theirs {
                                st.marks.entry(offset).or_insert(nanos);
                            }
                        }
                        Ok(())
                    }
                    (Err(_), Some(Err(e))) | (Err(e), None) => Err(DedupError::from(e)),
                }
            };
            block.written.notify_waiters();
            outcome?;
        }
    }
}

impl<K: KeyValue> DedupStore for KvDedup<K> {
    fn marks_stream_messages(&self) -> bool {
        true
    }

    /// Read from the attempts key of the stream message (written by
    /// [`attempt_started`](DedupStore::attempt_started) as `{attempt} {stored nanos}`); a
    /// record of another message stored under the same sequence (a stream deleted and created
    /// again) counts as none. `None` for a stream whose name cannot be a key token.
    fn attempts_started<'a>(
        &'a self,
        handler: &'a str,
        m: &'a StreamMessage,
    ) -> BoxFuture<'a, Result<Option<u64>, DedupError>> {
        Box::pin(async move {
            let Some(key) = Self::with_attempts_key(handler, m, str::to_owned) else {
                return Ok(None);
            };
            let Some(entry) = self.kv.get(&key).await? else {
                return Ok(Some(0));
            };
            Ok(Some(parse_attempts(&entry.value, stored_nanos(m)).unwrap_or(0)))
        })
    }

    fn attempt_started<'a>(
        &'a self,
        handler: &'a str,
        m: &'a StreamMessage,
        attempt: u64,
    ) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            let Some(key) = Self::with_attempts_key(handler, m, str::to_owned) else {
                return Ok(());
            };
            self.kv
                .put(&key, Bytes::from(format!("{attempt} {}", stored_nanos(m))))
                .await?;
            Ok(())
        })
    }

    fn seen_now(&self, handler: &str, id: MessageId) -> Option<Result<bool, DedupError>> {
        let kv = self.kv.at_once()?;
        Some(Self::with_key(handler, id, |key| kv.contains_now(key)).map_err(DedupError::from))
    }

    fn mark_now(&self, handler: &str, id: MessageId) -> Option<Result<(), DedupError>> {
        let kv = self.kv.at_once()?;
        Some(
            kv.put_now(Self::key(handler, id), Bytes::new())
                .map(drop)
                .map_err(DedupError::from),
        )
    }

    fn seen<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<bool, DedupError>> {
        Box::pin(async move { Ok(self.kv.get(&Self::key(handler, id)).await?.is_some()) })
    }

    fn mark<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<(), DedupError>> {
        Box::pin(async move {
            self.kv.put(&Self::key(handler, id), Bytes::new()).await?;
            Ok(())
        })
    }

    fn seen_delivery_now(&self, handler: &str, m: &StreamMessage) -> Option<Result<bool, DedupError>> {
        let kv = self.kv.at_once()?;
        let nanos = stored_nanos(m);
        let found = Self::with_block_key(handler, m, |key, offset| {
            kv.get_now(key)
                .map(|v| v.is_some_and(|v| block_holds(&v, offset, nanos)))
        });
        Some(match found {
            Some(Ok(true)) => Ok(true),
            // A first delivery: its block only (see `seen_delivery`).
            Some(Ok(false)) if m.delivered <= 1 => Ok(false),
            Some(Ok(false)) | None => {
                Self::with_key(handler, m.id, |key| kv.contains_now(key)).map_err(DedupError::from)
            }
            Some(Err(e)) => Err(e.into()),
        })
    }

    fn mark_delivery_now(&self, handler: &str, m: &StreamMessage) -> Option<Result<(), DedupError>> {
        let kv = self.kv.at_once()?;
        let nanos = stored_nanos(m);
        let marked = Self::with_block_key(handler, m, |key, offset| {
            kv.update_now(key, &mut |current| with_mark(current.map(|v| &v[..]), offset, nanos))
        });
        Some(match marked {
            Some(r) => r.map(drop).map_err(DedupError::from),
            None => return self.mark_now(handler, m.id),
        })
    }

    fn seen_delivery<'a>(&'a self, handler: &'a str, m: &StreamMessage) -> BoxFuture<'a, Result<bool, DedupError>> {
        let Some((key, offset)) = Self::block_key(handler, m) else {
            return self.seen(handler, m.id);
        };
        let (id, nanos, first, resumed) = (m.id, stored_nanos(m), m.delivered <= 1, m.resumed);
        Box::pin(async move {
            if self.stored_here(&key, offset, nanos) {
                return Ok(true);
            }
            if first {
                // A first delivery: the block's marks as read once suffice (only an earlier
                // durable of this name can have marked the message, and it is gone). No mark by
                // message id is read: every run that writes one for a stream message (a
                // redriven copy, `DedupCheck::Always`) also marks that message's block.
                return self.read_once(&key, offset, nanos, resumed).await;
            }
            // A redelivery: the block, and the mark by message id (`DedupCheck::Always`, marks
            // written before block marks), read at once.
            let legacy = Self::key(handler, id);
            let (block, by_id) = futures::join!(self.kv.get(&key), self.kv.get(&legacy));
            let marked = block?.is_some_and(|e| block_holds(&e.value, offset, nanos));
            Ok(marked || by_id?.is_some())
        })
    }

    fn mark_delivery<'a>(&'a self, handler: &'a str, m: &StreamMessage) -> BoxFuture<'a, Result<(), DedupError>> {
        let Some((key, offset)) = Self::block_key(handler, m) else {
            return self.mark(handler, m.id);
        };
        let nanos = stored_nanos(m);
        Box::pin(async move {
            let block = self.block(&key);
            let mine = {
                let mut st = block.state.lock().unwrap_or_else(|e| e.into_inner());
                st.marks.insert(offset, nanos);
                st.added += 1;
                st.added
            };
            self.commit(&key, &block, mine).await
        })
    }
}

/// The stored time as the block records it (unix nanos; saturated outside the i64 range).
fn stored_nanos(m: &StreamMessage) -> i64 {
    i64::try_from(m.stored.unix_nanos()).unwrap_or(i64::MAX)
}

/// The attempt of an attempts record (`{attempt} {stored nanos}`) of the message stored at
/// `stored`; `None` if it is not one, or one of another message.
fn parse_attempts(value: &[u8], stored: i64) -> Option<u64> {
    let (attempt, at) = std::str::from_utf8(value).ok()?.split_once(' ')?;
    (at.parse::<i64>().ok()? == stored).then_some(())?;
    attempt.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::{KvSpec, Transport, memory::MemoryTransport};

    async fn exercise(store: &dyn DedupStore) {
        let id = MessageId::new();
        assert!(!store.seen("h1", id).await.unwrap());
        store.mark("h1", id).await.unwrap();
        assert!(store.seen("h1", id).await.unwrap());
        assert!(!store.seen("h2", id).await.unwrap(), "marks are per handler");
        assert!(!store.seen("h1", MessageId::new()).await.unwrap());
    }

    #[tokio::test(start_paused = true)]
    async fn memory_marks_expire() {
        let store = MemoryDedup::new(Duration::from_secs(10));
        exercise(&store).await;
        let id = MessageId::new();
        store.mark("h", id).await.unwrap();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!store.seen("h", id).await.unwrap());
    }

    #[test]
    fn kv_keys_keep_their_format() {
        // Marks written by earlier releases must still be found.
        let id = MessageId::new();
        type Kv = KvDedup<crate::transport::memory::MemoryKeyValue>;
        assert_eq!(Kv::key("billing-charge", id), format!("billing-charge.{id}"));
        for handler in ["billing-charge", "é-ü", &"h".repeat(91), &"h".repeat(200)] {
            assert_eq!(
                Kv::with_key(handler, id, str::to_owned),
                Kv::key(handler, id),
                "{handler}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn kv_marks_on_memory_are_read_and_written_at_once() {
        let t = MemoryTransport::new();
        let kv = t
            .key_value(&KvSpec::new("dedup").max_age(Duration::from_secs(10)))
            .await
            .unwrap();
        let store = KvDedup::new(kv.clone());
        let id = MessageId::new();
        assert_eq!(store.seen_now("h", id), Some(Ok(false)));
        assert_eq!(store.mark_now("h", id), Some(Ok(())));
        assert_eq!(store.seen_now("h", id), Some(Ok(true)));
        assert!(
            store.seen("h", id).await.unwrap(),
            "the same mark as the async path reads"
        );
        assert!(kv.get(&format!("h.{id}")).await.unwrap().is_some());
        assert_eq!(store.seen_now("other", id), Some(Ok(false)));
        // A handler name that makes an invalid key is an error, not a panic.
        assert!(matches!(store.mark_now("bad name", id), Some(Err(_))));
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert_eq!(store.seen_now("h", id), Some(Ok(false)));
    }

    #[tokio::test(start_paused = true)]
    async fn kv_marks_expire() {
        let t = MemoryTransport::new();
        let kv = t
            .key_value(&KvSpec::new("dedup").max_age(Duration::from_secs(10)))
            .await
            .unwrap();
        let store = KvDedup::new(kv);
        exercise(&store).await;
        let id = MessageId::new();
        store.mark("h", id).await.unwrap();
        tokio::time::sleep(Duration::from_secs(11)).await;
        assert!(!store.seen("h", id).await.unwrap());
    }

    fn message(stream: &str, sequence: u64, stored_nanos: i128) -> StreamMessage {
        StreamMessage {
            id: MessageId::new(),
            stream: Arc::from(stream),
            sequence,
            stored: crate::timestamp::Timestamp::from_unix_nanos(stored_nanos).unwrap(),
            delivered: 2,
            resumed: None,
        }
    }

    /// Counts the writes (and, in `reads`, the reads) that reach a bucket; a read answers
    /// after `read_time`.
    #[derive(Debug, Clone)]
    struct Writes<K> {
        kv: K,
        count: Arc<std::sync::atomic::AtomicUsize>,
        reads: Arc<std::sync::atomic::AtomicUsize>,
        read_time: Duration,
    }

    impl<K: KeyValue> KeyValue for Writes<K> {
        async fn get(&self, key: &str) -> Result<Option<crate::transport::KvEntry>, KvError> {
            self.reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if !self.read_time.is_zero() {
                tokio::time::sleep(self.read_time).await;
            }
            self.kv.get(key).await
        }
        async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
            self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.kv.create(key, value).await
        }
        async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
            self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.kv.update(key, value, expected).await
        }
        async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
            self.count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.kv.put(key, value).await
        }
        async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), KvError> {
            self.kv.delete(key, expected).await
        }
        async fn keys(&self) -> Result<Vec<String>, KvError> {
            self.kv.keys().await
        }
        async fn purge_tombstones(&self, older_than: std::time::Duration) -> Result<usize, KvError> {
            self.kv.purge_tombstones(older_than).await
        }
    }

    async fn bucket() -> crate::transport::memory::MemoryKeyValue {
        MemoryTransport::new().key_value(&KvSpec::new("dedup")).await.unwrap()
    }

    #[tokio::test]
    async fn block_marks_name_the_stream_message() {
        let store = KvDedup::new(bucket().await);
        let m = message("DOCUMENT_EVENTS", 130, 1_000);
        assert!(!store.seen_delivery("h", &m).await.unwrap());
        store.mark_delivery("h", &m).await.unwrap();
        assert!(store.seen_delivery("h", &m).await.unwrap());
        // Another process (a fresh store on the same bucket) reads it from the bucket.
        let other = KvDedup::new(store.kv.clone());
        assert!(other.seen_delivery("h", &m).await.unwrap());
        assert!(!other.seen_delivery("h2", &m).await.unwrap(), "marks are per handler");
        assert!(
            !other
                .seen_delivery("h", &message("DOCUMENT_EVENTS", 131, 1_000))
                .await
                .unwrap()
        );
        assert!(!other.seen_delivery("h", &message("OTHER", 130, 1_000)).await.unwrap());
        // The same sequence stored again by a stream deleted and created: not handled.
        let reborn = StreamMessage {
            stored: crate::timestamp::Timestamp::from_unix_nanos(2_000).unwrap(),
            ..m.clone()
        };
        assert!(!other.seen_delivery("h", &reborn).await.unwrap());
        assert_eq!(store.kv.keys().await.unwrap(), ["h.s.DOCUMENT_EVENTS.2"]);
    }

    #[tokio::test]
    async fn marks_by_message_id_are_still_found_and_odd_streams_use_them() {
        let store = KvDedup::new(bucket().await);
        let m = message("DOCUMENT_EVENTS", 7, 1);
        store.mark("h", m.id).await.unwrap();
        assert!(
            store.seen_delivery("h", &m).await.unwrap(),
            "a redelivery finds a mark by message id (`DedupCheck::Always`, an earlier release)"
        );
        // A first delivery reads its block only: whatever marks a stream message by its id
        // (a redriven copy, `Always`) marks its block too.
        let first = StreamMessage { delivered: 1, ..m };
        assert!(!store.seen_delivery("h", &first).await.unwrap());
        assert_eq!(store.seen_delivery_now("h", &first), Some(Ok(false)), "at once too");
        assert_eq!(
            store.seen_delivery_now("h", &StreamMessage { delivered: 2, ..first }),
            Some(Ok(true))
        );
        let odd = message("odd.stream", 7, 1);
        store.mark_delivery("h", &odd).await.unwrap();
        assert!(store.seen("h", odd.id).await.unwrap(), "marked by id");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_marks_of_a_block_share_writes_and_none_is_lost() {
        let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let kv = Writes {
            kv: bucket().await,
            count: count.clone(),
            reads: Default::default(),
            read_time: Duration::ZERO,
        };
        // Two stores (two processes) marking interleaved sequences of the same blocks at once.
        let (a, b) = (Arc::new(KvDedup::new(kv.clone())), Arc::new(KvDedup::new(kv.clone())));
        let marks: Vec<_> = (0..256).map(|seq| message("S", seq, 10 + i128::from(seq))).collect();
        let tasks: Vec<_> = marks
            .iter()
            .cloned()
            .map(|m| {
                let store = if m.sequence % 2 == 0 { a.clone() } else { b.clone() };
                tokio::spawn(async move { store.mark_delivery("h", &m).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let fresh = KvDedup::new(kv.kv.clone());
        for m in &marks {
            assert!(fresh.seen_delivery("h", m).await.unwrap(), "mark {} lost", m.sequence);
        }
        let writes = count.load(std::sync::atomic::Ordering::Relaxed);
        assert!(writes >= 4, "at least one write per block: {writes}");
        tracing::info!(writes, "writes for 256 marks");
    }

    #[test]
    fn block_values_that_are_not_ours_are_not_marks() {
        assert_eq!(decode_block(&[]), Some(vec![]));
        assert_eq!(decode_block(&[1; 8]), None);
        assert_eq!(decode_block(&[64, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        let mut st = BlockState::default();
        st.marks.insert(3, -5);
        st.marks.insert(63, i64::MAX);
        assert_eq!(decode_block(&st.encode()), Some(vec![(3, -5), (63, i64::MAX)]));
    }

    #[tokio::test]
    async fn first_deliveries_read_a_block_once_and_redeliveries_every_time() {
        let kv = Writes {
            kv: bucket().await,
            count: Default::default(),
            reads: Default::default(),
            read_time: Duration::ZERO,
        };
        let earlier = KvDedup::new(kv.clone());
        let handled = message("S", 70, 5);
        earlier.mark_delivery("h", &handled).await.unwrap();
        // A new durable of the same name catches up: first deliveries of the same block.
        let store = KvDedup::new(kv.clone());
        let reads = || kv.reads.load(std::sync::atomic::Ordering::Relaxed);
        let before = reads();
        let first = |m: &StreamMessage| StreamMessage {
            delivered: 1,
            ..m.clone()
        };
        assert!(store.seen_delivery("h", &first(&handled)).await.unwrap());
        for seq in 64..80 {
            if seq != 70 {
                assert!(!store.seen_delivery("h", &first(&message("S", seq, 5))).await.unwrap());
            }
        }
        // One read of the block, and none of the message-id keys.
        assert_eq!(reads() - before, 1);
        // A redelivery reads the bucket again (another process may have marked it since).
        let other = message("S", 71, 5);
        earlier.mark_delivery("h", &other).await.unwrap();
        assert!(store.seen_delivery("h", &other).await.unwrap());
        assert!(
            !store.seen_delivery("h", &first(&other)).await.unwrap(),
            "a first delivery trusts the block as read"
        );
        // Unless the consumer resumed since that read (the server may have handed the message
        // out before and lost the count): the block is read again.
        let resumed = StreamMessage {
            resumed: Some(crate::timestamp::Timestamp::now()),
            ..first(&other)
        };
        let before = reads();
        assert!(store.seen_delivery("h", &resumed).await.unwrap());
        assert_eq!(reads() - before, 1, "one read of the block");
        assert!(store.seen_delivery("h", &resumed).await.unwrap());
        assert_eq!(reads() - before, 1, "read since the resume: trusted");
        // A read answers for a while only: a redriven copy's original is marked by the redrive
        // consumer, another durable, perhaps in another process.
        let store = KvDedup::new(kv.clone()).trusting_reads_for(Duration::from_millis(50));
        let late = first(&message("S", 72, 5));
        let before = reads();
        assert!(!store.seen_delivery("h", &late).await.unwrap());
        earlier.mark_delivery("h", &late).await.unwrap();
        assert!(!store.seen_delivery("h", &late).await.unwrap(), "the read answers");
        assert_eq!(reads() - before, 1);
        tokio::time::sleep(Duration::from_millis(60)).await;
        assert!(
            store.seen_delivery("h", &late).await.unwrap(),
            "read again, the mark found"
        );
        assert_eq!(reads() - before, 2);
    }

    /// A service catching up has many first deliveries of one block checked at once: they
    /// share one read of the block, and read nothing else.
    #[tokio::test(start_paused = true)]
    async fn first_deliveries_checked_at_once_share_the_block_read() {
        let kv = Writes {
            kv: bucket().await,
            count: Default::default(),
            reads: Default::default(),
            read_time: Duration::from_millis(5),
        };
        let earlier = KvDedup::new(kv.clone());
        earlier.mark_delivery("h", &message("S", 70, 5)).await.unwrap();
        let store = KvDedup::new(kv.clone());
        let before = kv.reads.load(std::sync::atomic::Ordering::Relaxed);
        let checks = (64..80).map(|seq| {
            let m = StreamMessage {
                delivered: 1,
                ..message("S", seq, 5)
            };
            let store = &store;
            async move { (seq, store.seen_delivery("h", &m).await.unwrap()) }
        });
        let seen = futures::future::join_all(checks).await;
        assert_eq!(
            seen.iter()
                .filter(|(_, seen)| *seen)
                .map(|(seq, _)| *seq)
                .collect::<Vec<_>>(),
            [70]
        );
        let reads = kv.reads.load(std::sync::atomic::Ordering::Relaxed) - before;
        assert_eq!(reads, 1, "one read of the block");
    }

    #[test]
    fn marks_go_in_offset_order_and_replace_one_at_their_offset() {
        let mut v = with_mark(None, 5, 50);
        for (offset, nanos) in [(9, 90), (1, 10), (7, 70), (5, 55), (9, 99), (0, 1), (63, 630)] {
            v = with_mark(Some(&v), offset, nanos);
        }
        assert_eq!(
            decode_block(&v),
            Some(vec![(0, 1), (1, 10), (5, 55), (7, 70), (9, 99), (63, 630)])
        );
        assert_eq!(decode_block(&with_mark(Some(b"not a block"), 3, 3)), Some(vec![(3, 3)]));
    }

    #[tokio::test]
    async fn block_marks_at_once_on_memory_read_and_write_the_same_entries() {
        let kv = bucket().await;
        let now = KvDedup::new(kv.clone());
        let waits = KvDedup::new(kv.clone());
        let (a, b, c) = (message("S", 3, 1), message("S", 1, 2), message("S", 3, 9));
        assert_eq!(now.seen_delivery_now("h", &a), Some(Ok(false)));
        assert_eq!(now.mark_delivery_now("h", &a), Some(Ok(())));
        assert_eq!(now.mark_delivery_now("h", &b), Some(Ok(())));
        assert_eq!(now.seen_delivery_now("h", &a), Some(Ok(true)));
        assert_eq!(now.seen_delivery_now("h", &c), Some(Ok(false)), "another stored time");
        // The same entry as the path that waits writes and reads.
        assert!(waits.seen_delivery("h", &a).await.unwrap());
        assert!(waits.seen_delivery("h", &b).await.unwrap());
        waits.mark_delivery("h", &message("S", 2, 5)).await.unwrap();
        assert_eq!(now.seen_delivery_now("h", &message("S", 2, 5)), Some(Ok(true)));
        let value = kv.get("h.s.S.0").await.unwrap().unwrap().value;
        assert_eq!(decode_block(&value), Some(vec![(1, 2), (2, 5), (3, 1)]));
        // Message-id marks are still found, and an odd stream is marked by id.
        let old = message("S", 9, 1);
        now.mark("h", old.id).await.unwrap();
        assert_eq!(now.seen_delivery_now("h", &old), Some(Ok(true)));
        let odd = message("odd.stream", 1, 1);
        assert_eq!(now.mark_delivery_now("h", &odd), Some(Ok(())));
        assert_eq!(now.seen_now("h", odd.id), Some(Ok(true)));
        // A key too long for the stack is built on the heap.
        let long = "h".repeat(200);
        assert_eq!(now.mark_delivery_now(&long, &a), Some(Ok(())));
        assert!(waits.seen_delivery(&long, &a).await.unwrap());
    }

    #[test]
    fn marks_are_added_in_offset_order_and_replace_their_offset() {
        let v = with_mark(None, 5, 1);
        let v = with_mark(Some(&v), 2, 2);
        let v = with_mark(Some(&v), 9, 3);
        let v = with_mark(Some(&v), 5, 4);
        assert_eq!(decode_block(&v), Some(vec![(2, 2), (5, 4), (9, 3)]));
        assert!(block_holds(&v, 5, 4) && !block_holds(&v, 5, 1));
        assert_eq!(decode_block(&with_mark(Some(b"junk"), 1, 1)), Some(vec![(1, 1)]));
    }
}
