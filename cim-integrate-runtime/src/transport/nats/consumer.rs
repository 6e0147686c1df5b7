//! Durable pull consumers: a continuous pull with idle heartbeats, and the acknowledgement handle.

use super::NatsTransport;
use super::convert::{Texts, headers_from};
use crate::subject::Subject;
use crate::timestamp::Timestamp;
use crate::transport::{Acker, Consumer, ConsumerSpec, Delivery, DeliveryInfo, TransportError};
use async_nats::jetstream::AckKind;
use async_nats::jetstream::consumer::pull::{self, MessagesErrorKind};
use async_nats::jetstream::consumer::{self as js_consumer, FromConsumer, PullConsumer};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// A handle on a durable pull consumer. [`next`](Consumer::next) keeps a continuous pull going:
/// missed heartbeats, reconnects and failed pull requests are logged and the pull is started
/// again; only a consumer (or stream) that no longer exists ends it with an error.
///
/// Messages pulled but not yet returned by `next` are held by this handle (each pull request
/// asks for the smaller of [`NatsOptions::pull_batch`](super::NatsOptions::pull_batch) and twice
/// the spec's [`prefetch`](crate::transport::ConsumerSpec::prefetch), and the next is sent when
/// half of it has arrived); if the handle is dropped, the server redelivers them after the ack
/// wait.
pub struct NatsConsumer {
    transport: NatsTransport,
    consumer: Box<PullConsumer>,
    stream: Arc<str>,
    durable: Arc<str>,
    messages: Option<Box<pull::Stream>>,
    /// The pull's failures since it last delivered (boxed: written only after a failure, and the
    /// handle sits in `AnyConsumer` beside the small in-memory one).
    trouble: Box<Trouble>,
    /// Messages asked for per pull request.
    batch: usize,
    /// When the server created the durable.
    created: Timestamp,
    /// Event types and versions received last, shared by the next deliveries.
    texts: Texts,
    /// The subject received last, shared by the next deliveries on it.
    subject: Option<Subject>,
    /// When this handle was opened, or the pull resumed after the server may have lost delivery
    /// counts ([`DeliveryInfo::resumed`]).
    resumed: Timestamp,
    /// The highest consumer sequence received since then: a delivery numbered at or below it
    /// comes from a consumer leader that lost the count of deliveries the old one made.
    consumer_sequence: u64,
    /// The client's connection counts: a reconnect (after which async-nats pulls again on its
    /// own, with no error to see) is an interruption.
    stats: Arc<async_nats::Statistics>,
    /// Connections made, as last seen.
    connects: u64,
    /// Leader elections of this consumer announced by the server (advisories; a consumer leader
    /// stepping down hands its pull requests over with no error to see), counted by `watch`.
    elections: Arc<Elections>,
    /// Elections, as last seen.
    elections_seen: u64,
    /// The task counting the advisories, stopped with the handle.
    watch: Option<tokio::task::JoinHandle<()>>,
}

/// A pull's failures since it last delivered a message. Its interruptions (missed heartbeats,
/// failed pull requests) are reported as a run: the first is reported at once, the next at most every 10 s with the
/// count since the last report (an outage interrupts every consumer's pull about once a second),
/// and the first message after them ends the run.
#[derive(Debug, Default)]
struct Trouble {
    /// Pauses since the last message (interruptions, and pulls that ended), which set the next
    /// pause.
    failures: u32,
    /// When the run began, and its interruptions; `None` while messages arrive.
    run: Option<(std::time::Instant, u64)>,
    /// The reports' pace, and the interruptions not reported yet.
    reports: crate::throttle::Counted,
}

impl Trouble {
    /// Counts one interruption; `Some(count since the last report)` if it is time to report.
    fn count(&mut self) -> Option<u64> {
        self.run.get_or_insert_with(|| (std::time::Instant::now(), 0)).1 += 1;
        self.reports.count()
    }

    /// A message arrived: `Some((interruptions, since when))` if it ends a run of them. The next
    /// run's first interruption is reported at once.
    fn over(&mut self) -> Option<(u64, std::time::Instant)> {
        let (since, interruptions) = self.run.take()?;
        self.reports.reset();
        Some((interruptions, since))
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        if let Some(task) = &self.watch {
            task.abort();
        }
    }
}

/// The consumer's leader-elected advisories received: how many, and the server's time of the
/// latest election.
#[derive(Debug, Default)]
struct Elections {
    count: AtomicU64,
    /// Unix milliseconds of the latest election, from the advisories' `timestamp` (0 before the
    /// first; only read once `count` moved); [`i64::MAX`] once an advisory came without a
    /// readable one (then the delivery's own time stands for it).
    latest_ms: AtomicI64,
}

impl Elections {
    /// Counts one advisory (its JSON `payload`) and returns the election's unix milliseconds
    /// ([`i64::MAX`]: no readable time). The time is stored before the count, so that a delivery
    /// that sees the count sees the time.
    fn record(&self, payload: &[u8]) -> i64 {
        #[derive(serde::Deserialize)]
        struct Advisory {
            timestamp: Timestamp,
        }
        let ms = serde_json::from_slice::<Advisory>(payload).map_or(i64::MAX, |a| a.timestamp.unix_millis());
        self.latest_ms.fetch_max(ms, Ordering::Release);
        self.count.fetch_add(1, Ordering::Release);
        ms
    }

    /// When the pull resumes after elections seen since `resumed`: the latest election's time,
    /// not the delivery's. A delivery of a message stored after the new leader took over is
    /// counted by that leader; the election that came with the consumer's creation, whose
    /// advisory can arrive after this handle was opened (most likely across a gateway), moves
    /// nothing. The result is never before `resumed`.
    fn resumed(&self, resumed: Timestamp) -> Timestamp {
        match self.latest_ms.load(Ordering::Acquire) {
            i64::MAX => Timestamp::now(),
            ms => Timestamp::from_unix_nanos(i128::from(ms) * 1_000_000).map_or(resumed, |t| t.max(resumed)),
        }
    }
}

impl std::fmt::Debug for NatsConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsConsumer")
            .field("stream", &self.stream)
            .field("durable", &self.durable)
            .field("pulling", &self.messages.is_some())
            .field("batch", &self.batch)
            .finish()
    }
}

impl NatsConsumer {
    /// `elections`: a subscription to the consumer's leader-elected advisories, if one could be
    /// made.
    pub(super) fn new(
        transport: NatsTransport,
        spec: &ConsumerSpec,
        info: js_consumer::Info,
        elections: Option<async_nats::Subscriber>,
    ) -> Result<Self, TransportError> {
        let config = pull::Config::try_from_consumer_config(info.config.clone())
            .map_err(|e| TransportError::Other(format!("consumer `{}`: {e}", spec.durable)))?;
        let created = Timestamp::from_offset_date_time(info.created);
        let consumer = Box::new(PullConsumer::new(config, info, transport.jetstream().clone()));
        let batch = pull_batch(spec.prefetch, transport.options().pull_batch);
        let stats = transport.client().statistics();
        let counted = Arc::new(Elections::default());
        let watch = elections.map(|mut advisories| {
            let (counted, durable) = (counted.clone(), spec.durable.clone());
            tokio::spawn(async move {
                while let Some(advisory) = advisories.next().await {
                    let elected_at_ms = counted.record(&advisory.payload);
                    tracing::debug!(consumer = %durable, elected_at_ms, "consumer leader elected (advisory)");
                }
            })
        });
        Ok(Self {
            created,
            texts: Texts::default(),
            subject: None,
            resumed: Timestamp::now(),
            consumer_sequence: 0,
            connects: stats.connects.load(Ordering::Relaxed),
            stats,
            elections: counted,
            elections_seen: 0,
            watch,
            transport,
            consumer,
            stream: Arc::from(spec.stream.as_str()),
            durable: Arc::from(spec.durable.as_str()),
            messages: None,
            trouble: Box::default(),
            batch,
        })
    }

    /// The stream's name.
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The durable name.
    pub fn durable(&self) -> &str {
        &self.durable
    }

    async fn start_pull(&self) -> Result<Box<pull::Stream>, TransportError> {
        let o = self.transport.options();
        let heartbeat = pull_heartbeat(o.pull_heartbeat, self.consumer.cached_info().config.inactive_threshold);
        self.reach_leader(heartbeat).await?;
        self.consumer
            .stream()
            .max_messages_per_batch(self.batch)
            .expires(o.pull_expires)
            .heartbeat(heartbeat)
            .messages()
            .await
            .map(Box::new)
            .map_err(|e| TransportError::Connection(format!("starting the pull of `{}`: {e}", self.durable)))
    }

    /// Waits until a request on the pull's subject reaches the consumer's leader and its answer
    /// comes back, for at most two idle heartbeats (what a lost pull request costs); then
    /// [`TransportError::Unavailable`], and the pull is not started: [`Consumer::next`] counts
    /// an interruption, pauses and asks again, as for any pull that could not start. Also an
    /// error if the consumer (or its stream) is gone.
    ///
    /// A pull request is published, not asked: one that reaches nobody is lost without a word,
    /// and the pull is sent again only after two missed heartbeats (measured: 1-2 in 300
    /// consumers created across a gateway, whose leader's interest had not crossed it yet). And
    /// what a leader hands a request whose answers cannot come back is lost in transit, and
    /// comes back after the ack wait (30 s by default): a cluster back from an outage takes the
    /// host's pulls through its gateway before its own gateway to the host's cluster is up.
    /// This asks first, on the same subject, with a request the leader answers at once and
    /// that takes no message (`no_wait`, `max_bytes` 1: `404 No Messages` with nothing to
    /// deliver, `409 Message Size Exceeds MaxBytes` with something, which stays where it was).
    /// An answer proves both ways. No answer within a quarter of a heartbeat (doubling each
    /// time), or "no responders" (then after 50 ms, doubling), and it asks again, after asking
    /// once whether the consumer exists; any other error of the request lets the pull start.
    async fn reach_leader(&self, heartbeat: Duration) -> Result<(), TransportError> {
        const PROBE: &[u8] = br#"{"batch":1,"no_wait":true,"max_bytes":1}"#;
        let subject = self
            .transport
            .api_subject(&format!("CONSUMER.MSG.NEXT.{}.{}", self.stream, self.durable));
        let budget = heartbeat.saturating_mul(2);
        let mut wait = (heartbeat / 4).max(MIN_HEARTBEAT);
        let started = tokio::time::Instant::now();
        let (mut asked, mut checked) = (0u32, false);
        let mut nap = crate::backoff::Backoff::new(MIN_HEARTBEAT, heartbeat);
        loop {
            asked += 1;
            let request = async_nats::Request::new()
                .payload(bytes::Bytes::from_static(PROBE))
                .timeout(Some(wait));
            let nobody = match self.transport.client().send_request(subject.clone(), request).await {
                Ok(_) => {
                    if asked > 1 {
                        tracing::debug!(consumer = %self.durable, asked, after = ?started.elapsed(), "pull requests reach the consumer leader");
                    }
                    return Ok(());
                }
                Err(e) => match e.kind() {
                    async_nats::RequestErrorKind::TimedOut => false,
                    async_nats::RequestErrorKind::NoResponders => true,
                    _ => {
                        tracing::debug!(consumer = %self.durable, error = %e, "cannot ask the consumer leader; pulling");
                        return Ok(());
                    }
                },
            };
            if !checked {
                // A leader whose interest has not arrived yet, a request lost on its way, or no
                // consumer at all (measured: a deleted consumer's subject goes unanswered, not to
                // "no responders"). Bounded by the question's own wait: during an election the
                // answer would wait for the request timeout; asking the leader again is better.
                checked = true;
                self.check_exists_within(wait).await?;
            }
            let unanswered = if nobody { "no responders" } else { "no answer" };
            // What the next question may take, its pause before it included: "no responders"
            // came at once, so the leader's interest is given a moment to arrive (longer each
            // time: in an outage nobody answers for a while); an unanswered question is asked
            // again with a longer wait (a link slower than the wait).
            let (pause, next_wait) = if nobody {
                (nap.pause(), wait)
            } else {
                (Duration::ZERO, wait.saturating_mul(2))
            };
            if started.elapsed() + pause + next_wait > budget {
                return Err(TransportError::Unavailable(format!(
                    "the leader of consumer `{}` did not answer in {:?} ({asked} requests, the last: {unanswered})",
                    self.durable,
                    started.elapsed()
                )));
            }
            tracing::debug!(consumer = %self.durable, asked, unanswered, "the consumer leader did not answer; asking again");
            if nobody {
                nap.wait().await;
            }
            wait = next_wait;
        }
    }

    /// [`check_exists`](Self::check_exists) waiting no longer than a question beside an operation
    /// waits ([`NatsTransport::side_wait`]): a server that cannot answer now (the outage that
    /// interrupted the pulls) is not waited for a whole request timeout, which would hold the
    /// pull's restart that long after the server is back.
    async fn check_exists_briefly(&self) -> Result<(), TransportError> {
        self.check_exists_within(self.transport.side_wait()).await
    }

    /// [`check_exists`](Self::check_exists) for at most `wait`: no answer by then reads as "it
    /// may exist" (`Ok`), as a server that cannot say right now does.
    async fn check_exists_within(&self, wait: Duration) -> Result<(), TransportError> {
        tokio::time::timeout(wait, self.check_exists())
            .await
            .unwrap_or_else(|_| {
                tracing::debug!(consumer = %self.durable, ?wait, "no answer in time whether the consumer exists; taken as existing");
                Ok(())
            })
    }

    /// After trouble: an error if the consumer is gone, `Ok` if it still exists or the server
    /// cannot say right now (the pull is then retried).
    async fn check_exists(&self) -> Result<(), TransportError> {
        match self.transport.consumer_info(&self.stream, &self.durable).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err(TransportError::ConsumerNotFound {
                stream: self.stream.to_string(),
                consumer: self.durable.to_string(),
            }),
            Err(e @ TransportError::StreamNotFound { .. }) => Err(e),
            Err(e) => {
                tracing::debug!(consumer = %self.durable, error = %e, "cannot check the consumer now");
                Ok(())
            }
        }
    }

    /// The pull stopped (missed heartbeats, a reconnect, a failed request): it is started again,
    /// and the server may have lost the counts of deliveries made before (a consumer leader
    /// change, a server restart), see [`DeliveryInfo::resumed`].
    fn interrupted(&mut self) {
        self.messages = None;
        self.resumed = Timestamp::now();
    }

    /// After trouble: a short pause growing to 1 s. A leader election takes seconds; the pull
    /// must be back as soon as the new leader is, not a long back-off later.
    async fn pause(&mut self) {
        self.trouble.failures = self.trouble.failures.saturating_add(1);
        let ms = 100u64
            .saturating_mul(u64::from(self.trouble.failures.min(10)))
            .min(1_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Whether to ask the server if the consumer still exists: not on every hiccup (during an
    /// election the question itself waits for a timeout), but every few failures in a row.
    fn should_check(&self) -> bool {
        self.trouble.failures % 5 == 4
    }

    fn delivery(&mut self, message: async_nats::jetstream::Message) -> Result<Delivery<NatsAcker>, String> {
        let meta = message
            .reply
            .as_deref()
            .and_then(AckMeta::parse)
            .ok_or_else(|| format!("message without JetStream metadata (reply subject {:?})", message.reply))?;
        // The context is dropped: acknowledgements go through the transport's client, shared,
        // so that a delivery allocates no handle of its own.
        let mut message = message.message;
        let reply = message
            .reply
            .take()
            .ok_or_else(|| "message without a reply subject".to_owned())?;
        let connects = self.stats.connects.load(Ordering::Relaxed);
        let elections = self.elections.count.load(Ordering::Acquire);
        if connects != self.connects {
            // Reconnected: the server, or the consumer's leader, may have restarted since.
            self.connects = connects;
            self.elections_seen = elections;
            self.resumed = Timestamp::now();
        } else if elections != self.elections_seen {
            // A consumer leader was elected: what was stored before the election may have been
            // delivered by the old leader without the new one knowing.
            self.elections_seen = elections;
            self.resumed = self.elections.resumed(self.resumed);
        } else if meta.consumer_sequence <= self.consumer_sequence {
            // Numbered again: a new consumer leader hands out again what the old one delivered
            // (and may have counted nowhere). Messages stored until now may be repeats.
            tracing::info!(
                consumer = %self.durable,
                sequence = meta.consumer_sequence,
                highest = self.consumer_sequence,
                "consumer sequence went back (a consumer leader change); checking marks of earlier messages"
            );
            self.resumed = Timestamp::now();
        }
        self.consumer_sequence = meta.consumer_sequence;
        let info = DeliveryInfo {
            stream: self.stream.clone(),
            consumer: self.durable.clone(),
            stream_sequence: meta.stream_sequence,
            consumer_sequence: meta.consumer_sequence,
            delivered: meta.delivered.max(1),
            published: meta.published,
            resumed: Some(self.resumed),
        };
        let headers = headers_from(message.headers.as_ref(), &mut self.texts);
        let acker = NatsAcker {
            transport: self.transport.clone(),
            reply,
        };
        // A consumer's messages mostly share a few subjects: the last one is kept, valid and
        // shared, so that a delivery copies and validates no subject text.
        let received = message.subject.as_str();
        let subject = match &self.subject {
            Some(last) if last.as_str() == received => Some(last.clone()),
            _ => Subject::new(received).ok().inspect(|s| self.subject = Some(s.clone())),
        };
        Ok(match subject {
            Some(subject) => Delivery::stored(subject, headers, message.payload, info, acker, None),
            // Not a valid subject of ours: kept as received, the envelope reports it.
            None => Delivery::new(received.to_owned(), headers, message.payload, info, acker),
        })
    }
}

/// What a JetStream delivery's reply subject says about it: `$JS.ACK.<stream>.<consumer>.
/// <delivered>.<stream seq>.<consumer seq>.<published nanos>.<pending>`, or the ADR-15 form
/// with `<domain>.<account hash>` before the stream and optional tokens after `<pending>`.
/// Read in place (async-nats's `Message::info` converts the time through 128-bit arithmetic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AckMeta {
    delivered: u64,
    stream_sequence: u64,
    consumer_sequence: u64,
    published: Timestamp,
}

impl AckMeta {
    fn parse(reply: &str) -> Option<Self> {
        let rest = reply.strip_prefix("$JS.ACK.")?.as_bytes();
        // Where each of the first 9 dot-separated tokens starts and ends, in one pass.
        let mut tokens = [(0usize, 0usize); 9];
        let mut n = 0;
        let mut start = 0;
        for (i, &b) in rest.iter().enumerate() {
            if b == b'.' {
                if let Some(t) = tokens.get_mut(n) {
                    *t = (start, i);
                }
                n += 1;
                start = i + 1;
            }
        }
        if let Some(t) = tokens.get_mut(n) {
            *t = (start, rest.len());
        }
        n += 1;
        // The five numbers follow the stream and the consumer (and, in the newer form, the
        // domain and the account hash).
        let numbers = match n {
            7 => &tokens[2..7],
            n if n >= 9 => &tokens[4..9],
            _ => return None,
        };
        // Digits only (`u64::from_str` also takes a leading `+`; the server never writes one).
        let number = |&(from, to): &(usize, usize)| -> Option<u64> {
            let digits = rest.get(from..to)?;
            if digits.is_empty() {
                return None;
            }
            digits.iter().try_fold(0u64, |acc, &d| {
                let d = d.wrapping_sub(b'0');
                (d < 10).then_some(())?;
                acc.checked_mul(10)?.checked_add(u64::from(d))
            })
        };
        let nanos = i64::try_from(number(&numbers[3])?).ok()?;
        Some(Self {
            delivered: number(&numbers[0])?,
            stream_sequence: number(&numbers[1])?,
            consumer_sequence: number(&numbers[2])?,
            published: Timestamp::from_unix_nanos(i128::from(nanos))?,
        })
    }
}

impl Consumer for NatsConsumer {
    type Acker = NatsAcker;

    fn created(&self) -> Option<Timestamp> {
        Some(self.created)
    }

    async fn next(&mut self) -> Result<Delivery<NatsAcker>, TransportError> {
        loop {
            let messages = match &mut self.messages {
                Some(m) => m,
                None => match self.start_pull().await {
                    Ok(m) => self.messages.insert(m),
                    Err(e @ (TransportError::ConsumerNotFound { .. } | TransportError::StreamNotFound { .. })) => {
                        return Err(e);
                    }
                    Err(e) => {
                        if let Some(interruptions) = self.trouble.count() {
                            tracing::warn!(consumer = %self.durable, error = %e, interruptions, "pull not started; retrying");
                        }
                        if self.should_check() {
                            self.check_exists_briefly().await?;
                        }
                        self.pause().await;
                        continue;
                    }
                },
            };
            match messages.next().await {
                Some(Ok(message)) => {
                    // A run of interruptions is always followed by a pause: no failure, no run
                    // to end (and nothing is written per message).
                    if self.trouble.failures != 0 {
                        self.trouble.failures = 0;
                        if let Some((interruptions, since)) = self.trouble.over() {
                            tracing::info!(
                                consumer = %self.durable, interruptions, after = ?since.elapsed(),
                                "pulling again: messages arrive"
                            );
                        }
                    }
                    match self.delivery(message) {
                        Ok(d) => return Ok(d),
                        Err(e) => {
                            tracing::warn!(consumer = %self.durable, error = %e, "skipping an unusable message");
                            continue;
                        }
                    }
                }
                Some(Err(e)) => match e.kind() {
                    MessagesErrorKind::ConsumerDeleted => {
                        self.messages = None;
                        return Err(TransportError::ConsumerNotFound {
                            stream: self.stream.to_string(),
                            consumer: self.durable.to_string(),
                        });
                    }
                    MessagesErrorKind::PushBasedConsumer | MessagesErrorKind::RequestLimitExceeded => {
                        self.messages = None;
                        return Err(TransportError::Other(format!("consumer `{}`: {e}", self.durable)));
                    }
                    _ => {
                        if let Some(interruptions) = self.trouble.count() {
                            tracing::warn!(consumer = %self.durable, error = %e, interruptions, "pull interrupted; restarting it");
                        }
                        self.interrupted();
                        if self.should_check() {
                            self.check_exists_briefly().await?;
                        }
                        self.pause().await;
                    }
                },
                None => {
                    tracing::debug!(consumer = %self.durable, "pull ended; restarting it");
                    self.interrupted();
                    self.pause().await;
                }
            }
        }
    }
}

/// Acknowledges one NATS delivery (`+ACK`, `-NAK`, `+TERM`, `+WPI` to its reply subject).
#[derive(Clone)]
pub struct NatsAcker {
    transport: NatsTransport,
    reply: async_nats::Subject,
}

impl std::fmt::Debug for NatsAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsAcker")
    }
}

impl NatsAcker {
    async fn send(&self, kind: AckKind) -> Result<(), TransportError> {
        self.transport
            .client()
            .publish(self.reply.clone(), kind.into())
            .await
            .map_err(|e| TransportError::Connection(format!("acknowledgement: {e}")))
    }
}

impl Acker for NatsAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        self.send(AckKind::Ack).await
    }
    async fn nak(&self, delay: Option<Duration>) -> Result<(), TransportError> {
        // A delay past what the server reads (64-bit nanoseconds; a retry policy's `Duration::MAX`)
        // is sent as the longest it can.
        let delay = delay
            .filter(|d| !d.is_zero())
            .map(|d| d.min(crate::transport::MAX_DURATION));
        self.send(AckKind::Nak(delay)).await
    }
    async fn term(&self) -> Result<(), TransportError> {
        self.send(AckKind::Term).await
    }
    async fn in_progress(&self) -> Result<(), TransportError> {
        self.send(AckKind::Progress).await
    }
}

/// How many messages each pull request asks for: twice the `prefetch` (async-nats sends the next
/// request when half of one has arrived, so a whole prefetch is still on its way then), at most
/// `own` (`NatsOptions::pull_batch`), and `own` without a prefetch; never 0.
fn pull_batch(prefetch: Option<usize>, own: usize) -> usize {
    prefetch.map_or(own, |p| p.saturating_mul(2).min(own)).max(1)
}

/// The idle heartbeat of a consumer's pull requests: `own` (`NatsOptions::pull_heartbeat`), or a
/// quarter of the consumer's inactive threshold (`Duration::ZERO`: none) if that is shorter, at
/// least [`MIN_HEARTBEAT`].
///
/// A pull request can be lost on its way (in a super-cluster, one sent across a gateway before
/// the consumer leader's interest crossed it; a pull now starts only once the leader answered
/// [`NatsConsumer::reach_leader`]'s request). A lost pull is sent again once two heartbeats are
/// missed; the server removes a consumer nobody pulls for its inactive threshold, so that must
/// happen well within the threshold, or the consumer is removed under a handle waiting on it.
fn pull_heartbeat(own: Duration, inactive_threshold: Duration) -> Duration {
    if inactive_threshold.is_zero() {
        own
    } else {
        own.min(inactive_threshold / 4).max(MIN_HEARTBEAT)
    }
}

/// The shortest idle heartbeat [`pull_heartbeat`] derives from an inactive threshold.
const MIN_HEARTBEAT: Duration = Duration::from_millis(50);

#[cfg(test)]
mod tests {
    use super::*;

    fn at(rfc3339: &str) -> Timestamp {
        rfc3339.parse().expect("timestamp")
    }

    #[test]
    fn an_election_resumes_the_pull_at_its_own_time() {
        let e = Elections::default();
        let opened = at("2026-12-06T21:00:00.500Z");
        // The election that came with the consumer's creation, announced after the handle opened.
        e.record(br#"{"type":"io.nats.jetstream.advisory.v1.consumer_leader_elected","id":"x","timestamp":"2026-12-06T21:00:00.400123456Z","stream":"S","consumer":"C","leader":"n1"}"#);
        assert_eq!(e.count.load(Ordering::Acquire), 1);
        assert_eq!(
            e.resumed(opened),
            opened,
            "an election before the handle opened moves nothing"
        );
        // A later one: stored before it may have been delivered by the old leader.
        e.record(br#"{"timestamp":"2026-12-06T21:00:07.250Z","leader":{"name":"n2"}}"#);
        assert_eq!(e.resumed(opened), at("2026-12-06T21:00:07.250Z"));
        // Advisories arriving out of order keep the latest election.
        e.record(br#"{"timestamp":"2026-12-06T21:00:03Z"}"#);
        assert_eq!(e.resumed(opened), at("2026-12-06T21:00:07.250Z"));
        assert_eq!(e.count.load(Ordering::Acquire), 3);
    }

    #[test]
    fn an_election_without_a_readable_time_resumes_the_pull_now() {
        let e = Elections::default();
        let opened = at("2026-12-06T21:00:00Z");
        e.record(b"not json");
        let before = Timestamp::now();
        assert!(e.resumed(opened) >= before);
        // Once unreadable, always the delivery's own time: never earlier than it should be.
        e.record(br#"{"timestamp":"2026-12-06T21:00:07Z"}"#);
        assert!(e.resumed(opened) >= before);
    }

    #[test]
    fn a_short_inactive_threshold_shortens_the_heartbeat() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(pull_heartbeat(s(1), Duration::ZERO), s(1));
        assert_eq!(pull_heartbeat(s(1), s(300)), s(1));
        assert_eq!(pull_heartbeat(s(1), s(4)), s(1));
        // two heartbeats missed and the pull sent again within half the threshold
        assert_eq!(pull_heartbeat(s(1), s(1)), ms(250));
        assert_eq!(pull_heartbeat(ms(100), s(1)), ms(100));
        assert_eq!(pull_heartbeat(s(1), ms(40)), MIN_HEARTBEAT);
    }

    #[test]
    fn a_pull_asks_for_twice_the_prefetch_within_the_batch() {
        // The service's prefetch is 8 per place of concurrency.
        assert_eq!(pull_batch(Some(8), 200), 16);
        assert_eq!(pull_batch(Some(128), 200), 200);
        assert_eq!(pull_batch(None, 200), 200);
        assert_eq!(pull_batch(Some(usize::MAX), 200), 200);
        assert_eq!(pull_batch(Some(0), 200), 1);
        assert_eq!(pull_batch(None, 0), 1);
    }

    #[test]
    fn ack_subjects_are_read_in_both_forms() {
        let at = |nanos: i128| Timestamp::from_unix_nanos(nanos).unwrap();
        for (reply, want) in [
            (
                "$JS.ACK.DOCUMENT_EVENTS.bench.1.20.7.1733068800123456789.42",
                (1, 20, 7, 1733068800123456789),
            ),
            (
                "$JS.ACK.hub.ACCHASH.S.c.3.4.5.1733068800000000000.0",
                (3, 4, 5, 1733068800000000000),
            ),
            ("$JS.ACK.hub.ACCHASH.S.c.3.4.5.1.0.token", (3, 4, 5, 1)),
            ("$JS.ACK._.ACCHASH.S.c.3.4.5.0.0.token.more", (3, 4, 5, 0)),
            ("$JS.ACK.S.c.1.18446744073709551615.2.0.0", (1, u64::MAX, 2, 0)),
        ] {
            let got = AckMeta::parse(reply).unwrap_or_else(|| panic!("{reply}"));
            assert_eq!(
                got,
                AckMeta {
                    delivered: want.0,
                    stream_sequence: want.1,
                    consumer_sequence: want.2,
                    published: at(want.3),
                },
                "{reply}"
            );
        }
        for bad in [
            "",
            "_INBOX.x",
            "$JS.ACK.S.c.1.2.3",
            "$JS.ACK.S.c.1.2.3.4.5.6",
            "$JS.ACK.S.c.x.2.3.4.5",
            "$JS.ACK.S.c.+1.2.3.4.5",
            "$JS.ACK.S.c.1.2.3.-4.5",
            "$JS.ACK.S.c.1.2.3.99999999999999999999.5",
        ] {
            assert_eq!(AckMeta::parse(bad), None, "{bad}");
        }
    }
}
