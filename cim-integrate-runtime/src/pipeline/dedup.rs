//! Layer: a handler never runs twice for one message id, and a message is never acknowledged
//! before its de-duplication mark is written.
//!
//! Two copies of one message id in flight at once on one handler (a foreign publisher sent the
//! id twice, outside the stream's duplicate window) are single-flighted within the process: the
//! second waits for the first to finish (its mark written, or its failure known) before it checks
//! the mark, so it is a duplicate if the first succeeded and runs if the first failed.
//!
//! **No read on a first delivery** (the default, [`DedupCheck::MaybeSeen`]). The mark is read only when the handler may have seen the
//! message before: a redelivery (delivery count above one), a message stored before the durable
//! was created (or less than [`CLOCK_MARGIN`](crate::dedup::CLOCK_MARGIN) after: an earlier durable of that name may have
//! handled it, and the new durable's delivery counts start over), a copy of an id that waited
//! for another in flight, a message stored before the consumer last began or resumed pulling
//! (plus the margin; [`DeliveryInfo::resumed`](crate::transport::DeliveryInfo::resumed): a server
//! that lost the count of a delivery hands the message out again as a first one), or a durable
//! whose creation time the transport does not know. A message stored after both and delivered
//! for the first time was delivered to nobody before (the server counts deliveries across every
//! process on the durable, and lost no count since), so the read could only say "not seen"; it
//! is skipped, and the mark is still written before the ack.
//! What this gives up: a copy of a message id that was *stored again as a new stream message*
//! (a foreign publisher repeating an id after the stream's duplicate window, two minutes by
//! default) is not recognised on its first delivery, unless it is in flight beside the original.
//! [`DedupCheck::Always`] reads the mark on every delivery and recognises those copies too.

use super::catch_panic::with_progress;
use super::{Deferral, Dispatch, Message, Outcome};
use crate::backoff::Backoff;
use crate::dedup::{DedupCheck, DedupError, DedupStore, StreamMessage};
use crate::fast_hash::FastMap;
use crate::id::MessageId;
use crate::timestamp::Timestamp;
use futures::future::BoxFuture;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Notify;

/// When the durable behind a handler was created (unix millis; [`i64::MIN`]: unknown, check
/// every delivery). Set by the consumer source when it opens or reopens the durable.
/// With [`DedupCheck::Always`], never known: every delivery is checked.
#[derive(Debug)]
pub(crate) struct DurableSince {
    after: AtomicI64,
    check: DedupCheck,
    /// `margin` in milliseconds.
    margin_ms: i64,
}

impl DurableSince {
    /// `margin`: how far server clocks may disagree (default [`CLOCK_MARGIN`]).
    pub(crate) fn new(check: DedupCheck, margin: Duration, created: Option<Timestamp>) -> Self {
        let s = Self {
            after: AtomicI64::new(i64::MIN),
            check,
            margin_ms: i64::try_from(margin.as_millis()).unwrap_or(i64::MAX),
        };
        s.set(created);
        s
    }

    pub(crate) fn set(&self, created: Option<Timestamp>) {
        let at = match (self.check, created) {
            (DedupCheck::MaybeSeen, Some(c)) => c.unix_millis().saturating_add(self.margin_ms),
            _ => i64::MIN,
        };
        self.after.store(at, Ordering::Relaxed);
    }

    /// `true` if `msg` cannot have been handled before: its first delivery, stored after the
    /// durable's creation and after the consumer last began or resumed pulling (each plus the
    /// margin: before that, the server may have lost the count of an earlier delivery; see
    /// `DeliveryInfo::resumed`), and not `redriven` (a redriven message, see `ops`, was
    /// delivered before, on the handler's own durable).
    fn first_ever(&self, msg: &Message<'_>, redriven: bool) -> bool {
        let after = self.after.load(Ordering::Relaxed);
        after != i64::MIN
            && !redriven
            && msg.delivered() == 1
            && msg.received().info().is_some_and(|i| {
                let stored = i.published.unix_millis();
                stored > after
                    && i.resumed
                        .is_none_or(|r| stored > r.unix_millis().saturating_add(self.margin_ms))
            })
    }
}

/// How long to wait before redelivering a message whose dedup check could not be made.
const CHECK_RETRY: Duration = Duration::from_secs(1);
/// The pause between attempts to write a mark: 50 ms, doubling to 2 s.
const MARK_BACKOFF: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));

/// Asks the [`DedupStore`] whether this handler already handled the message id (yes:
/// [`Outcome::Duplicate`]; the store unreachable: deferred, never a blind run). After a
/// successful run it writes the mark, retrying in place (the delivery kept alive) while the
/// store is unreachable: the acknowledgement waits for the mark.
///
/// Copies of one message id in flight at once on this handler (in this process) are
/// single-flighted: the second waits, kept alive, until the first has written its mark or failed,
/// then checks the mark (a duplicate if the first succeeded, a run if it failed).
///
/// Waiting for a copy in flight, or for a mark read from a store that answers later, does not
/// hold one of the handler's `concurrency` places (unless the handler is ordered, or spawns its
/// runs, whose places the loop's count never gives up): the loop starts the next messages meanwhile, so a service catching up over a backlog
/// has up to its prefetch of reads out at once, and a message whose mark is not found takes a
/// place again before its handler runs.
pub struct Dedup<D> {
    pub(crate) inner: D,
    pub(crate) store: Arc<dyn DedupStore>,
    pub(crate) key: Arc<str>,
    pub(crate) ack_wait: Duration,
    pub(crate) in_flight: InFlight,
    pub(crate) durable: Arc<DurableSince>,
    /// Whether a message may be outside the handler's concurrency while its mark is written,
    /// and while it waits before its handler (for a mark read over the network, for a copy of
    /// its id in flight; see [`Message::leave_place`]): not for ordered handlers, whose next
    /// message must wait until this one is settled.
    pub(crate) outside_place: bool,
}

impl<D: Dispatch> Dispatch for Dedup<D> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let Some(id) = msg.envelope().map(|e| e.message_id()) else {
            return super::filter::invalid_envelope(msg);
        };
        // Under `MaybeSeen` a mark names the stream message (its id, stream, sequence and stored
        // time); under `Always`, without stream metadata, and for a redriven message (a dead
        // letter stored again, whose later copies must find its mark), the message id.
        let redriven = msg.received().headers().get(crate::service::REDRIVE_COUNT).is_some();
        let stream_message = match self.durable.check {
            DedupCheck::MaybeSeen if !redriven => msg.received().info().map(|i| StreamMessage::of(id, i)),
            DedupCheck::MaybeSeen | DedupCheck::Always => None,
        };
        // What waits before the handler (for a copy of its id in flight, for a mark read over
        // the network) waits outside the handler's places, and takes one again before the
        // handler runs: else copies waiting for a run that waits for a place could hold every
        // place. `None`: it holds its place (or never had one).
        let mut away = None;
        // Held until the mark is written (or the run failed): a copy of `id` waits here.
        let (mut flight, waited) = match self.in_flight.try_enter(id) {
            Some(guard) => (guard, Waited::No),
            None => {
                away = self.leave_place(msg);
                self.wait_for_copy(id, msg.received()).await
            }
        };
        let seen = match waited {
            // A copy of a message id handled beside it in this process: a duplicate, whose own
            // mark is written before it is acknowledged (a redelivery of it is then recognised).
            Waited::ForSuccess => Ok(true),
            Waited::No if self.durable.first_ever(msg, redriven) => Ok(false),
            Waited::No | Waited::ForFailure => {
                let now = match &stream_message {
                    Some(m) => self.store.seen_delivery_now(&self.key, m),
                    None => self.store.seen_now(&self.key, id),
                };
                match now {
                    Some(r) => r,
                    None => {
                        if away.is_none() {
                            away = self.leave_place(msg);
                        }
                        match &stream_message {
                            Some(m) => self.store.seen_delivery(&self.key, m).await,
                            None => self.store.seen(&self.key, id).await,
                        }
                    }
                }
            }
        };
        let outcome = match seen {
            // A copy that waited for a success goes on to write its own mark.
            Ok(true) if waited == Waited::ForSuccess => Outcome::Duplicate,
            Ok(true) => return Outcome::Duplicate,
            Ok(false) => {
                if let Some(place) = away.take() {
                    let raw = msg.received();
                    if !with_progress(msg.take_place(place), raw, self.ack_wait).await {
                        return Outcome::Deferred {
                            reason: "the service is stopping; given back before its handler ran".into(),
                            delay: Duration::ZERO,
                            cause: Deferral::Stopping,
                        };
                    }
                }
                self.inner.dispatch(msg).await
            }
            Err(e) => {
                return Outcome::Deferred {
                    reason: format!("dedup check failed: {e}"),
                    delay: CHECK_RETRY,
                    cause: Deferral::Unavailable,
                };
            }
        };
        if matches!(outcome, Outcome::Succeeded | Outcome::Duplicate) {
            if self.outside_place && outcome == Outcome::Succeeded {
                msg.handler_done();
            }
            let raw = msg.received();
            match self.also_mark(raw, id, redriven) {
                None => self.write_mark(id, stream_message.as_ref(), raw).await,
                Some(also) => self.write_both_marks(id, stream_message.as_ref(), also, raw).await,
            }
            flight.succeeded();
        }
        outcome
    }
}

impl<D: Sync> Dedup<D> {
    /// Gives up `msg`'s place among the handler runs while it waits before its handler (see
    /// [`Message::leave_place`]), if this handler allows it.
    fn leave_place<'a>(&self, msg: &mut Message<'a>) -> Option<super::run::Released<'a>> {
        if self.outside_place { msg.leave_place() } else { None }
    }

    /// A second mark beside a mark by message id, naming the stream message that id stands for,
    /// so that a first delivery under `MaybeSeen` (which reads the block of its stream message
    /// only) recognises what was handled under another name: for a redriven copy the original
    /// (its `X-Redrive-*` headers), under `Always` the delivery itself. `None` otherwise, and for
    /// a store whose marks of stream messages are its marks by id.
    fn also_mark(&self, raw: &dyn super::Received, id: MessageId, redriven: bool) -> Option<StreamMessage> {
        if !(redriven || self.durable.check == DedupCheck::Always) || !self.store.marks_stream_messages() {
            return None;
        }
        if redriven {
            redriven_original(raw.headers(), id)
        } else {
            raw.info().map(|i| StreamMessage::of(id, i))
        }
    }

    /// Writes the mark (of `m`, else by `id`) before the acknowledgement: at once if the store
    /// answers at once, else kept alive while it retries. The wait is awaited here, not boxed:
    /// with a store over the network (the key-value marks on NATS) every message waits for it.
    async fn write_mark(&self, id: MessageId, m: Option<&StreamMessage>, raw: &dyn super::Received) {
        let now = match m {
            Some(m) => self.store.mark_delivery_now(&self.key, m),
            None => self.store.mark_now(&self.key, id),
        };
        match now {
            Some(Ok(())) => return,
            Some(Err(e)) => mark_failed(&e),
            None => {}
        }
        // One await of the retries, for both ways here (each await would compile them again).
        with_progress(self.mark(id, m), raw, self.ack_wait).await;
    }

    /// Writes the mark by id (or of `m`) and the second mark of `also` ([`also_mark`](Self::also_mark)),
    /// together. Boxed: only redriven messages and handlers under `Always` write two.
    #[cold]
    #[inline(never)]
    fn write_both_marks<'a>(
        &'a self,
        id: MessageId,
        m: Option<&'a StreamMessage>,
        also: StreamMessage,
        raw: &'a dyn super::Received,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            futures::join!(self.write_mark(id, m, raw), self.write_mark(id, Some(&also), raw));
        })
    }

    /// Waits, with progress signals, for a copy of `id` in flight to finish. Boxed: a copy in
    /// flight is rare, and the wait takes no room in every message's state.
    #[cold]
    #[inline(never)]
    fn wait_for_copy<'a>(&'a self, id: MessageId, raw: &'a dyn super::Received) -> BoxFuture<'a, (Flight<'a>, Waited)> {
        Box::pin(with_progress(self.in_flight.enter(id), raw, self.ack_wait))
    }

    /// Writes the mark, retrying with back-off until it is stored.
    async fn mark(&self, id: MessageId, stream_message: Option<&StreamMessage>) {
        let mut backoff = MARK_BACKOFF;
        loop {
            let marked = match stream_message {
                Some(m) => self.store.mark_delivery(&self.key, m).await,
                None => self.store.mark(&self.key, id).await,
            };
            match marked {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, pause = ?backoff.pause(), "dedup mark failed; retrying before the acknowledgement");
                    backoff.wait().await;
                }
            }
        }
    }
}

/// The warning of a mark the store refused at once (it is retried before the acknowledgement).
#[cold]
#[inline(never)]
fn mark_failed(e: &DedupError) {
    tracing::warn!(error = %e, "dedup mark failed; retrying before the acknowledgement");
}

/// The original of a redriven copy, as its `X-Redrive-Stream`, `-Sequence` and `-Stored` headers
/// name it; `None` if one is missing or unreadable (a letter written before `-Stored`).
fn redriven_original(headers: &crate::headers::Headers, id: MessageId) -> Option<StreamMessage> {
    use crate::service::{REDRIVE_SEQUENCE, REDRIVE_STORED, REDRIVE_STREAM};
    let stream = headers.get(REDRIVE_STREAM).map(str::trim).filter(|s| !s.is_empty())?;
    let sequence = headers
        .get(REDRIVE_SEQUENCE)?
        .trim()
        .parse()
        .ok()
        .filter(|&s: &u64| s > 0)?;
    let stored = headers.get(REDRIVE_STORED)?.trim().parse().ok()?;
    Some(StreamMessage {
        id,
        stream: stream.into(),
        sequence,
        stored,
        delivered: 1,
        resumed: None,
    })
}

/// Whether a message waited for a copy of its id in flight, and how that copy's run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// Nobody worked on the id.
    No,
    /// A copy was handled successfully (and marked) meanwhile.
    ForSuccess,
    /// A copy's run failed or was cancelled meanwhile.
    ForFailure,
}

/// The message ids a handler is working on in this process, for single-flight.
///
/// One small map per handler (its size bounded by what its loop has in flight, at most the
/// prefetch: messages reading their marks or writing them hold no handler place, but hold their
/// entry), keyed by message id, an entry added before the dedup check and removed when the run
/// is over. The map keeps its capacity, so after warm-up a message costs one uncontended lock to enter and one to leave, and
/// no allocation. Copies waiting for an id share one [`Notify`], woken only when an id some copy
/// waits for is left (copies are rare, so a broad wake-up is cheap). A run that succeeded while
/// a copy waited leaves its entry behind, marked succeeded, for the copy to take.
#[derive(Debug, Default)]
pub(crate) struct InFlight {
    ids: Mutex<FastMap<MessageId, Slot>>,
    left: Notify,
}

/// One id's entry in [`InFlight`].
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// A run holds the id.
    busy: bool,
    /// A copy waits for it. (An entry neither busy nor waited for was left by a run that
    /// succeeded while a copy waited, for the copy to take.)
    waited: bool,
}

impl InFlight {
    /// A map with room for `concurrency` ids.
    pub(crate) fn with_capacity(concurrency: usize) -> Self {
        Self {
            ids: Mutex::new(FastMap::with_capacity_and_hasher(concurrency, Default::default())),
            left: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<MessageId, Slot>> {
        self.ids.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn busy() -> Slot {
        Slot {
            busy: true,
            ..Slot::default()
        }
    }

    /// Enters `id` if nobody works on it; `None` if a copy of it is in flight (or left a success
    /// for a copy to take).
    pub(crate) fn try_enter(&self, id: MessageId) -> Option<Flight<'_>> {
        match self.lock().entry(id) {
            Entry::Occupied(_) => None,
            Entry::Vacant(free) => {
                free.insert(Self::busy());
                Some(Flight {
                    map: self,
                    id,
                    succeeded: false,
                })
            }
        }
    }

    /// Enters `id`, waiting while a copy of it is in flight; says how the copy's run ended.
    pub(crate) async fn enter(&self, id: MessageId) -> (Flight<'_>, Waited) {
        let flight = || Flight {
            map: self,
            id,
            succeeded: false,
        };
        let mut waited = false;
        loop {
            // Created before the map is read: `notify_waiters` reaches it from now on, so a
            // leave between the read and the wait is not missed.
            let notified = self.left.notified();
            match self.lock().entry(id) {
                Entry::Vacant(free) => {
                    free.insert(Self::busy());
                    let how = if waited { Waited::ForFailure } else { Waited::No };
                    return (flight(), how);
                }
                Entry::Occupied(mut slot) => {
                    let slot = slot.get_mut();
                    if !slot.busy {
                        // A run succeeded while this copy waited.
                        *slot = Self::busy();
                        return (flight(), Waited::ForSuccess);
                    }
                    slot.waited = true;
                }
            }
            waited = true;
            notified.await;
        }
    }
}

/// A message id entered in [`InFlight`]; left when dropped (also when the run is cancelled).
pub(crate) struct Flight<'a> {
    map: &'a InFlight,
    id: MessageId,
    succeeded: bool,
}

impl Flight<'_> {
    /// The run succeeded and its mark is stored: a copy waiting for it is a duplicate.
    pub(crate) fn succeeded(&mut self) {
        self.succeeded = true;
    }
}

impl Drop for Flight<'_> {
    fn drop(&mut self) {
        let mut ids = self.map.lock();
        let waited = match ids.entry(self.id) {
            Entry::Occupied(mut slot) if slot.get().busy => {
                let waited = slot.get().waited;
                if waited && self.succeeded {
                    *slot.get_mut() = Slot::default();
                } else {
                    slot.remove();
                }
                waited
            }
            _ => false,
        };
        drop(ids);
        if waited {
            self.map.left.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redriven_copy_names_its_original_only_when_every_header_reads() {
        use crate::headers::Headers;
        use crate::service::{REDRIVE_SEQUENCE, REDRIVE_STORED, REDRIVE_STREAM};
        let id = MessageId::new();
        let stored = Timestamp::from_unix_nanos(1_764_892_800_123_456_789).expect("in range");
        let headers = |stream: &str, seq: &str, at: Option<&str>| {
            let mut h = Headers::new();
            h.push_received(REDRIVE_STREAM.to_owned(), stream.to_owned());
            h.push_received(REDRIVE_SEQUENCE.to_owned(), seq.to_owned());
            if let Some(at) = at {
                h.push_received(REDRIVE_STORED.to_owned(), at.to_owned());
            }
            h
        };
        let text = stored.to_rfc3339();
        let m = redriven_original(&headers("BILLING_EVENTS", "42", Some(&text)), id).expect("named");
        assert_eq!(
            (&*m.stream, m.sequence, m.stored, m.id, m.delivered),
            ("BILLING_EVENTS", 42, stored, id, 1)
        );
        for (stream, seq, at) in [
            ("BILLING_EVENTS", "42", None),
            ("", "42", Some(text.as_str())),
            ("BILLING_EVENTS", "0", Some(text.as_str())),
            ("BILLING_EVENTS", "x", Some(text.as_str())),
            ("BILLING_EVENTS", "42", Some("yesterday")),
        ] {
            assert!(
                redriven_original(&headers(stream, seq, at), id).is_none(),
                "{stream} {seq} {at:?}"
            );
        }
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn copies_wait_for_each_other_and_others_do_not() {
        let map = Arc::new(InFlight::with_capacity(4));
        let (a, b) = (MessageId::new(), MessageId::new());
        let first = map.try_enter(a).expect("free");
        assert!(map.try_enter(a).is_none(), "a copy of a is in flight");
        drop(map.try_enter(b).expect("another id is free"));
        let waiter = tokio::spawn({
            let map = map.clone();
            async move {
                let (_second, how) = map.enter(a).await;
                assert_eq!(how, Waited::ForFailure, "the first left without success");
                tokio::time::Instant::now()
            }
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiter.is_finished(), "the copy waits for the first");
        let left = tokio::time::Instant::now();
        drop(first);
        let entered = waiter.await.expect("join");
        assert!(entered >= left);
        assert!(map.try_enter(a).is_some(), "left again after the copy");
        assert!(map.lock().is_empty());
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_copy_that_waited_for_a_success_is_told_so_and_the_entry_is_gone_after_it() {
        let map = Arc::new(InFlight::with_capacity(4));
        let a = MessageId::new();
        let mut first = map.try_enter(a).expect("free");
        let waiter = tokio::spawn({
            let map = map.clone();
            async move { map.enter(a).await.1 }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.succeeded();
        drop(first);
        assert_eq!(waiter.await.expect("join"), Waited::ForSuccess);
        assert!(map.lock().is_empty(), "the copy's flight left the entry");

        // A cancelled wait does not take the entry of the run it waited for.
        let first = map.try_enter(a).expect("free");
        let cancelled = tokio::spawn({
            let map = map.clone();
            async move { drop(map.enter(a).await) }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        cancelled.abort();
        let _ = cancelled.await;
        assert!(map.try_enter(a).is_none(), "still held by the first");
        drop(first);
        assert!(map.lock().is_empty());
    }
}

#[cfg(test)]
mod first_delivery_tests {
    use super::*;
    use crate::dedup::{DedupError, MemoryDedup};
    use crate::pipeline::Received;
    use crate::pipeline::test_raw::Raw;
    use futures::future::BoxFuture;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

    /// Marks in memory, counting the reads.
    #[derive(Default)]
    struct Counted {
        marks: MemoryDedup,
        reads: AtomicUsize,
    }

    impl DedupStore for Counted {
        fn seen<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<bool, DedupError>> {
            self.reads.fetch_add(1, Relaxed);
            self.marks.seen(handler, id)
        }
        fn mark<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<(), DedupError>> {
            self.marks.mark(handler, id)
        }
    }

    /// Counts its runs; succeeds.
    #[derive(Default)]
    struct Runs(AtomicUsize);

    impl Dispatch for Runs {
        async fn dispatch(&self, _msg: &mut Message<'_>) -> Outcome {
            self.0.fetch_add(1, Relaxed);
            Outcome::Succeeded
        }
    }

    /// A server that lost the count of a delivery hands the message out again as a first
    /// delivery: when the consumer resumed after it was stored, its mark is read and the repeat
    /// is a duplicate; a first delivery of a message stored after the resume (plus the margin)
    /// is not checked.
    #[tokio::test]
    async fn a_first_delivery_stored_before_the_pull_resumed_is_checked() {
        let created = Timestamp::from_unix_nanos(1_700_000_000_000_000_000).expect("time");
        let at = |secs: i128| Timestamp::from_unix_nanos(created.unix_nanos() + secs * 1_000_000_000).expect("time");
        let store = Arc::new(Counted::default());
        let layer = Dedup {
            inner: Runs::default(),
            store: store.clone(),
            key: "h".into(),
            ack_wait: Duration::from_secs(30),
            in_flight: InFlight::with_capacity(1),
            durable: Arc::new(DurableSince::new(
                DedupCheck::MaybeSeen,
                Duration::from_secs(5),
                Some(created),
            )),
            outside_place: false,
        };
        let delivery = |resumed: Option<Timestamp>| Raw::seventh(1, at(20), resumed);
        let dispatch = |raw: Raw| {
            let layer = &layer;
            async move { layer.dispatch(&mut Message::new(&raw, raw.envelope())).await }
        };
        let (reads, runs) = (|| store.reads.load(Relaxed), || layer.inner.0.load(Relaxed));
        // Pulling since well before it was stored: nobody can have had it; not checked.
        assert_eq!(dispatch(delivery(Some(at(10)))).await, Outcome::Succeeded);
        assert_eq!((reads(), runs()), (0, 1));
        // The same message again as a first delivery, after the pull resumed: checked, a duplicate.
        assert_eq!(dispatch(delivery(Some(at(30)))).await, Outcome::Duplicate);
        assert_eq!((reads(), runs()), (1, 1));
        // Resumed less than the clock margin before it was stored: checked too.
        assert_eq!(dispatch(delivery(Some(at(16)))).await, Outcome::Duplicate);
        assert_eq!((reads(), runs()), (2, 1));
        // A transport whose counts are never lost: not checked.
        assert_eq!(dispatch(delivery(None)).await, Outcome::Succeeded);
        assert_eq!((reads(), runs()), (2, 2));
    }
}
