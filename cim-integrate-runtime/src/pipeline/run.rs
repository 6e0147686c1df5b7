//! The pull loop: one per consumer (or command subscription), polling up to `concurrency`
//! dispatch futures itself, with no task per message.
//!
//! A puller task keeps the source polled and hands messages over through a channel bounded by
//! `prefetch` (for a durable consumer: 8x the handler's concurrency, this process's share of the
//! durable's `max_ack_pending`, which the server enforces across every process),
//! so a slow handler never stops the consumer from being polled while there is room (the NATS
//! pull stream renews its pull requests and watches its heartbeats when polled), and the loop
//! finds the next message already there instead of waiting for the puller each time. An
//! in-process source (the embedded transport) is asked by the loop itself, one message at a time
//! while there is room, with no puller and no channel: there, handing batches to another task
//! cost more (a second worker thread woken for every few messages) than taking them, and a
//! channel between two futures of one task only added its own work per message. The loop itself drives the in-flight
//! dispatches in a `FuturesUnordered`; with [`spawn`](crate::handler::HandlerOptions::spawn) set,
//! each message runs as its own task instead (for CPU-heavy handlers, to use every core).

use super::attempts::Budget;
use super::dead_letter::Letters;
use super::record::{self, HandlerCounters};
use super::{Dispatch, Message, Outcome, Received};
use crate::handler::RetryPolicy;
use crate::monitor::HandlerMetrics;
use crate::transport::{
    Consumer, ConsumerSpec, Delivery, IncomingRequest, Responder, StreamSpec, Transport, TransportError,
};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::{Fuse, FutureExt};
use futures::stream::FuturesUnordered;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{Notify, mpsc, watch};

/// Where messages come from.
pub(crate) trait Source: Send + 'static {
    /// One message.
    type Item: Received + 'static;
    /// The next message; `None` once the source is closed for good.
    fn next(&mut self) -> impl Future<Output = Option<Self::Item>> + Send;
    /// `true` if the source is in this process ([`Consumer::in_process`]): the loop asks it
    /// itself, with no puller task and no channel.
    fn in_process(&self) -> bool {
        false
    }
    /// A message that is ready now, without waiting ([`Consumer::try_next`]); `None` if there
    /// is none, or it cannot tell.
    fn try_next(&mut self) -> Option<Self::Item> {
        None
    }
}

/// The edge of a stack: what an outcome means for the message's source.
pub(crate) trait Settle<I>: Send + Sync + 'static {
    /// Acts on `outcome` (`reply`: what a layer left for the reply, e.g. a remembered answer).
    fn settle(&self, item: I, reply: Option<Bytes>, outcome: Outcome) -> impl Future<Output = ()> + Send;
    /// Gives back a message that was pulled but not started (shutdown).
    fn abandon(&self, item: I) -> impl Future<Output = ()> + Send;
}

/// A durable consumer as a source: errors reopen it after a pause; it never ends by itself.
/// It keeps `durable` (read by the dedup layer) up to date with the durable's creation time,
/// also when a reopen created the durable anew.
pub(crate) struct ConsumerSource<T: Transport> {
    pub(crate) transport: T,
    /// The stream the host provisioned for it: provisioned again if it is gone.
    pub(crate) stream: StreamSpec,
    pub(crate) spec: ConsumerSpec,
    pub(crate) consumer: T::Consumer,
    pub(crate) durable: Arc<super::dedup::DurableSince>,
}

/// The consumer of `spec` opened again, created if it is gone; its stream provisioned again
/// first if that is gone too (a server that lost its JetStream state, a memory-storage stream
/// after a restart, a stream deleted by hand), as the host did when it started.
async fn reopen<T: Transport>(
    transport: &T,
    stream: &StreamSpec,
    spec: &ConsumerSpec,
) -> Result<T::Consumer, TransportError> {
    match transport.consumer(spec).await {
        Err(TransportError::StreamNotFound { .. }) => {
            tracing::warn!(
                stream = %stream.name, consumer = %spec.durable,
                "stream was gone (a server that lost its JetStream state, or deleted); provisioning it again"
            );
            match transport.ensure_stream(stream).await {
                // Someone else's stream captures the subjects now: the consumer says if it fits.
                Ok(()) | Err(TransportError::StreamConflict { .. }) => {}
                Err(e) => return Err(e),
            }
            transport.consumer(spec).await
        }
        other => other,
    }
}

impl<T: Transport> Source for ConsumerSource<T> {
    type Item = Delivery<<T::Consumer as Consumer>::Acker>;

    async fn next(&mut self) -> Option<Self::Item> {
        loop {
            match self.consumer.next().await {
                Ok(d) => return Some(d),
                Err(e) => {
                    tracing::error!(consumer = %self.spec.durable, error = %e, "consumer failed; reopening in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    match reopen(&self.transport, &self.stream, &self.spec).await {
                        Ok(c) => {
                            self.durable.set(c.created());
                            self.consumer = c;
                        }
                        Err(e) => {
                            tracing::error!(consumer = %self.spec.durable, error = %e, "reopening consumer failed")
                        }
                    }
                }
            }
        }
    }

    fn in_process(&self) -> bool {
        self.consumer.in_process()
    }

    fn try_next(&mut self) -> Option<Self::Item> {
        // An error is returned again by `next`, which reports it and reopens.
        self.consumer.try_next()?.ok()
    }
}

impl Source for Responder {
    type Item = IncomingRequest;

    async fn next(&mut self) -> Option<IncomingRequest> {
        Responder::next(self).await
    }
}

/// The messages of one loop whose handler has not finished: what `concurrency` bounds. A message
/// leaves it when it is settled, or earlier when a layer says the handler is done with it
/// ([`Message::handler_done`]: the dedup layer, while the mark is written), so that marks and
/// acknowledgements in flight do not keep the next messages from starting. A message may also
/// leave it while it waits for something before its handler (the dedup layer's read of a mark,
/// [`RunningGuard::release`]) and then wait for a place again ([`Released::readmit`]). What is in
/// flight altogether stays bounded by the prefetch.
#[derive(Debug)]
pub(crate) struct Running {
    count: AtomicUsize,
    /// The handler's concurrency.
    limit: usize,
    /// Notified when a message leaves a full count (the loop waits for it only then).
    freed: Notify,
    /// Messages waiting in [`Released::readmit`] for a place.
    readmitting: AtomicUsize,
    /// Notified when a message leaves the count while some wait to be readmitted, and when the
    /// loop stops.
    readmit: Notify,
    /// The loop stopped: nothing waiting to be readmitted starts its handler any more.
    closed: std::sync::atomic::AtomicBool,
}

impl Running {
    fn new(limit: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            limit,
            freed: Notify::new(),
            readmitting: AtomicUsize::new(0),
            readmit: Notify::new(),
            closed: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The loop stops: messages waiting to be readmitted, and any released later, are told
    /// so instead of given a place (they go back to the stream unstarted).
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.readmit.notify_waiters();
    }

    /// Counts one more message, for as long as the guard borrowing this count lives (the loop's
    /// own dispatches: no reference count taken per message).
    fn enter(&self) -> RunningGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        RunningGuard(Some(Place::Borrowed(self)))
    }

    /// [`enter`](Self::enter) for a message run as its own task.
    fn enter_owned(self: &Arc<Self>) -> RunningGuard<'static> {
        self.count.fetch_add(1, Ordering::AcqRel);
        RunningGuard(Some(Place::Owned(self.clone())))
    }

    /// Whether another handler may start.
    fn has_room(&self) -> bool {
        self.count.load(Ordering::Acquire) < self.limit
    }

    /// Counts one more message if there is room.
    fn try_take(&self) -> bool {
        self.count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts one message less, waking who waits for a place.
    fn leave(&self) {
        let before = self.count.fetch_sub(1, Ordering::AcqRel);
        // SeqCst pairs with a readmitted message's count of itself: one that this load misses
        // counted itself after this place was freed, and finds it free when it tries. Every
        // place freed while some wait wakes one of them (not only a place of a full count: two
        // places freed at once must wake two).
        if self.readmitting.load(Ordering::SeqCst) > 0 {
            self.readmit.notify_one();
        }
        if before >= self.limit {
            self.freed.notify_one();
        }
    }
}

/// One message counted in [`Running`]; leaves it when dropped.
#[derive(Debug)]
pub(crate) struct RunningGuard<'a>(Option<Place<'a>>);

/// Where a message's count is kept.
#[derive(Debug)]
enum Place<'a> {
    /// A dispatch polled by the loop, which outlives it.
    Borrowed(&'a Running),
    /// A dispatch run as its own task.
    Owned(Arc<Running>),
}

impl Place<'_> {
    fn running(&self) -> &Running {
        match self {
            Self::Borrowed(r) => r,
            Self::Owned(r) => r,
        }
    }
}

impl<'a> RunningGuard<'a> {
    /// Leaves the count for now (the loop may start another message), keeping the way back;
    /// `None`, the place kept, for a message run as its own task (`spawn`): there the loop's
    /// check for room and its count of a new message are two steps that a readmission on
    /// another thread could come between, and `concurrency` must stay a strict bound.
    pub(crate) fn release(&mut self) -> Option<Released<'a>> {
        let Some(Place::Borrowed(running)) = self.0 else {
            return None;
        };
        self.0 = None;
        running.leave();
        Some(Released(running))
    }
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        if let Some(place) = &self.0 {
            place.running().leave();
        }
    }
}

/// A message that left [`Running`] for a while ([`RunningGuard::release`]).
#[derive(Debug)]
pub(crate) struct Released<'a>(&'a Running);

impl<'a> Released<'a> {
    /// Waits for a place among the handler runs, and takes it. Messages waiting here take freed
    /// places as the loop does; the loop polls its dispatches before it asks for a new message,
    /// so one woken here usually finds the place still free. `None` once the loop has stopped:
    /// the handler is not to start.
    pub(crate) async fn readmit(self) -> Option<RunningGuard<'a>> {
        let running = self.0;
        // Counted while it waits, also if the wait is given up (the future dropped).
        let _waiting = Readmitting::enter(running);
        loop {
            let notified = running.readmit.notified();
            tokio::pin!(notified);
            // Registered before the stop and the count are read: a stop, or a place freed,
            // after the reads wakes it.
            notified.as_mut().enable();
            if running.closed.load(Ordering::SeqCst) {
                return None;
            }
            if running.try_take() {
                return Some(RunningGuard(Some(Place::Borrowed(running))));
            }
            notified.await;
        }
    }
}

/// One message counted in [`Running::readmitting`] while it lives.
struct Readmitting<'a>(&'a Running);

impl<'a> Readmitting<'a> {
    fn enter(running: &'a Running) -> Self {
        running.readmitting.fetch_add(1, Ordering::SeqCst);
        Self(running)
    }
}

impl Drop for Readmitting<'_> {
    fn drop(&mut self) {
        self.0.readmitting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs one message down `stack` and settles it.
///
/// An `async` block, not an `async fn`: the function's arguments would be kept twice in its
/// state (as arguments, and moved into locals), and the loop moves that state once per message.
#[allow(clippy::manual_async_fn)]
fn one<'a, I, D, S>(
    handler: &'a Handler,
    stack: &'a D,
    settle: &'a S,
    item: I,
    running: RunningGuard<'a>,
) -> impl Future<Output = ()> + Send + 'a
where
    I: Received + 'a,
    D: Dispatch,
    S: Settle<I>,
{
    async move {
        // A panic anywhere in the stack outside the handler (whose own panics the catch-panic
        // layer turns into failed attempts): a layer of the user's, a dedup store, a bug of
        // ours such as the envelope's parse. Caught here, it costs this message a retry, not
        // the loop, which every other message of the handler needs; it is counted as a panic
        // and a retry in the handler's counters and metrics.
        let dispatched = AssertUnwindSafe(async {
            let mut msg = Message::new(&item, item.envelope());
            msg.running = Some(running);
            let outcome = stack.dispatch(&mut msg).await;
            (outcome, msg.reply.take())
        })
        .catch_unwind()
        .await;
        let (outcome, reply) = match dispatched {
            Ok(dispatched) => dispatched,
            // Boxed: the panic path's future takes no room in every message's state.
            Err(panic) => (Box::pin(handler.contained(&item, panic)).await, None),
        };
        settle.settle(item, reply, outcome).await;
    }
}

/// Who a loop runs for: the name in its logs and, for a service's handler, the counters and
/// metrics where a panic it contains is counted (the record layer, which counts every other
/// outcome, is part of the stack that panicked), and what becomes of a message whose dispatch
/// panics outside the handler on its last attempt.
pub(crate) struct Handler {
    /// The handler's name (its durable, or `{set}-{name}` for a command handler).
    pub(crate) name: Arc<str>,
    /// Its counters and metrics; `None` counts nothing (the loops of the unit tests).
    pub(crate) counted: Option<(Arc<HandlerCounters>, Arc<HandlerMetrics>)>,
    /// An event handler's retry policy and dead letters; `None` (command handlers, whose
    /// requests are not redelivered): such a message is retried under the default policy's
    /// back-off.
    pub(crate) last_resort: Option<LastResort>,
}

/// What the loop needs to dead-letter a message whose dispatch panicked outside the handler once
/// it has used up the handler's attempts, without the stack (whose dead-letter layer may be what
/// panicked).
#[derive(Clone)]
pub(crate) struct LastResort {
    /// The handler's attempts, counted and spent as the attempts layer does.
    pub(crate) budget: Budget,
    /// Where the handler's dead letters go.
    pub(crate) letters: Letters,
}

impl LastResort {
    /// Which attempt `item`, whose dispatch panicked outside the handler, was (as the attempts
    /// layer counts it), recorded as started: the panic may have come before the attempts layer's
    /// record was written, and a message that panics on every delivery must still use up its
    /// attempts. Not by the envelope's id: its parse may be what panicked (the record is found
    /// by the stream position).
    async fn attempt_after_panic(&self, item: &dyn Received) -> Result<u64, crate::dedup::DedupError> {
        let by_count = self.budget.attempt(
            item.info().map_or(0, |i| i.stream_sequence),
            super::message::delivered(item),
        );
        let counted = self.budget.counted(item, None, by_count).await?;
        if let Some(record) = counted.record.and_then(|m| self.budget.record(m, counted.attempt)) {
            record.await?;
        }
        Ok(counted.attempt)
    }
}

impl Handler {
    /// A loop named `name` that counts nothing.
    #[cfg(test)]
    pub(crate) fn named(name: &str) -> Self {
        Self {
            name: Arc::from(name),
            counted: None,
            last_resort: None,
        }
    }

    /// What becomes of `item`, whose dispatch panicked outside the handler: logged as an error
    /// (the handler, the subject, the delivery count, the panic's message) and counted as a
    /// panic, then retried with the handler's back-off, as a failed attempt would be; once the
    /// handler's attempts are used up, dead-lettered (`Exhausted`, the panic in the reason) by
    /// the loop itself, since the stack's dead-letter layer may be what panicked. A dead letter
    /// that cannot be stored for now defers the message, one whose storing panics too retries
    /// it. Counted as the record layer counts the outcome it stands for.
    async fn contained(&self, item: &dyn Received, panic: Box<dyn std::any::Any + Send>) -> Outcome {
        let delivered = super::message::delivered(item);
        let panic = super::catch_panic::panic_message(panic.as_ref());
        let handler = &*self.name;
        let subject = item.subject();
        if let Some((counters, metrics)) = &self.counted {
            record::count_panic(counters, metrics);
        }
        let failed = format!("dispatch panicked outside the handler: {panic}");
        let Some(last) = &self.last_resort else {
            let delay = RetryPolicy::default().delay(delivered);
            tracing::error!(handler, subject, delivered, panic = %panic, retry_in = ?delay, "message dispatch panicked outside the handler; retried");
            return self.count(Outcome::Retry { reason: failed, delay });
        };
        let counted = AssertUnwindSafe(last.attempt_after_panic(item))
            .catch_unwind()
            .await
            .unwrap_or_else(|again| {
                let again = super::catch_panic::panic_message(again.as_ref());
                Err(crate::dedup::DedupError(format!("counting them panicked: {again}")))
            });
        let attempt = match counted {
            Ok(attempt) => attempt,
            Err(error) => {
                let delay = last.budget.retry.delay(delivered);
                tracing::error!(handler, subject, delivered, panic = %panic, %error, retry_in = ?delay, "message dispatch panicked outside the handler; its attempts cannot be counted now; retried");
                return self.count(Outcome::Retry { reason: failed, delay });
            }
        };
        let outcome = match last.budget.failed(attempt, failed.clone(), Duration::ZERO) {
            Outcome::DeadLetter { kind, reason } => {
                tracing::error!(
                    handler, subject, delivered, attempt, panic = %panic,
                    "message dispatch panicked outside the handler on its last attempt; dead-lettering it"
                );
                let stored = AssertUnwindSafe(last.letters.store(item, delivered, kind, reason))
                    .catch_unwind()
                    .await;
                stored.unwrap_or_else(|again| {
                    tracing::error!(
                        handler, subject, panic = %super::catch_panic::panic_message(again.as_ref()),
                        "storing the dead letter panicked too; retried"
                    );
                    Outcome::Retry {
                        reason: failed,
                        delay: last.budget.retry.delay(attempt),
                    }
                })
            }
            Outcome::Retry { reason, delay } => {
                tracing::error!(handler, subject, delivered, attempt, panic = %panic, retry_in = ?delay, "message dispatch panicked outside the handler; retried");
                Outcome::Retry { reason, delay }
            }
            other => other,
        };
        self.count(outcome)
    }

    /// `outcome` counted as the record layer counts it.
    fn count(&self, outcome: Outcome) -> Outcome {
        if let Some((counters, metrics)) = &self.counted {
            record::count_outcome(counters, metrics, &outcome);
        }
        outcome
    }
}

/// How a loop runs its messages.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Most handler runs at once.
    pub(crate) concurrency: usize,
    /// Most messages pulled ahead of their handlers (at least `concurrency`).
    pub(crate) prefetch: usize,
    /// Each message as a task of its own ([`HandlerOptions::spawn`](crate::handler::HandlerOptions::spawn)).
    pub(crate) spawn: bool,
}

/// Pulls from `source` (at most `prefetch` ahead) and dispatches down `stack`, at most
/// `concurrency` at once, until `stop`;
/// then finishes what is in flight (the host bounds how long) and gives back what was pulled
/// but not started. `handler` names the loop in its logs and counts the panics it contains.
pub(crate) async fn run<Src, D, S>(
    handler: Handler,
    source: Src,
    stack: Arc<D>,
    settle: Arc<S>,
    Limits {
        concurrency,
        prefetch,
        spawn,
    }: Limits,
    mut stop: watch::Receiver<bool>,
) where
    Src: Source,
    D: Dispatch + 'static,
    S: Settle<Src::Item>,
{
    // Shared by the tasks of `spawn`: one reference count per message, not three.
    let handler = Arc::new(handler);
    let concurrency = concurrency.max(1);
    let capacity = prefetch.max(concurrency);
    let (tx, mut rx) = mpsc::channel::<Src::Item>(capacity);
    let batch = (capacity / 4).max(1);
    // An in-process source is asked by this loop, in its own task, when there is room: handing
    // each batch over to another task would wake a second worker thread for a few messages at
    // a time, which costs more than taking them. What is ready is taken at once
    // (`Source::try_next`, no future per message); to wait, its `next` becomes one future that
    // holds the source, lasts across turns of the loop (never cancelled until the end), and
    // gives the source back with the message.
    let (puller, mut direct) = if source.in_process() {
        drop(tx);
        (None, Some(source))
    } else {
        (Some(tokio::spawn(pull(source, tx, batch))), None)
    };
    let channel = puller.is_some();
    let waiting = Fuse::terminated();
    tokio::pin!(waiting);
    // Before `in_flight`: the dispatches there borrow it.
    let running = Arc::new(Running::new(concurrency));
    let mut in_flight = FuturesUnordered::new();
    // Room to start a message: a handler place free, and the prefetch not all in flight.
    let room = |in_flight: usize| running.has_room() && in_flight < capacity;
    // Slots for dispatches, reused: most finish on their first poll, in place, and never reach
    // `in_flight`; at most as many as can be in flight are allocated.
    let mut free = Vec::new();
    // Asked between messages taken without a turn of the loop.
    let stop_probe = stop.clone();
    // One future for the whole loop, not one per turn.
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        let item = tokio::select! {
            biased;
            _ = &mut stopped => break,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => {
                if let Some(slot) = done {
                    free.push(slot);
                }
                continue;
            }
            // A handler finished while its message still settles: room for the next one.
            _ = running.freed.notified(), if !running.has_room() && in_flight.len() < capacity => continue,
            // The in-process source: what is ready at once; else `waiting` holds the source
            // until it has a message (this future may be dropped meanwhile: `waiting` stays).
            item = async {
                if let Some(mut source) = direct.take() {
                    if let Some(item) = source.try_next() {
                        direct = Some(source);
                        return Some(item);
                    }
                    waiting.set(wait_next(source).fuse());
                }
                let (source, item) = waiting.as_mut().await;
                direct = Some(source);
                item
            }, if !channel && room(in_flight.len()) => match item {
                Some(item) => item,
                None => break,
            },
            item = rx.recv(), if channel && room(in_flight.len()) => match item {
                Some(item) => item,
                None => break,
            },
        };
        // This one, then what else is waiting while there is room, without a turn of the loop
        // each: at most the channel's capacity per turn (the loop yields in between), and
        // nothing new once the service stops.
        let mut next = Some(item);
        let mut budget = capacity;
        while let Some(item) = next.take() {
            if spawn {
                let (stack, settle) = (stack.clone(), settle.clone());
                let guard = running.enter_owned();
                let handler = handler.clone();
                let task = tokio::spawn(async move { one(&handler, &*stack, &*settle, item, guard).await });
                in_flight.push(futures::future::Either::Left(async move {
                    if let Err(e) = task.await {
                        tracing::error!(error = %e, "dispatch task failed");
                    }
                    None
                }));
            } else {
                let mut slot: Pin<Box<Option<_>>> = free.pop().unwrap_or_else(|| Box::pin(None));
                slot.set(Some(one(&handler, &*stack, &*settle, item, running.enter())));
                // The first poll here, with this loop's waker: what waits goes to
                // `in_flight`, which polls it again (and wakes it from then on).
                let finished = std::future::poll_fn(|cx| {
                    Poll::Ready(slot.as_mut().as_pin_mut().is_none_or(|f| f.poll(cx).is_ready()))
                })
                .await;
                if finished {
                    slot.set(None);
                    free.push(slot);
                } else {
                    in_flight.push(futures::future::Either::Right(Slot(Some(slot))));
                }
            }
            budget -= 1;
            if budget > 0 && room(in_flight.len()) && matches!(stop_probe.has_changed(), Ok(false)) {
                next = if channel {
                    rx.try_recv().ok()
                } else {
                    direct.as_mut().and_then(Source::try_next)
                };
            }
        }
    }
    // Nothing new is started; what was pulled but not started goes back at once, and so does
    // what waits to be readmitted before its handler.
    running.close();
    if let Some(puller) = puller {
        puller.abort();
    }
    // An in-process source's pending `next` goes now (it holds no message).
    waiting.set(Fuse::terminated());
    rx.close();
    while let Some(item) = rx.recv().await {
        settle.abandon(item).await;
    }
    while in_flight.next().await.is_some() {}
}

/// A dispatch that did not finish on its first poll, in its reusable slot; gives the slot back,
/// emptied, when it finishes.
struct Slot<F>(Option<Pin<Box<Option<F>>>>);

impl<F: Future<Output = ()>> Future for Slot<F> {
    type Output = Option<Pin<Box<Option<F>>>>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(slot) = self.0.as_mut() else {
            return Poll::Ready(None);
        };
        if let Some(f) = slot.as_mut().as_pin_mut() {
            std::task::ready!(f.poll(cx));
        }
        slot.set(None);
        Poll::Ready(self.0.take())
    }
}

/// Asks `source` for its next message, and gives it back with the message.
async fn wait_next<Src: Source>(mut source: Src) -> (Src, Option<Src::Item>) {
    let item = source.next().await;
    (source, item)
}

/// Moves messages from `source` into `tx`. Room first: the source is only asked for what can be
/// started soon. Room is reserved `batch` places at a time, so that a backlog wakes the puller
/// once per `batch` messages taken off the channel, not once per message.
async fn pull<Src: Source>(mut source: Src, tx: mpsc::Sender<Src::Item>, batch: usize) {
    loop {
        let Ok(permits) = tx.reserve_many(batch).await else {
            return;
        };
        for permit in permits {
            match source.next().await {
                Some(item) => permit.send(item),
                None => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' loops: concurrency 2, prefetch 16, in the loop's task.
    const LIMITS: Limits = Limits {
        concurrency: 2,
        prefetch: 16,
        spawn: false,
    };
    use crate::dedup::{DedupCheck, DedupError, DedupStore, MemoryDedup};
    use crate::id::MessageId;
    use crate::monitor::DeadLetterReason;
    use crate::pipeline::Deferral;
    use crate::pipeline::attempts::Ledger;
    use crate::pipeline::dedup::{Dedup, DurableSince, InFlight};
    use crate::pipeline::test_raw::Raw;
    use crate::timestamp::Timestamp;
    use crate::transport::DeliveryInfo;
    use futures::future::BoxFuture;
    use std::collections::VecDeque;
    use std::sync::Mutex;

    /// How many are at it now, and the most there were at once.
    #[derive(Default)]
    struct Gauge(Mutex<(usize, usize)>);

    impl Gauge {
        async fn during<F: Future>(&self, f: F) -> F::Output {
            {
                let mut g = self.0.lock().expect("gauge");
                g.0 += 1;
                g.1 = g.1.max(g.0);
            }
            let out = f.await;
            self.0.lock().expect("gauge").0 -= 1;
            out
        }
        fn most(&self) -> usize {
            self.0.lock().expect("gauge").1
        }
    }

    /// Marks in memory, each read answered 50 ms later (a store over the network).
    #[derive(Default)]
    struct SlowReads {
        marks: MemoryDedup,
        reads: Gauge,
    }

    impl DedupStore for SlowReads {
        fn seen<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<bool, DedupError>> {
            Box::pin(self.reads.during(async move {
                tokio::time::sleep(Duration::from_millis(50)).await;
                self.marks.seen(handler, id).await
            }))
        }
        fn mark<'a>(&'a self, handler: &'a str, id: MessageId) -> BoxFuture<'a, Result<(), DedupError>> {
            self.marks.mark(handler, id)
        }
    }

    /// A handler taking this long.
    struct Timed(Gauge, Duration);

    impl Dispatch for Timed {
        async fn dispatch(&self, _msg: &mut Message<'_>) -> Outcome {
            self.0.during(tokio::time::sleep(self.1)).await;
            Outcome::Succeeded
        }
    }

    /// A backlog; waits for ever once it is taken.
    struct Backlog(VecDeque<Raw>);

    impl Source for Backlog {
        type Item = Raw;
        async fn next(&mut self) -> Option<Raw> {
            match self.0.pop_front() {
                Some(raw) => Some(raw),
                None => std::future::pending().await,
            }
        }
    }

    /// Counts what is settled, and how.
    #[derive(Default)]
    struct Settled {
        outcomes: Mutex<Vec<Outcome>>,
        all: Notify,
    }

    impl Settle<Raw> for Settled {
        async fn settle(&self, _item: Raw, _reply: Option<Bytes>, outcome: Outcome) {
            self.outcomes.lock().expect("outcomes").push(outcome);
            self.all.notify_one();
        }
        async fn abandon(&self, _item: Raw) {}
    }

    /// `n` messages; message `seq` has the id of message `id(seq)`.
    fn backlog(n: u64, id: impl Fn(u64) -> u64) -> Backlog {
        Backlog(
            (1..=n)
                .map(|seq| Raw {
                    headers: {
                        let mut h = crate::headers::Headers::new();
                        h.insert(crate::headers::NATS_MSG_ID, format!("m-{}", id(seq)))
                            .expect("header");
                        h
                    },
                    payload: Bytes::from_static(b"{}"),
                    info: DeliveryInfo {
                        stream: "DOCUMENT_EVENTS".into(),
                        consumer: "h".into(),
                        stream_sequence: seq,
                        consumer_sequence: seq,
                        delivered: 1,
                        published: Timestamp::from_unix_nanos(1_700_000_000_000_000_000).expect("time"),
                        resumed: None,
                    },
                })
                .collect(),
        )
    }

    /// A handler of `time` behind the dedup layer over marks read in 50 ms each.
    fn stack(time: Duration, outside_place: bool) -> (Arc<Dedup<Timed>>, Arc<SlowReads>) {
        let store = Arc::new(SlowReads::default());
        let stack = Arc::new(Dedup {
            inner: Timed(Gauge::default(), time),
            store: store.clone(),
            key: "h".into(),
            ack_wait: Duration::from_secs(30),
            in_flight: InFlight::with_capacity(2),
            durable: Arc::new(DurableSince::new(DedupCheck::Always, Duration::from_secs(5), None)),
            outside_place,
        });
        (stack, store)
    }

    /// Runs `backlog` at concurrency 2 (prefetch 16) over marks read in 50 ms each, handlers of
    /// 10 ms; returns the outcomes, the most handlers and reads at once, and how long it took
    /// (an error if it did not finish within 10 s).
    async fn run_backlog(
        backlog: Backlog,
        outside_place: bool,
    ) -> Result<(Vec<Outcome>, usize, usize, Duration), tokio::time::error::Elapsed> {
        let n = backlog.0.len();
        let (stack, store) = self::stack(Duration::from_millis(10), outside_place);
        let settled = Arc::new(Settled::default());
        let (stop_tx, stop) = watch::channel(false);
        let start = tokio::time::Instant::now();
        let run = tokio::spawn(run(
            Handler::named("h"),
            backlog,
            stack.clone(),
            settled.clone(),
            LIMITS,
            stop,
        ));
        let all = async {
            while settled.outcomes.lock().expect("outcomes").len() < n {
                settled.all.notified().await;
            }
        };
        let finished = tokio::time::timeout(Duration::from_secs(10), all).await;
        let took = start.elapsed();
        stop_tx.send(true).expect("stop");
        if finished.is_err() {
            run.abort();
        }
        let _ = run.await;
        finished?;
        let outcomes = std::mem::take(&mut *settled.outcomes.lock().expect("outcomes"));
        Ok((outcomes, stack.inner.0.most(), store.reads.most(), took))
    }

    /// 32 messages of distinct ids: the most handlers and reads at once, and how long it took.
    async fn catch_up(outside_place: bool) -> (usize, usize, Duration) {
        let (outcomes, handlers, reads, took) = run_backlog(backlog(32, |seq| seq), outside_place)
            .await
            .expect("finished");
        assert!(outcomes.iter().all(|o| *o == Outcome::Succeeded), "{outcomes:?}");
        (handlers, reads, took)
    }

    /// A mark read over the network does not hold a handler's place: the next messages' reads go
    /// out meanwhile (bounded by the prefetch), and no more handlers run at once than the
    /// concurrency.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn mark_reads_do_not_hold_the_handlers_places() {
        let (handlers, reads, took) = catch_up(true).await;
        assert_eq!(handlers, 2, "handlers at once");
        assert!(reads > 2 && reads <= 16, "reads at once: {reads}");
        // 32 handler runs of 10 ms two at a time, behind the first read: 210 ms.
        assert!(took < Duration::from_millis(300), "{took:?}");

        // Holding the place through the read: two reads at a time, a place held 60 ms a message.
        let (handlers, reads, took) = catch_up(false).await;
        assert_eq!((handlers, reads), (2, 2));
        assert!(took >= Duration::from_millis(960), "{took:?}");
    }

    /// Copies of one id in flight together wait for the first outside the handlers' places:
    /// the first, back from its read, finds a place (were the copies holding both places while
    /// the first waited for one, nothing would move again).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn copies_waiting_for_their_first_leave_it_a_place() {
        // Messages 1-16 share one id, 17-32 another.
        let (outcomes, handlers, _, _) = run_backlog(backlog(32, |seq| seq.div_ceil(16)), true)
            .await
            .expect("finished, no deadlock");
        let succeeded = outcomes.iter().filter(|o| **o == Outcome::Succeeded).count();
        let duplicates = outcomes.iter().filter(|o| **o == Outcome::Duplicate).count();
        assert_eq!((succeeded, duplicates), (2, 30), "{outcomes:?}");
        assert!(handlers <= 2, "handlers at once: {handlers}");
    }

    /// A stop gives back at once what waits before its handler (its mark read, a place): only
    /// the handlers already running finish.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_stop_gives_back_what_waits_for_a_place() {
        let (stack, _) = stack(Duration::from_secs(1), true);
        let settled = Arc::new(Settled::default());
        let (stop_tx, stop) = watch::channel(false);
        let run = tokio::spawn(run(
            Handler::named("h"),
            backlog(32, |seq| seq),
            stack.clone(),
            settled.clone(),
            LIMITS,
            stop,
        ));
        // The first reads are back: two handlers run, fourteen messages wait for a place.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let start = tokio::time::Instant::now();
        stop_tx.send(true).expect("stop");
        run.await.expect("run");
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        let outcomes = std::mem::take(&mut *settled.outcomes.lock().expect("outcomes"));
        let ran = outcomes.iter().filter(|o| **o == Outcome::Succeeded).count();
        let given_back = outcomes
            .iter()
            .filter(|o| {
                matches!(
                    o,
                    Outcome::Deferred {
                        cause: Deferral::Stopping,
                        ..
                    }
                )
            })
            .count();
        assert_eq!((ran, given_back, outcomes.len()), (2, 14, 16), "{outcomes:?}");
    }

    /// Panics on the message of stream sequence `self.0`; else succeeds.
    struct PanicsOn(u64);

    impl Dispatch for PanicsOn {
        async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
            let seq = msg.received().info().map_or(0, |i| i.stream_sequence);
            assert_ne!(seq, self.0, "a layer's bug");
            Outcome::Succeeded
        }
    }

    /// Keeps the dead letters it is given.
    #[derive(Default)]
    struct Letterbox(Mutex<Vec<crate::transport::OutboundMessage>>);

    impl crate::handler::context::DynPublish for Letterbox {
        fn publish_and_wait(
            &self,
            m: crate::transport::OutboundMessage,
        ) -> BoxFuture<'static, Result<crate::transport::PublishAck, crate::transport::TransportError>> {
            self.0.lock().expect("letters").push(m);
            Box::pin(std::future::ready(Ok(crate::transport::PublishAck {
                stream: "DEAD_LETTERS".into(),
                sequence: 1,
                duplicate: false,
            })))
        }
    }

    /// Runs `source` (three messages) through a stack that panics on stream sequence 2, under
    /// `handler`'s name and `last_resort`, until the three are settled; their outcomes by
    /// sequence, and the handler's stats.
    async fn panicking(
        source: Backlog,
        last_resort: Option<LastResort>,
    ) -> (Vec<Outcome>, crate::pipeline::HandlerStats) {
        let counters = Arc::new(HandlerCounters::default());
        let handler = Handler {
            name: Arc::from("h"),
            counted: Some((
                counters.clone(),
                Arc::new(HandlerMetrics::new("document", "search", "h", "DocumentCreated")),
            )),
            last_resort,
        };
        let settled = Arc::new(Settled::default());
        let (stop_tx, stop) = watch::channel(false);
        let run = tokio::spawn(run(
            handler,
            source,
            Arc::new(PanicsOn(2)),
            settled.clone(),
            LIMITS,
            stop,
        ));
        while settled.outcomes.lock().expect("outcomes").len() < 3 {
            settled.all.notified().await;
        }
        stop_tx.send(true).expect("stop");
        run.await.expect("the loop ended by its stop, not a panic");
        let outcomes = std::mem::take(&mut *settled.outcomes.lock().expect("outcomes"));
        (outcomes, counters.snapshot("h"))
    }

    /// The one outcome of `outcomes` that is not `Succeeded`.
    fn the_other(outcomes: &[Outcome]) -> &Outcome {
        let others: Vec<_> = outcomes.iter().filter(|o| **o != Outcome::Succeeded).collect();
        assert_eq!(others.len(), 1, "{outcomes:?}");
        others[0]
    }

    /// A panic in the stack outside the handler costs its message a retry, with the panic as
    /// the reason, counted as a panic and a retry; the loop goes on with the next messages.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_panic_in_the_stack_costs_a_counted_retry_not_the_loop() {
        let (outcomes, stats) = panicking(backlog(3, |seq| seq), None).await;
        match the_other(&outcomes) {
            Outcome::Retry { reason, delay } => {
                assert!(reason.contains("a layer's bug"), "{reason}");
                assert_eq!(*delay, Duration::from_secs(1), "the first delivery's back-off");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!((stats.panicked, stats.retried, stats.succeeded), (1, 1, 0), "{stats:?}");
    }

    /// On the handler's last attempt (its deferrals not counted as attempts), such a message is
    /// dead-lettered by the loop, with the panic in the reason; before it, retried with the
    /// handler's back-off.
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn a_panic_in_the_stack_on_the_last_attempt_is_dead_lettered_by_the_loop() {
        let retry = RetryPolicy::attempts(2).backoff(Duration::from_millis(10), 2, Duration::from_secs(1));
        let second_delivery = || {
            let mut source = backlog(3, |seq| seq);
            source.0[1].info.delivered = 2;
            source
        };
        let letterbox = Arc::new(Letterbox::default());
        let last_resort = |ledger: Arc<Ledger>| LastResort {
            budget: Budget {
                retry: retry.clone(),
                ledger,
                starts: None,
            },
            letters: Letters {
                publisher: letterbox.clone(),
                subject: crate::Subject::new("dlq.search.h").expect("subject"),
                handler: Arc::from("h"),
            },
        };
        // The second delivery, one of them deferred by an outage: the first attempt.
        let deferred = Arc::new(Ledger::default());
        deferred.note(2);
        let (outcomes, stats) = panicking(second_delivery(), Some(last_resort(deferred))).await;
        match the_other(&outcomes) {
            Outcome::Retry { reason, delay } => {
                assert!(reason.starts_with("dispatch panicked outside the handler"), "{reason}");
                assert!(reason.contains("a layer's bug"), "{reason}");
                assert_eq!(
                    *delay,
                    Duration::from_millis(10),
                    "the handler's back-off after one attempt"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            (stats.panicked, stats.retried, stats.dead_lettered),
            (1, 1, 0),
            "{stats:?}"
        );
        assert!(letterbox.0.lock().expect("letters").is_empty());
        // The second delivery, the second attempt: the last.
        let (outcomes, stats) = panicking(second_delivery(), Some(last_resort(Arc::default()))).await;
        match the_other(&outcomes) {
            Outcome::DeadLettered { kind, reason } => {
                assert_eq!(*kind, DeadLetterReason::Exhausted);
                assert!(
                    reason
                        .starts_with("retries exhausted after 2 attempts; last: dispatch panicked outside the handler"),
                    "{reason}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            (stats.panicked, stats.retried, stats.dead_lettered, stats.succeeded),
            (1, 0, 1, 0),
            "{stats:?}"
        );
        let letters = std::mem::take(&mut *letterbox.0.lock().expect("letters"));
        assert_eq!(letters.len(), 1);
        let h = &letters[0].headers;
        assert_eq!(letters[0].subject.as_str(), "dlq.search.h");
        assert_eq!(h.get(crate::service::DEAD_LETTER_KIND), Some("exhausted"));
        assert_eq!(h.get(crate::service::DEAD_LETTER_DELIVERIES), Some("2"));
        assert_eq!(h.get(crate::service::DEAD_LETTER_SEQUENCE), Some("2"));
        assert!(
            h.get(crate::service::DEAD_LETTER_REASON)
                .is_some_and(|r| r.contains("a layer's bug")),
            "{h:?}"
        );
    }
}
