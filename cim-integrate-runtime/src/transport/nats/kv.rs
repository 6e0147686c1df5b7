//! Key-value buckets on JetStream. The `KV_<bucket>` stream is created here rather than by
//! async-nats's `create_key_value`, whose request nats-server 2.9 refuses.

use super::NatsTransport;
use super::convert::api_error;
use crate::timestamp::Timestamp;
use crate::transport::{KeyValue, KvEntry, KvError, KvSpec, TransportError, check_key};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv::{PutError, PutErrorKind, Store, UpdateError, UpdateErrorKind};
use async_nats::jetstream::message::StreamMessage;
use async_nats::jetstream::{ErrorCode, stream as js_stream};
use bytes::Bytes;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// A key-value bucket on NATS (`KV_<bucket>` stream, subjects `$KV.<bucket>.>`).
#[derive(Clone)]
pub struct NatsKeyValue {
    store: Arc<Store>,
    bucket: Arc<str>,
    /// Whether reads take a direct get ([`reads_directly`]), chosen again from time to time.
    read_path: Arc<ReadPath>,
    /// The transport the handle was opened through: its connection records the server's
    /// refusals, which a write that timed out looks up ([`refused`](Self::refused)).
    connection: NatsTransport,
    /// What provisioned the bucket (a handle opened with [`Transport::key_value`]), to
    /// provision it again if it is gone; `None` for a handle on an existing bucket (the
    /// operator's tools), which never creates one.
    ///
    /// [`Transport::key_value`]: crate::transport::Transport::key_value
    provisioned: Option<Arc<Provisioned>>,
}

/// How a bucket was provisioned, and when it may next be looked for after a failure.
struct Provisioned {
    /// The bucket's spec, as deployed.
    spec: KvSpec,
    /// Lets one look for the bucket's stream through per [`GONE_CHECK_MS`].
    gone_check: Throttle,
}

/// How often, at most, a handle asks whether its bucket is gone after failures that read as
/// unavailability, in milliseconds.
const GONE_CHECK_MS: u64 = 1_000;

/// How soon a bucket's read path is chosen again after a check that got no answer ([`ReadPath`]),
/// in milliseconds (at most [`RECHECK_MS`]).
const RETRY_CHECK_MS: u64 = 1_000;

/// How often, at most, a bucket's read path is chosen again from its stream's settings
/// ([`ReadPath`]), in milliseconds: 30 s, lowered by tests
/// ([`testing::recheck_kv_read_paths_every`](crate::testing::recheck_kv_read_paths_every)).
pub(crate) static RECHECK_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(30_000);

use crate::throttle::{Throttle, monotonic_ms};

/// A bucket's read path, shared by the clones of its handle: a direct get while its stream has one
/// replica ([`reads_directly`]), else a read through the stream leader. The choice is made when the
/// bucket is opened and made again by the first read after every [`RECHECK_MS`], before it reads
/// (one stream info request): a bucket scaled to more replicas while the process runs stops
/// taking direct gets (which a lagging follower could answer) by the first read after that time,
/// and one scaled down to one replica starts.
struct ReadPath {
    direct: std::sync::atomic::AtomicBool,
    /// When (in [`monotonic_ms`]) the choice is next made again.
    next_check_ms: std::sync::atomic::AtomicU64,
    /// A stream info request is under way.
    checking: std::sync::atomic::AtomicBool,
}

impl ReadPath {
    fn new(direct: bool) -> Self {
        Self {
            direct: std::sync::atomic::AtomicBool::new(direct),
            next_check_ms: std::sync::atomic::AtomicU64::new(Self::next_check()),
            checking: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn next_check() -> u64 {
        monotonic_ms().saturating_add(RECHECK_MS.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Whether to read directly now. When the choice is due, the read that finds it due asks for
    /// the stream's settings first and reads by the new choice: a read after a scale-up never takes
    /// a direct get that a new replica, still catching up, answers with an older revision or none.
    /// Reads made meanwhile by other clones keep the current choice. A failed request keeps the
    /// choice; a check that got no answer (within [`NatsTransport::side_wait`]) or failed is made again
    /// by the first read after [`RETRY_CHECK_MS`], one that got its answer after [`RECHECK_MS`].
    async fn direct(&self, store: &Store, bucket: &str, connection: &NatsTransport) -> bool {
        use std::sync::atomic::Ordering::{AcqRel, Relaxed, Release};
        /// Ends the check however the read ends (a read dropped while it waits included), so that
        /// the next read after the interval checks again.
        struct Checking<'a> {
            path: &'a ReadPath,
            answered: bool,
        }
        impl Drop for Checking<'_> {
            fn drop(&mut self) {
                let next = if self.answered {
                    ReadPath::next_check()
                } else {
                    let every = RECHECK_MS.load(Relaxed).min(RETRY_CHECK_MS);
                    monotonic_ms().saturating_add(every)
                };
                self.path.next_check_ms.store(next, Relaxed);
                self.path.checking.store(false, Release);
            }
        }
        if monotonic_ms() >= self.next_check_ms.load(Relaxed) && !self.checking.swap(true, AcqRel) {
            let mut checking = Checking {
                path: self,
                answered: false,
            };
            let wait = connection.side_wait();
            match tokio::time::timeout(wait, store.stream.get_info()).await {
                Err(_) => {
                    tracing::debug!(bucket = %bucket, ?wait, "no answer about the bucket's replicas; checked again soon")
                }
                Ok(Err(e)) => tracing::debug!(bucket = %bucket, error = %e, "cannot check the bucket's replicas"),
                Ok(Ok(info)) => {
                    checking.answered = true;
                    let direct = reads_directly(&info.config);
                    if self.direct.swap(direct, Relaxed) != direct {
                        tracing::info!(
                            bucket = %bucket,
                            replicas = info.config.num_replicas,
                            direct,
                            "key-value reads now {}",
                            if direct { "take a direct get" } else { "go through the stream leader" }
                        );
                    }
                }
            }
        }
        self.direct.load(Relaxed)
    }
}

impl std::fmt::Debug for NatsKeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsKeyValue").field("bucket", &self.bucket).finish()
    }
}

fn bucket_config(spec: &KvSpec) -> js_stream::Config {
    let max_age = spec.max_age.unwrap_or(Duration::ZERO);
    let two_minutes = Duration::from_secs(120);
    js_stream::Config {
        name: format!("KV_{}", spec.bucket),
        subjects: vec![format!("$KV.{}.>", spec.bucket)],
        max_messages_per_subject: i64::from(spec.history),
        max_messages: -1,
        max_bytes: -1,
        max_consumers: -1,
        max_age,
        // The duplicate window may not exceed max_age.
        duplicate_window: if !max_age.is_zero() && max_age < two_minutes {
            max_age
        } else {
            two_minutes
        },
        storage: super::storage_type(spec.settings.storage),
        placement: super::js_placement(spec.settings.placement.as_ref()),
        retention: js_stream::RetentionPolicy::Limits,
        discard: js_stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: usize::from(spec.settings.replicas.unwrap_or(1)),
        ..Default::default()
    }
}

fn bucket_differences(spec: &KvSpec, existing: &js_stream::Config) -> Option<String> {
    let mut d = Vec::new();
    if existing.max_messages_per_subject != i64::from(spec.history) {
        d.push(format!(
            "history {}, wanted {}",
            existing.max_messages_per_subject, spec.history
        ));
    }
    let age = (!existing.max_age.is_zero()).then_some(existing.max_age);
    if age != spec.max_age {
        d.push(format!("max age {age:?}, wanted {:?}", spec.max_age));
    }
    if existing.subjects != [format!("$KV.{}.>", spec.bucket)] {
        d.push(format!("subjects {:?}", existing.subjects));
    }
    (!d.is_empty()).then(|| d.join("; "))
}

/// Conflicts in meaning first; then deployment drift, reported and tolerated.
fn compare(spec: &KvSpec, existing: &js_stream::Config) -> Result<(), KvError> {
    if let Some(detail) = bucket_differences(spec, existing) {
        return Err(KvError::BucketConflict {
            bucket: spec.bucket.clone(),
            detail,
        });
    }
    if let Some(d) = spec.settings.drift(&super::existing_settings(existing)) {
        crate::transport::deploy::report_drift(&existing.name, &d);
    }
    Ok(())
}

pub(super) async fn open(t: &NatsTransport, spec: &KvSpec) -> Result<NatsKeyValue, KvError> {
    let spec = spec.deployed(&t.inner.options.deployment);
    spec.validate()?;
    let stream = format!("KV_{}", spec.bucket);
    match t.stream_info(&stream).await? {
        Some(info) => compare(&spec, &info.config)?,
        None => {
            create(t, &spec).await?;
        }
    }
    let store = t
        .jetstream()
        .get_key_value(spec.bucket.clone())
        .await
        .map_err(|e| classify(&format!("opening bucket `{}`", spec.bucket), &e))?;
    let mut kv = NatsKeyValue::new(store, &spec.bucket, t);
    kv.provisioned = Some(Arc::new(Provisioned {
        spec,
        gone_check: Throttle::default(),
    }));
    Ok(kv)
}

/// Creates the bucket's stream; one created meanwhile by someone else is compared with `spec`.
/// `true` if this call created it.
async fn create(t: &NatsTransport, spec: &KvSpec) -> Result<bool, KvError> {
    let config = bucket_config(spec);
    match t.create_stream(&config).await? {
        Ok(_) => {
            tracing::info!(bucket = %spec.bucket, replicas = config.num_replicas, "key-value bucket created");
            Ok(true)
        }
        Err(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST => {
            if let Some(info) = t.stream_info(&config.name).await? {
                compare(spec, &info.config)?;
            }
            Ok(false)
        }
        Err(e) => Err(
            super::convert::limit(&e, &format!("key-value bucket `{}`", spec.bucket))
                .unwrap_or_else(|| api_error(e))
                .into(),
        ),
    }
}

/// Opens the existing bucket `bucket` (its real name), without creating it or comparing its
/// settings: `None` if it does not exist (the operator's tools read buckets a host made).
pub(crate) async fn open_existing(t: &NatsTransport, bucket: &str) -> Result<Option<NatsKeyValue>, KvError> {
    crate::transport::check_bucket_name(bucket)?;
    if t.stream_info(&format!("KV_{bucket}")).await?.is_none() {
        return Ok(None);
    }
    let store = t
        .jetstream()
        .get_key_value(bucket.to_owned())
        .await
        .map_err(|e| classify(&format!("opening bucket `{bucket}`"), &e))?;
    Ok(Some(NatsKeyValue::new(store, bucket, t)))
}

/// A key's last operation as a scan of its bucket saw it.
struct LastOp {
    /// A put (not a delete or purge marker).
    put: bool,
    /// Its stream sequence.
    sequence: u64,
    /// When the server stored it.
    stored: time::OffsetDateTime,
}

/// Tombstone purges [`KeyValue::purge_tombstones`] keeps in flight at once.
const PURGES_IN_FLIGHT: usize = 16;

/// `true` unless the headers mark a delete or purge (`KV-Operation`, or the server's
/// `Nats-Marker-Reason` on 2.11+).
fn is_put(headers: &async_nats::HeaderMap) -> bool {
    if let Some(op) = headers.get("KV-Operation") {
        return !matches!(op.as_str(), "DEL" | "PURGE");
    }
    headers.get("Nats-Marker-Reason").is_none()
}

/// Classifies a failure of a key-value operation on a bucket that was opened (so exists) by
/// the first thing in its chain that says what happened. A "no responders" reply to a publish
/// (async-nats's `StreamNotFound`) means nobody leads the bucket's stream right now: the bucket
/// is unavailable, not missing. Anything unrecognised on an open bucket is taken as
/// unavailability too: its operations cannot be wrong otherwise (keys are checked before).
pub(crate) fn classify(what: &str, e: &(dyn std::error::Error + 'static)) -> TransportError {
    use async_nats::jetstream::context::RequestErrorKind;
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<PublishError>() {
            match p.kind() {
                PublishErrorKind::TimedOut => return TransportError::Timeout(what.to_owned()),
                PublishErrorKind::StreamNotFound => {
                    return TransportError::Unavailable(format!("{what}: no responders (no leader?)"));
                }
                PublishErrorKind::BrokenPipe => return TransportError::Connection(format!("{what}: {e}")),
                PublishErrorKind::MaxPayloadExceeded => {
                    return TransportError::Invalid(format!("{what}: value larger than the server accepts"));
                }
                _ => {}
            }
        }
        if let Some(r) = err.downcast_ref::<async_nats::jetstream::context::RequestError>() {
            match r.kind() {
                RequestErrorKind::TimedOut => return TransportError::Timeout(what.to_owned()),
                RequestErrorKind::NoResponders => {
                    return TransportError::Unavailable(format!("{what}: no responders (no leader?)"));
                }
                _ => {}
            }
        }
        if let Some(api) = err.downcast_ref::<async_nats::jetstream::Error>()
            && let Some(t) = super::convert::write_unavailable(api)
        {
            return t;
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return match io.kind() {
                std::io::ErrorKind::TimedOut => TransportError::Timeout(what.to_owned()),
                _ => TransportError::Connection(format!("{what}: {io}")),
            };
        }
        cur = err.source();
    }
    let text = e.to_string();
    if text.contains("timed out") || text.contains("timeout") {
        TransportError::Timeout(format!("{what}: {text}"))
    } else {
        TransportError::Unavailable(format!("{what}: {text}"))
    }
}

/// How long a write into a bucket that nobody received ("no responders") is sent again before
/// it is reported as unavailable ([`heard`]).
const UNHEARD_FOR: Duration = Duration::from_secs(2);

/// Runs `op`, a write (one message to a key's subject), again while the server answers that
/// nobody received it ([`no_responders`]), pausing 25 ms doubling to 250 ms, for up to [`UNHEARD_FOR`];
/// then its last failure is returned. (Reads go through the JetStream API, or a direct get, which
/// a gone stream leaves unanswered: a timeout, never "no responders".)
///
/// Nobody received it, so sending it again is safe, a compare-and-set included. In a
/// super-cluster, a bucket's stream in another cluster is not heard until its leader's interest
/// has crossed the gateway: the first writes into a bucket just created there were answered so.
/// A bucket whose stream has no leader for longer (an election) is still reported as
/// unavailable, after the wait.
async fn heard<R, E, F>(op: impl Fn() -> F) -> Result<R, E>
where
    F: Future<Output = Result<R, E>>,
    E: std::error::Error + 'static,
{
    // The deadline is set by the first failure: a write heard at once reads no clock.
    let mut until = None;
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(25), Duration::from_millis(250));
    loop {
        match op().await {
            Err(e) if no_responders(&e) => {
                let until = *until.get_or_insert_with(|| tokio::time::Instant::now() + UNHEARD_FOR);
                if tokio::time::Instant::now() + backoff.pause() > until {
                    return Err(e);
                }
                tracing::debug!(error = %e, "no responders for a key-value write; sending it again");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

/// Whether a write (a publish to a key's subject) was answered "no responders": async-nats's
/// `StreamNotFound` somewhere in the error's chain.
fn no_responders(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if err
            .downcast_ref::<PublishError>()
            .is_some_and(|p| p.kind() == PublishErrorKind::StreamNotFound)
        {
            return true;
        }
        cur = err.source();
    }
    false
}

/// `headers` with a compare-and-set's condition: the key's last revision is `expected` (0: the
/// key has no message).
fn expect(expected: u64, mut headers: async_nats::HeaderMap) -> async_nats::HeaderMap {
    headers.insert(
        async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
        async_nats::HeaderValue::from(expected),
    );
    headers
}

/// The entry of `key` whose last message is `m`: `None` if it is a delete or purge marker.
fn entry(key: &str, m: StreamMessage) -> Option<KvEntry> {
    is_put(&m.headers).then(|| KvEntry {
        key: key.to_owned(),
        value: m.payload,
        revision: m.sequence,
        created: Timestamp::from_offset_date_time(m.time),
    })
}

/// `true` if reads of the bucket whose stream has `config` may take a direct get: it allows them
/// and has one replica, so its leader is the only server that answers one (a replica that has not
/// applied the latest write yet could answer with an older revision, or none).
fn reads_directly(config: &js_stream::Config) -> bool {
    config.allow_direct && config.num_replicas <= 1 && config.mirror.is_none()
}

impl NatsKeyValue {
    fn new(store: Store, bucket: &str, transport: &NatsTransport) -> Self {
        let direct = reads_directly(&store.stream.cached_info().config);
        Self {
            store: Arc::new(store),
            bucket: Arc::from(bucket),
            read_path: Arc::new(ReadPath::new(direct)),
            connection: transport.clone(),
            provisioned: None,
        }
    }

    /// Runs `op`; if it fails as a bucket that is gone fails ([`provisioned_again`]), runs it
    /// once more on the bucket provisioned again.
    ///
    /// [`provisioned_again`]: Self::provisioned_again
    async fn again_if_gone<R, F: Future<Output = Result<R, KvError>>>(&self, op: impl Fn() -> F) -> Result<R, KvError> {
        match op().await {
            Err(e) if self.provisioned_again(&e).await => op().await,
            other => other,
        }
    }

    /// After `failure`: `true` if this handle provisioned its bucket, the failure reads as
    /// unavailability or a timeout (what a bucket whose stream does not exist answers to writes,
    /// no responders, and to direct gets, which wait out the request timeout) or as a missing
    /// stream (a read through the leader), the
    /// bucket's stream is indeed gone (a server that lost its JetStream state, a memory-storage
    /// bucket after a restart, a stream deleted by hand), and it has been created again, empty, as
    /// at the start. Asked at most once a [`GONE_CHECK_MS`] per bucket, so that an outage, which
    /// fails the same way, costs one stream info request a second, not one per operation.
    async fn provisioned_again(&self, failure: &KvError) -> bool {
        let Some(p) = &self.provisioned else {
            return false;
        };
        if !matches!(
            failure,
            KvError::Transport(
                TransportError::Unavailable(_) | TransportError::Timeout(_) | TransportError::StreamNotFound { .. }
            )
        ) {
            return false;
        }
        if !p.gone_check.pass(GONE_CHECK_MS) {
            return false;
        }
        // A server that lost the stream says so at once; one that cannot answer now (the outage
        // that failed the operation) is not waited for: the next failure asks again.
        let wait = self.connection.side_wait();
        let info = tokio::time::timeout(wait, self.connection.stream_info(&format!("KV_{}", p.spec.bucket))).await;
        match info.unwrap_or_else(|_| Err(TransportError::Timeout(format!("the bucket's stream info ({wait:?})")))) {
            Ok(None) => match create(&self.connection, &p.spec).await {
                Ok(created) => {
                    tracing::warn!(
                        bucket = %p.spec.bucket,
                        created,
                        "key-value bucket was gone (a server that lost its JetStream state, or deleted); provisioned again, empty"
                    );
                    true
                }
                Err(e) => {
                    tracing::warn!(bucket = %p.spec.bucket, error = %e, "key-value bucket is gone and cannot be provisioned again yet");
                    false
                }
            },
            Ok(Some(_)) | Err(_) => false,
        }
    }

    /// The last message of `key`'s subject (a value, or a delete or purge marker), `None` if the
    /// subject has none. Read from the bucket's stream leader: with a direct get where the stream
    /// has one replica (the leader is the only server that answers it), else with the JetStream
    /// API's `STREAM.MSG.GET`. A replicated bucket is never read with a direct get, which any
    /// replica answers: a follower that has not applied the latest write yet answers with an
    /// older revision (or none). Read-modify-write with compare-and-set survives a stale read,
    /// but a stale read taken as the truth does not: a process manager's outbox drained from an
    /// older record sent nothing, and the record's queued messages waited for the next sweep.
    async fn last_message(&self, key: &str) -> Result<Option<StreamMessage>, KvError> {
        use async_nats::jetstream::stream::LastRawMessageErrorKind;
        // One allocation of the exact size, without the formatting machinery: about 360
        // instructions fewer per read (callgrind, the NATS saga rows).
        let subject = [self.store.prefix.as_str(), key].concat();
        if self.read_path.direct(&self.store, &self.bucket, &self.connection).await {
            return self.last_directly(key, subject).await;
        }
        match self.store.stream.get_last_raw_message_by_subject(&subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) => match e.kind() {
                LastRawMessageErrorKind::NoMessageFound => Ok(None),
                LastRawMessageErrorKind::InvalidSubject => Err(KvError::InvalidKey(key.to_owned())),
                // The bucket's stream itself is gone.
                LastRawMessageErrorKind::JetStream(api) if api.error_code() == ErrorCode::STREAM_NOT_FOUND => {
                    Err(KvError::Transport(TransportError::StreamNotFound {
                        stream: format!("KV_{}", self.bucket),
                    }))
                }
                LastRawMessageErrorKind::JetStream(api) => {
                    let what = format!("reading `{key}` in bucket `{}`", self.bucket);
                    Err(KvError::Transport(
                        super::convert::unavailable(&api)
                            .unwrap_or_else(|| TransportError::Other(format!("{what}: {api}"))),
                    ))
                }
                LastRawMessageErrorKind::Other => Err(self.transport("reading", key, &e, false)),
            },
        }
    }

    /// [`last_message`](Self::last_message) with a direct get (`$JS.API.DIRECT.GET`), which the
    /// stream answers outside the JetStream API: no JSON request or response, no base64.
    async fn last_directly(&self, key: &str, subject: String) -> Result<Option<StreamMessage>, KvError> {
        use async_nats::jetstream::stream::DirectGetErrorKind;
        match self.store.stream.direct_get_last_for_subject(subject).await {
            Ok(m) => Ok(Some(m)),
            Err(e) => match e.kind() {
                DirectGetErrorKind::NotFound => Ok(None),
                DirectGetErrorKind::InvalidSubject => Err(KvError::InvalidKey(key.to_owned())),
                DirectGetErrorKind::TimedOut => Err(self.transport("reading", key, &e, true)),
                DirectGetErrorKind::ErrorResponse(status, description) => {
                    let what = format!("reading `{key}` in bucket `{}`: {status} {description}", self.bucket);
                    // No responders (503), or another server-side failure: transient.
                    Err(KvError::Transport(if status.as_u16() >= 500 {
                        TransportError::Unavailable(what)
                    } else {
                        TransportError::Other(what)
                    }))
                }
                DirectGetErrorKind::Request | DirectGetErrorKind::Other => {
                    Err(self.transport("reading", key, &e, false))
                }
            },
        }
    }

    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The last operation of every key, from one scan of the bucket's stream (headers only,
    /// `transport::nats::scan`); `what` names the work in errors (`{what} bucket ..`).
    async fn last_operations(&self, what: &str) -> Result<std::collections::BTreeMap<String, LastOp>, KvError> {
        let config = async_nats::jetstream::consumer::pull::Config {
            filter_subject: format!("{}>", self.store.prefix),
            deliver_policy: async_nats::jetstream::consumer::DeliverPolicy::All,
            headers_only: true,
            ..Default::default()
        };
        let what = format!("{what} bucket `{}`", self.bucket);
        super::scan(
            &self.store.stream,
            config,
            1024,
            &what,
            |last: &mut std::collections::BTreeMap<_, _>, m, info| {
                if let Some(key) = m.subject.as_str().strip_prefix(self.store.prefix.as_str()) {
                    let op = LastOp {
                        put: m.headers.as_ref().is_none_or(is_put),
                        sequence: info.stream_sequence,
                        stored: info.published,
                    };
                    last.insert(key.to_owned(), op);
                }
                Ok::<_, KvError>(())
            },
        )
        .await
    }

    fn transport(&self, what: &str, key: &str, e: &(dyn std::error::Error + 'static), timed_out: bool) -> KvError {
        let what = format!("{what} `{key}` in bucket `{}`", self.bucket);
        KvError::Transport(if timed_out {
            TransportError::Timeout(what)
        } else {
            classify(&what, e)
        })
    }

    /// [`transport`](Self::transport) for a write (a publish to the key's subject): one that
    /// timed out because the server refused it is [`TransportError::PermissionDenied`].
    fn write_error(&self, what: &str, key: &str, e: &(dyn std::error::Error + 'static), timed_out: bool) -> KvError {
        match self.transport(what, key, e, timed_out) {
            KvError::Transport(TransportError::Timeout(t)) => {
                KvError::Transport(self.refused(key).unwrap_or(TransportError::Timeout(t)))
            }
            other => other,
        }
    }

    /// A write to `key` that timed out because the server refused it (the user may not
    /// publish to the key's subject; see `denials`). Every handle knows its connection's
    /// refusals (a handle on an existing bucket, the operator's tools', included); a transport
    /// made [`with_client`](NatsTransport::with_client) records none.
    fn refused(&self, key: &str) -> Option<TransportError> {
        let inner = &self.connection.inner;
        let window = u64::try_from(inner.options.request_timeout.as_millis()).unwrap_or(u64::MAX);
        let since = monotonic_ms().saturating_sub(window.saturating_add(1_000));
        inner
            .denials
            .refused_ending(&self.put_subject(key), since)
            .map(|subject| TransportError::PermissionDenied { subject })
    }

    /// The subject a write to `key` is published to, before any JetStream domain's API prefix:
    /// the bucket's put prefix (a mirror's or a leaf's view of a bucket elsewhere) or its own.
    fn put_subject(&self, key: &str) -> String {
        [self.store.put_prefix.as_deref().unwrap_or(&self.store.prefix), key].concat()
    }
}

/// A key-value write's acknowledgement, as the stream answers it: its sequence (the key's new
/// revision) or the JetStream API's error. Read as one plain struct: async-nats's own reading (an
/// untagged enum, which buffers the reply and tries the error variant first) built, formatted
/// and dropped a `serde_json` error for every acknowledgement.
#[derive(serde::Deserialize)]
struct WriteAck {
    #[serde(default)]
    error: Option<async_nats::jetstream::Error>,
    #[serde(default)]
    seq: Option<u64>,
}

impl NatsKeyValue {
    /// One write to `key`'s subject (`headers`: a compare-and-set's expected revision, a delete
    /// marker; none for a plain put), answered by the bucket's stream: its new revision. What async-nats's
    /// `Store::update`, `put` and `delete_expect_revision` send, sent as one request with the
    /// acknowledgement read here ([`WriteAck`]); each failure is the `PublishError` async-nats
    /// reports for it (a timeout, "no responders" as `StreamNotFound`, a lost connection as
    /// `BrokenPipe`, a wrong last sequence, the API's error), so that [`heard`] and
    /// [`classify`] read it as they read async-nats's.
    ///
    /// The subject is the one async-nats's store writes to: the key's, behind the JetStream
    /// domain's API prefix where the transport addresses a domain.
    async fn write(
        &self,
        key: &str,
        headers: Option<async_nats::HeaderMap>,
        value: Bytes,
    ) -> Result<u64, PublishError> {
        use async_nats::RequestErrorKind as R;
        let subject = self.put_subject(key);
        // A context in a JetStream domain (a leaf node's, the hub's) writes through the domain's
        // API prefix, as async-nats's store does.
        let subject = if self.connection.inner.options.js_domain.is_some() && self.store.use_jetstream_prefix {
            self.connection.api_subject(&subject)
        } else {
            subject
        };
        let mut request = async_nats::Request::new()
            .payload(value)
            .timeout(Some(self.connection.inner.options.request_timeout));
        // A plain put carries no headers, as async-nats's.
        request.headers = headers;
        let reply = match self.connection.client().send_request(subject, request).await {
            Ok(reply) => reply,
            Err(e) => {
                return Err(match e.kind() {
                    R::TimedOut => PublishError::new(PublishErrorKind::TimedOut),
                    R::NoResponders => PublishError::new(PublishErrorKind::StreamNotFound),
                    R::MaxPayloadExceeded => PublishError::with_source(PublishErrorKind::MaxPayloadExceeded, e),
                    // The connection closed before the answer came.
                    R::Other => PublishError::with_source(PublishErrorKind::BrokenPipe, e),
                    _ => PublishError::with_source(PublishErrorKind::Other, e),
                });
            }
        };
        match serde_json::from_slice::<WriteAck>(&reply.payload) {
            Ok(WriteAck { error: Some(api), .. }) => Err(match api.error_code() {
                ErrorCode::STREAM_WRONG_LAST_SEQUENCE => {
                    PublishError::with_source(PublishErrorKind::WrongLastSequence, api)
                }
                _ => PublishError::with_source(PublishErrorKind::Other, api),
            }),
            Ok(WriteAck { seq: Some(seq), .. }) => Ok(seq),
            Ok(WriteAck { .. }) => Err(PublishError::with_source(
                PublishErrorKind::Other,
                "a write's acknowledgement carries neither a sequence nor an error",
            )),
            Err(e) => Err(PublishError::with_source(PublishErrorKind::Other, e)),
        }
    }
}

/// The operations, once each; [`KeyValue`] runs them through [`NatsKeyValue::again_if_gone`].
impl NatsKeyValue {
    /// Read from the bucket's stream leader: with a direct get where the stream has one replica
    /// (the leader is the only server that answers it), else with the JetStream API's
    /// `STREAM.MSG.GET`. A replicated bucket is never read with a direct get, which any replica
    /// answers: a follower that has not applied the latest write yet answers with an older
    /// revision (or none).
    async fn get_once(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        check_key(key)?;
        Ok(self.last_message(key).await?.and_then(|m| entry(key, m)))
    }

    /// A compare-and-set at "no message yet"; if the key has history, its last message is read
    /// from the leader as `get` reads, and the key is created over a delete or
    /// purge marker (conditional on the marker's revision). async-nats's own `create` reads that
    /// last message with a direct get, which a lagging follower of a replicated bucket may
    /// answer, and reads it after any failure of the first write, an outage's included.
    async fn create_once(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        let exists = |e: KvError| match e {
            KvError::Conflict { .. } => KvError::AlreadyExists { key: key.to_owned() },
            e => e,
        };
        match self.update_once(key, value.clone(), 0).await {
            Err(KvError::Conflict { .. }) => {}
            other => return other,
        }
        match self.last_message(key).await? {
            Some(m) if is_put(&m.headers) => Err(KvError::AlreadyExists { key: key.to_owned() }),
            Some(marker) => self.update_once(key, value, marker.sequence).await.map_err(exists),
            // Purged since the first write was refused (a tombstone sweep): no history now.
            None => self.update_once(key, value, 0).await.map_err(exists),
        }
    }

    async fn update_once(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        check_key(key)?;
        heard(|| self.write(key, Some(expect(expected, async_nats::HeaderMap::new())), value.clone()))
            .await
            .map_err(UpdateError::from)
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    key: key.to_owned(),
                    expected,
                },
                UpdateErrorKind::InvalidKey => KvError::InvalidKey(key.to_owned()),
                UpdateErrorKind::TimedOut => self.write_error("updating", key, &e, true),
                UpdateErrorKind::Other => self.write_error("updating", key, &e, false),
            })
    }

    async fn put_once(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        heard(|| self.write(key, None, value.clone()))
            .await
            .map_err(|e| PutError::with_source(PutErrorKind::Ack, e))
            .map_err(|e| match e.kind() {
                PutErrorKind::InvalidKey => KvError::InvalidKey(key.to_owned()),
                _ => self.write_error("writing", key, &e, false),
            })
    }

    async fn delete_once(&self, key: &str, expected: Option<u64>) -> Result<(), KvError> {
        check_key(key)?;
        let marker = || {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert("KV-Operation", "DEL");
            match expected {
                Some(expected) => expect(expected, headers),
                None => headers,
            }
        };
        heard(|| self.write(key, Some(marker()), Bytes::new()))
            .await
            .map(drop)
            .map_err(UpdateError::from)
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    key: key.to_owned(),
                    expected: expected.unwrap_or(0),
                },
                UpdateErrorKind::InvalidKey => KvError::InvalidKey(key.to_owned()),
                UpdateErrorKind::TimedOut => self.write_error("deleting", key, &e, true),
                UpdateErrorKind::Other => self.write_error("deleting", key, &e, false),
            })
    }

    /// Read with one scan of the bucket's stream (`transport::nats::scan`, headers only), the
    /// last operation seen of each key deciding whether it is listed. So every key that holds a
    /// value and is not written during the listing is listed; a key written meanwhile is listed
    /// as its newest revision read says, or may be missed; and a listing ends under any write
    /// rate.
    ///
    /// Not async-nats's `Store::keys`: its consumer delivers the last entry of each key from a
    /// list taken when it is created; an entry rewritten before its delivery was then missed, or,
    /// on nats-server 2.9, waited for without end (the console's page hung on a host's status
    /// document, rewritten every few hundred milliseconds).
    async fn keys_once(&self) -> Result<Vec<String>, KvError> {
        let last = self.last_operations("listing").await?;
        Ok(last.into_iter().filter_map(|(k, op)| op.put.then_some(k)).collect())
    }

    /// One scan of the bucket (as [`keys`](Self::keys) reads it), then, per key whose last
    /// operation is a delete or purge marker stored at least `older_than` ago, a purge of the
    /// key's subject up to that marker's sequence: a write made since is kept.
    async fn purge_tombstones_once(&self, older_than: Duration) -> Result<usize, KvError> {
        // An age reaching before the calendar's start (`Duration::MAX`): nothing is that old.
        let Some(cutoff) = time::Duration::try_from(older_than)
            .ok()
            .and_then(|age| time::OffsetDateTime::now_utc().checked_sub(age))
        else {
            return Ok(0);
        };
        let last = self.last_operations("reading the tombstones of").await?;
        let old_markers = last
            .into_iter()
            .filter(|(_, op)| !op.put && op.stored <= cutoff)
            .map(|(key, op)| (key, op.sequence));
        // Several purges in flight: a bucket written before tombstones were removed may hold
        // many, and each is a request to the stream's leader.
        let purges = futures::stream::iter(old_markers)
            .map(|(key, sequence)| async move {
                self.store
                    .stream
                    .purge()
                    .filter(format!("{}{key}", self.store.prefix))
                    .sequence(sequence + 1)
                    .await
                    .map(|purged| purged.purged > 0)
                    .map_err(|e| self.transport("removing the tombstone of", &key, &e, false))
            })
            .buffer_unordered(PURGES_IN_FLIGHT);
        futures::pin_mut!(purges);
        let mut removed = 0;
        while let Some(purged) = purges.next().await {
            removed += usize::from(purged?);
        }
        if removed > 0 {
            tracing::debug!(bucket = %self.bucket, removed, "tombstones removed");
        }
        Ok(removed)
    }
}

impl KeyValue for NatsKeyValue {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        self.again_if_gone(|| self.get_once(key)).await
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.again_if_gone(|| self.create_once(key, value.clone())).await
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        self.again_if_gone(|| self.update_once(key, value.clone(), expected))
            .await
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        self.again_if_gone(|| self.put_once(key, value.clone())).await
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), KvError> {
        self.again_if_gone(|| self.delete_once(key, expected)).await
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.again_if_gone(|| self.keys_once()).await
    }

    async fn purge_tombstones(&self, older_than: Duration) -> Result<usize, KvError> {
        self.again_if_gone(|| self.purge_tombstones_once(older_than)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A question beside an operation waits a quarter of the request timeout, at least 250 ms and
    /// at most 1 s, and never longer than the timeout itself.
    #[test]
    fn side_questions_wait_a_quarter_of_the_timeout_within_bounds() {
        use crate::transport::nats::side_wait;
        let ms = Duration::from_millis;
        assert_eq!(side_wait(ms(100)), ms(100));
        assert_eq!(side_wait(ms(600)), ms(250));
        assert_eq!(side_wait(ms(2_000)), ms(500));
        assert_eq!(side_wait(ms(5_000)), ms(1_000));
        assert_eq!(side_wait(Duration::from_secs(60)), ms(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn an_unheard_operation_is_sent_again_for_two_seconds() {
        use std::sync::atomic::{AtomicU32, Ordering};
        let sent = AtomicU32::new(0);
        let failure = |kind| Err::<u32, _>(PublishError::new(kind));
        let start = tokio::time::Instant::now();
        // heard on the fourth send
        let op = || async {
            let n = sent.fetch_add(1, Ordering::Relaxed) + 1;
            if n < 4 {
                failure(PublishErrorKind::StreamNotFound)
            } else {
                Ok(n)
            }
        };
        assert_eq!(heard(op).await.expect("heard"), 4);
        assert_eq!(start.elapsed(), Duration::from_millis(25 + 50 + 100));
        // never heard: the last failure, after pauses within the two seconds
        sent.store(0, Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        let never = |kind| {
            let sent = &sent;
            move || async move {
                sent.fetch_add(1, Ordering::Relaxed);
                failure(kind)
            }
        };
        let err = heard(never(PublishErrorKind::StreamNotFound))
            .await
            .expect_err("never heard");
        assert_eq!(err.kind(), PublishErrorKind::StreamNotFound);
        assert_eq!(sent.load(Ordering::Relaxed), 11);
        assert_eq!(start.elapsed(), Duration::from_millis(25 + 50 + 100 + 200 + 6 * 250));
        // any other failure at once
        sent.store(0, Ordering::Relaxed);
        let start = tokio::time::Instant::now();
        let err = heard(never(PublishErrorKind::TimedOut)).await.expect_err("timed out");
        assert_eq!(err.kind(), PublishErrorKind::TimedOut);
        assert_eq!(sent.load(Ordering::Relaxed), 1);
        assert_eq!(start.elapsed(), Duration::ZERO);
    }

    /// Against a real server: writes into a bucket whose stream nobody serves (gone, as a bucket
    /// created in another cluster is until its interest crosses the gateway) are sent again, and
    /// done once it is back within the wait; not reported unavailable at once.
    #[tokio::test]
    async fn operations_nobody_received_are_sent_again_until_the_bucket_answers() {
        let server = crate::testing::NatsServer::start().await.expect("nats-server");
        let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
        let spec = KvSpec::new("unheard");
        open(&t, &spec).await.expect("bucket");
        // a handle that does not provision its bucket again itself
        let kv = open_existing(&t, "unheard").await.expect("open").expect("exists");
        let back_after = Duration::from_millis(400);
        for op in ["put", "create", "delete"] {
            t.jetstream()
                .delete_stream("KV_unheard")
                .await
                .expect("delete the bucket's stream");
            let back = tokio::spawn({
                let (t, spec) = (t.clone(), spec.clone());
                async move {
                    tokio::time::sleep(back_after).await;
                    create(&t, &spec).await.expect("created again")
                }
            });
            let start = std::time::Instant::now();
            // (each time into an empty bucket)
            match op {
                "put" => {
                    kv.put("k", Bytes::from_static(b"v"))
                        .await
                        .expect("put once the bucket is back");
                }
                "create" => {
                    kv.create("k", Bytes::from_static(b"v"))
                        .await
                        .expect("created once the bucket is back");
                }
                _ => kv.delete("k", None).await.expect("deleted once the bucket is back"),
            }
            assert!(start.elapsed() >= back_after, "{op} done before the bucket was back");
            assert!(back.await.expect("task"));
        }
        // nobody answers for longer: unavailable (transient), after the wait
        t.jetstream().delete_stream("KV_unheard").await.expect("delete");
        let start = std::time::Instant::now();
        let err = kv
            .put("k", Bytes::from_static(b"v"))
            .await
            .expect_err("nobody stores it");
        assert!(
            matches!(err, KvError::Transport(TransportError::Unavailable(_))),
            "{err:?}"
        );
        assert!(
            start.elapsed() >= UNHEARD_FOR - Duration::from_millis(300),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn only_buckets_of_one_replica_are_read_directly() {
        let config = |replicas: u8| bucket_config(&KvSpec::new("b").replicas(replicas));
        assert!(reads_directly(&config(1)));
        assert!(!reads_directly(&config(3)));
        let mirror = js_stream::Config {
            mirror: Some(js_stream::Source {
                name: "KV_other".into(),
                ..Default::default()
            }),
            ..config(1)
        };
        assert!(!reads_directly(&mirror));
        let no_direct = js_stream::Config {
            allow_direct: false,
            ..config(1)
        };
        assert!(!reads_directly(&no_direct));
    }
}
