//! The transport contract: streams, publishing with de-duplication, durable consumers, and
//! key-value buckets.
//!
//! The traits map one to one onto NATS JetStream, and [`memory`] implements the same semantics in
//! process. A behaviour that differs between the two is a bug; the conformance suite
//! (`cim_integrate_runtime::conformance`, feature `testing`) is the one suite both must pass.
//!
//! | concept | trait / type | JetStream |
//! | --- | --- | --- |
//! | stream | [`Transport::ensure_stream`], [`StreamSpec`] | stream, limits retention, duplicate window |
//! | publish | [`Transport::publish`] -> [`Transport::AckFuture`] | publish with `Nats-Msg-Id`, then await the PubAck |
//! | durable consumer | [`Transport::consumer`], [`ConsumerSpec`], [`Consumer::next`] | durable pull consumer, explicit ack |
//! | ack / nak / term | [`Delivery::ack`], [`Delivery::nak`], [`Delivery::term`] | `+ACK`, `-NAK {"delay"}`, `+TERM` |
//! | key-value | [`Transport::key_value`], [`KeyValue`] | KV bucket (`KV_<bucket>` stream) |
//! | request/reply | [`Transport::request`], [`Transport::serve`], [`Responder`] | core request, queue subscription |
//!
//! A deployment prefix (`prod` -> `prod.document.created`, `PROD_DOCUMENT_EVENTS`) is a decorator
//! over any transport, [`Prefixed`]; nothing above the transport spells prefixed names.

use crate::envelope::{Envelope, EnvelopeError, ReceivedFrom};
use crate::headers::Headers;
use crate::subject::{Subject, SubjectPattern};
use crate::timestamp::Timestamp;
use bytes::Bytes;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

pub mod any;
pub mod deploy;
mod kv;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod prefixed;
pub(crate) mod provision;
mod publisher;
mod request;

pub use deploy::{AssetSettings, Deployment, Placement};
pub use kv::{KeyValue, KeyValueNow, KvEntry, KvError, KvSpec, TOMBSTONE_AGE, check_bucket_name, check_key};
pub use prefixed::Prefixed;
pub use provision::Provisioner;
pub use publisher::PipelinedPublisher;
pub use request::{IncomingRequest, Reply, ReplyHandle, Request, Responder, check_queue_group};

/// The default JetStream duplicate window (2 minutes).
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// The default NATS max payload (1 MiB). The in-memory transport enforces the same limit.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;

/// The longest duration a setting may name (an ack wait, a back-off delay, an age, a window):
/// JetStream keeps durations as signed 64-bit nanoseconds, about 292 years. Longer ones
/// (`Duration::MAX` for "never") are refused by `validate`, on every transport, rather than sent
/// to a server that cannot read them.
pub const MAX_DURATION: Duration = Duration::from_nanos(i64::MAX as u64);

/// `Err` naming the first setting of `asset` (`(name, value)`, `None` for one not set) that is
/// longer than [`MAX_DURATION`].
pub(crate) fn check_durations<'a>(
    asset: &str,
    settings: impl IntoIterator<Item = (&'a str, Option<Duration>)>,
) -> Result<(), String> {
    match settings
        .into_iter()
        .find_map(|(what, d)| d.filter(|d| *d > MAX_DURATION).map(|d| (what, d)))
    {
        Some((what, d)) => Err(format!(
            "`{asset}`: {what} ({d:?}) is longer than JetStream can hold (at most {MAX_DURATION:?}, \
             about 292 years); for \"never\", give a long finite duration"
        )),
        None => Ok(()),
    }
}

/// `(major, minor, patch)` of a nats-server version (`2.9.10`, `2.11.0-RC.1`); a part that is
/// missing or not a number reads as 0.
#[cfg(any(feature = "nats", feature = "testing"))]
pub(crate) fn version_numbers(version: &str) -> (u32, u32, u32) {
    let mut parts = version.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let mut next = || parts.next().unwrap_or(0);
    (next(), next(), next())
}

/// What went wrong in a transport operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// No stream captures the subject (JetStream: "no responders").
    #[error("no stream captures subject `{subject}`; call ensure_stream for its domain first")]
    NoStream {
        /// The subject published to.
        subject: String,
    },
    /// The stream does not exist.
    #[error("stream `{stream}` does not exist")]
    StreamNotFound {
        /// The stream's name.
        stream: String,
    },
    /// A stream exists with settings that differ from the requested ones. It is never modified.
    #[error(
        "stream `{stream}` exists with different settings ({detail}); it was left unchanged: reconcile it by hand or use another name"
    )]
    StreamConflict {
        /// The stream's name.
        stream: String,
        /// What differs.
        detail: String,
    },
    /// The stream's subjects overlap those of another stream.
    #[error("stream `{stream}` would overlap stream `{other}` on `{pattern}`; streams must capture disjoint subjects")]
    StreamOverlap {
        /// The stream being created.
        stream: String,
        /// The existing stream.
        other: String,
        /// The overlapping pattern.
        pattern: String,
    },
    /// A durable consumer exists with a filter or deliver policy that cannot be changed.
    #[error("consumer `{consumer}` on `{stream}` exists with different settings ({detail}); delete it to change them")]
    ConsumerConflict {
        /// The stream.
        stream: String,
        /// The durable name.
        consumer: String,
        /// What differs.
        detail: String,
    },
    /// The consumer does not exist (any more).
    #[error("consumer `{consumer}` on `{stream}` does not exist")]
    ConsumerNotFound {
        /// The stream.
        stream: String,
        /// The durable name.
        consumer: String,
    },
    /// The payload is larger than the server accepts.
    #[error("payload of {size} bytes exceeds the maximum of {max}")]
    PayloadTooLarge {
        /// Payload size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// An argument is invalid (a name, a duration, a header).
    #[error("invalid argument: {0}")]
    Invalid(String),
    /// The operation did not complete in time; it may or may not have taken effect.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Connection-level failure (disconnected, closed, refused).
    #[error("connection: {0}")]
    Connection(String),
    /// JetStream, a stream, a bucket or a consumer exists but cannot serve right now: no
    /// responders, no leader (an election is under way or a node holding it is down), offline.
    /// Transient: retry later; never read it as "does not exist".
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// Any other failure reported by the server or client.
    #[error("{0}")]
    Other(String),
    /// The server refused to let this connection publish to `subject` (a permissions violation:
    /// the user's publish permissions do not allow it). Transient, like unavailability: the work
    /// that published waits (a handler is deferred, never dead-lettered) until an operator grants
    /// the permission; provisioning reports it at once.
    #[error(
        "permission denied: the server refused a publish to `{subject}`; allow it in the user's publish permissions"
    )]
    PermissionDenied {
        /// The refused subject (a JetStream API subject for a refused API request).
        subject: String,
    },
    /// JetStream is not enabled where this connection could use it: the server runs without it
    /// and nothing else answered the JetStream API, or the account has none. Transient for the
    /// work that waits for it (an operator's fix makes it succeed); provisioning reports it at
    /// once.
    #[error(
        "JetStream is not enabled {detail}: start nats-server with `-js` (or a `jetstream {{}}` block in its configuration) and, with accounts, enable it for the account (`jetstream: enabled`)"
    )]
    JetStreamDisabled {
        /// Where: on which server, or for the account.
        detail: String,
    },
    /// The account has reached one of its JetStream limits on assets: its most streams
    /// (10027, a key-value bucket is a stream too) or a stream's most consumers (10026). Transient
    /// for the work that waits for it (an operator raising the limit, or removing what is no longer
    /// used, ends it: a handler publishing into a new domain is deferred, never dead-lettered);
    /// provisioning reports it at once.
    #[error(
        "JetStream limit reached: {detail}; raise the account's limit (`max_streams` or `max_consumers` in its `jetstream` block, or its JWT's limits) or remove streams or consumers no longer used"
    )]
    LimitReached {
        /// What was refused, and the server's words.
        detail: String,
    },
    /// Nobody serves the subject of a request (no member of any queue group is subscribed).
    #[error("no responders for `{subject}`: no service serves it (is one running?)")]
    NoResponders {
        /// The request's subject.
        subject: String,
    },
}

/// The class of a [`TransportError`]: what a caller should do about it. Exhaustive on purpose:
/// what a new error needs beyond these classes goes to [`Other`](Self::Other).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Infrastructure trouble (timeout, lost connection, no leader, no responders, a stream not
    /// provisioned yet): retry later; never dead-letter for it.
    Transient,
    /// Something is not there (a stream, a consumer): retrying the same call will not help, but
    /// provisioning it will.
    NotFound,
    /// An asset exists with other settings, or overlaps another.
    Conflict,
    /// The request itself is wrong (an argument, a payload too large): it can never succeed.
    Invalid,
    /// Anything else the server or client reported.
    Other,
}

impl TransportError {
    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Timeout(_)
            | Self::Connection(_)
            | Self::Unavailable(_)
            | Self::NoStream { .. }
            | Self::PermissionDenied { .. }
            | Self::JetStreamDisabled { .. }
            | Self::LimitReached { .. } => ErrorKind::Transient,
            Self::StreamNotFound { .. } | Self::ConsumerNotFound { .. } | Self::NoResponders { .. } => {
                ErrorKind::NotFound
            }
            Self::StreamConflict { .. } | Self::StreamOverlap { .. } | Self::ConsumerConflict { .. } => {
                ErrorKind::Conflict
            }
            Self::PayloadTooLarge { .. } | Self::Invalid(_) => ErrorKind::Invalid,
            Self::Other(_) => ErrorKind::Other,
        }
    }

    /// `true` if retrying the same operation later may succeed: timeouts, lost connections,
    /// unavailable leaders, and a subject whose stream is not provisioned yet.
    pub fn is_transient(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// `true` for a deployment's misconfiguration that only an operator ends: a refused
    /// permission ([`PermissionDenied`](Self::PermissionDenied)), JetStream not enabled
    /// ([`JetStreamDisabled`](Self::JetStreamDisabled)), an account at its limit of streams or
    /// consumers ([`LimitReached`](Self::LimitReached)). Transient for work that can wait (a
    /// handler is deferred, not dead-lettered), but not worth waiting out where someone is told
    /// at once: provisioning at start, an operator's command.
    pub fn needs_operator(&self) -> bool {
        matches!(
            self,
            Self::PermissionDenied { .. } | Self::JetStreamDisabled { .. } | Self::LimitReached { .. }
        )
    }

    /// `true` if the same operation with the same arguments can never succeed, however often it
    /// is retried: a payload over the limit, an invalid argument (a name, a header), settings
    /// that conflict with an existing stream or consumer. Callers give up (or change what they
    /// send) instead of retrying.
    ///
    /// Not permanent: infrastructure trouble ([`is_transient`](Self::is_transient)), including a
    /// publish that no stream captures ([`NoStream`](Self::NoStream): streams are provisioned on
    /// demand, so it may appear), and [`Other`](Self::Other) failures whose cause is unknown.
    pub fn is_permanent(&self) -> bool {
        matches!(
            self,
            Self::PayloadTooLarge { .. }
                | Self::Invalid(_)
                | Self::StreamConflict { .. }
                | Self::StreamOverlap { .. }
                | Self::ConsumerConflict { .. }
        )
    }
}

/// How a stream stores its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Storage {
    /// On disk (the default; survives a server restart).
    #[default]
    File,
    /// In server memory.
    Memory,
}

/// A stream to provision: one per domain (`{DOMAIN}_EVENTS` on `{domain}.>`), plus the
/// dead-letter stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamSpec {
    /// Stream name: `[A-Za-z0-9_-]+`.
    pub name: String,
    /// Captured subjects.
    pub subjects: Vec<SubjectPattern>,
    /// Replicas, placement and storage; what is left open comes from the transport's
    /// [`Deployment`].
    pub settings: AssetSettings,
    /// Window in which a second publish with the same `Nats-Msg-Id` is dropped.
    pub duplicate_window: Duration,
    /// Messages older than this are removed; `None` keeps them (limits retention).
    pub max_age: Option<Duration>,
}

impl StreamSpec {
    /// A stream with default settings (2-minute duplicate window, no max age; replicas,
    /// placement and storage as the deployment says).
    pub fn new(name: impl Into<String>, subjects: Vec<SubjectPattern>) -> Self {
        Self {
            name: name.into(),
            subjects,
            settings: AssetSettings::default(),
            duplicate_window: DEFAULT_DUPLICATE_WINDOW,
            max_age: None,
        }
    }

    /// The stream of a domain: `DOCUMENT_EVENTS` on `document.>` (or `{prefix}.document.>`).
    pub fn for_domain(domain: &str, prefix: Option<&Subject>) -> Result<Self, TransportError> {
        let invalid = |e| TransportError::Invalid(format!("domain `{domain}`: {e}"));
        crate::subject::check_token(domain).map_err(invalid)?;
        let pattern = SubjectPattern::new(format!("{domain}.>"))
            .and_then(|p| p.under(prefix))
            .map_err(invalid)?;
        let name = prefixed_name(
            prefix,
            &format!("{}_EVENTS", domain.to_ascii_uppercase().replace('-', "_")),
        );
        Ok(Self::new(name, vec![pattern]))
    }

    /// Sets the duplicate window.
    pub fn duplicate_window(mut self, window: Duration) -> Self {
        self.duplicate_window = window;
        self
    }

    /// Sets the storage kind (instead of the deployment's).
    pub fn storage(mut self, storage: Storage) -> Self {
        self.settings.storage = Some(storage);
        self
    }

    /// Sets the replicas (instead of the deployment's).
    pub fn replicas(mut self, n: u8) -> Self {
        self.settings.replicas = Some(n);
        self
    }

    /// Sets the placement (instead of the deployment's).
    pub fn placement(mut self, placement: Placement) -> Self {
        self.settings.placement = Some(placement);
        self
    }

    /// This spec with what it leaves open taken from `deployment`.
    pub fn deployed(&self, deployment: &Deployment) -> Self {
        let mut settings = self.settings.or(&deployment.stream_settings(&self.name));
        if self.max_age.is_some() {
            // The stream's own max age is part of its meaning; the policy's only fills a gap.
            settings.max_age = None;
        }
        Self {
            settings,
            ..self.clone()
        }
    }

    /// Sets the maximum message age.
    pub fn max_age(mut self, max_age: Duration) -> Self {
        self.max_age = Some(max_age);
        self
    }

    /// Checks the name and settings before they reach a server.
    pub fn validate(&self) -> Result<(), TransportError> {
        check_name("stream", &self.name)?;
        self.settings.validate(&self.name)?;
        if self.subjects.is_empty() {
            return Err(TransportError::Invalid(format!(
                "stream `{}` has no subjects",
                self.name
            )));
        }
        if let Some(p) = self.subjects.iter().find(|p| p.as_str().starts_with(['*', '>'])) {
            // Current nats-server versions refuse these (they would overlap the `$JS.API`).
            return Err(TransportError::Invalid(format!(
                "stream `{}`: subject `{p}` starts with a wildcard; streams capture one domain (`document.>`)",
                self.name
            )));
        }
        if self.duplicate_window.is_zero() {
            return Err(TransportError::Invalid(format!(
                "stream `{}`: duplicate window must be positive",
                self.name
            )));
        }
        check_durations(
            &self.name,
            [
                ("duplicate window", Some(self.duplicate_window)),
                ("max_age", self.max_age),
            ],
        )
        .map_err(TransportError::Invalid)?;
        if let Some(age) = self.max_age.or(self.settings.max_age)
            && age < self.duplicate_window
        {
            return Err(TransportError::Invalid(format!(
                "stream `{}`: max_age ({age:?}) must not be shorter than the duplicate window ({:?})",
                self.name, self.duplicate_window
            )));
        }
        Ok(())
    }

    /// Differences in meaning between this spec and an existing stream's (subjects, duplicate
    /// window, max age), or `None`. Deployment settings are compared by
    /// [`AssetSettings::drift`].
    pub fn differences(&self, existing: &StreamSpec) -> Option<String> {
        let mut d = Vec::new();
        let mut mine: Vec<&str> = self.subjects.iter().map(|s| s.as_str()).collect();
        let mut theirs: Vec<&str> = existing.subjects.iter().map(|s| s.as_str()).collect();
        mine.sort_unstable();
        theirs.sort_unstable();
        if mine != theirs {
            d.push(format!("subjects {theirs:?}, wanted {mine:?}"));
        }
        if self.duplicate_window != existing.duplicate_window {
            d.push(format!(
                "duplicate window {:?}, wanted {:?}",
                existing.duplicate_window, self.duplicate_window
            ));
        }
        if self.max_age != existing.max_age {
            d.push(format!("max age {:?}, wanted {:?}", existing.max_age, self.max_age));
        }
        (!d.is_empty()).then(|| d.join("; "))
    }
}

/// A stream name under an optional deployment prefix: `prod.eu` + `DOCUMENT_EVENTS` =
/// `PROD_EU_DOCUMENT_EVENTS`.
pub fn prefixed_name(prefix: Option<&Subject>, base: &str) -> String {
    match prefix {
        Some(p) => format!("{}_{base}", p.as_str().to_ascii_uppercase().replace(['.', '-'], "_")),
        None => base.to_owned(),
    }
}

pub(crate) fn check_name(what: &str, name: &str) -> Result<(), TransportError> {
    if name.is_empty()
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(TransportError::Invalid(format!(
            "{what} name `{}` must be 1-255 characters of A-Z, a-z, 0-9, `_`, `-`",
            name.chars().take(64).collect::<String>()
        )));
    }
    Ok(())
}

/// A message to publish: subject, headers and payload. A `Nats-Msg-Id` header makes the publish
/// idempotent within the stream's duplicate window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundMessage {
    /// Where to publish.
    pub subject: Subject,
    /// Headers, including identity headers.
    pub headers: Headers,
    /// Payload bytes.
    pub payload: Bytes,
}

impl OutboundMessage {
    /// The de-duplication id, if any.
    pub fn msg_id(&self) -> Option<&str> {
        self.headers.get(crate::headers::NATS_MSG_ID)
    }
}

impl OutboundMessage {
    /// `env` with the opt-in *compact identity* ([`Envelope::to_compact_headers`]): a root message
    /// carries `Nats-Msg-Id` and `X-Event-Type` only, any other message the full identity
    /// headers. Receivers built on this crate rebuild the same identity; foreign consumers read
    /// the message id from `Nats-Msg-Id`, treat the message as its own correlation and
    /// causation, take the version from the payload and the time from the stream. The default,
    /// [`From<&Envelope>`](#impl-From%3C%26Envelope%3E-for-OutboundMessage), keeps every header.
    pub fn compact(env: &Envelope) -> Self {
        Self {
            subject: env.subject().clone(),
            headers: traced(env.to_compact_headers()),
            payload: env.payload().clone(),
        }
    }
}

/// `headers` with the current span's trace context (feature `otel`; see
/// [`trace_context`](crate::trace_context)).
pub(crate) fn traced(headers: Headers) -> Headers {
    #[cfg(feature = "otel")]
    let headers = {
        let mut headers = headers;
        crate::trace_context::inject(&mut headers);
        headers
    };
    headers
}

impl From<&Envelope> for OutboundMessage {
    fn from(env: &Envelope) -> Self {
        Self {
            subject: env.subject().clone(),
            headers: traced(env.to_headers()),
            payload: env.payload().clone(),
        }
    }
}

impl From<Envelope> for OutboundMessage {
    fn from(env: Envelope) -> Self {
        let (subject, headers, payload) = env.into_wire();
        Self {
            subject,
            headers: traced(headers),
            payload,
        }
    }
}

/// The stream's acknowledgement of a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishAck {
    /// The stream that stored the message (shared: every acknowledgement of one stream holds
    /// the same name, as [`DeliveryInfo::stream`] does).
    pub stream: Arc<str>,
    /// Its sequence in the stream (for a duplicate: the original's sequence).
    pub sequence: u64,
    /// `true` if a message with the same `Nats-Msg-Id` was already stored within the window;
    /// nothing new was stored.
    pub duplicate: bool,
}

/// Where a new durable consumer starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DeliverPolicy {
    /// From the first message still in the stream.
    #[default]
    All,
    /// Only messages published after the consumer was created.
    New,
}

/// A durable pull consumer: one per handler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerSpec {
    /// The stream to read.
    pub stream: String,
    /// Durable name, stable across restarts and releases.
    pub durable: String,
    /// Only subjects matching this are delivered.
    pub filter: SubjectPattern,
    /// Where a new consumer starts. Ignored when the consumer exists.
    pub deliver: DeliverPolicy,
    /// How long a delivery may stay unacknowledged before it is redelivered.
    pub ack_wait: Duration,
    /// Most deliveries of one message; `None` for unlimited. After the last, the message is
    /// no longer delivered to this consumer.
    pub max_deliver: Option<u32>,
    /// Per-delivery ack waits: the n-th delivery is redelivered if not acknowledged within
    /// `backoff[n-1]` (the last entry repeats). As in JetStream, a non-empty back-off takes the
    /// place of `ack_wait`. Empty: `ack_wait` for every delivery. Requires `max_deliver` greater
    /// than its length.
    pub backoff: Vec<Duration>,
    /// Most deliveries outstanding (unacknowledged) at once, across every handle on the durable.
    pub max_ack_pending: u32,
    /// Replicas of the consumer's state; `None` follows its stream.
    pub replicas: Option<u8>,
    /// Storage of the consumer's state; `None` follows its stream.
    pub storage: Option<Storage>,
    /// Remove the consumer once it has been idle this long: nobody waiting in
    /// [`Consumer::next`] (JetStream: no pull request waiting) and no delivery outstanding. For
    /// consumers whose owner may vanish without deleting them (a crashed process). `None`
    /// (the default) keeps the consumer until it is deleted. JetStream: the consumer's
    /// `inactive_threshold`, which servers from 2.9 apply to durables too.
    pub inactive_threshold: Option<Duration>,
    /// How far this handle reads ahead of [`Consumer::next`]: not part of the durable (processes
    /// on one durable may differ), but the scale of what one process takes of the durable's
    /// [`max_ack_pending`](Self::max_ack_pending). JetStream: each pull request asks for the
    /// smaller of twice this and `NatsOptions::pull_batch`, and async-nats sends the next request
    /// when half of one has arrived, so that a whole prefetch is still on its way (with a pull of
    /// just the prefetch, a fast handler outran it); the handle holds at most about three times
    /// this. `None` (the default): the transport's own batch. The embedded transport hands out
    /// one message per `next`.
    pub prefetch: Option<usize>,
}

impl ConsumerSpec {
    /// A consumer with defaults: deliver all, 30 s ack wait, unlimited deliveries, no back-off,
    /// 1000 outstanding.
    pub fn new(stream: impl Into<String>, durable: impl Into<String>, filter: SubjectPattern) -> Self {
        Self {
            stream: stream.into(),
            durable: durable.into(),
            filter,
            deliver: DeliverPolicy::All,
            ack_wait: Duration::from_secs(30),
            max_deliver: None,
            backoff: Vec::new(),
            max_ack_pending: 1000,
            replicas: None,
            storage: None,
            inactive_threshold: None,
            prefetch: None,
        }
    }

    /// Sets the deliver policy.
    pub fn deliver(mut self, deliver: DeliverPolicy) -> Self {
        self.deliver = deliver;
        self
    }
    /// Sets the ack wait.
    pub fn ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait;
        self
    }
    /// Sets the maximum number of deliveries.
    pub fn max_deliver(mut self, max_deliver: u32) -> Self {
        self.max_deliver = Some(max_deliver);
        self
    }
    /// Sets the redelivery back-off.
    pub fn backoff(mut self, backoff: Vec<Duration>) -> Self {
        self.backoff = backoff;
        self
    }
    /// Sets the maximum outstanding deliveries.
    pub fn max_ack_pending(mut self, n: u32) -> Self {
        self.max_ack_pending = n;
        self
    }
    /// Sets what this handle asks for ahead of [`Consumer::next`] (see
    /// [`prefetch`](Self::prefetch)); at least 1.
    pub fn prefetch(mut self, n: usize) -> Self {
        self.prefetch = Some(n.max(1));
        self
    }
    /// Sets the replicas of the consumer's state (default: its stream's).
    pub fn replicas(mut self, n: u8) -> Self {
        self.replicas = Some(n);
        self
    }

    /// Removes the consumer after it has been idle for `threshold` (see
    /// [`inactive_threshold`](Self::inactive_threshold)); must be positive.
    pub fn inactive_threshold(mut self, threshold: Duration) -> Self {
        self.inactive_threshold = Some(threshold);
        self
    }

    /// Checks names and settings before they reach a server.
    pub fn validate(&self) -> Result<(), TransportError> {
        check_name("stream", &self.stream)?;
        check_name("consumer", &self.durable)?;
        let bad = |m: String| Err(TransportError::Invalid(format!("consumer `{}`: {m}", self.durable)));
        if self.ack_wait.is_zero() {
            return bad("ack_wait must be positive".into());
        }
        if self.max_deliver == Some(0) {
            return bad("max_deliver must be at least 1".into());
        }
        if self.max_ack_pending == 0 {
            return bad("max_ack_pending must be at least 1".into());
        }
        if let Some(r) = self.replicas
            && !(1..=deploy::MAX_REPLICAS).contains(&r)
        {
            return bad(format!("replicas must be 1-{}, got {r}", deploy::MAX_REPLICAS));
        }
        if self.inactive_threshold.is_some_and(|t| t.is_zero()) {
            return bad("inactive_threshold must be positive".into());
        }
        let durations = [
            ("ack_wait", Some(self.ack_wait)),
            ("inactive_threshold", self.inactive_threshold),
        ];
        let backoff = self.backoff.iter().map(|d| ("a backoff delay", Some(*d)));
        check_durations(&self.durable, durations.into_iter().chain(backoff)).map_err(TransportError::Invalid)?;
        if !self.backoff.is_empty() {
            if self.backoff.iter().any(Duration::is_zero) {
                return bad("backoff delays must be positive".into());
            }
            if let Some(m) = self.max_deliver
                && (m as usize) <= self.backoff.len()
            {
                return bad(format!(
                    "max_deliver ({m}) must be greater than the number of backoff delays ({})",
                    self.backoff.len()
                ));
            }
        }
        Ok(())
    }

    /// How long the `delivered`-th delivery of a message may stay unacknowledged.
    pub fn redelivery_delay(&self, delivered: u64) -> Duration {
        match self.backoff.len() {
            0 => self.ack_wait,
            n => self.backoff[(delivered.saturating_sub(1) as usize).min(n - 1)],
        }
    }

    /// Settings of an existing consumer that cannot be changed in place, or `None`: its deliver
    /// policy. (Its filter can, where the server can: see [`Transport::consumer`].)
    pub fn immutable_differences(&self, existing: &ConsumerSpec) -> Option<String> {
        (self.deliver != existing.deliver)
            .then(|| format!("deliver policy {:?}, wanted {:?}", existing.deliver, self.deliver))
    }
}

/// Facts about one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryInfo {
    /// The stream.
    pub stream: Arc<str>,
    /// The consumer's durable name.
    pub consumer: Arc<str>,
    /// The message's sequence in the stream.
    pub stream_sequence: u64,
    /// This delivery's sequence in the consumer.
    pub consumer_sequence: u64,
    /// How many times this message has been delivered, this time included (1 the first time).
    pub delivered: u64,
    /// When the stream stored the message.
    pub published: Timestamp,
    /// When this consumer handle last began pulling, or resumed after the server may have lost
    /// delivery counts; `None` if the transport's counts cannot be lost (the embedded one).
    ///
    /// A server hands a message out again *as a first delivery* (`delivered` 1) when it lost the
    /// count of the earlier delivery: a consumer leader that dies before its delivered state is
    /// replicated, or a single server killed before writing it. So a message stored before this
    /// time may have been delivered before even if `delivered` is 1; the handler
    /// de-duplication reads its mark. On NATS: the opening of the handle, every interruption
    /// (missed heartbeats, a reconnect, a failed pull request), a consumer sequence that went
    /// back (a new consumer leader numbering again deliveries the old one made), and a new
    /// consumer leader announced by the server's leader-elected advisory (then the election's
    /// time, from the advisory: what was stored after it is counted by the new leader).
    pub resumed: Option<Timestamp>,
}

/// Acknowledges one delivery. Implemented by each transport.
pub trait Acker: Send + Sync + 'static {
    /// Done: never deliver again.
    fn ack(&self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Not done: deliver again after `delay` (at once if `None`), counting toward `max_deliver`.
    fn nak(&self, delay: Option<Duration>) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Never deliver again, not done (it was dead-lettered or is poison).
    fn term(&self) -> impl Future<Output = Result<(), TransportError>> + Send;
    /// Still working: restart the ack wait.
    fn in_progress(&self) -> impl Future<Output = Result<(), TransportError>> + Send;
}

/// One delivery of a stored message to a consumer, with its acknowledgement handle.
///
/// Exactly one of [`ack`](Self::ack), [`nak`](Self::nak) or [`term`](Self::term) ends it; each
/// takes `self`. A delivery dropped without either is redelivered after the ack wait.
///
/// A delivery is one pointer: its parts live in one allocation. A pipeline moves each delivery
/// a dozen times or more (out of the consumer, through the pull loop, into its dispatch and its
/// settle), and moving the parts themselves, about 180 bytes, cost more than the allocation.
pub struct Delivery<A>(Box<Parts<A>>);

/// What a [`Delivery`] holds.
struct Parts<A> {
    subject: DeliverySubject,
    headers: Headers,
    payload: Bytes,
    info: DeliveryInfo,
    acker: A,
    /// When an in-process transport handed it over, by tokio's clock (read there anyway).
    taken: Option<tokio::time::Instant>,
}

impl<A: std::fmt::Debug> std::fmt::Debug for Delivery<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = &*self.0;
        f.debug_struct("Delivery")
            .field("subject", &p.subject)
            .field("headers", &p.headers)
            .field("payload_len", &p.payload.len())
            .field("info", &p.info)
            .finish_non_exhaustive()
    }
}

/// A delivery's subject: as received, or a [`Subject`] a transport stored (valid, shared).
enum DeliverySubject {
    Received(String),
    Stored(Subject),
}

impl DeliverySubject {
    fn as_str(&self) -> &str {
        match self {
            Self::Received(s) => s,
            Self::Stored(s) => s.as_str(),
        }
    }

    /// The subject's text, owned.
    fn into_string(self) -> String {
        match self {
            Self::Received(s) => s,
            Self::Stored(s) => s.as_str().to_owned(),
        }
    }
}

impl std::fmt::Debug for DeliverySubject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl<A: Acker> Delivery<A> {
    /// Assembles a delivery (for transport implementations).
    pub fn new(subject: String, headers: Headers, payload: Bytes, info: DeliveryInfo, acker: A) -> Self {
        Self(Box::new(Parts {
            subject: DeliverySubject::Received(subject),
            headers,
            payload,
            info,
            acker,
            taken: None,
        }))
    }

    /// Assembles a delivery of a message stored with a valid subject (the embedded transport,
    /// and NATS for a subject it checked): nothing is copied, and [`envelope`](Self::envelope)
    /// does not validate it again. `taken`: when an in-process transport handed it over.
    pub(crate) fn stored(
        subject: Subject,
        headers: Headers,
        payload: Bytes,
        info: DeliveryInfo,
        acker: A,
        taken: Option<tokio::time::Instant>,
    ) -> Self {
        Self(Box::new(Parts {
            subject: DeliverySubject::Stored(subject),
            headers,
            payload,
            info,
            acker,
            taken,
        }))
    }

    /// When an in-process transport handed this delivery over (tokio's clock); `None` for a
    /// delivery from the network, which may wait in a prefetch buffer before it is handled.
    pub(crate) fn taken(&self) -> Option<tokio::time::Instant> {
        self.0.taken
    }

    /// The same delivery, in the same allocation, with its subject text and info as `f` leaves
    /// them (a transport that wraps another: a prefix stripped, the stream's name as its caller
    /// knows it); headers, payload, acknowledgement handle and when it was taken over are kept.
    /// The subject is then one as received, checked again when the envelope is read.
    pub(crate) fn reframed(mut self, f: impl FnOnce(&mut String, &mut DeliveryInfo)) -> Self {
        let p = &mut *self.0;
        let mut subject = std::mem::replace(&mut p.subject, DeliverySubject::Received(String::new())).into_string();
        f(&mut subject, &mut p.info);
        p.subject = DeliverySubject::Received(subject);
        self
    }

    /// The same delivery with another acknowledgement handle (a transport that wraps another's):
    /// the subject as it was checked and when it was taken over are kept.
    pub(crate) fn map_acker<B>(self, f: impl FnOnce(A) -> B) -> Delivery<B> {
        let p = *self.0;
        Delivery(Box::new(Parts {
            subject: p.subject,
            headers: p.headers,
            payload: p.payload,
            info: p.info,
            acker: f(p.acker),
            taken: p.taken,
        }))
    }

    /// The same delivery under another subject (a redriven message given back its original one).
    pub(crate) fn with_subject(mut self, subject: Subject) -> Self {
        self.0.subject = DeliverySubject::Stored(subject);
        self
    }

    /// The subject as received (not validated: a foreign publisher may use any NATS subject).
    pub fn subject(&self) -> &str {
        self.0.subject.as_str()
    }
    /// The headers as received.
    pub fn headers(&self) -> &Headers {
        &self.0.headers
    }
    /// The payload as received.
    pub fn payload(&self) -> &Bytes {
        &self.0.payload
    }
    /// Sequence numbers, delivery count, publish time.
    pub fn info(&self) -> &DeliveryInfo {
        &self.0.info
    }

    /// The envelope, with identity read from headers or derived (stably) from the stream position;
    /// see [`Envelope::from_received`].
    pub fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        let p = &*self.0;
        let from = || ReceivedFrom {
            stream: Some(p.info.stream.clone()),
            stream_sequence: Some(p.info.stream_sequence),
            published: Some(p.info.published),
        };
        match &p.subject {
            DeliverySubject::Received(s) => Envelope::from_received(s, &p.headers, p.payload.clone(), &from()),
            // Stamped headers (the embedded transport) need nothing of where the message came from.
            DeliverySubject::Stored(s) => Ok(match Envelope::from_stamped(s.clone(), &p.headers, p.payload.clone()) {
                Ok(envelope) => envelope,
                Err((subject, payload)) => Envelope::from_text(subject, &p.headers, payload, &from()),
            }),
        }
    }

    /// Acknowledges: the message is handled and is never delivered to this consumer again.
    pub async fn ack(self) -> Result<(), TransportError> {
        self.0.acker.ack().await
    }
    /// Negative acknowledgement: redeliver after `delay` (at once if `None`).
    pub async fn nak(self, delay: Option<Duration>) -> Result<(), TransportError> {
        self.0.acker.nak(delay).await
    }
    /// Terminates: never redeliver (after dead-lettering, or for poison messages).
    pub async fn term(self) -> Result<(), TransportError> {
        self.0.acker.term().await
    }
    /// Restarts the ack wait while a long handler is still working.
    pub async fn in_progress(&self) -> Result<(), TransportError> {
        self.0.acker.in_progress().await
    }
    /// Splits into the received parts and the acknowledgement handle.
    pub fn into_parts(self) -> (String, Headers, Bytes, DeliveryInfo, A) {
        let p = *self.0;
        (p.subject.into_string(), p.headers, p.payload, p.info, p.acker)
    }
}

/// A handle on a durable consumer. Several handles on one durable share its messages.
pub trait Consumer: std::fmt::Debug + Send + 'static {
    /// The acknowledgement handle of this transport.
    type Acker: Acker;
    /// Waits for the next delivery. Transient trouble (missed heartbeats, reconnects) is retried
    /// inside; an error means the consumer cannot go on (for example, it was deleted).
    ///
    /// Cancel-safe: dropping the returned future (e.g. in `tokio::time::timeout` or `select!`)
    /// loses no delivery.
    fn next(&mut self) -> impl Future<Output = Result<Delivery<Self::Acker>, TransportError>> + Send;

    /// When the server created this durable, by the clock that stamps stored messages
    /// ([`DeliveryInfo::published`]): its delivery counts start there, so a message stored after
    /// it and delivered once was never delivered to an earlier durable of that name. A transport
    /// that knows no earlier durable of the name delivered anything may report an earlier time:
    /// the embedded one reports [`Timestamp::UNIX_EPOCH`] for a name never used on the stream.
    /// `None` if unknown (the default), which makes the handler de-duplication check every
    /// delivery.
    fn created(&self) -> Option<Timestamp> {
        None
    }

    /// `true` if deliveries come from this process (the embedded transport), not over a
    /// connection. The pull loop then polls the consumer in its own task; otherwise (the
    /// default) a task of its own keeps the consumer polled beside the handlers, which on NATS
    /// turns deliveries into messages in parallel with their dispatch and keeps the pull requests
    /// and heartbeats served while handlers run.
    fn in_process(&self) -> bool {
        false
    }

    /// A delivery that is ready now, taken without waiting: `None` if none is ready, or if the
    /// consumer cannot tell without waiting (the default; an [`in_process`](Self::in_process)
    /// consumer answers). An error here is also returned by the next [`next`](Self::next).
    /// The pull loop takes a backlog this way, with no future per message.
    fn try_next(&mut self) -> Option<Result<Delivery<Self::Acker>, TransportError>> {
        None
    }
}

/// A message transport with JetStream semantics.
pub trait Transport: Clone + Send + Sync + 'static {
    /// A durable consumer handle.
    type Consumer: Consumer;
    /// A key-value bucket handle.
    type KeyValue: KeyValue;
    /// Resolves when the stream has acknowledged (persisted) a published message.
    type AckFuture: Future<Output = Result<PublishAck, TransportError>> + Send + 'static;

    /// The deployment policy this transport provisions under: replicas, placement and storage
    /// of what specs leave open, and the outstanding-delivery bound of durables.
    fn deployment(&self) -> &Deployment {
        static DEFAULT: std::sync::LazyLock<Deployment> = std::sync::LazyLock::new(Deployment::default);
        &DEFAULT
    }

    /// Creates the stream if it does not exist, with what the spec leaves open taken from the
    /// [`deployment`](Self::deployment). An existing stream with the same meaning is fine (other
    /// replicas, placement or storage are reported as drift and left alone); with other subjects,
    /// duplicate window or max age it is reported ([`TransportError::StreamConflict`]) and left
    /// unchanged. Subjects overlapping another stream are refused. The NATS transport retries
    /// transient failures (no stream leader yet during a failover) for up to a minute.
    fn ensure_stream(&self, spec: &StreamSpec) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Sends a message and returns a future for its acknowledgement, without waiting for it, so
    /// that many publishes can be in flight at once. Resolving the returned future is what
    /// confirms the message is stored.
    fn publish(&self, message: OutboundMessage)
    -> impl Future<Output = Result<Self::AckFuture, TransportError>> + Send;

    /// Opens (creating if needed) a durable consumer. An existing consumer with another deliver
    /// policy is reported ([`TransportError::ConsumerConflict`]); a changed filter, ack wait,
    /// max deliver, back-off and max pending are applied in place, and the durable keeps its
    /// position: a widened filter delivers the newly matched messages stored after it, not
    /// those before. On nats-server 2.9, which takes a changed filter and then delivers nothing,
    /// a changed filter is reported as a conflict instead. The NATS transport retries transient
    /// failures for up to a minute, as for [`ensure_stream`](Self::ensure_stream).
    fn consumer(&self, spec: &ConsumerSpec) -> impl Future<Output = Result<Self::Consumer, TransportError>> + Send;

    /// Deletes a durable consumer; its progress is lost.
    fn delete_consumer(&self, stream: &str, durable: &str) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Opens (creating if needed) a key-value bucket.
    fn key_value(&self, spec: &KvSpec) -> impl Future<Output = Result<Self::KeyValue, KvError>> + Send;

    /// Waits until everything sent so far has reached the server. Call before a process exits.
    fn flush(&self) -> impl Future<Output = Result<(), TransportError>> + Send;

    /// Sends a core request (not stored in any stream) and waits up to `timeout` for the first
    /// reply. [`TransportError::NoResponders`] if nobody serves the subject,
    /// [`TransportError::Timeout`] if nobody answered in time (the request may have been handled).
    ///
    /// The default implementation refuses: a transport without request/reply.
    fn request(
        &self,
        request: Request,
        timeout: Duration,
    ) -> impl Future<Output = Result<Reply, TransportError>> + Send {
        let _ = timeout;
        async move {
            Err(TransportError::Invalid(format!(
                "this transport has no request/reply (request to `{}`)",
                request.subject
            )))
        }
    }

    /// Joins the queue group `queue_group` on `pattern`: every request on a matching subject is
    /// delivered to exactly one member of each queue group. Returns once the subscription is in
    /// place, so a request sent afterwards reaches it.
    ///
    /// The default implementation refuses: a transport without request/reply.
    fn serve(
        &self,
        pattern: &SubjectPattern,
        queue_group: &str,
    ) -> impl Future<Output = Result<Responder, TransportError>> + Send {
        let message = format!("this transport has no request/reply (serve `{pattern}` in `{queue_group}`)");
        async move { Err(TransportError::Invalid(message)) }
    }

    /// Publishes and waits for the acknowledgement: the slow, one-round-trip-per-message path.
    fn publish_and_wait(
        &self,
        message: OutboundMessage,
    ) -> impl Future<Output = Result<PublishAck, TransportError>> + Send {
        async move { self.publish(message).await?.await }
    }
}

#[cfg(test)]
mod tests {
    use super::TransportError;

    /// A delivery is moved a dozen times or more per message (see [`super::Delivery`]): it stays
    /// one pointer on every transport.
    #[test]
    fn a_delivery_is_one_pointer() {
        let pointer = std::mem::size_of::<usize>();
        assert_eq!(
            std::mem::size_of::<super::Delivery<super::memory::MemoryAcker>>(),
            pointer
        );
        #[cfg(feature = "nats")]
        assert_eq!(std::mem::size_of::<super::Delivery<super::nats::NatsAcker>>(), pointer);
    }

    #[test]
    fn permanent_and_transient_are_disjoint() {
        let subject = || "document.created".to_owned();
        let permanent = [
            TransportError::PayloadTooLarge { size: 2, max: 1 },
            TransportError::Invalid("header".into()),
            TransportError::StreamConflict {
                stream: "S".into(),
                detail: "d".into(),
            },
        ];
        for e in &permanent {
            assert!(e.is_permanent() && !e.is_transient(), "{e:?}");
        }
        // A missing stream may be provisioned: retried, never given up on.
        let transient = [
            TransportError::NoStream { subject: subject() },
            TransportError::Timeout("t".into()),
            TransportError::Connection("c".into()),
        ];
        for e in &transient {
            assert!(e.is_transient() && !e.is_permanent(), "{e:?}");
        }
        assert!(!TransportError::Other("?".into()).is_permanent());
    }
}
