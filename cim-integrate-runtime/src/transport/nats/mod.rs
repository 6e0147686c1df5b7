//! The NATS JetStream transport, on async-nats.
//!
//! [`NatsTransport`] implements [`Transport`] with the same semantics as
//! [`MemoryTransport`](crate::transport::memory::MemoryTransport):
//!
//! - [`ensure_stream`](Transport::ensure_stream): `STREAM.INFO`, then `STREAM.CREATE` if absent; an
//!   existing stream is compared with [`StreamSpec::differences`] and never modified.
//! - [`publish`](Transport::publish): a JetStream publish with every header of the message; the
//!   returned [`NatsAckFuture`] waits for the PubAck and sends the message again (same
//!   `Nats-Msg-Id`) when the acknowledgement times out.
//! - [`consumer`](Transport::consumer): a durable pull consumer with explicit acks, read by a
//!   continuous pull with idle heartbeats ([`NatsConsumer`]).
//! - [`key_value`](Transport::key_value): a KV bucket whose `KV_<bucket>` stream is created here,
//!   so that it works on nats-server 2.9 as on current servers ([`NatsKeyValue`]).
//!
//! - [`request`](Transport::request) / [`serve`](Transport::serve): core NATS request/reply
//!   and queue subscriptions (never stored in a stream).
//!
//! It uses only the JetStream API of nats-server 2.9, on purpose: settings a 2.9 server would
//! silently ignore (several filter subjects, metadata, create/update actions) are never sent.
//!
//! Connect with [`NatsTransport::connect`] and [`NatsOptions`], or from the environment with
//! [`NatsTransport::from_env`] (the variables are listed on [`NatsOptions::from_env`]).

mod consumer;
mod convert;
mod creds;
mod denials;
pub(crate) mod kv;
mod options;
mod scan;

pub use consumer::{NatsAcker, NatsConsumer};
pub use kv::NatsKeyValue;
pub(crate) use kv::classify as classify_error;
pub(crate) use kv::open_existing as open_existing_bucket;
pub use options::{
    ENV_CA, ENV_CERT, ENV_CONNECTION_NAME, ENV_CREDS, ENV_JS_DOMAIN, ENV_KEY, ENV_NKEY_FILE, ENV_NKEY_SEED,
    ENV_PASSWORD, ENV_TLS_FIRST, ENV_TLS_REQUIRED, ENV_TOKEN, ENV_URL, ENV_USER, NatsAuth, NatsOptions, NatsTls,
};
pub(crate) use scan::scan;

use crate::subject::SubjectPattern;
use crate::transport::provision::{Attempts, patiently};
use crate::transport::{
    AssetSettings, ConsumerSpec, DeliverPolicy, Deployment, KvError, KvSpec, OutboundMessage, Placement, PublishAck,
    Storage, StreamSpec, Transport, TransportError,
};
use async_nats::jetstream::context::{PublishAckFuture, PublishErrorKind};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::{self, ErrorCode, consumer as js_consumer, stream as js_stream};
use convert::{api_error, header_map, request_error};
use std::future::{Future, IntoFuture};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

/// A transport over NATS JetStream. Cheap to clone: clones share one connection.
#[derive(Clone)]
pub struct NatsTransport {
    inner: Arc<Inner>,
}

struct Inner {
    client: async_nats::Client,
    js: jetstream::Context,
    options: NatsOptions,
    /// The publishes the server refused (recorded by the connection's event callback; empty
    /// for a client built elsewhere, [`NatsTransport::with_client`]).
    denials: Arc<denials::Denials>,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport")
            .field("options", &self.inner.options)
            .field("state", &self.inner.client.connection_state())
            .finish()
    }
}

/// The JetStream API reply: a value or an error with a code.
type ApiResult<T> = Result<T, jetstream::Error>;

/// A page of `STREAM.NAMES`.
#[derive(serde::Deserialize)]
struct StreamNames {
    #[serde(default)]
    total: usize,
    #[serde(default)]
    streams: Option<Vec<String>>,
}

impl NatsTransport {
    /// Connects with `options`.
    pub async fn connect(options: NatsOptions) -> Result<Self, TransportError> {
        let addrs = options
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| s.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TransportError::Invalid(format!("NATS URL: {e}")))?;
        if addrs.is_empty() {
            return Err(TransportError::Invalid("NATS URL is empty".into()));
        }
        let denials = Arc::new(denials::Denials::default());
        let started = std::time::Instant::now();
        let warnings = crate::throttle::Throttle::default();
        let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let mut connect = options.connect_options(denials.clone()).await?;
            if options.auth == NatsAuth::None {
                connect = match options::url_auth(&addrs)? {
                    NatsAuth::UserPassword { user, password } => connect.user_and_password(user, password),
                    NatsAuth::Token(token) => connect.token(token),
                    _ => connect,
                };
            }
            let failed = match connect.connect(addrs.clone()).await {
                Ok(client) => {
                    if attempts > 1 {
                        tracing::info!(
                            connection = options.name.as_deref(), attempts, waited = ?started.elapsed(),
                            "NATS answered; connected"
                        );
                    }
                    return Ok(Self::build(client, options, denials));
                }
                Err(e) => e,
            };
            let waited = started.elapsed();
            let left = options.connect_wait.saturating_sub(waited);
            if !options::waits_out(failed.kind()) || left.is_zero() {
                return Err(options::connect_failed(&options, &failed, attempts, waited));
            }
            if warnings.pass(10_000) {
                tracing::warn!(
                    connection = options.name.as_deref(),
                    url = %options::redact_url(&options.url), reason = %failed, attempts, waited = ?waited,
                    connect_wait = ?options.connect_wait, "NATS does not answer yet; trying again"
                );
            }
            backoff.wait_within(left).await;
        }
    }

    /// Connects to `url` with no credentials and default tuning.
    pub async fn connect_url(url: &str) -> Result<Self, TransportError> {
        Self::connect(NatsOptions::new(url)).await
    }

    /// Connects as the environment says ([`NatsOptions::from_env`]); `None` if `NATS_URL` is unset.
    pub async fn from_env() -> Result<Option<Self>, TransportError> {
        match NatsOptions::from_env()? {
            Some(options) => Ok(Some(Self::connect(options).await?)),
            None => Ok(None),
        }
    }

    /// Wraps an already connected client; `options` supplies the tuning (its URL and credentials
    /// are not used).
    ///
    /// The server's refusals of publishes (permissions) reach a client's event callback only, so
    /// on a transport made here a refused publish reads as a timeout; [`connect`](Self::connect)
    /// reports it as [`TransportError::PermissionDenied`].
    pub fn with_client(client: async_nats::Client, options: NatsOptions) -> Self {
        Self::build(client, options, Arc::default())
    }

    fn build(client: async_nats::Client, options: NatsOptions, denials: Arc<denials::Denials>) -> Self {
        let builder = jetstream::ContextBuilder::new().timeout(options.request_timeout);
        let js = match &options.js_domain {
            Some(domain) => builder.domain(domain.clone()).build(client.clone()),
            None => builder.build(client.clone()),
        };
        Self {
            inner: Arc::new(Inner {
                client,
                js,
                options,
                denials,
            }),
        }
    }

    /// The same connection, provisioning new assets under `deployment`.
    pub fn with_deployment(&self, deployment: Deployment) -> Self {
        let mut options = self.inner.options.clone();
        options.deployment = deployment;
        Self {
            inner: Arc::new(Inner {
                client: self.inner.client.clone(),
                js: self.inner.js.clone(),
                options,
                denials: self.inner.denials.clone(),
            }),
        }
    }

    /// Asks the JetStream API for the account's information: fails with
    /// [`TransportError::JetStreamDisabled`] if this connection has no JetStream (a server
    /// without it and nothing else answering, or an account without it), otherwise as the
    /// request fails (a timeout while the cluster elects its meta leader, ...).
    pub async fn check_jetstream(&self) -> Result<(), TransportError> {
        match self
            .api::<serde_json::Value>(String::from("INFO"), &serde_json::json!({}))
            .await?
        {
            Ok(_) => Ok(()),
            Err(e) => Err(api_error(e)),
        }
    }

    /// The underlying NATS client.
    pub fn client(&self) -> &async_nats::Client {
        &self.inner.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.inner.js
    }

    /// The options in use.
    pub fn options(&self) -> &NatsOptions {
        &self.inner.options
    }

    /// How long a question asked beside an operation waits for its answer (how many replicas a
    /// bucket's stream has, whether it still exists, whether a durable still exists after its
    /// pulls failed): [`side_wait`] of the request timeout.
    pub(crate) fn side_wait(&self) -> Duration {
        side_wait(self.inner.options.request_timeout)
    }

    /// The full subject of JetStream API request `tail` (`STREAM.INFO.S`), in the configured
    /// domain if any.
    pub(crate) fn api_subject(&self, tail: &str) -> String {
        match &self.inner.options.js_domain {
            Some(domain) => format!("$JS.{domain}.API.{tail}"),
            None => format!("$JS.API.{tail}"),
        }
    }

    /// Sends a JetStream API request; the outer error is the request's, the inner the server's.
    async fn api<T: serde::de::DeserializeOwned>(
        &self,
        subject: String,
        body: &serde_json::Value,
    ) -> Result<ApiResult<T>, TransportError> {
        let began = crate::throttle::monotonic_ms();
        let response: jetstream::response::Response<T> =
            self.inner.js.request(subject.clone(), body).await.map_err(|e| {
                let full = self.api_subject(&subject);
                use async_nats::jetstream::context::RequestErrorKind;
                match e.kind() {
                    RequestErrorKind::TimedOut if self.inner.denials.refused(&full, began) => {
                        TransportError::PermissionDenied { subject: full }
                    }
                    // Nobody serves the API, and the server this client is on has no JetStream
                    // (it says so when the client connects): not an election to wait out.
                    RequestErrorKind::NoResponders if !self.inner.client.server_info().jetstream => {
                        TransportError::JetStreamDisabled {
                            detail: format!(
                                "on nats-server `{}`, this client's server, and no other server answered the JetStream API",
                                self.inner.client.server_info().server_name
                            ),
                        }
                    }
                    _ => request_error(&subject, e),
                }
            })?;
        Ok(match response {
            jetstream::response::Response::Ok(v) => Ok(v),
            jetstream::response::Response::Err { error } => Err(error),
        })
    }

    async fn stream_info(&self, name: &str) -> Result<Option<js_stream::Info>, TransportError> {
        match self
            .api::<js_stream::Info>(format!("STREAM.INFO.{name}"), &serde_json::json!({}))
            .await?
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => Ok(None),
            Err(e) => Err(api_error(e)),
        }
    }

    /// Creates a stream, or reports a conflict with an existing one.
    async fn create_stream(&self, config: &js_stream::Config) -> Result<ApiResult<js_stream::Info>, TransportError> {
        self.api(
            format!("STREAM.CREATE.{}", config.name),
            &serde_json::to_value(config).map_err(other)?,
        )
        .await
    }

    /// The first other stream whose subjects overlap one of `spec`'s, as `(other, pattern)`.
    /// Asked with `STREAM.NAMES` filtered by each subject: the meta leader answers from its own
    /// assignments, where `STREAM.LIST` gathers every stream's state from its leader and, while
    /// other streams are being created (a service provisioning its streams at once), waits
    /// seconds for groups that have no leader yet.
    async fn overlapping_stream(&self, spec: &StreamSpec) -> Result<Option<(String, String)>, TransportError> {
        for mine in &spec.subjects {
            let mut offset = 0usize;
            loop {
                let page: StreamNames = match self
                    .api(
                        String::from("STREAM.NAMES"),
                        &serde_json::json!({ "offset": offset, "subject": mine.as_str() }),
                    )
                    .await?
                {
                    Ok(p) => p,
                    Err(e) => return Err(api_error(e)),
                };
                let names = page.streams.unwrap_or_default();
                if let Some(other) = names.iter().find(|n| **n != spec.name) {
                    return Ok(Some((other.clone(), mine.to_string())));
                }
                offset += names.len();
                if names.is_empty() || offset >= page.total {
                    break;
                }
            }
        }
        Ok(None)
    }

    /// The name of a stream that captures `subject`, if any (`STREAM.NAMES` filtered by it,
    /// answered by the meta leader).
    async fn stream_capturing(&self, subject: &str) -> Result<Option<String>, TransportError> {
        match self
            .api::<StreamNames>(String::from("STREAM.NAMES"), &serde_json::json!({ "subject": subject }))
            .await?
        {
            Ok(page) => Ok(page.streams.unwrap_or_default().into_iter().next()),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn consumer_info(&self, stream: &str, durable: &str) -> Result<Option<js_consumer::Info>, TransportError> {
        match self
            .api(format!("CONSUMER.INFO.{stream}.{durable}"), &serde_json::json!({}))
            .await?
        {
            Ok(info) => Ok(Some(info)),
            Err(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => Ok(None),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => Err(TransportError::StreamNotFound {
                stream: stream.to_owned(),
            }),
            Err(e) => Err(api_error(e)),
        }
    }

    /// Creates (or, for an existing durable, updates) a consumer with the 2.9 durable API.
    async fn put_consumer(
        &self,
        stream: &str,
        durable: &str,
        config: &js_consumer::Config,
    ) -> Result<js_consumer::Info, TransportError> {
        let body = serde_json::json!({ "stream_name": stream, "config": config });
        match self
            .api(format!("CONSUMER.DURABLE.CREATE.{stream}.{durable}"), &body)
            .await?
        {
            Ok(info) => Ok(info),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => Err(TransportError::StreamNotFound {
                stream: stream.to_owned(),
            }),
            Err(e) => Err(convert::limit(&e, &format!("consumer `{durable}` on `{stream}`"))
                .or_else(|| convert::unavailable(&e))
                .unwrap_or_else(|| TransportError::Other(format!("consumer `{durable}` on `{stream}`: {e}")))),
        }
    }

    /// One attempt of [`Transport::ensure_stream`]: transient trouble (no stream leader yet,
    /// a request timed out during a failover) is returned.
    async fn ensure_stream_once(&self, spec: &StreamSpec) -> Result<(), TransportError> {
        let spec = &spec.deployed(&self.inner.options.deployment);
        spec.validate()?;
        let conflict = |detail: String| TransportError::StreamConflict {
            stream: spec.name.clone(),
            detail,
        };
        let compare = |info: &js_stream::Info| match existing_stream_spec(&info.config) {
            Ok(mut existing) => {
                if spec.max_age.is_none() && spec.settings.max_age.is_some() {
                    // The policy's retention: compared as drift, not as meaning.
                    existing.settings.max_age = existing.max_age.take();
                }
                if let Some(d) = spec.differences(&existing) {
                    return Err(conflict(d));
                }
                if let Some(d) = spec.settings.drift(&existing.settings) {
                    crate::transport::deploy::report_drift(&spec.name, &d);
                }
                Ok(())
            }
            Err(d) => Err(conflict(d)),
        };
        if let Some(info) = self.stream_info(&spec.name).await? {
            return compare(&info);
        }
        let overlap = |(other, pattern)| TransportError::StreamOverlap {
            stream: spec.name.clone(),
            other,
            pattern,
        };
        // Checked here first: servers report overlaps differently (2.10+ refuse a leading
        // wildcard as overlapping their API before comparing streams).
        if let Some(found) = self.overlapping_stream(spec).await? {
            return Err(overlap(found));
        }
        let config = stream_config(spec);
        match self.create_stream(&config).await? {
            Ok(_) => {
                tracing::info!(stream = %spec.name, subjects = ?config.subjects, "stream created");
                Ok(())
            }
            Err(e) if e.error_code() == ErrorCode::STREAM_SUBJECT_OVERLAP => {
                let found = self.overlapping_stream(spec).await?.unwrap_or_else(|| {
                    (
                        String::from("(unknown)"),
                        spec.subjects.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", "),
                    )
                });
                Err(overlap(found))
            }
            Err(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                // Created concurrently by someone else: compare with theirs.
                match self.stream_info(&spec.name).await? {
                    Some(info) => compare(&info),
                    None => Err(api_error(e)),
                }
            }
            // A peer offline, no meta leader: unavailable, however the server codes it (2.9
            // answers 400 to a placement that fails because a node is down).
            Err(e) if convert::unavailable(&e).is_some() => Err(api_error(e)),
            Err(e) if let Some(limit) = convert::limit(&e, &format!("stream `{}`", spec.name)) => Err(limit),
            Err(e) if e.code() == 400 || e.code() == 500 && e.error_code() == ErrorCode(10052) => Err(
                TransportError::Invalid(format!("stream `{}` refused by the server: {e}", spec.name)),
            ),
            Err(e) => Err(TransportError::Other(format!("creating stream `{}`: {e}", spec.name))),
        }
    }

    /// One attempt of [`Transport::consumer`]; transient trouble is returned.
    async fn consumer_once(&self, spec: &ConsumerSpec) -> Result<NatsConsumer, TransportError> {
        spec.validate()?;
        let wanted = consumer_config(spec);
        let info = match self.consumer_info(&spec.stream, &spec.durable).await? {
            Some(info) => {
                let conflict = |detail| TransportError::ConsumerConflict {
                    stream: spec.stream.clone(),
                    consumer: spec.durable.clone(),
                    detail,
                };
                let existing = existing_consumer_spec(spec, &info.config).map_err(conflict)?;
                if let Some(d) = spec.immutable_differences(&existing) {
                    return Err(conflict(d));
                }
                let filter_differs = existing.filter != spec.filter;
                if filter_differs && let Some(version) = self.takes_filters_but_stalls() {
                    return Err(conflict(format!(
                        "filter `{}`, wanted `{}`: nats-server {version} takes a changed filter and then \
                         delivers nothing; 2.10 and later change it in place, keeping the durable's \
                         position. Deleting the durable starts it again from its deliver policy",
                        existing.filter, spec.filter
                    )));
                }
                let c = &info.config;
                let editable_differ = filter_differs
                    || c.max_deliver.max(-1) != wanted.max_deliver
                    || c.max_ack_pending != wanted.max_ack_pending
                    || c.backoff != wanted.backoff
                    || c.inactive_threshold != wanted.inactive_threshold
                    || (wanted.backoff.is_empty() && c.ack_wait != wanted.ack_wait);
                if editable_differ {
                    let mut updated = info.config.clone();
                    updated.filter_subject.clone_from(&wanted.filter_subject);
                    updated.ack_wait = wanted.ack_wait;
                    updated.max_deliver = wanted.max_deliver;
                    updated.max_ack_pending = wanted.max_ack_pending;
                    updated.backoff = wanted.backoff.clone();
                    updated.inactive_threshold = wanted.inactive_threshold;
                    let info = self.put_consumer(&spec.stream, &spec.durable, &updated).await?;
                    if filter_differs {
                        tracing::info!(
                            stream = %spec.stream, consumer = %spec.durable, from = %existing.filter, to = %spec.filter,
                            "consumer filter changed in place; the durable keeps its position"
                        );
                    } else {
                        tracing::info!(stream = %spec.stream, consumer = %spec.durable, "consumer settings updated");
                    }
                    info
                } else {
                    info
                }
            }
            None => {
                if self.stream_info(&spec.stream).await?.is_none() {
                    return Err(TransportError::StreamNotFound {
                        stream: spec.stream.clone(),
                    });
                }
                let info = self.put_consumer(&spec.stream, &spec.durable, &wanted).await?;
                tracing::info!(stream = %spec.stream, consumer = %spec.durable, filter = %spec.filter, "consumer created");
                info
            }
        };
        // A consumer leader that steps down hands its pull requests over with no error to see;
        // its successor may deliver again what it delivered (see `DeliveryInfo::resumed`).
        // Without permission for advisories the subscription just stays silent.
        let elections = self
            .client()
            .subscribe(format!(
                "$JS.EVENT.ADVISORY.CONSUMER.LEADER_ELECTED.{}.{}",
                spec.stream, spec.durable
            ))
            .await
            .inspect_err(|e| tracing::debug!(consumer = %spec.durable, error = %e, "no leader-election advisories"))
            .ok();
        NatsConsumer::new(self.clone(), spec, info, elections)
    }

    fn ack_future(&self, message: OutboundMessage, first: PublishAckFuture) -> NatsAckFuture {
        NatsAckFuture {
            state: AckState::Waiting {
                ack: first.into_future(),
                // The wait is counted from the send, not from the first poll: acks awaited one
                // after the other after an outage must not wait one timeout each.
                deadline: tokio::time::Instant::now() + self.inner.options.request_timeout,
                // The transport's state, not a clone of the JetStream context (which copies its
                // prefix); only read if the acknowledgement does not come.
                retry: Some((self.inner.clone(), message)),
            },
        }
    }
}

/// How long a question asked beside an operation waits for its answer, given the request
/// timeout: a quarter of it, between 250 ms and 1 s, never more than the timeout. A server that
/// can answer does so in milliseconds; one that cannot (an outage, an election) would add a whole
/// request timeout to the operation's own, each time: a key-value read during an outage waited for
/// the read-path check, the read and the check for a bucket that is gone, one after the other
/// (15.6 s seen with the default 5 s).
pub(crate) fn side_wait(request_timeout: Duration) -> Duration {
    (request_timeout / 4)
        .clamp(Duration::from_millis(250), Duration::from_secs(1))
        .min(request_timeout)
}

/// Sends `message` again after `error`, until it is acknowledged or fails for good.
///
/// - A timed-out acknowledgement or a lost connection: sent again with the same `Nats-Msg-Id`,
///   up to the configured retries, each waited for one timeout from its send (the stream stores
///   it once). A message without `Nats-Msg-Id` is not sent twice.
/// - No responders (nobody received it, so sending again is safe with or without an id): if a
///   stream captures the subject, its leader is being elected or its interest has not reached
///   this server yet, so it is sent again after a back-off (25 ms doubling to 1 s) for as long
///   as the timeout retries could take (`(publish_retries + 1) × request_timeout`), then
///   reported as [`TransportError::Unavailable`]. If no stream captures it, it is
///   [`TransportError::NoStream`] at once.
async fn publish_again(
    inner: Arc<Inner>,
    message: OutboundMessage,
    mut error: async_nats::jetstream::context::PublishError,
    sent: tokio::time::Instant,
) -> Result<PublishAck, TransportError> {
    let (retries, timeout) = (inner.options.publish_retries, inner.options.request_timeout);
    let mut attempt = 0u32;
    // When the last send went out, on the clock refusals are recorded by.
    // (Whole milliseconds, and the send's instant is read just after the send: read with a
    // margin, so that neither puts the send after its refusal.)
    const MARGIN_MS: u64 = 100;
    let mut sent_ms = crate::throttle::monotonic_ms()
        .saturating_sub(u64::try_from(sent.elapsed().as_millis()).unwrap_or(u64::MAX))
        .saturating_sub(MARGIN_MS);
    // While no responders answer a subject a stream captures: until when, and the next pause.
    let mut electing: Option<(tokio::time::Instant, Duration)> = None;
    loop {
        match error.kind() {
            // The server dropped it and said why, to the connection, not to the publish.
            PublishErrorKind::TimedOut if inner.denials.refused(message.subject.as_str(), sent_ms) => {
                return Err(TransportError::PermissionDenied {
                    subject: message.subject.to_string(),
                });
            }
            PublishErrorKind::TimedOut | PublishErrorKind::BrokenPipe
                if attempt < retries && message.msg_id().is_some() =>
            {
                attempt += 1;
                tracing::warn!(
                    subject = %message.subject,
                    msg_id = message.msg_id().unwrap_or_default(),
                    attempt,
                    error = %error,
                    "publish not acknowledged; sending it again with the same message id"
                );
            }
            PublishErrorKind::StreamNotFound => {
                let transport = NatsTransport { inner: inner.clone() };
                let (until, pause) = match electing {
                    Some(waiting) => waiting,
                    None => {
                        match transport.stream_capturing(message.subject.as_str()).await {
                            Ok(None) => return Err(publish_error(&message, &error)),
                            Ok(Some(stream)) => tracing::warn!(
                                subject = %message.subject, %stream,
                                "no responders for a subject a stream captures (leader election?); sending it again"
                            ),
                            // The JetStream API is unavailable too (a meta-leader election): wait.
                            Err(e) if e.is_transient() => tracing::warn!(
                                subject = %message.subject, error = %e,
                                "no responders, and JetStream cannot say which stream captures the subject; sending it again"
                            ),
                            Err(e) => {
                                tracing::debug!(subject = %message.subject, error = %e, "cannot ask which stream captures the subject");
                                return Err(publish_error(&message, &error));
                            }
                        }
                        (
                            tokio::time::Instant::now() + timeout * (retries + 1),
                            Duration::from_millis(25),
                        )
                    }
                };
                if tokio::time::Instant::now() + pause > until {
                    return Err(TransportError::Unavailable(format!(
                        "no stream answered publishes to `{}` for {:?}, though one captures it (no leader?)",
                        message.subject,
                        timeout * (retries + 1)
                    )));
                }
                tokio::time::sleep(pause).await;
                electing = Some((until, (pause * 2).min(Duration::from_secs(1))));
            }
            _ => return Err(publish_error(&message, &error)),
        }
        sent_ms = crate::throttle::monotonic_ms().saturating_sub(MARGIN_MS);
        let pending = send(&inner.js, &message, inner.client.max_payload()).await?;
        let deadline = tokio::time::Instant::now() + timeout;
        error = match tokio::time::timeout_at(deadline, pending).await {
            Ok(Ok(ack)) => return Ok(ours(ack)),
            Ok(Err(e)) => e,
            Err(_) => async_nats::jetstream::context::PublishError::new(PublishErrorKind::TimedOut),
        };
    }
}

fn ours(ack: async_nats::jetstream::publish::PublishAck) -> PublishAck {
    // The stream's name as one shared `Arc` per thread while it stays the same (a publisher
    // mostly writes to one stream): no allocation per acknowledgement.
    thread_local! {
        static LAST: std::cell::RefCell<Option<Arc<str>>> = const { std::cell::RefCell::new(None) };
    }
    let stream = LAST.with_borrow_mut(|last| match last {
        Some(name) if **name == *ack.stream => name.clone(),
        _ => last.insert(Arc::from(ack.stream)).clone(),
    });
    PublishAck {
        stream,
        sequence: ack.sequence,
        duplicate: ack.duplicate,
    }
}

fn other(e: impl std::fmt::Display) -> TransportError {
    TransportError::Other(e.to_string())
}

/// Maps a publish failure.
fn publish_error(message: &OutboundMessage, e: &async_nats::jetstream::context::PublishError) -> TransportError {
    match e.kind() {
        PublishErrorKind::StreamNotFound => TransportError::NoStream {
            subject: message.subject.to_string(),
        },
        PublishErrorKind::TimedOut => {
            TransportError::Timeout(format!("no acknowledgement for the publish to `{}`", message.subject))
        }
        PublishErrorKind::BrokenPipe => {
            TransportError::Connection(format!("connection lost while publishing to `{}`", message.subject))
        }
        PublishErrorKind::MaxPayloadExceeded => TransportError::PayloadTooLarge {
            size: message.payload.len(),
            max: 0,
        },
        _ => {
            let reply = std::error::Error::source(e).and_then(|s| s.downcast_ref::<jetstream::Error>());
            match reply.and_then(convert::write_unavailable) {
                Some(TransportError::Unavailable(why)) => {
                    TransportError::Unavailable(format!("publish to `{}`: {why}", message.subject))
                }
                Some(other) => other,
                None => TransportError::Other(format!("publish to `{}`: {e}", message.subject)),
            }
        }
    }
}

/// Sends one publish and returns its acknowledgement future.
async fn send(
    js: &jetstream::Context,
    message: &OutboundMessage,
    max: usize,
) -> Result<PublishAckFuture, TransportError> {
    let headers = header_map(&message.headers)?;
    let publish = PublishMessage::build()
        .payload(message.payload.clone())
        .headers(headers);
    js.send_publish(message.subject.as_str().to_owned(), publish)
        .await
        .map_err(|e| match publish_error(message, &e) {
            TransportError::PayloadTooLarge { size, .. } => TransportError::PayloadTooLarge { size, max },
            other => other,
        })
}

/// The wire size of a header block, as the server counts it.
fn header_wire_len(message: &OutboundMessage) -> usize {
    if message.headers.is_empty() {
        return 0;
    }
    // "NATS/1.0\r\n" + "name: value\r\n"* + "\r\n"
    10 + message
        .headers
        .iter()
        .map(|(n, v)| n.len() + 2 + v.len() + 2)
        .sum::<usize>()
        + 2
}

/// An upper bound of [`header_wire_len`] that formats nothing (identity headers kept as values
/// are counted at their longest).
fn header_wire_len_bound(message: &OutboundMessage) -> usize {
    if message.headers.is_empty() {
        return 0;
    }
    10 + message.headers.max_wire_len() + 2
}

/// Resolves to the stream's acknowledgement of a publish; see [`Transport::publish`].
///
/// A timed-out acknowledgement makes it send the same message (same `Nats-Msg-Id`) again, up to
/// [`NatsOptions::publish_retries`] times: the stream stores it once, and a retry that finds it
/// stored reports a duplicate. A message without `Nats-Msg-Id` is never sent twice after a
/// timeout. "No responders" for a subject that a stream captures (its leader is being elected)
/// sends it again after a back-off, with or without an id: nobody received it.
#[must_use = "a publish is confirmed only when its acknowledgement resolves"]
pub struct NatsAckFuture {
    state: AckState,
}

type BoxedAck<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'static>>;

enum AckState {
    /// The first send's acknowledgement (async-nats's future, with its own timeout from its first
    /// poll). No timer of ours: the deadline is compared when the future is pending, and
    /// async-nats's timer wakes it at the latest one timeout after its first poll.
    Waiting {
        ack: BoxedAck<async_nats::jetstream::publish::PublishAck, async_nats::jetstream::context::PublishError>,
        deadline: tokio::time::Instant,
        retry: Option<(Arc<Inner>, OutboundMessage)>,
    },
    /// Sending again after a timeout, a lost connection or no responders.
    Retrying(BoxedAck<PublishAck, TransportError>),
    Done,
}

impl std::fmt::Debug for NatsAckFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("NatsAckFuture")
    }
}

impl Future for NatsAckFuture {
    type Output = Result<PublishAck, TransportError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                AckState::Waiting { ack, deadline, retry } => {
                    let error = match ack.as_mut().poll(cx) {
                        Poll::Ready(Ok(ack)) => {
                            self.state = AckState::Done;
                            return Poll::Ready(Ok(ours(ack)));
                        }
                        Poll::Ready(Err(e)) => e,
                        Poll::Pending if tokio::time::Instant::now() < *deadline => return Poll::Pending,
                        Poll::Pending => async_nats::jetstream::context::PublishError::new(PublishErrorKind::TimedOut),
                    };
                    let Some(retry) = retry.take() else {
                        return Poll::Ready(Err(TransportError::Other("acknowledgement polled again".into())));
                    };
                    let (inner, message) = retry;
                    let sent = *deadline - inner.options.request_timeout;
                    self.state = AckState::Retrying(Box::pin(publish_again(inner, message, error, sent)));
                }
                AckState::Retrying(again) => {
                    let done = std::task::ready!(again.as_mut().poll(cx));
                    self.state = AckState::Done;
                    return Poll::Ready(done);
                }
                AckState::Done => {
                    return Poll::Ready(Err(TransportError::Other(
                        "acknowledgement polled after it resolved".into(),
                    )));
                }
            }
        }
    }
}

pub(super) fn storage_type(s: Option<Storage>) -> js_stream::StorageType {
    match s {
        Some(Storage::Memory) => js_stream::StorageType::Memory,
        _ => js_stream::StorageType::File,
    }
}

pub(super) fn js_placement(p: Option<&Placement>) -> Option<js_stream::Placement> {
    p.filter(|p| !p.is_empty()).map(|p| js_stream::Placement {
        cluster: p.cluster.clone(),
        tags: p.tags.clone(),
    })
}

/// The deployment settings of an existing stream, as found on the server.
pub(super) fn existing_settings(config: &js_stream::Config) -> AssetSettings {
    AssetSettings {
        replicas: Some(u8::try_from(config.num_replicas.max(1)).unwrap_or(u8::MAX)),
        placement: Some(
            config
                .placement
                .as_ref()
                .map_or_else(Placement::default, |p| Placement {
                    cluster: p.cluster.clone().filter(|c| !c.is_empty()),
                    tags: p.tags.clone(),
                }),
        ),
        storage: Some(match config.storage {
            js_stream::StorageType::File => Storage::File,
            js_stream::StorageType::Memory => Storage::Memory,
        }),
        max_age: None,
    }
}

fn stream_config(spec: &StreamSpec) -> js_stream::Config {
    js_stream::Config {
        name: spec.name.clone(),
        subjects: spec.subjects.iter().map(|s| s.as_str().to_owned()).collect(),
        storage: storage_type(spec.settings.storage),
        placement: js_placement(spec.settings.placement.as_ref()),
        retention: js_stream::RetentionPolicy::Limits,
        discard: js_stream::DiscardPolicy::Old,
        duplicate_window: spec.duplicate_window,
        max_age: spec.max_age.or(spec.settings.max_age).unwrap_or(Duration::ZERO),
        max_messages: -1,
        max_bytes: -1,
        max_messages_per_subject: -1,
        max_consumers: -1,
        num_replicas: usize::from(spec.settings.replicas.unwrap_or(1)),
        ..Default::default()
    }
}

/// The spec an existing stream corresponds to, or why it cannot be one of ours.
fn existing_stream_spec(config: &js_stream::Config) -> Result<StreamSpec, String> {
    let subjects = config
        .subjects
        .iter()
        .map(|s| SubjectPattern::new(s).map_err(|e| format!("subject `{s}`: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(StreamSpec {
        name: config.name.clone(),
        subjects,
        settings: existing_settings(config),
        duplicate_window: config.duplicate_window,
        max_age: (!config.max_age.is_zero()).then_some(config.max_age),
    })
}

fn consumer_config(spec: &ConsumerSpec) -> js_consumer::Config {
    js_consumer::Config {
        durable_name: Some(spec.durable.clone()),
        deliver_policy: match spec.deliver {
            DeliverPolicy::All => js_consumer::DeliverPolicy::All,
            DeliverPolicy::New => js_consumer::DeliverPolicy::New,
        },
        ack_policy: js_consumer::AckPolicy::Explicit,
        ack_wait: spec.ack_wait,
        max_deliver: spec.max_deliver.map_or(-1, i64::from),
        filter_subject: spec.filter.as_str().to_owned(),
        replay_policy: js_consumer::ReplayPolicy::Instant,
        max_ack_pending: i64::from(spec.max_ack_pending),
        backoff: spec.backoff.clone(),
        num_replicas: spec.replicas.map_or(0, usize::from),
        memory_storage: spec.storage == Some(Storage::Memory),
        inactive_threshold: spec.inactive_threshold.unwrap_or_default(),
        ..Default::default()
    }
}

impl NatsTransport {
    /// The connected server's version if it is one that takes a changed consumer filter and then
    /// delivers nothing on that durable (nats-server 2.9; checked by hand on 2.9.10: the update is
    /// answered with the new filter, and no message, old or new, is delivered after it), `None`
    /// if it changes filters in place (2.10 and later).
    fn takes_filters_but_stalls(&self) -> Option<String> {
        let version = self.client().server_info().version;
        let (major, minor, _) = crate::transport::version_numbers(&version);
        ((major, minor) < (2, 10)).then_some(version)
    }
}

/// The immutable part of an existing consumer, as a spec, or why it cannot be one of ours.
fn existing_consumer_spec(spec: &ConsumerSpec, config: &js_consumer::Config) -> Result<ConsumerSpec, String> {
    if let Some(d) = &config.deliver_subject {
        return Err(format!("push consumer delivering to `{d}`, wanted a pull consumer"));
    }
    if config.ack_policy != js_consumer::AckPolicy::Explicit {
        return Err(format!("ack policy {:?}, wanted explicit", config.ack_policy));
    }
    let filter = if config.filter_subject.is_empty() {
        // No filter: the whole stream. Only equal to ours if ours is `>`.
        SubjectPattern::new(">").map_err(|e| e.to_string())?
    } else {
        SubjectPattern::new(&config.filter_subject).map_err(|e| format!("filter `{}`: {e}", config.filter_subject))?
    };
    let deliver = match config.deliver_policy {
        js_consumer::DeliverPolicy::All => DeliverPolicy::All,
        js_consumer::DeliverPolicy::New => DeliverPolicy::New,
        ref other => return Err(format!("deliver policy {other:?}, wanted {:?}", spec.deliver)),
    };
    Ok(ConsumerSpec {
        filter,
        deliver,
        ..spec.clone()
    })
}

impl Transport for NatsTransport {
    type Consumer = NatsConsumer;
    type KeyValue = NatsKeyValue;
    type AckFuture = NatsAckFuture;

    fn deployment(&self) -> &Deployment {
        &self.inner.options.deployment
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), TransportError> {
        patiently("stream", Attempts::CutAfterSilence, || self.ensure_stream_once(spec)).await
    }

    async fn publish(&self, message: OutboundMessage) -> Result<NatsAckFuture, TransportError> {
        let max = self.inner.client.max_payload();
        if message.payload.len() > max {
            return Err(TransportError::PayloadTooLarge {
                size: message.payload.len(),
                max,
            });
        }
        // The bound first: the exact size (which formats the headers) only near the limit.
        let size = message.payload.len() + header_wire_len_bound(&message);
        let size = if size > max {
            message.payload.len() + header_wire_len(&message)
        } else {
            size
        };
        if size > max {
            return Err(TransportError::PayloadTooLarge { size, max });
        }
        let first = send(&self.inner.js, &message, max).await?;
        Ok(self.ack_future(message, first))
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<NatsConsumer, TransportError> {
        patiently("consumer", Attempts::CutAfterSilence, || self.consumer_once(spec)).await
    }

    async fn delete_consumer(&self, stream: &str, durable: &str) -> Result<(), TransportError> {
        crate::transport::check_name("stream", stream)?;
        crate::transport::check_name("consumer", durable)?;
        let r: ApiResult<serde_json::Value> = self
            .api(format!("CONSUMER.DELETE.{stream}.{durable}"), &serde_json::json!({}))
            .await?;
        match r {
            Ok(_) => Ok(()),
            Err(e) if e.error_code() == ErrorCode::CONSUMER_NOT_FOUND => Err(TransportError::ConsumerNotFound {
                stream: stream.to_owned(),
                consumer: durable.to_owned(),
            }),
            Err(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND => Err(TransportError::StreamNotFound {
                stream: stream.to_owned(),
            }),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn key_value(&self, spec: &KvSpec) -> Result<NatsKeyValue, KvError> {
        patiently("bucket", Attempts::CutAfterSilence, || kv::open(self, spec)).await
    }

    async fn flush(&self) -> Result<(), TransportError> {
        self.inner
            .client
            .flush()
            .await
            .map_err(|e| TransportError::Connection(format!("flush: {e}")))
    }

    async fn request(
        &self,
        request: crate::transport::Request,
        timeout: Duration,
    ) -> Result<crate::transport::Reply, TransportError> {
        let max = self.inner.client.max_payload();
        if request.payload.len() > max {
            return Err(TransportError::PayloadTooLarge {
                size: request.payload.len(),
                max,
            });
        }
        let headers = header_map(&request.headers)?;
        let req = async_nats::Request::new()
            .payload(request.payload)
            .headers(headers)
            .timeout(Some(timeout));
        let subject = request.subject.as_str().to_owned();
        match self.inner.client.send_request(subject.clone(), req).await {
            Ok(message) => Ok(crate::transport::Reply {
                headers: convert::headers_from(message.headers.as_ref(), &mut convert::Texts::default()),
                payload: message.payload,
            }),
            Err(e) => Err(match e.kind() {
                async_nats::RequestErrorKind::NoResponders => TransportError::NoResponders { subject },
                async_nats::RequestErrorKind::TimedOut => {
                    TransportError::Timeout(format!("no reply to the request to `{subject}`"))
                }
                _ => TransportError::Connection(format!("request to `{subject}`: {e}")),
            }),
        }
    }

    async fn serve(
        &self,
        pattern: &SubjectPattern,
        queue_group: &str,
    ) -> Result<crate::transport::Responder, TransportError> {
        crate::transport::check_queue_group(queue_group)?;
        let client = self.inner.client.clone();
        let subscriber = client
            .queue_subscribe(pattern.as_str().to_owned(), queue_group.to_owned())
            .await
            .map_err(|e| TransportError::Connection(format!("subscribing to `{pattern}`: {e}")))?;
        // The server has the subscription once it answered the flush's PING: requests sent from
        // now on reach this member.
        self.flush().await?;
        let requests = futures::StreamExt::filter_map(subscriber, move |message| {
            let client = client.clone();
            async move {
                let Some(reply) = message.reply else {
                    tracing::debug!(subject = %message.subject, "message without reply subject ignored by a responder");
                    return None;
                };
                Some(crate::transport::IncomingRequest::new(
                    message.subject.to_string(),
                    convert::headers_from(message.headers.as_ref(), &mut convert::Texts::default()),
                    message.payload,
                    crate::transport::ReplyHandle::new(NatsReply { client, subject: reply }),
                ))
            }
        });
        Ok(crate::transport::Responder::new(
            pattern.to_string(),
            queue_group.to_owned(),
            Box::pin(requests),
        ))
    }
}

/// The reply path of a NATS request: its reply (inbox) subject.
struct NatsReply {
    client: async_nats::Client,
    subject: async_nats::Subject,
}

impl crate::transport::request::ReplySink for NatsReply {
    fn send(
        self: Box<Self>,
        reply: crate::transport::Reply,
    ) -> futures::future::BoxFuture<'static, Result<(), TransportError>> {
        Box::pin(async move {
            let headers = header_map(&reply.headers)?;
            self.client
                .publish_with_headers(self.subject, headers, reply.payload)
                .await
                .map_err(|e| TransportError::Connection(format!("sending a reply: {e}")))
        })
    }
}
