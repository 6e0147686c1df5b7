//! [`SagaRunner`]: drives saga instances through their persisted log.
//!
//! # Writes and crash windows
//!
//! Every transition is one write of the whole [`SagaRecord`]: a compare-and-set update of the
//! active record, except the creation and the final write. The intent of a step's (or
//! compensation's) next attempt is folded into the write before it, so a saga of n steps that
//! completes without a retry writes `create`, n outcomes (the last one into the settled bucket)
//! and one delete: n + 2 writes.
//!
//! | write | persisted | decided lifecycle events |
//! | --- | --- | --- |
//! | [`Write::Create`] | status `running`; step 1 `running`, attempts 1 (its intent) | `started` |
//! | [`Write::StepStarted`] | step `running`, attempts + 1: only for a retry (after a failed or deferred attempt) or a step resumed after a crash | |
//! | [`Write::StepCompleted`] | step `completed`, the step's data changes; and the next step `running`, attempts + 1 (its intent), or, for the last step, status `completed` | `step_completed` (`completed`) |
//! | [`Write::StepFailed`] | step `failed`, status `compensating`; and the first compensation's intent (`compensating`, compensation attempts + 1), or status `compensated` if nothing needs compensating | `step_failed`, `compensating` (`compensated`) |
//! | [`Write::CompensationStarted`] | step `compensating`, compensation attempts + 1: only for a retry or a compensation resumed after a crash | |
//! | [`Write::StepCompensated`] | step `compensated`, the compensation's data changes; and the next compensation's intent, or status `compensated` | `step_compensated` (`compensated`) |
//! | [`Write::CompensationFailed`] | step `compensation_failed`, status `needs_attention` | `compensation_failed` |
//! | [`Write::Finish`] | status `completed` / `compensated`, when no outcome write carried it (a record of an earlier layout) | `completed` / `compensated` |
//! | [`Write::Settle`] | completed / compensated: once every event is acknowledged, the active record is deleted (conditional on its revision); needs attention: the outbox emptied in place | |
//! | [`Write::RetryCompensation`] | status `compensating`, the failed compensation's attempts reset | `compensating` |
//!
//! A write whose status is final (`completed` / `compensated`) is not an update of the active
//! record: it creates the record in the settled bucket (below), then [`Write::Settle`] deletes
//! the active one. The final write decides the outcome, so the drive call (`start`, `resume_saga`,
//! ...) returns once it is made; the rest of the move (the final events' acknowledgements, then
//! the delete) is tried once in place and, if it has to wait (on NATS, for the server's
//! answers), goes on as a task of its own. [`SagaRunner::settled`] waits for those tasks (and
//! reports a failed one); the runner's listings and [`SagaRunner::forget`] wait for the ones
//! started before them. A process that ends before the task did leaves the saga in both buckets,
//! as a crash between the two writes does (below).
//!
//! Events are put in the record's outbox by the write that decides them and published right
//! after it, with message ids derived from (saga, id, event number), without waiting for their
//! acknowledgements: the step goes on. An event leaves the outbox with the first write made after
//! its acknowledgement arrived; until then every write carries it again. Every acknowledgement is
//! awaited before the active record is deleted (and before a needs-attention saga's outbox is
//! emptied), so an event is always either acknowledged or in the persisted outbox: a crash
//! re-publishes it on resume, and the duplicate window drops repeats.
//!
//! A crash after a write recording an attempt as started (an intent, folded or not) and before
//! the matching outcome write leaves the step (or compensation) `running` (`compensating`): on
//! resume it runs again, with the same idempotency key, as a new attempt counted against its retry
//! policy (so a crash right after the intent, before the step ran, also counts an attempt). The
//! only case in which user code runs twice is a crash after the step ran and before its outcome
//! write, and the key exists for it. A step or compensation whose outcome write succeeded never
//! runs again.
//!
//! # Active and settled records
//!
//! Records live in two buckets: the *active* one (`cim_saga_{NAME}`, or
//! [`SagaRunnerBuilder::bucket`]), which keeps records until they are moved or forgotten, and the
//! *settled* one (`{bucket}_settled`), whose entries expire after
//! [`SagaRunnerBuilder::settled_retention`] ([`DEFAULT_SETTLED_RETENTION`]). The final write of a
//! saga that completed or was compensated creates its record in the settled bucket (a `create`:
//! a saga settled by another runner meanwhile makes it fail, as a lost compare-and-set would);
//! once its events are acknowledged, the record is deleted from the active bucket.
//! [`SagaRunner::resume`] and [`SagaRunner::needs_attention`] list only the active bucket, so
//! their cost follows the unfinished sagas, not the history: the tombstone each delete leaves (on
//! NATS a delete marker, kept by the bucket for good) is removed by [`SagaRunner::resume`] and
//! [`SagaRunner::rescan`] once [`SagaRunnerBuilder::tombstone_age`] old. Sagas that need attention stay
//! active (a person must act). A settled record keeps the outbox of its final write: those events
//! were acknowledged before the active record was deleted; [`SagaRunner::status`] reports it
//! empty.
//!
//! A crash between the final write and the delete leaves the saga in both buckets, the active
//! record one step behind: resume (and [`SagaRunner::status`]) find the settled record, and
//! resume finishes the move: it publishes the final events again, then deletes the active record
//! (no step runs again). Records written before this layout (settled ones in the active bucket)
//! are moved by the first resume (put into the settled bucket, then deleted).
//! [`SagaRunner::status`] reads the active bucket, then the settled one;
//! [`SagaRunner::start`] refuses an id found in either, so a settled saga does not start again
//! while it is retained. The settled bucket is read beside the create (not before it): a create
//! that succeeded while a settled record exists is withdrawn.

use super::context::StepContext;
use super::events::{
    LifecycleEvents, SAGA_EVENT_TYPE, SAGA_EVENT_VERSION, SAGA_EVENTS_DOMAIN, SagaEvent, SagaEventKind,
};
use super::record::{self, RecordFormat, SagaRecord, SagaStatus, StepRecord, StepState};
use super::{Compensation, Saga, Step, StepFn, StepPolicy};
use crate::backoff::Backoff;
use crate::clock::Clock;
use crate::envelope::Envelope;
use crate::handler::{Context, HandlerError, Registration};
use crate::id::Identity;
use crate::pipeline::Outcome;
use crate::pipeline::step::Observer;
use crate::settings::SettingsError;
use crate::subject::{Subject, SubjectPattern};
use crate::timestamp::Timestamp;
use crate::transport::{KeyValue, KvError, KvSpec, StreamSpec, Transport, TransportError};
use bytes::Bytes;
use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The pause between retries of a saga store that is unavailable: 100 ms, doubling to 1 s.
const STORE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));

// Calls the fault hook at a crash point, returning `SagaError::Crashed` if it says so; compiles
// to nothing without the `testing` feature.
macro_rules! fault {
    ($runner:expr, $id:expr, $write:expr, $step:expr, $moment:ident) => {
        #[cfg(feature = "testing")]
        $runner.fault($id, $write, $step, Moment::$moment)?;
    };
}

/// Every lifecycle event kind (the subjects of a runner's events are made once, in this order).
pub(super) const EVENT_KINDS: [SagaEventKind; 8] = [
    SagaEventKind::Started,
    SagaEventKind::StepCompleted,
    SagaEventKind::StepFailed,
    SagaEventKind::Compensating,
    SagaEventKind::StepCompensated,
    SagaEventKind::Completed,
    SagaEventKind::Compensated,
    SagaEventKind::CompensationFailed,
];

/// How long a settled (completed or compensated) saga's record is kept: 7 days.
pub const DEFAULT_SETTLED_RETENTION: Duration = Duration::from_secs(7 * 24 * 60 * 60);

/// How many sagas [`SagaRunner::resume`] drives at once.
pub const DEFAULT_RESUME_CONCURRENCY: usize = 16;

/// The default lease: how long after a runner's last write other runners leave its saga alone
/// (on top of the running step's timeout and back-off).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// How often a hosted runner looks again for sagas it should drive on
/// ([`SagaRunner::rescan`]): 10 s.
pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(10);

/// Which persisted write a step boundary is (a crash point of the fault hook surrounds one).
/// Public with the `testing` feature only. What each persists: the table of writes in
/// `saga/runner.rs` and in `docs/saga.md`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Write {
    /// The record is created, with the first step's first attempt as started.
    #[cfg_attr(not(feature = "testing"), allow(dead_code))]
    Create,
    /// A step attempt's intent, written on its own: a retry, or a step resumed after a crash.
    StepStarted,
    /// A step's completion, with the next step's intent or (the last step) the final status.
    StepCompleted,
    /// A step's final failure (compensation begins), with the first compensation's intent or the
    /// final status.
    StepFailed,
    /// A compensation attempt's intent, written on its own: a retry, or a compensation resumed
    /// after a crash.
    CompensationStarted,
    /// A compensation's completion, with the next compensation's intent or the final status.
    StepCompensated,
    /// A compensation's final failure (the saga needs attention).
    CompensationFailed,
    /// The final status (completed or compensated) when no outcome write carried it.
    Finish,
    /// After a final write (into the settled bucket) and the acknowledgement of every event: the
    /// active record is deleted (in the background: the drive call has returned). For a saga
    /// needing attention: its outbox emptied in place. For a final record found in the active
    /// bucket (an earlier layout), `Before` the put into the settled bucket and `After` it,
    /// before the delete.
    Settle,
    /// [`SagaRunner::retry_compensation`] resets a saga that needs attention.
    RetryCompensation,
}

/// Before or after a write.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Moment {
    /// Just before the write is sent.
    Before,
    /// Just after the write succeeded (before its events are published).
    After,
}

/// A step boundary at which a test can make the runner stop as if its process died.
#[cfg(feature = "testing")]
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CrashPoint {
    /// The saga instance.
    pub saga_id: String,
    /// The write.
    pub write: Write,
    /// The step the write concerns, if any.
    pub step: Option<&'static str>,
    /// Before or after it.
    pub moment: Moment,
}

#[cfg(feature = "testing")]
impl fmt::Display for CrashPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} {:?}", self.moment, self.write)?;
        if let Some(s) = self.step {
            write!(f, " of `{s}`")?;
        }
        write!(f, " (saga `{}`)", self.saga_id)
    }
}

/// A fault-injection hook for tests: called at every [`CrashPoint`]; returning `true` makes the
/// runner stop there with [`SagaError::Crashed`], writing and publishing nothing more, as if its
/// process had died. Only with the `testing` feature.
#[cfg(feature = "testing")]
pub type FaultHook = Arc<dyn Fn(&CrashPoint) -> bool + Send + Sync>;

/// What went wrong driving a saga.
///
/// Non-exhaustive: the `testing` feature adds the variant `Crashed` (a fault hook stopped the runner).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SagaError {
    /// The saga id is not usable as a key.
    #[error("invalid saga id `{id}`: {reason}")]
    InvalidId {
        /// The id, cut to 64 characters.
        id: String,
        /// Why.
        reason: String,
    },
    /// The step table is not valid (hand-written tables; `#[saga]` checks at compile time).
    #[error("invalid saga definition: {0}")]
    Definition(String),
    /// An instance with this id exists already.
    #[error("saga `{id}` exists already; use resume_saga to drive it on")]
    AlreadyExists {
        /// The id.
        id: String,
    },
    /// No instance with this id.
    #[error("no saga `{id}`")]
    NotFound {
        /// The id.
        id: String,
    },
    /// The stored record cannot be read, or does not fit this saga's step table.
    #[error("saga `{id}` has an unusable record: {reason}; inspect or delete the key")]
    Corrupt {
        /// The id.
        id: String,
        /// Why.
        reason: String,
    },
    /// Another runner wrote the record first; this one stopped. Drive calls report it as
    /// [`SagaOutcome::Lost`].
    #[error("saga `{id}` was written by another runner; this one stopped")]
    Conflict {
        /// The id.
        id: String,
    },
    /// [`SagaRunner::retry_compensation`] on a saga that does not need attention.
    #[error("saga `{id}` is {status:?}, not needs_attention")]
    NotNeedingAttention {
        /// The id.
        id: String,
        /// Its status.
        status: SagaStatus,
    },
    /// [`SagaRunner::forget`] on a saga that has not settled.
    #[error(
        "saga `{id}` is {status:?}; only a completed or compensated saga whose events are published can be forgotten"
    )]
    NotSettled {
        /// The id.
        id: String,
        /// Its status.
        status: SagaStatus,
    },
    /// A runner setting it cannot work with ([`SagaRunnerBuilder::build`] reports it).
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The record could not be encoded.
    #[error("cannot encode saga `{id}`: {reason}")]
    Encode {
        /// The id.
        id: String,
        /// What serde said.
        reason: String,
    },
    /// The key-value store failed.
    #[error(transparent)]
    KeyValue(#[from] KvError),
    /// Publishing lifecycle events or provisioning their stream failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// A [`FaultHook`] stopped the runner here (tests only: the `testing` feature).
    #[cfg(feature = "testing")]
    #[error("injected crash at {0}")]
    Crashed(CrashPoint),
}

impl SagaError {
    /// `true` if trying again later may succeed (the store or the server was unreachable). The
    /// saga is left as persisted; [`SagaRunner::resume`] picks it up.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::KeyValue(e) => e.is_transient(),
            Self::Transport(e) => e.is_transient(),
            #[cfg(feature = "testing")]
            Self::Crashed(_) => true,
            _ => false,
        }
    }
}

/// Where a drive call left a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// Every step completed.
    Completed,
    /// `failed_step` failed and every completed step was compensated.
    Compensated {
        /// The step that failed.
        failed_step: String,
        /// Its error.
        error: String,
    },
    /// The compensation of `step` failed for good; the saga waits for a person.
    NeedsAttention {
        /// The step whose compensation failed.
        step: String,
        /// The compensation's error.
        error: String,
    },
    /// Another runner holds the saga's lease; this one left it alone.
    Busy {
        /// The other runner.
        owner: String,
    },
    /// Another runner wrote the saga first; this one stopped.
    Lost,
}

/// What [`SagaRunner::resume`] (or [`SagaRunner::resume_concurrently`]) did. Each list is
/// sorted by saga id.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResumeReport {
    /// Driven to completion.
    pub completed: Vec<String>,
    /// Driven to full compensation.
    pub compensated: Vec<String>,
    /// Driven into needs-attention, or found there.
    pub needs_attention: Vec<String>,
    /// Left alone: another runner holds the lease.
    pub busy: Vec<String>,
    /// Stopped: another runner wrote first.
    pub lost: Vec<String>,
    /// Found completed or compensated in the active bucket (a move to the settled bucket cut
    /// short by a crash, or a record older than the settled bucket): moved now. Sagas settled
    /// normally are no longer in the active bucket and are not counted.
    pub settled: usize,
    /// Could not be driven (corrupt record, store unreachable), with the reason.
    pub failed: Vec<(String, String)>,
}

impl ResumeReport {
    /// Every list by saga id.
    fn sort(&mut self) {
        for list in [
            &mut self.completed,
            &mut self.compensated,
            &mut self.needs_attention,
            &mut self.busy,
            &mut self.lost,
        ] {
            list.sort_unstable();
        }
        self.failed.sort_unstable();
    }

    fn add(&mut self, id: String, result: Result<Option<SagaOutcome>, SagaError>) {
        match result {
            Ok(None) => self.settled += 1,
            Ok(Some(SagaOutcome::Completed)) => self.completed.push(id),
            Ok(Some(SagaOutcome::Compensated { .. })) => self.compensated.push(id),
            Ok(Some(SagaOutcome::NeedsAttention { .. })) => self.needs_attention.push(id),
            Ok(Some(SagaOutcome::Busy { .. })) => self.busy.push(id),
            Ok(Some(SagaOutcome::Lost)) => self.lost.push(id),
            // Deleted (forgotten) between listing and loading.
            Err(SagaError::NotFound { .. }) => {}
            Err(e) => {
                tracing::warn!(%id, error = %e, "cannot resume saga");
                self.failed.push((id, e.to_string()));
            }
        }
    }
}

struct Inner<S: Saga, T: Transport> {
    saga: S,
    steps: Vec<Step<S>>,
    /// Publishes steps' events and the lifecycle outbox, provisioning domains first seen.
    publisher: crate::transport::Provisioner<T>,
    /// The same, as the steps' contexts take it (made once, shared by every attempt).
    /// What the contexts of each step (and its compensation) share: its label, the publisher.
    step_runs: Vec<[Arc<crate::handler::context::Runs>; 2]>,
    kv: T::KeyValue,
    /// Settled records, expiring after the retention.
    settled: T::KeyValue,
    instance: String,
    lease: Duration,
    rescan: Option<Duration>,
    /// How old a tombstone in the active bucket is before a resume or rescan removes it.
    tombstone_age: Duration,
    /// When tombstones were last removed (the clock's Unix milliseconds; 0: never): a sweep
    /// reads the whole bucket, so rescans sweep at most once per `tombstone_age`.
    swept_at_ms: std::sync::atomic::AtomicI64,
    /// Leases are read on the runtime's one clock, anchored at the runner's creation.
    clock: Clock,
    events_subject: Subject,
    /// `saga.{NAME}.{kind}` per lifecycle event kind, in the order of [`EVENT_KINDS`].
    event_subjects: Vec<Subject>,
    /// Per step: the counters and metrics of its runs and of its compensations.
    observers: Vec<[Observer; 2]>,
    /// The steps' fixed parts of a record's JSON ([`record::step_heads`]).
    step_heads: Arc<[Box<[u8]>]>,
    /// This runner's name as a record's `owner` ([`record::owner`]).
    owner_json: Arc<(String, Vec<u8>)>,
    /// The encoding buffers of finished sagas, for the next ones.
    buffers: Arc<record::Buffers>,
    /// The background settles (final acknowledgements, then the active record's delete) still
    /// running.
    settling: Arc<super::settling::Settling>,
    /// Which lifecycle events are published.
    events: LifecycleEvents,
    /// The format of the records written.
    format: RecordFormat,
    #[cfg(feature = "testing")]
    hook: Option<FaultHook>,
}

/// Drives instances of the saga `S` over the transport `T`. Cheap to clone.
pub struct SagaRunner<S: Saga, T: Transport> {
    inner: Arc<Inner<S, T>>,
}

impl<S: Saga, T: Transport> Clone for SagaRunner<S, T> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S: Saga, T: Transport> fmt::Debug for SagaRunner<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRunner")
            .field("saga", &S::NAME)
            .field("instance", &self.inner.instance)
            .field("steps", &self.inner.steps)
            .finish_non_exhaustive()
    }
}

/// Configures and builds a [`SagaRunner`].
pub struct SagaRunnerBuilder<S: Saga, T: Transport> {
    transport: T,
    saga: S,
    instance: Option<String>,
    lease: Duration,
    rescan: Option<Duration>,
    tombstone_age: Duration,
    bucket: Option<String>,
    settled_retention: Duration,
    events: LifecycleEvents,
    format: RecordFormat,
    #[cfg(feature = "testing")]
    hook: Option<FaultHook>,
}

impl<S: Saga, T: Transport> fmt::Debug for SagaRunnerBuilder<S, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SagaRunnerBuilder")
            .field("saga", &S::NAME)
            .field("instance", &self.instance)
            .field("lease", &self.lease)
            .field("tombstone_age", &self.tombstone_age)
            .field("bucket", &self.bucket)
            .field("settled_retention", &self.settled_retention)
            .field("events", &self.events)
            .field("format", &self.format)
            .finish_non_exhaustive()
    }
}

impl<S: Saga, T: Transport> SagaRunnerBuilder<S, T> {
    /// This runner's name, written into every record it drives. A process restarted with the same
    /// name resumes its own sagas at once; other runners wait for the lease to run out. Default:
    /// a fresh `{saga}-{uuid}` (so a restart waits for the lease). Use a stable name per process
    /// slot (a pod name) in production.
    pub fn instance(mut self, instance: impl Into<String>) -> Self {
        self.instance = Some(instance.into());
        self
    }
    /// How long after a write the writer keeps the saga to itself (plus the running step's
    /// timeout and back-off). Default [`DEFAULT_LEASE`].
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }
    /// How often a [`Service`](crate::service::Service) hosting this runner
    /// ([`ServiceBuilder::saga`](crate::service::ServiceBuilder::saga)) calls
    /// [`rescan`](SagaRunner::rescan) after its start-up resume, so that sagas whose runner
    /// died and sagas an operator released ([`Ops::retry_saga`](crate::ops::Ops::retry_saga))
    /// are driven on without a restart. Default [`DEFAULT_RESCAN_INTERVAL`]; `None`: only the
    /// start-up resume. Not zero: [`build`](Self::build) refuses it ([`SagaError::Settings`]).
    pub fn rescan_interval(mut self, interval: Option<Duration>) -> Self {
        self.rescan = interval;
        self
    }
    /// How long the tombstone a settled saga leaves in the active bucket (its record's delete) is
    /// kept before [`resume`](SagaRunner::resume) or [`rescan`](SagaRunner::rescan) removes it
    /// (they sweep at most once per this age); default
    /// [`TOMBSTONE_AGE`](crate::transport::TOMBSTONE_AGE). Without the removal, the
    /// bucket, and every listing of it, would grow with every saga ever run.
    pub fn tombstone_age(mut self, age: Duration) -> Self {
        self.tombstone_age = age;
        self
    }
    /// The key-value bucket of active records; default `cim_saga_{NAME}`. Settled records go to
    /// `{bucket}_settled`.
    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }
    /// How long the record of a completed or compensated saga is kept (in the settled bucket,
    /// whose max age it is) before it expires; default [`DEFAULT_SETTLED_RETENTION`]. While
    /// kept, [`SagaRunner::status`] finds it and [`SagaRunner::start`] refuses its id. At least
    /// 100 ms. An existing settled bucket with another retention is reported by
    /// [`build`](Self::build) ([`KvError::BucketConflict`]) and left unchanged.
    pub fn settled_retention(mut self, retention: Duration) -> Self {
        self.settled_retention = retention;
        self
    }
    /// Which lifecycle events are published; default [`LifecycleEvents::All`]. Fewer events are
    /// fewer stored messages per saga: on NATS, [`LifecycleEvents::Outcomes`] and
    /// [`LifecycleEvents::None`] take a 3-step saga from 11 requests to 7 and 6 (docs/saga.md,
    /// "Performance"). The records are the same whichever is chosen.
    pub fn lifecycle_events(mut self, events: LifecycleEvents) -> Self {
        self.events = events;
        self
    }
    /// The format of the records written; default [`RecordFormat::V2`]. Both formats are read
    /// whichever is chosen, and a record is rewritten in this one at its next write.
    /// [`RecordFormat::V1`] is for a fleet upgraded in place: runners of a version before format
    /// 2 report a format-2 record as corrupt and leave it alone.
    pub fn record_format(mut self, format: RecordFormat) -> Self {
        self.format = format;
        self
    }
    /// Installs a fault-injection hook (tests; only with the `testing` feature).
    #[cfg(feature = "testing")]
    pub fn fault_hook(mut self, hook: impl Fn(&CrashPoint) -> bool + Send + Sync + 'static) -> Self {
        self.hook = Some(Arc::new(hook));
        self
    }

    /// Checks the step table, opens the bucket and provisions the lifecycle stream.
    pub async fn build(self) -> Result<SagaRunner<S, T>, SagaError> {
        let steps = S::steps();
        check_definition::<S>(&steps)?;
        if self.rescan.is_some_and(|d| d.is_zero()) {
            return Err(SettingsError::new(
                format!("saga `{}`", S::NAME),
                "rescan_interval",
                format!(
                    "it is zero, which would list the active bucket back to back; give how long a dead runner's saga may wait (default {DEFAULT_RESCAN_INTERVAL:?}), or `None` for no rescans"
                ),
            )
            .into());
        }
        let bucket = self.bucket.unwrap_or_else(|| format!("cim_saga_{}", S::NAME));
        let t = &self.transport;
        let settled_spec = KvSpec::new(format!("{bucket}_settled")).max_age(self.settled_retention);
        let spec = KvSpec::new(bucket);
        // Together: on a cluster each bucket is a replicated group that elects its leader.
        let (settled, kv) = futures::future::try_join(t.key_value(&settled_spec), t.key_value(&spec)).await?;
        let stream = StreamSpec::for_domain(SAGA_EVENTS_DOMAIN, None)?;
        match t.ensure_stream(&stream).await {
            Err(TransportError::StreamConflict { stream, detail }) => {
                tracing::info!(%stream, %detail, "publishing saga events to an existing stream with other settings");
            }
            other => other?,
        }
        let events_subject = Subject::from_tokens([SAGA_EVENTS_DOMAIN, S::NAME])
            .map_err(|e| SagaError::Definition(format!("saga name `{}`: {e}", S::NAME)))?;
        let event_subjects = EVENT_KINDS
            .iter()
            .map(|k| events_subject.join(k.token()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| SagaError::Definition(format!("saga name `{}`: {e}", S::NAME)))?;
        let instance = self
            .instance
            .unwrap_or_else(|| format!("{}-{}", S::NAME, uuid::Uuid::now_v7()));
        let observers: Vec<[Observer; 2]> = steps
            .iter()
            .map(|s| {
                [
                    Observer::new(
                        SAGA_EVENTS_DOMAIN,
                        S::NAME,
                        format!("{}.{}", S::NAME, s.name),
                        "saga_step",
                    ),
                    Observer::new(
                        SAGA_EVENTS_DOMAIN,
                        S::NAME,
                        format!("{}.{}.compensate", S::NAME, s.name),
                        "saga_compensation",
                    ),
                ]
            })
            .collect();
        let publisher = crate::transport::Provisioner::new(self.transport);
        let step_publisher: Arc<dyn crate::handler::context::DynPublish> = Arc::new(publisher.clone());
        let step_runs = observers
            .iter()
            .map(|pair| {
                pair.each_ref().map(|o| {
                    Arc::new(crate::handler::context::Runs::new(
                        o.label.clone(),
                        step_publisher.clone(),
                    ))
                })
            })
            .collect();
        let encoding = |e: serde_json::Error| SagaError::Encode {
            id: String::new(),
            reason: e.to_string(),
        };
        let step_heads = record::step_heads(steps.iter().map(|s| s.name)).map_err(encoding)?;
        let owner_json = record::owner(&instance).map_err(encoding)?;
        Ok(SagaRunner {
            inner: Arc::new(Inner {
                saga: self.saga,
                observers,
                step_heads,
                owner_json,
                buffers: Arc::default(),
                steps,
                step_runs,
                publisher,
                kv,
                settled,
                instance,
                lease: self.lease,
                rescan: self.rescan,
                tombstone_age: self.tombstone_age,
                swept_at_ms: std::sync::atomic::AtomicI64::new(0),
                clock: Clock::new(),
                events_subject,
                event_subjects,
                settling: Arc::default(),
                events: self.events,
                format: self.format,
                #[cfg(feature = "testing")]
                hook: self.hook,
            }),
        })
    }
}

fn check_definition<S: Saga>(steps: &[Step<S>]) -> Result<(), SagaError> {
    let bad = |m: String| Err(SagaError::Definition(m));
    if let Err(e) = crate::subject::check_token(S::NAME) {
        return bad(format!("saga name `{}`: {e}", S::NAME));
    }
    if steps.is_empty() {
        return bad(format!("saga `{}` has no steps", S::NAME));
    }
    let mut names = HashSet::new();
    let mut compensations = HashSet::new();
    for s in steps {
        if let Err(e) = crate::subject::check_token(s.name) {
            return bad(format!("step name `{}`: {e}", s.name));
        }
        if !names.insert(s.name) {
            return bad(format!("two steps are named `{}`", s.name));
        }
        match &s.compensation {
            Compensation::Undeclared => {
                return bad(format!(
                    "step `{}` declares no compensation: add `.compensate(name, f)` or `.no_compensation(reason)`",
                    s.name
                ));
            }
            Compensation::By { name, .. } if !compensations.insert(*name) => {
                return bad(format!("compensation `{name}` is used by two steps"));
            }
            _ => {}
        }
        if s.policy.timeout.is_zero() || s.compensation_policy.timeout.is_zero() {
            return bad(format!("step `{}`: timeouts must be positive", s.name));
        }
    }
    Ok(())
}

/// A lifecycle event published and not yet acknowledged: its number and its ack.
type InFlight = (
    u32,
    futures::future::BoxFuture<'static, Result<crate::transport::PublishAck, TransportError>>,
);

/// A record being driven, with the revision it was read or written at.
struct Run<D> {
    rec: SagaRecord<D>,
    rev: u64,
    /// The last write persisted a non-empty outbox (so a final status needs a settle write).
    outbox_persisted: bool,
    /// Read from, or written into, the settled bucket (`rev` is its revision there).
    archived: bool,
    /// The step (or, while compensating, the compensation) whose attempt the last write of this
    /// runner recorded as started, and which has not run since: it runs without another write.
    fresh: Option<usize>,
    /// Outbox events published whose acknowledgements are awaited; an event leaves the outbox
    /// (with the next write) only once acknowledged.
    in_flight: Vec<InFlight>,
    /// Encodes the record's writes (its fixed fields once) and its events' payloads.
    encoder: record::Encoder,
    /// The message ids of the record's lifecycle events, once the first is published.
    event_ids: Option<crate::id::DerivedChildren>,
    /// The record's id, shared by its steps' contexts.
    id: Arc<str>,
    /// Where the lifecycle events' id scope is written.
    scratch: String,
}

impl<D> Run<D> {
    fn new(rec: SagaRecord<D>, rev: u64, archived: bool, encoder: record::Encoder) -> Self {
        let id = Arc::from(rec.id.as_str());
        Self {
            outbox_persisted: !rec.outbox.is_empty(),
            rec,
            rev,
            archived,
            fresh: None,
            in_flight: Vec::new(),
            encoder,
            event_ids: None,
            id,
            scratch: String::new(),
        }
    }

    /// What an attempt reads: the record and its shared id.
    fn parts(&self) -> (&SagaRecord<D>, &Arc<str>) {
        (&self.rec, &self.id)
    }

    /// The record's JSON, in the format its runner writes (set in the record first).
    fn encode(&mut self) -> Result<Bytes, SagaError>
    where
        D: serde::Serialize,
    {
        if let Some(format) = self.encoder.format {
            self.rec.format = format;
        }
        self.encoder.encode(&self.rec).map_err(|e| SagaError::Encode {
            id: self.rec.id.clone(),
            reason: e.to_string(),
        })
    }

    /// Takes the acknowledgements that have arrived, without waiting: acknowledged events leave
    /// the outbox; failed ones stay in it, to be published again.
    fn collect_acks(&mut self) {
        use futures::FutureExt;
        if self.in_flight.is_empty() {
            return;
        }
        let (id, outbox) = (&self.rec.id, &mut self.rec.outbox);
        self.in_flight
            .retain_mut(|(seq, ack)| match ack.as_mut().now_or_never() {
                None => true,
                Some(Ok(_)) => {
                    outbox.retain(|e| e.seq != *seq);
                    false
                }
                Some(Err(e)) => {
                    tracing::warn!(%id, seq = *seq, error = %e, "saga event not acknowledged; publishing it again");
                    false
                }
            });
    }
}

impl<S: Saga, T: Transport> SagaRunner<S, T> {
    /// A builder for a runner of `saga` over `transport`.
    pub fn builder(transport: T, saga: S) -> SagaRunnerBuilder<S, T> {
        SagaRunnerBuilder {
            transport,
            saga,
            instance: None,
            lease: DEFAULT_LEASE,
            rescan: Some(DEFAULT_RESCAN_INTERVAL),
            tombstone_age: crate::transport::TOMBSTONE_AGE,
            bucket: None,
            settled_retention: DEFAULT_SETTLED_RETENTION,
            events: LifecycleEvents::default(),
            format: RecordFormat::default(),
            #[cfg(feature = "testing")]
            hook: None,
        }
    }

    /// Counters of every step (`{saga}.{step}`) and compensation (`{saga}.{step}.compensate`),
    /// counted by the pipeline each step runs through.
    pub fn stats(&self) -> Vec<crate::service::HandlerStats> {
        self.observers().map(|o| o.counters.snapshot(&o.label)).collect()
    }

    pub(crate) fn observers(&self) -> impl Iterator<Item = &Observer> {
        self.inner.observers.iter().flatten()
    }

    /// This runner's instance name.
    pub fn instance(&self) -> &str {
        &self.inner.instance
    }
    /// How often a hosting service rescans ([`SagaRunnerBuilder::rescan_interval`]).
    pub fn rescan_interval(&self) -> Option<Duration> {
        self.inner.rescan
    }
    /// The saga (its dependencies).
    pub fn saga(&self) -> &S {
        &self.inner.saga
    }
    /// The step table.
    pub fn steps(&self) -> &[Step<S>] {
        &self.inner.steps
    }
    /// The key-value bucket holding the active records: running, compensating, needing
    /// attention (and settled ones whose move was cut short).
    pub fn store(&self) -> &T::KeyValue {
        &self.inner.kv
    }
    /// The key-value bucket holding settled records until they expire.
    pub fn settled_store(&self) -> &T::KeyValue {
        &self.inner.settled
    }

    /// Starts a saga `id` (`[A-Za-z0-9_-]+`, e.g. a document id) with `data`, as the root of a new
    /// conversation, and drives it until it settles.
    pub async fn start(&self, id: &str, data: S::Data) -> Result<SagaOutcome, SagaError> {
        self.start_with_identity(id, data, Identity::root()).await
    }

    /// Starts a saga as caused by the message with `identity`: its correlation id becomes the
    /// saga's. Fails with [`SagaError::AlreadyExists`] if `id` exists, active or settled (and
    /// not yet expired).
    pub async fn start_with_identity(
        &self,
        id: &str,
        data: S::Data,
        identity: Identity,
    ) -> Result<SagaOutcome, SagaError> {
        // Boxed, as every call that drives a saga: the steps' futures make the drive several KiB,
        // and a caller's future holding it inline is moved whole wherever it goes (a task, a
        // `buffer_unordered`). One allocation per call instead of copies of all of it.
        //
        // The create is a future of its own, over before the drive starts: the record is
        // borrowed there, and a borrowed local stays in a future's state until its scope ends,
        // so one `async fn` doing both kept a second copy of the record beside the drive.
        Box::pin(async move {
            let run = self.create(id, data, identity).await?;
            self.drive(run).await
        })
        .await
    }

    /// Creates the saga `id` (its first step's first attempt recorded as started) and publishes
    /// its `started` event; the drive follows.
    async fn create(&self, id: &str, data: S::Data, identity: Identity) -> Result<Run<S::Data>, SagaError> {
        check_id(id)?;
        let mut rec = SagaRecord {
            format: self.inner.format.number(),
            saga: S::NAME.to_owned(),
            id: id.to_owned(),
            identity,
            started_at: Timestamp::now(),
            trace: crate::trace_context::current(),
            status: SagaStatus::Running,
            data,
            steps: self.inner.steps.iter().map(|s| StepRecord::pending(s.name)).collect(),
            event_seq: 0,
            outbox: Vec::new(),
            owner: self.inner.instance.clone(),
            // Set below, once the first attempt's extra lease is known.
            lease_until_ms: 0,
            round: 0,
        };
        self.note(&mut rec, SagaEventKind::Started, None, None, None);
        // The create records the first step's first attempt as started (its intent), so the step
        // runs without a write of its own.
        let mut run = Run::new(rec, 0, false, self.encoder());
        let extra = self.fold_next(&mut run);
        run.rec.lease_until_ms = self.inner.clock.after_millis(self.inner.lease.saturating_add(extra));
        let exists = || SagaError::AlreadyExists { id: id.to_owned() };
        fault!(self, id, Write::Create, None, Before);
        // An id retained in the settled bucket must not start again. The check is read beside
        // the create (one round trip, not two): the settled record is written before the active
        // one is deleted, so a create that succeeded (no active record) while a settled one
        // exists sees it here, and withdraws. (A crash before the withdrawal is caught by
        // `resume_loaded`.)
        let bytes = run.encode()?;
        let (created, settled) = futures::join!(self.inner.kv.create(id, bytes), self.inner.settled.get(id));
        run.rev = match created {
            Ok(rev) => rev,
            Err(KvError::AlreadyExists { .. }) => return Err(exists()),
            Err(e) => return Err(e.into()),
        };
        fault!(self, id, Write::Create, None, After);
        if settled?.is_some() {
            if let Err(e) = self.inner.kv.delete(id, Some(run.rev)).await {
                tracing::warn!(saga = S::NAME, id, error = %e, "cannot withdraw the record of a saga started twice");
            }
            return Err(exists());
        }
        tracing::debug!(saga = S::NAME, id, correlation_id = %run.rec.identity.correlation_id, "saga started");
        self.issue_outbox(&mut run).await?;
        Ok(run)
    }

    /// Drives the existing saga `id` on, unless it is settled (its outcome is returned) or
    /// another runner's lease on it is running ([`SagaOutcome::Busy`]).
    pub async fn resume_saga(&self, id: &str) -> Result<SagaOutcome, SagaError> {
        // Boxed: see `start_with_identity`.
        Box::pin(async {
            let run = self.load(id).await?;
            self.resume_loaded(run).await
        })
        .await
    }

    async fn resume_loaded(&self, mut run: Run<S::Data>) -> Result<SagaOutcome, SagaError> {
        if run.archived {
            return Ok(outcome_of(&run.rec));
        }
        if is_final(&run.rec) && run.rec.outbox.is_empty() {
            // Settled in the active bucket (a record of an earlier layout): move it.
            return match self.archive(&mut run).await {
                Ok(()) => Ok(outcome_of(&run.rec)),
                Err(SagaError::Conflict { .. }) => Ok(SagaOutcome::Lost),
                Err(e) => Err(e),
            };
        }
        if matches!(run.rec.status, SagaStatus::Running | SagaStatus::Compensating)
            && let Some(settled) = self.load_from(&self.inner.settled, &run.rec.id, true).await?
        {
            // Settled already: its final write (into the settled bucket) was made, and the crash
            // came before the active record was deleted; or this is a second start of a settled
            // saga that crashed before withdrawing its record. Finish the move: publish the
            // final events again (duplicates are dropped), then delete the active record.
            return self.finish_move(settled, run.rev).await;
        }
        let rec = &run.rec;
        if rec.status.is_settled() && rec.outbox.is_empty() {
            return Ok(outcome_of(rec));
        }
        if rec.owner != self.inner.instance && self.inner.clock.now_millis() < rec.lease_until_ms {
            return Ok(SagaOutcome::Busy {
                owner: rec.owner.clone(),
            });
        }
        tracing::info!(saga = S::NAME, id = %rec.id, status = ?rec.status, previous_owner = %rec.owner, "resuming saga");
        self.drive(run).await
    }

    /// Finds every unfinished saga in the bucket and drives each to completed, compensated or
    /// needs-attention, [`DEFAULT_RESUME_CONCURRENCY`] at a time:
    /// [`resume_concurrently`](Self::resume_concurrently)`(DEFAULT_RESUME_CONCURRENCY)`. A host
    /// should not await it before it starts consuming; see
    /// [`resume_in_background`](Self::resume_in_background).
    pub async fn resume(&self) -> Result<ResumeReport, SagaError> {
        self.resume_concurrently(DEFAULT_RESUME_CONCURRENCY).await
    }

    /// Finds every unfinished saga in the bucket and drives each to completed, compensated or
    /// needs-attention, with at most `limit` sagas in flight at once (`0` counts as `1`). The
    /// sagas are polled by this future itself, not spawned: it returns once every one settled or
    /// stopped (and the background settles of those that completed or were compensated ended,
    /// see [`settled`](Self::settled)).
    ///
    /// Sagas leased by another live runner are left alone ([`ResumeReport::busy`]); a saga
    /// another runner writes meanwhile is given up ([`ResumeReport::lost`]); a corrupt record or
    /// an unreachable store is reported ([`ResumeReport::failed`]), not fatal. Only failing to
    /// list the bucket is an error (transient failures to list it are retried for up to
    /// a minute). The report's lists are sorted by id.
    pub async fn resume_concurrently(&self, limit: usize) -> Result<ResumeReport, SagaError> {
        use futures::stream::StreamExt;
        self.settle_pending().await;
        // Resuming is start-up work: a bucket whose leader is being elected (a node just failed)
        // is waited for, as provisioning waits, rather than failing the start.
        let ids = crate::transport::provision::patiently(
            "saga bucket listing",
            crate::transport::provision::Attempts::Whole,
            || self.inner.kv.keys(),
        )
        .await?;
        let mut report = ResumeReport::default();
        let mut resumes = futures::stream::iter(ids)
            .map(|id| async move {
                let result = self.resume_one(&id).await;
                (id, result)
            })
            .buffer_unordered(limit.max(1));
        while let Some((id, result)) = resumes.next().await {
            report.add(id, result);
        }
        // The sagas reported settled have left the active bucket (a process that resumes, then
        // ends, leaves nothing behind).
        self.settle_pending().await;
        // After the sagas were driven: the first sweep of a bucket that holds many tombstones
        // (written before they were removed) takes a while, and the sagas should not wait for it.
        self.sweep_tombstones().await;
        report.sort();
        tracing::info!(saga = S::NAME, ?report, "resumed sagas");
        Ok(report)
    }

    /// Runs [`resume_concurrently`](Self::resume_concurrently)`(limit)` as one background task
    /// (inside a `saga_resume` span), so that a host starts consuming at once while unfinished
    /// sagas are driven on beside it. Await the handle for the report, or drop it to let the
    /// resume run unobserved (the report is logged either way).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime (as [`tokio::spawn`] does).
    pub fn resume_in_background(&self, limit: usize) -> tokio::task::JoinHandle<Result<ResumeReport, SagaError>> {
        let runner = self.clone();
        let span = tracing::info_span!("saga_resume", saga = S::NAME, limit);
        tokio::spawn(tracing::Instrument::instrument(
            async move { runner.resume_concurrently(limit).await },
            span,
        ))
    }

    /// Drives on every active saga whose lease has run out (by any owner, this runner included):
    /// a saga whose runner died, or one an operator released for a retry
    /// ([`Ops::retry_saga`](crate::ops::Ops::retry_saga) resets a saga needing attention to
    /// `compensating` with an expired lease). Unlike [`resume`](Self::resume), a saga under a
    /// running lease is left alone even if this runner owns it (it may be driving it right now),
    /// and sagas needing attention are skipped without being reported. At most
    /// [`DEFAULT_RESUME_CONCURRENCY`] at once. The report lists what was driven (sorted by id).
    pub async fn rescan(&self) -> Result<ResumeReport, SagaError> {
        use futures::stream::StreamExt;
        self.settle_pending().await;
        let ids = self.inner.kv.keys().await?;
        let mut report = ResumeReport::default();
        let due = futures::stream::iter(ids)
            .map(|id| async move {
                let run = match self.load_from(&self.inner.kv, &id, false).await {
                    Ok(Some(run)) => run,
                    Ok(None) => return None,
                    Err(e) => return Some((id, Err(e))),
                };
                let rec = &run.rec;
                let idle = rec.status == SagaStatus::NeedsAttention && rec.outbox.is_empty();
                if idle || self.inner.clock.now_millis() < rec.lease_until_ms {
                    return None;
                }
                Some((id, self.resume_one(&rec.id.clone()).await))
            })
            .buffer_unordered(DEFAULT_RESUME_CONCURRENCY);
        futures::pin_mut!(due);
        while let Some(done) = due.next().await {
            if let Some((id, result)) = done {
                report.add(id, result);
            }
        }
        self.sweep_tombstones().await;
        report.sort();
        Ok(report)
    }

    /// Removes the tombstones that settled sagas left in the active bucket, once
    /// [`tombstone_age`](SagaRunnerBuilder::tombstone_age) old, so that the bucket, and the
    /// listings of [`resume`](Self::resume) and [`rescan`](Self::rescan), follow the unfinished
    /// sagas, not every saga ever run. At most once per tombstone age (a sweep reads the whole
    /// bucket); a failure is logged, and the next rescan tries again.
    async fn sweep_tombstones(&self) {
        use std::sync::atomic::Ordering;
        let now = self.inner.clock.now_millis();
        let last = self.inner.swept_at_ms.load(Ordering::Relaxed);
        let age = i64::try_from(self.inner.tombstone_age.as_millis()).unwrap_or(i64::MAX);
        if last != 0 && now.saturating_sub(last) < age {
            return;
        }
        self.inner.swept_at_ms.store(now, Ordering::Relaxed);
        match self.inner.kv.purge_tombstones(self.inner.tombstone_age).await {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(saga = S::NAME, removed, "tombstones of settled sagas removed"),
            Err(e) => tracing::warn!(saga = S::NAME, error = %e, "cannot remove the tombstones of settled sagas now"),
        }
    }

    /// Resumes one saga of the active bucket: `Ok(None)` if it had settled (completed or
    /// compensated, its events published; its move to the settled bucket is finished now), the
    /// outcome otherwise (a saga found needing attention included).
    async fn resume_one(&self, id: &str) -> Result<Option<SagaOutcome>, SagaError> {
        let Some(mut run) = self.load_from(&self.inner.kv, id, false).await? else {
            return Err(SagaError::NotFound { id: id.to_owned() });
        };
        if is_final(&run.rec) && run.rec.outbox.is_empty() {
            return match self.archive(&mut run).await {
                Ok(()) => Ok(None),
                Err(SagaError::Conflict { .. }) => Ok(Some(SagaOutcome::Lost)),
                Err(e) => Err(e),
            };
        }
        if run.rec.status == SagaStatus::NeedsAttention && run.rec.outbox.is_empty() {
            return Ok(Some(outcome_of(&run.rec)));
        }
        self.resume_loaded(run).await.map(Some)
    }

    /// The persisted state of saga `id` (active, or settled and not yet expired), or `None`.
    ///
    /// A saga whose final write was made (into the settled bucket) while its active record is
    /// still there (the move was cut short by a crash) is reported settled. A settled record's
    /// outbox is reported empty: its events were published before its active record was
    /// deleted (or are published again by the resume that finishes the move).
    pub async fn status(&self, id: &str) -> Result<Option<SagaRecord<S::Data>>, SagaError> {
        check_id(id)?;
        let active = self.load_from(&self.inner.kv, id, false).await?;
        if let Some(run) = &active
            && !matches!(run.rec.status, SagaStatus::Running | SagaStatus::Compensating)
        {
            return Ok(active.map(|run| run.rec));
        }
        match self.load_from(&self.inner.settled, id, true).await? {
            Some(mut settled) => {
                settled.rec.outbox.clear();
                Ok(Some(settled.rec))
            }
            None => Ok(active.map(|run| run.rec)),
        }
    }

    /// Deletes the record of a settled saga (completed or compensated, its lifecycle events
    /// published) before its retention ends. The delete is conditional on the record's revision:
    /// a saga another runner just wrote is left alone ([`SagaError::Conflict`]). Settled records
    /// expire by themselves ([`SagaRunnerBuilder::settled_retention`]); this is for removing one
    /// sooner.
    pub async fn forget(&self, id: &str) -> Result<(), SagaError> {
        self.settle_pending().await;
        let run = self.load(id).await?;
        if run.archived {
            return match self.inner.settled.delete(id, Some(run.rev)).await {
                Ok(()) => Ok(()),
                Err(KvError::Conflict { .. }) => Err(SagaError::Conflict { id: id.to_owned() }),
                Err(e) => Err(e.into()),
            };
        }
        let settled =
            matches!(run.rec.status, SagaStatus::Completed | SagaStatus::Compensated) && run.rec.outbox.is_empty();
        if !settled {
            return Err(SagaError::NotSettled {
                id: id.to_owned(),
                status: run.rec.status,
            });
        }
        match self.inner.kv.delete(id, Some(run.rev)).await {
            Ok(()) => {}
            Err(KvError::Conflict { .. }) => return Err(SagaError::Conflict { id: id.to_owned() }),
            Err(e) => return Err(e.into()),
        }
        // A move cut short may have left a copy in the settled bucket.
        if self.inner.settled.get(id).await?.is_some() {
            self.inner.settled.delete(id, None).await?;
        }
        Ok(())
    }

    /// The ids of every saga, active or settled (and not yet expired), sorted.
    pub async fn ids(&self) -> Result<Vec<String>, SagaError> {
        self.settle_pending().await;
        let mut ids = self.inner.kv.keys().await?;
        ids.extend(self.inner.settled.keys().await?);
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The ids of the active sagas: running, compensating or needing attention (the ones
    /// [`resume`](Self::resume) reads), sorted.
    pub async fn active_ids(&self) -> Result<Vec<String>, SagaError> {
        self.settle_pending().await;
        let mut ids = self.inner.kv.keys().await?;
        ids.sort_unstable();
        Ok(ids)
    }

    /// Every saga that needs attention (a compensation failed for good), from the active bucket.
    /// Unreadable records are skipped with a warning.
    pub async fn needs_attention(&self) -> Result<Vec<SagaRecord<S::Data>>, SagaError> {
        self.settle_pending().await;
        let mut out = Vec::new();
        for id in self.inner.kv.keys().await? {
            match self.load(&id).await {
                Ok(run) if run.rec.status == SagaStatus::NeedsAttention => out.push(run.rec),
                Ok(_) | Err(SagaError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(saga = S::NAME, %id, error = %e, "unreadable saga record"),
            }
        }
        Ok(out)
    }

    /// Drives a saga that needs attention on, once its cause is fixed: the failed compensation's
    /// attempts start again from zero, then the remaining compensations run.
    pub async fn retry_compensation(&self, id: &str) -> Result<SagaOutcome, SagaError> {
        // Boxed: see `start_with_identity`.
        Box::pin(self.retry_compensation_boxed(id)).await
    }

    async fn retry_compensation_boxed(&self, id: &str) -> Result<SagaOutcome, SagaError> {
        let mut run = self.load(id).await?;
        if run.rec.status != SagaStatus::NeedsAttention {
            return Err(SagaError::NotNeedingAttention {
                id: id.to_owned(),
                status: run.rec.status,
            });
        }
        for s in &mut run.rec.steps {
            if s.state == StepState::CompensationFailed {
                s.state = StepState::Compensating;
                s.compensation_attempts = 0;
            }
        }
        run.rec.status = SagaStatus::Compensating;
        run.rec.round = run.rec.round.saturating_add(1);
        self.note(&mut run.rec, SagaEventKind::Compensating, None, None, None);
        match self
            .persist(&mut run, Write::RetryCompensation, None, Duration::ZERO)
            .await
        {
            Err(SagaError::Conflict { .. }) => return Ok(SagaOutcome::Lost),
            other => other?,
        }
        self.drive(run).await
    }

    /// A handler registration that starts a saga for every message matching `pattern`: `start`
    /// maps the decoded event to the saga id and data. The saga's correlation id is the message's.
    /// A redelivered message finds its saga and drives it on instead of starting another.
    ///
    /// Register it with [`ServiceBuilder::handler`](crate::service::ServiceBuilder::handler).
    /// The handler returns once the saga settled; a saga that could not be driven (the store
    /// unreachable) is retried as a transient failure.
    pub fn start_on<E, Dec, DecErr, F>(
        &self,
        name: impl Into<String>,
        pattern: SubjectPattern,
        event_type: &'static str,
        decode: Dec,
        start: F,
    ) -> Registration
    where
        E: Send + 'static,
        Dec: Fn(&[u8]) -> Result<E, DecErr> + Send + Sync + 'static,
        DecErr: fmt::Display,
        F: Fn(&Context, E) -> Result<(String, S::Data), HandlerError> + Send + Sync + 'static,
    {
        let runner = self.clone();
        let start = Arc::new(start);
        Registration::new(name, pattern, event_type, decode, move |ctx: Context, event: E| {
            let runner = runner.clone();
            let start = start.clone();
            async move {
                let (id, data) = start(&ctx, event)?;
                let result = match runner.start_with_identity(&id, data, *ctx.identity()).await {
                    Err(SagaError::AlreadyExists { .. }) => runner.resume_saga(&id).await,
                    other => other,
                };
                match result {
                    Ok(outcome) => {
                        tracing::debug!(saga = S::NAME, %id, ?outcome, "saga started by event");
                        Ok(())
                    }
                    Err(e) if e.is_transient() => Err(HandlerError::transient(e)),
                    Err(e) => Err(HandlerError::permanent(e)),
                }
            }
        })
    }

    /// Puts lifecycle event `kind` into `rec`'s outbox if this runner publishes that kind.
    fn note(
        &self,
        rec: &mut SagaRecord<S::Data>,
        kind: SagaEventKind,
        step: Option<&str>,
        error: Option<String>,
        attempts: Option<u32>,
    ) {
        if self.inner.events.publishes(kind) {
            note(rec, kind, step, error, attempts);
        }
    }

    /// An encoder of this saga's records.
    fn encoder(&self) -> record::Encoder {
        record::Encoder::new(self.inner.step_heads.clone(), self.inner.owner_json.clone())
            .with_buffers(self.inner.buffers.clone())
            .writing(self.inner.format)
    }

    /// The record of `id`: from the active bucket, else from the settled one.
    async fn load(&self, id: &str) -> Result<Run<S::Data>, SagaError> {
        check_id(id)?;
        if let Some(run) = self.load_from(&self.inner.kv, id, false).await? {
            return Ok(run);
        }
        // The settled bucket is written before the active record is deleted, so a record
        // missing from the active bucket is found here unless it expired or was forgotten.
        self.load_from(&self.inner.settled, id, true)
            .await?
            .ok_or_else(|| SagaError::NotFound { id: id.to_owned() })
    }

    /// Moves a completed or compensated saga whose events are published to the settled
    /// bucket: puts the final record there, then deletes it from the active bucket (conditional
    /// on its revision). A crash between the two leaves it in both; resume finishes the move.
    async fn archive(&self, run: &mut Run<S::Data>) -> Result<(), SagaError> {
        let id = run.rec.id.clone();
        fault!(self, &id, Write::Settle, None, Before);
        run.rec.outbox.clear();
        let bytes = run.encode()?;
        let settled_rev = self.inner.settled.put(&id, bytes).await?;
        fault!(self, &id, Write::Settle, None, After);
        match self.inner.kv.delete(&id, Some(run.rev)).await {
            Ok(()) => {}
            Err(KvError::Conflict { .. }) => {
                tracing::info!(saga = S::NAME, %id, "another runner wrote the saga before it was moved; stopping");
                return Err(SagaError::Conflict { id });
            }
            Err(e) => return Err(e.into()),
        }
        run.rev = settled_rev;
        run.archived = true;
        run.outbox_persisted = false;
        Ok(())
    }

    /// The record of `id` in `kv`, if any (`archived`: `kv` is the settled bucket).
    async fn load_from(&self, kv: &T::KeyValue, id: &str, archived: bool) -> Result<Option<Run<S::Data>>, SagaError> {
        check_id(id)?;
        let Some(entry) = kv.get(id).await? else {
            return Ok(None);
        };
        let corrupt = |reason: String| SagaError::Corrupt {
            id: id.to_owned(),
            reason,
        };
        let rec: SagaRecord<S::Data> = record::decode(&entry.value).map_err(corrupt)?;
        if rec.saga != S::NAME || rec.id != id {
            return Err(corrupt(format!("it belongs to saga `{}` id `{}`", rec.saga, rec.id)));
        }
        let names: Vec<&str> = rec.steps.iter().map(|s| s.name.as_str()).collect();
        let ours: Vec<&str> = self.inner.steps.iter().map(|s| s.name).collect();
        if names != ours {
            return Err(corrupt(format!("its steps {names:?} differ from this saga's {ours:?}")));
        }
        Ok(Some(Run::new(rec, entry.revision, archived, self.encoder())))
    }

    #[cfg(feature = "testing")]
    fn fault(&self, id: &str, write: Write, step: Option<&'static str>, moment: Moment) -> Result<(), SagaError> {
        if let Some(hook) = &self.inner.hook {
            let point = CrashPoint {
                saga_id: id.to_owned(),
                write,
                step,
                moment,
            };
            if hook(&point) {
                tracing::warn!(saga = S::NAME, %point, "injected crash");
                return Err(SagaError::Crashed(point));
            }
        }
        Ok(())
    }

    /// One write of the record. Acknowledged events leave the outbox first; the write's new
    /// events are published after it, without waiting for their acknowledgements. A record that
    /// is not final is updated in the active bucket (compare-and-set at the revision it was read
    /// or written at). A final one (completed or compensated) is created in the settled bucket;
    /// then, once every event is acknowledged, the active record is deleted (conditional on its
    /// revision): [`Write::Settle`].
    async fn persist(
        &self,
        run: &mut Run<S::Data>,
        write: Write,
        step: Option<&'static str>,
        extra_lease: Duration,
    ) -> Result<(), SagaError> {
        fault!(self, &run.rec.id, write, step, Before);
        run.collect_acks();
        run.rec.owner.clone_from(&self.inner.instance);
        // One read of the clock for the lease and for how long an outage is waited out.
        let now_ms = self.inner.clock.now_millis();
        run.rec.lease_until_ms =
            now_ms.saturating_add(crate::clock::millis(self.inner.lease.saturating_add(extra_lease)));
        let give_up_ms = now_ms.saturating_add(crate::clock::millis(self.inner.lease));
        let bytes = run.encode()?;
        let settling = is_final(&run.rec);
        let target = if settling {
            Target::Settled
        } else {
            Target::Active(run.rev)
        };
        let rev = self
            .write_through_outages(run, bytes, target, write, step, give_up_ms)
            .await?;
        run.outbox_persisted = !run.rec.outbox.is_empty();
        fault!(self, &run.rec.id, write, step, After);
        self.issue_outbox(run).await?;
        if settling {
            // The outcome is durable: the settled record holds it and its final events. The rest
            // of the move (the acknowledgements, then the active record's delete) runs in the
            // background; a crash before it ends leaves the saga in both buckets, which resume
            // finishes (`finish_move`) without running a step again.
            self.settle_in_background(run.id.clone(), run.rev, std::mem::take(&mut run.in_flight))
                .await;
            run.rev = rev;
            run.archived = true;
            run.outbox_persisted = false;
        } else {
            run.rev = rev;
        }
        Ok(())
    }

    /// The second half of a move to the settled bucket: once every event of the saga `id` in
    /// flight is acknowledged, its active record (at `active_rev`) is deleted, conditional on
    /// that revision ([`Write::Settle`]). It is polled once here: where the acknowledgements are
    /// in and the store answers at once (the embedded transport) it ends without a task;
    /// otherwise it goes on as a task of its own. A failure leaves the active record for resume
    /// to finish the move: it is logged, and reported by [`SagaRunner::settled`].
    async fn settle_in_background(&self, id: Arc<str>, active_rev: u64, in_flight: Vec<InFlight>) {
        let runner = self.clone();
        let mut settle = Box::pin(async move {
            match runner.delete_active(&id, active_rev, in_flight).await {
                Ok(()) | Err(SagaError::Conflict { .. }) => {}
                Err(e) => {
                    tracing::warn!(saga = S::NAME, %id, error = %e, "saga settled, but its active record stays until resume finishes the move");
                    runner.inner.settling.failed(e);
                }
            }
        });
        if futures::poll!(settle.as_mut()).is_ready() {
            return;
        }
        let ticket = self.inner.settling.ticket();
        tokio::spawn(async move {
            settle.await;
            drop(ticket);
        });
    }

    /// Awaits the acknowledgements of `in_flight` (events of the saga `id`), then deletes its
    /// active record, conditional on `active_rev`, retrying while the store is unavailable (for
    /// at most one lease from the first failure).
    async fn delete_active(&self, id: &str, active_rev: u64, in_flight: Vec<InFlight>) -> Result<(), SagaError> {
        for result in futures::future::join_all(in_flight.into_iter().map(|(_, ack)| ack)).await {
            result?;
        }
        fault!(self, id, Write::Settle, None, Before);
        // Counted from the first failure: the clock is read only when the store fails.
        let mut give_up = None;
        let mut backoff = STORE_BACKOFF;
        loop {
            match self.inner.kv.delete(id, Some(active_rev)).await {
                Ok(()) => break,
                Err(KvError::Conflict { .. }) => {
                    // Another runner finished the move (or wrote the saga) meanwhile.
                    tracing::info!(saga = S::NAME, %id, "the active record of a settled saga changed meanwhile; left to it");
                    return Err(SagaError::Conflict { id: id.to_owned() });
                }
                Err(e)
                    if e.is_transient() && {
                        let now = tokio::time::Instant::now();
                        crate::clock::later(now, backoff.pause())
                            < *give_up.get_or_insert(crate::clock::later(now, self.inner.lease))
                    } =>
                {
                    tracing::warn!(saga = S::NAME, %id, error = %e, "saga store unavailable; retrying the delete of a settled saga");
                    backoff.wait().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        fault!(self, id, Write::Settle, None, After);
        Ok(())
    }

    /// Waits until the background settles this runner started before the call have ended (each
    /// saga's final events acknowledged and its active record deleted; settles started meanwhile
    /// are not waited for). Returns the first failure kept since the last wait (an event not
    /// acknowledged, the store unavailable for a whole lease, or a crash point of the fault hook;
    /// every failure is logged): that saga settled, and its active record waits for
    /// [`resume`](Self::resume) to finish the move. The runner's listings
    /// ([`active_ids`](Self::active_ids), [`ids`](Self::ids),
    /// [`needs_attention`](Self::needs_attention), [`resume`](Self::resume),
    /// [`rescan`](Self::rescan)) and [`forget`](Self::forget) wait the same way first, and
    /// drop the failures kept (they were logged).
    pub async fn settled(&self) -> Result<(), SagaError> {
        self.inner.settling.wait().await
    }

    /// [`settled`](Self::settled), its failure logged and dropped.
    async fn settle_pending(&self) {
        if let Err(e) = self.settled().await {
            tracing::debug!(saga = S::NAME, error = %e, "a background settle failed; resume finishes it");
        }
    }

    /// Finishes the move of a saga found both settled (`settled`, read from the settled bucket)
    /// and still in the active bucket (at `active_rev`): the settled record's events are
    /// published again (duplicates are dropped), then the active record is deleted.
    async fn finish_move(&self, mut settled: Run<S::Data>, active_rev: u64) -> Result<SagaOutcome, SagaError> {
        self.await_outbox(&mut settled).await?;
        let id = &settled.rec.id;
        match self.inner.kv.delete(id, Some(active_rev)).await {
            Ok(()) => tracing::info!(saga = S::NAME, %id, "finished moving a settled saga"),
            // Deleted or written by another runner meanwhile; the settled record stands.
            Err(KvError::Conflict { .. }) => {
                tracing::info!(saga = S::NAME, %id, "the active record of a settled saga changed meanwhile; left to it");
            }
            Err(e) => return Err(e.into()),
        }
        Ok(outcome_of(&settled.rec))
    }

    /// Decides what follows the record's current state and writes it into the record, for the
    /// write at hand to persist: the next step's (or compensation's) next attempt as started (its
    /// intent; [`Run::fresh`]), or the final status with its event. Returns the extra lease the
    /// started attempt needs (its timeout and back-off).
    fn fold_next(&self, run: &mut Run<S::Data>) -> Duration {
        run.fresh = None;
        match run.rec.status {
            SagaStatus::Running => match run.rec.steps.iter().position(|s| s.state != StepState::Completed) {
                Some(j) => {
                    let policy = &self.inner.steps[j].policy;
                    let entry = &mut run.rec.steps[j];
                    if entry.state != StepState::Pending || entry.attempts >= policy.retry.max_attempts.max(1) {
                        return Duration::ZERO;
                    }
                    entry.state = StepState::Running;
                    entry.attempts += 1;
                    run.fresh = Some(j);
                    policy
                        .timeout
                        .saturating_add(policy.retry.delay(u64::from(entry.attempts)))
                }
                None => {
                    run.rec.status = SagaStatus::Completed;
                    self.note(&mut run.rec, SagaEventKind::Completed, None, None, None);
                    Duration::ZERO
                }
            },
            SagaStatus::Compensating => match self.next_compensation(&mut run.rec) {
                Some(j) => {
                    let policy = &self.inner.steps[j].compensation_policy;
                    let entry = &mut run.rec.steps[j];
                    if entry.state != StepState::Completed
                        || entry.compensation_attempts >= policy.retry.max_attempts.max(1)
                    {
                        return Duration::ZERO;
                    }
                    entry.state = StepState::Compensating;
                    entry.compensation_attempts += 1;
                    run.fresh = Some(j);
                    policy
                        .timeout
                        .saturating_add(policy.retry.delay(u64::from(entry.compensation_attempts)))
                }
                None => {
                    run.rec.status = SagaStatus::Compensated;
                    self.note(&mut run.rec, SagaEventKind::Compensated, None, None, None);
                    Duration::ZERO
                }
            },
            SagaStatus::Completed | SagaStatus::Compensated | SagaStatus::NeedsAttention => Duration::ZERO,
        }
    }

    /// Writes the record to `target`, retrying in place while the store is unavailable, until
    /// `give_up_ms` on the runner's clock (one lease after the write was prepared: the record is
    /// ours that long). What the runner holds in memory (a step's result) must not be lost to an
    /// outage: giving up here would re-run the step on resume. A retried write that had in fact
    /// been applied is recognised by its content.
    ///
    /// `bytes` (the record as `run` encodes it) goes to the store as it is; a retry encodes the
    /// record again (the same bytes) rather than keep a copy of every write for the rare retry,
    /// since a copy of a value made with `Bytes::copy_from_slice` allocates its shared header.
    async fn write_through_outages(
        &self,
        run: &mut Run<S::Data>,
        bytes: Bytes,
        target: Target,
        write: Write,
        step: Option<&'static str>,
        give_up_ms: i64,
    ) -> Result<u64, SagaError> {
        let mut backoff = STORE_BACKOFF;
        let mut first = Some(bytes);
        loop {
            // The first attempt hands the record over; a retry encodes it again (the same bytes)
            // and keeps them, to recognise its earlier attempt if that was stored after all.
            let (bytes, retry) = match first.take() {
                Some(b) => (b, None),
                None => {
                    let b = run.encode()?;
                    (b.clone(), Some(b))
                }
            };
            let id = &*run.rec.id;
            let (result, store) = match target {
                Target::Active(expected) => (self.inner.kv.update(id, bytes, expected).await, &self.inner.kv),
                Target::Settled => (self.inner.settled.create(id, bytes).await, &self.inner.settled),
            };
            match result {
                Ok(rev) => return Ok(rev),
                Err(KvError::Conflict { .. } | KvError::AlreadyExists { .. }) => {
                    if let Some(ours) = retry
                        && let Ok(Some(entry)) = store.get(id).await
                        && entry.value == ours
                    {
                        // Our earlier attempt was stored; only its answer was lost.
                        return Ok(entry.revision);
                    }
                    tracing::info!(saga = S::NAME, %id, ?write, ?step, "another runner wrote the saga first; stopping");
                    return Err(SagaError::Conflict { id: id.to_owned() });
                }
                Err(e)
                    if e.is_transient()
                        && self
                            .inner
                            .clock
                            .now_millis()
                            .saturating_add(crate::clock::millis(backoff.pause()))
                            < give_up_ms =>
                {
                    tracing::warn!(saga = S::NAME, %id, ?write, ?step, error = %e, "saga store unavailable; retrying the write");
                    backoff.wait().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The message of lifecycle event `event` of `rec`, its id derived from the saga and the
    /// event's number ([`crate::outbox`]).
    fn event_message(
        &self,
        saga: &str,
        id: &str,
        encoder: &mut record::Encoder,
        ids: &crate::id::DerivedChildren,
        event: &SagaEvent,
    ) -> Result<crate::transport::OutboundMessage, SagaError> {
        let subject = EVENT_KINDS
            .iter()
            .position(|k| *k == event.kind)
            .and_then(|i| self.inner.event_subjects.get(i))
            .cloned()
            .ok_or_else(|| SagaError::Definition(format!("no subject for saga event {:?}", event.kind)))?;
        // The same bytes as the event's entry in the record's outbox, made once.
        let payload = encoder.event_json(saga, id, event).map_err(|e| SagaError::Encode {
            id: id.to_owned(),
            reason: e.to_string(),
        })?;
        let identity = ids.child(event.seq);
        Ok(Envelope::with_identity(identity, subject, payload)
            .typed_static(SAGA_EVENT_TYPE, SAGA_EVENT_VERSION)
            .into())
    }

    /// Publishes the outbox events not yet in flight ([`crate::outbox`]), without waiting for
    /// their acknowledgements ([`Run::collect_acks`] and [`await_outbox`](Self::await_outbox)
    /// take them).
    async fn issue_outbox(&self, run: &mut Run<S::Data>) -> Result<(), SagaError> {
        if run.rec.outbox.len() <= run.in_flight.len() {
            return Ok(());
        }
        // Ids derived from (saga, id, event number): `derived_child` of the starting message in
        // the scope `saga/{saga}/{id}`, their common hash made once per run.
        let ids = run.event_ids.get_or_insert_with(|| {
            let scope = &mut run.scratch;
            scope.clear();
            scope.reserve("saga//".len() + run.rec.saga.len() + run.rec.id.len());
            for part in ["saga/", &run.rec.saga, "/", &run.rec.id] {
                scope.push_str(part);
            }
            run.rec.identity.derived_children(scope, run.rec.started_at)
        });
        for event in &run.rec.outbox {
            if run.in_flight.iter().any(|(seq, _)| *seq == event.seq) {
                continue;
            }
            let message = self.event_message(&run.rec.saga, &run.rec.id, &mut run.encoder, ids, event)?;
            let ack = self.inner.publisher.publish(message).await?;
            run.in_flight.push((event.seq, Box::pin(ack)));
        }
        Ok(())
    }

    /// Publishes what is not in flight and waits for every acknowledgement: afterwards the
    /// outbox is empty, or the error is returned and the unacknowledged events stay in it.
    async fn await_outbox(&self, run: &mut Run<S::Data>) -> Result<(), SagaError> {
        self.issue_outbox(run).await?;
        if run.in_flight.is_empty() {
            return Ok(());
        }
        let in_flight = std::mem::take(&mut run.in_flight);
        let results =
            futures::future::join_all(in_flight.into_iter().map(|(seq, ack)| async move { (seq, ack.await) })).await;
        let mut error = None;
        let mut acked = Vec::with_capacity(results.len());
        for (seq, result) in results {
            match result {
                Ok(_) => acked.push(seq),
                Err(e) => error = Some(e),
            }
        }
        run.rec.outbox.retain(|e| !acked.contains(&e.seq));
        error.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Drives `run` to its end ([`drive_inner`](Self::drive_inner)); a conflict is
    /// [`SagaOutcome::Lost`]. An `async` block, not an `async fn`: the function would keep `run`
    /// twice in its state (the argument and its binding), and the drive is boxed once per saga.
    #[allow(clippy::manual_async_fn)]
    fn drive(&self, mut run: Run<S::Data>) -> impl Future<Output = Result<SagaOutcome, SagaError>> + '_ {
        async move {
            match self.drive_inner(&mut run).await {
                Err(SagaError::Conflict { .. }) => Ok(SagaOutcome::Lost),
                other => other,
            }
        }
    }

    async fn drive_inner(&self, run: &mut Run<S::Data>) -> Result<SagaOutcome, SagaError> {
        loop {
            if run.archived {
                let outcome = outcome_of(&run.rec);
                tracing::debug!(saga = S::NAME, id = %run.rec.id, ?outcome, "saga settled");
                return Ok(outcome);
            }
            match run.rec.status {
                SagaStatus::Running => match run.rec.steps.iter().position(|s| s.state != StepState::Completed) {
                    Some(i) => self.run_step(run, i).await?,
                    None => {
                        // Every step completed, but not the status (a record of an earlier layout).
                        let extra = self.fold_next(run);
                        self.persist(run, Write::Finish, None, extra).await?;
                    }
                },
                SagaStatus::Compensating => match self.next_compensation(&mut run.rec) {
                    Some(i) => self.run_compensation(run, i).await?,
                    None => {
                        let extra = self.fold_next(run);
                        self.persist(run, Write::Finish, None, extra).await?;
                    }
                },
                SagaStatus::Completed | SagaStatus::Compensated => {
                    // Final in the active bucket: a record of an earlier layout, whose events may
                    // not be published yet. Publish them, then move it.
                    self.await_outbox(run).await?;
                    self.archive(run).await?;
                }
                SagaStatus::NeedsAttention => {
                    if run.outbox_persisted {
                        self.await_outbox(run).await?;
                        self.persist(run, Write::Settle, None, Duration::ZERO).await?;
                    }
                    let outcome = outcome_of(&run.rec);
                    tracing::debug!(saga = S::NAME, id = %run.rec.id, ?outcome, "saga settled");
                    return Ok(outcome);
                }
            }
        }
    }

    /// The highest completed step still to compensate; marks steps without compensation on the
    /// way as not compensated.
    fn next_compensation(&self, rec: &mut SagaRecord<S::Data>) -> Option<usize> {
        for i in (0..rec.steps.len()).rev() {
            if matches!(rec.steps[i].state, StepState::Completed | StepState::Compensating) {
                match self.inner.steps[i].compensation {
                    Compensation::By { .. } => return Some(i),
                    Compensation::None { .. } | Compensation::Undeclared => {
                        rec.steps[i].state = StepState::NotCompensated;
                    }
                }
            }
        }
        None
    }

    async fn run_step(&self, run: &mut Run<S::Data>, i: usize) -> Result<(), SagaError> {
        let step = &self.inner.steps[i];
        let max = step.policy.retry.max_attempts.max(1);
        loop {
            // The attempt recorded as started by the last write (folded into it) runs as it is.
            let fresh = run.fresh.take() == Some(i) && run.rec.steps[i].state == StepState::Running;
            let attempt = if fresh {
                run.rec.steps[i].attempts
            } else {
                let attempts = run.rec.steps[i].attempts;
                if attempts >= max {
                    let error = run.rec.steps[i]
                        .error
                        .clone()
                        .unwrap_or_else(|| "attempts spent: the last attempt was interrupted".to_owned());
                    return self.fail_step(run, i, error).await;
                }
                let attempt = attempts + 1;
                run.rec.steps[i].state = StepState::Running;
                run.rec.steps[i].attempts = attempt;
                let extra = step
                    .policy
                    .timeout
                    .saturating_add(step.policy.retry.delay(u64::from(attempt)));
                self.persist(run, Write::StepStarted, Some(step.name), extra).await?;
                attempt
            };
            match self
                .attempt(run.parts(), step.run, i, attempt, false, &step.policy)
                .await
            {
                Attempted::Deferred { reason, delay } => {
                    tracing::info!(saga = S::NAME, id = %run.rec.id, step = step.name, %reason, ?delay, "saga step deferred");
                    // Not an attempt: the next intent write records the same number again.
                    run.rec.steps[i].attempts = attempt - 1;
                    tokio::time::sleep(delay).await;
                }
                Attempted::Done(data) => {
                    let entry = &mut run.rec.steps[i];
                    entry.state = StepState::Completed;
                    entry.error = None;
                    run.rec.data = data;
                    self.note(&mut run.rec, SagaEventKind::StepCompleted, Some(step.name), None, None);
                    let extra = self.fold_next(run);
                    return self.persist(run, Write::StepCompleted, Some(step.name), extra).await;
                }
                Attempted::Failed { error, permanent } => {
                    tracing::warn!(saga = S::NAME, id = %run.rec.id, step = step.name, attempt, %error, permanent, "saga step failed");
                    run.rec.steps[i].error = Some(error.clone());
                    if permanent || attempt >= max {
                        return self.fail_step(run, i, error).await;
                    }
                    tokio::time::sleep(step.policy.retry.delay(u64::from(attempt))).await;
                }
            }
        }
    }

    async fn fail_step(&self, run: &mut Run<S::Data>, i: usize, error: String) -> Result<(), SagaError> {
        let name = self.inner.steps[i].name;
        let entry = &mut run.rec.steps[i];
        entry.state = StepState::Failed;
        entry.error = Some(error.clone());
        let attempts = entry.attempts;
        run.rec.status = SagaStatus::Compensating;
        self.note(
            &mut run.rec,
            SagaEventKind::StepFailed,
            Some(name),
            Some(error),
            Some(attempts),
        );
        self.note(&mut run.rec, SagaEventKind::Compensating, None, None, None);
        let extra = self.fold_next(run);
        self.persist(run, Write::StepFailed, Some(name), extra).await
    }

    async fn run_compensation(&self, run: &mut Run<S::Data>, i: usize) -> Result<(), SagaError> {
        let step = &self.inner.steps[i];
        let Compensation::By { run: compensate, .. } = step.compensation else {
            run.rec.steps[i].state = StepState::NotCompensated;
            return Ok(());
        };
        let policy = &step.compensation_policy;
        let max = policy.retry.max_attempts.max(1);
        loop {
            let fresh = run.fresh.take() == Some(i) && run.rec.steps[i].state == StepState::Compensating;
            let attempt = if fresh {
                run.rec.steps[i].compensation_attempts
            } else {
                let attempts = run.rec.steps[i].compensation_attempts;
                if attempts >= max {
                    let error = run.rec.steps[i]
                        .error
                        .clone()
                        .unwrap_or_else(|| "attempts spent: the last attempt was interrupted".to_owned());
                    return self.compensation_failed(run, i, error).await;
                }
                let attempt = attempts + 1;
                run.rec.steps[i].state = StepState::Compensating;
                run.rec.steps[i].compensation_attempts = attempt;
                let extra = policy.timeout.saturating_add(policy.retry.delay(u64::from(attempt)));
                self.persist(run, Write::CompensationStarted, Some(step.name), extra)
                    .await?;
                attempt
            };
            match self.attempt(run.parts(), compensate, i, attempt, true, policy).await {
                Attempted::Deferred { reason, delay } => {
                    tracing::info!(saga = S::NAME, id = %run.rec.id, step = step.name, %reason, ?delay, "saga compensation deferred");
                    run.rec.steps[i].compensation_attempts = attempt - 1;
                    tokio::time::sleep(delay).await;
                }
                Attempted::Done(data) => {
                    let entry = &mut run.rec.steps[i];
                    entry.state = StepState::Compensated;
                    entry.error = None;
                    run.rec.data = data;
                    self.note(
                        &mut run.rec,
                        SagaEventKind::StepCompensated,
                        Some(step.name),
                        None,
                        None,
                    );
                    let extra = self.fold_next(run);
                    return self.persist(run, Write::StepCompensated, Some(step.name), extra).await;
                }
                Attempted::Failed { error, permanent } => {
                    tracing::warn!(saga = S::NAME, id = %run.rec.id, step = step.name, attempt, %error, permanent, "saga compensation failed");
                    run.rec.steps[i].error = Some(error.clone());
                    if permanent || attempt >= max {
                        return self.compensation_failed(run, i, error).await;
                    }
                    tokio::time::sleep(policy.retry.delay(u64::from(attempt))).await;
                }
            }
        }
    }

    async fn compensation_failed(&self, run: &mut Run<S::Data>, i: usize, error: String) -> Result<(), SagaError> {
        let name = self.inner.steps[i].name;
        let entry = &mut run.rec.steps[i];
        entry.state = StepState::CompensationFailed;
        entry.error = Some(error.clone());
        let attempts = entry.compensation_attempts;
        run.rec.status = SagaStatus::NeedsAttention;
        tracing::error!(saga = S::NAME, id = %run.rec.id, step = name, %error, "saga compensation failed for good; the saga needs attention");
        self.note(
            &mut run.rec,
            SagaEventKind::CompensationFailed,
            Some(name),
            Some(error),
            Some(attempts),
        );
        self.persist(run, Write::CompensationFailed, Some(name), Duration::ZERO)
            .await
    }

    /// Runs one attempt of a step or compensation on a copy of the data through the pipeline
    /// (a `handle` span, counters and metrics labelled by saga and step, panics caught), under its
    /// timeout.
    async fn attempt(
        &self,
        (rec, run_id): (&SagaRecord<S::Data>, &Arc<str>),
        f: StepFn<S>,
        i: usize,
        attempt: u32,
        compensating: bool,
        policy: &StepPolicy,
    ) -> Attempted<S::Data> {
        let step = self.inner.steps[i].name;
        let envelope = Envelope::with_identity_at(
            rec.identity,
            self.inner.events_subject.clone(),
            Bytes::new(),
            rec.started_at,
        );
        // Metrics and spans are labelled by saga and step (bounded); message ids are derived from
        // the per-instance key (idempotent across re-runs).
        let observer = &self.inner.observers[i][usize::from(compensating)];
        let mut ctx = StepContext {
            data: rec.data.clone(),
            saga: S::NAME,
            saga_id: run_id.clone(),
            step,
            key: std::sync::OnceLock::new(),
            attempt,
            compensating,
            identity: rec.identity,
            publishing: crate::saga::context::Publishing {
                runs: self.inner.step_runs[i][usize::from(compensating)].clone(),
                subject: self.inner.events_subject.clone(),
                occurred: rec.started_at,
            },
            context: std::sync::OnceLock::new(),
        };
        let (kind, span) = if compensating {
            (
                "saga_compensation",
                tracing::debug_span!("saga_step", saga = S::NAME, id = %rec.id, step, attempt, compensating),
            )
        } else {
            (
                "saga_step",
                tracing::debug_span!("saga_step", saga = S::NAME, id = %rec.id, step, attempt, compensating),
            )
        };
        crate::trace_context::link_stored(&span, rec.trace.as_deref());
        let mut outcome = observer
            .run(kind, envelope, policy.timeout, f(&self.inner.saga, &mut ctx))
            .instrument(span)
            .await;
        if matches!(outcome, Outcome::Succeeded)
            && let Some(emitted) = ctx.made_context()
            && let Err(e) = emitted.flush().await
        {
            // The step's emitted events are part of its work: not acknowledged, not done.
            outcome = crate::pipeline::invoke::handler_error(e.into());
        }
        match outcome {
            Outcome::Succeeded => Attempted::Done(ctx.into_data()),
            Outcome::Deferred { reason, delay, .. } => Attempted::Deferred { reason, delay },
            Outcome::DeadLetter { reason, .. } | Outcome::DeadLettered { reason, .. } => Attempted::Failed {
                error: reason,
                permanent: true,
            },
            Outcome::Failed { reason, .. } | Outcome::Retry { reason, .. } | Outcome::Rejected { reason } => {
                Attempted::Failed {
                    error: reason,
                    permanent: false,
                }
            }
            Outcome::Duplicate | Outcome::Skipped => Attempted::Failed {
                error: "the step did not run".to_owned(),
                permanent: false,
            },
        }
    }
}

/// What one attempt of a step or compensation came to.
enum Attempted<D> {
    /// It succeeded; the changed data.
    Done(D),
    /// It failed.
    Failed {
        /// Why, as the record keeps it.
        error: String,
        /// Never worth retrying.
        permanent: bool,
    },
    /// A breaker around its own call refused: not an attempt; try again after `delay`.
    Deferred {
        /// Why.
        reason: String,
        /// When to try again.
        delay: Duration,
    },
}

/// Where a write goes.
#[derive(Debug, Clone, Copy)]
enum Target {
    /// Updates the active record, expected at this revision.
    Active(u64),
    /// Creates the record in the settled bucket (a final status).
    Settled,
}

/// Puts lifecycle event `kind` into `rec`'s outbox, complete (its JSON is what serde writes).
#[cfg_attr(not(feature = "nats"), allow(dead_code))] // used by `ops` (NATS only)
pub(crate) fn emit<D>(
    rec: &mut SagaRecord<D>,
    kind: SagaEventKind,
    step: Option<&str>,
    error: Option<String>,
    attempts: Option<u32>,
) {
    note(rec, kind, step, error, attempts);
    if let Some(event) = rec.outbox.last_mut() {
        event.version = SAGA_EVENT_VERSION.to_owned();
        event.saga.clone_from(&rec.saga);
        event.saga_id.clone_from(&rec.id);
    }
}

/// [`emit`], the event lean ([`SagaEvent::is_lean`]): for the records the runner drives, which
/// only its encoder writes.
pub(super) fn note<D>(
    rec: &mut SagaRecord<D>,
    kind: SagaEventKind,
    step: Option<&str>,
    error: Option<String>,
    attempts: Option<u32>,
) {
    rec.outbox.push(SagaEvent {
        version: String::new(),
        kind,
        saga: String::new(),
        saga_id: String::new(),
        step: step.map(str::to_owned),
        error,
        attempts,
        seq: rec.event_seq,
    });
    rec.event_seq = rec.event_seq.saturating_add(1);
}

fn outcome_of<D>(rec: &SagaRecord<D>) -> SagaOutcome {
    let with = |state: StepState| {
        rec.steps
            .iter()
            .find(|s| s.state == state)
            .map(|s| (s.name.clone(), s.error.clone().unwrap_or_default()))
            .unwrap_or_default()
    };
    match rec.status {
        SagaStatus::Completed => SagaOutcome::Completed,
        SagaStatus::Compensated => {
            let (failed_step, error) = with(StepState::Failed);
            SagaOutcome::Compensated { failed_step, error }
        }
        SagaStatus::NeedsAttention => {
            let (step, error) = with(StepState::CompensationFailed);
            SagaOutcome::NeedsAttention { step, error }
        }
        // Not reached for unsettled records; a driver that stopped reports these.
        SagaStatus::Running | SagaStatus::Compensating => SagaOutcome::Busy {
            owner: rec.owner.clone(),
        },
    }
}

/// Completed or compensated: the statuses whose records move to the settled bucket.
fn is_final<D>(rec: &SagaRecord<D>) -> bool {
    matches!(rec.status, SagaStatus::Completed | SagaStatus::Compensated)
}

fn check_id(id: &str) -> Result<(), SagaError> {
    let invalid = |reason: String| SagaError::InvalidId {
        id: id.chars().take(64).collect(),
        reason,
    };
    if id.len() > 200 {
        return Err(invalid("longer than 200 bytes".to_owned()));
    }
    crate::subject::check_token(id).map_err(|e| invalid(format!("{e}; ids are `[A-Za-z0-9_-]+`")))
}
