//! Handler de-duplication: a (handler, message id) mark per successful run.
//!
//! The dispatcher writes the mark after the handler succeeded, before the message is
//! acknowledged, and checks it before running the handler whenever the handler may have seen the
//! message before. A redelivery of a message whose mark exists is acknowledged without running
//! the handler.
//!
//! **Which deliveries are checked** ([`DedupCheck`], per service). By default
//! ([`DedupCheck::MaybeSeen`]) the check is skipped on a message's first delivery to a durable
//! that existed when the message was stored: the server counts deliveries across every process
//! on the durable, so nobody can have handled it before, and the key-value read (a round trip and
//! work on the server) would only say "not seen". Checked are: redeliveries; messages stored
//! before the durable was created, or less than the clock margin after (a new durable of an old
//! name starts its delivery counts over, and an earlier one may have handled them); copies of a
//! message id in flight beside each other; and every delivery from a transport that cannot say
//! when its durable was created. Not recognised by default: a copy of a message id that was
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
//! Marks expire after a TTL (the key-value bucket's max age), so the store stays bounded; a
//! redelivery after the TTL would run the handler again, so keep the TTL well above the longest
//! redelivery horizon (ack wait x max deliveries, plus downtime).
//!
//! Checks and marks are independent per message, so with handler concurrency above one they run
//! concurrently and pipeline on the wire instead of costing one round trip per message in series.

use crate::fast_hash::FastMap;
use crate::id::MessageId;
use crate::transport::{KeyValue, KvError};
use bytes::Bytes;
use futures::future::BoxFuture;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// When a handler reads its de-duplication mark before running
/// ([`ServiceBuilder::dedup_check`](crate::service::ServiceBuilder::dedup_check)).
///
/// Marks are written after every successful run, before the acknowledgement, in both modes; the
/// modes differ only in which deliveries read them first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DedupCheck {
    /// Read the mark only when the handler may have seen the message before: a redelivery, a
    /// message stored before the durable was created (or within
    /// [`CLOCK_MARGIN`] after it), a copy of a message id
    /// that is in flight beside another, or a transport that cannot say when the durable was
    /// created. A first delivery of a message stored after the durable's creation skips the read
    /// (one key-value round trip less per message). Not recognised: a copy of a message id
    /// *stored again* as a new stream message (another `Nats-Msg-Id`, or after the stream's
    /// duplicate window) and delivered on its own.
    #[default]
    MaybeSeen,
    /// Read the mark before every run: a handler runs once per message id, also for copies
    /// stored again as new stream messages (a foreign publisher repeating an id after the
    /// duplicate window, an operator replaying an archive).
    Always,
}

/// How far server clocks of a cluster may disagree, by default: under [`DedupCheck::MaybeSeen`],
/// a message stored less than this after the durable's creation is checked as if stored before
/// it ([`ServiceBuilder::dedup_clock_margin`](crate::service::ServiceBuilder::dedup_clock_margin)).
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
}

/// Marks in process memory, with a TTL. Lost on restart: for tests and single-process use.
///
/// One short lock per check and per mark; a handler's marks are found by comparing names (a
/// service has a handful of handlers), ids are hashed with a fast seeded hash, not SipHash.
#[derive(Debug)]
pub struct MemoryDedup {
    ttl: Duration,
    /// (handler, message id -> when marked)
    marks: Mutex<Vec<(Box<str>, Marks)>>,
}

/// One handler's marks: message id -> when marked.
type Marks = FastMap<MessageId, Instant>;

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
                .and_then(|(_, m)| m.get(&id).copied())
        };
        // The clock is read only for a mark found (most checks find none).
        marked.is_some_and(|at| at + self.ttl > Instant::now())
    }

    fn record(&self, handler: &str, id: MessageId) {
        let now = Instant::now();
        let mut marks = self.marks.lock().unwrap_or_else(|e| e.into_inner());
        let i = match marks.iter().position(|(h, _)| **h == *handler) {
            Some(i) => i,
            None => {
                marks.push((handler.into(), FastMap::default()));
                marks.len() - 1
            }
        };
        let handler_marks = &mut marks[i].1;
        if handler_marks.len() >= 4096 && handler_marks.len().is_power_of_two() {
            handler_marks.retain(|_, at| *at + self.ttl > now);
        }
        handler_marks.insert(id, now);
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

/// Marks in a key-value bucket (`{handler}.{message id}` -> empty value), on either transport.
/// The bucket's `max_age` is the TTL. Survives restarts on NATS.
#[derive(Debug, Clone)]
pub struct KvDedup<K> {
    kv: K,
}

impl<K: KeyValue> KvDedup<K> {
    /// Marks in `kv`; create it with [`KvSpec::max_age`](crate::transport::KvSpec::max_age) as the TTL.
    pub fn new(kv: K) -> Self {
        Self { kv }
    }

    /// `{handler}.{id}`, built in one allocation without the formatting machinery.
    fn key(handler: &str, id: MessageId) -> String {
        let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
        let id = id.as_uuid().hyphenated().encode_lower(&mut buf);
        let mut key = String::with_capacity(handler.len() + 1 + id.len());
        key.push_str(handler);
        key.push('.');
        key.push_str(id);
        key
    }

    /// Runs `f` on the key of [`key`](Self::key), built on the stack when it fits (a read needs
    /// no key of its own).
    fn with_key<R>(handler: &str, id: MessageId, f: impl FnOnce(&str) -> R) -> R {
        const ID: usize = uuid::fmt::Hyphenated::LENGTH;
        let mut buf = [0u8; 128];
        let (h, len) = (handler.len(), handler.len() + 1 + ID);
        if len > buf.len() {
            return f(&Self::key(handler, id));
        }
        buf[..h].copy_from_slice(handler.as_bytes());
        buf[h] = b'.';
        id.as_uuid().hyphenated().encode_lower(&mut buf[h + 1..len]);
        match std::str::from_utf8(&buf[..len]) {
            Ok(key) => f(key),
            Err(_) => f(&Self::key(handler, id)),
        }
    }
}

impl<K: KeyValue> DedupStore for KvDedup<K> {
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
}
