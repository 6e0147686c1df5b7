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

use super::{Dispatch, Message, Outcome, Received};
use crate::transport::{Consumer, ConsumerSpec, Delivery, IncomingRequest, Responder, Transport};
use bytes::Bytes;
use futures::StreamExt;
use futures::future::{Fuse, FutureExt};
use futures::stream::FuturesUnordered;
use std::future::Future;
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
    pub(crate) spec: ConsumerSpec,
    pub(crate) consumer: T::Consumer,
    pub(crate) durable: Arc<super::dedup::DurableSince>,
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
                    match self.transport.consumer(&self.spec).await {
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
/// acknowledgements in flight do not keep the next messages from starting. What is in flight
/// altogether stays bounded by the prefetch.
#[derive(Debug)]
pub(crate) struct Running {
    count: AtomicUsize,
    /// The handler's concurrency.
    limit: usize,
    /// Notified when a message leaves a full count (the only time the loop waits for it).
    freed: Notify,
}

impl Running {
    fn new(limit: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            limit,
            freed: Notify::new(),
        }
    }

    /// Counts one more message, for as long as the guard borrowing this count lives (the loop's
    /// own dispatches: no reference count taken per message).
    fn enter(&self) -> RunningGuard<'_> {
        self.count.fetch_add(1, Ordering::AcqRel);
        RunningGuard::Borrowed(self)
    }

    /// [`enter`](Self::enter) for a message run as its own task.
    fn enter_owned(self: &Arc<Self>) -> RunningGuard<'static> {
        self.count.fetch_add(1, Ordering::AcqRel);
        RunningGuard::Owned(self.clone())
    }

    /// Whether another handler may start.
    fn has_room(&self) -> bool {
        self.count.load(Ordering::Acquire) < self.limit
    }
}

/// One message counted in [`Running`]; leaves it when dropped.
#[derive(Debug)]
pub(crate) enum RunningGuard<'a> {
    /// A dispatch polled by the loop, which outlives it.
    Borrowed(&'a Running),
    /// A dispatch run as its own task.
    Owned(Arc<Running>),
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        let running: &Running = match self {
            Self::Borrowed(r) => r,
            Self::Owned(r) => r,
        };
        if running.count.fetch_sub(1, Ordering::AcqRel) >= running.limit {
            running.freed.notify_one();
        }
    }
}

/// Runs one message down `stack` and settles it.
///
/// An `async` block, not an `async fn`: the function's arguments would be kept twice in its
/// state (as arguments, and moved into locals), and the loop moves that state once per message.
#[allow(clippy::manual_async_fn)]
fn one<'a, I, D, S>(
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
        let envelope = item.envelope();
        let (outcome, reply) = {
            let mut msg = Message::new(&item, envelope);
            msg.running = Some(running);
            let outcome = stack.dispatch(&mut msg).await;
            (outcome, msg.reply.take())
        };
        settle.settle(item, reply, outcome).await;
    }
}

/// Pulls from `source` (at most `prefetch` ahead) and dispatches down `stack`, at most
/// `concurrency` at once, until `stop`;
/// then finishes what is in flight (the host bounds how long) and gives back what was pulled
/// but not started.
pub(crate) async fn run<Src, D, S>(
    source: Src,
    stack: Arc<D>,
    settle: Arc<S>,
    concurrency: usize,
    prefetch: usize,
    spawn: bool,
    mut stop: watch::Receiver<bool>,
) where
    Src: Source,
    D: Dispatch + 'static,
    S: Settle<Src::Item>,
{
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
                let task = tokio::spawn(async move { one(&*stack, &*settle, item, guard).await });
                in_flight.push(futures::future::Either::Left(async move {
                    if let Err(e) = task.await {
                        tracing::error!(error = %e, "dispatch task failed");
                    }
                    None
                }));
            } else {
                let mut slot: Pin<Box<Option<_>>> = free.pop().unwrap_or_else(|| Box::pin(None));
                slot.set(Some(one(&*stack, &*settle, item, running.enter())));
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
    // Nothing new is started; what was pulled but not started goes back at once.
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
