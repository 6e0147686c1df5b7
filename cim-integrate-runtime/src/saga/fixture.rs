//! A given/when/then fixture for sagas on the embedded transport, for virtual (paused) time.
//!
//! ```
//! use cim_integrate_runtime::saga::conformance::{Order, Shop};
//! use cim_integrate_runtime::saga::fixture::SagaFixture;
//! use cim_integrate_runtime::saga::{SagaEventKind::*, StepState, Write};
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! SagaFixture::new(Shop::default())
//!     .given_crash_at(|p| p.write == Write::StepCompleted && p.step == Some("charge"))
//!     .when_started("o-1", Order::failing_at("publish"))
//!     .await
//!     .then_compensated("publish")
//!     .then_steps(&[
//!         ("validate", StepState::NotCompensated),
//!         ("reserve", StepState::Compensated),
//!         ("charge", StepState::Compensated),
//!         ("publish", StepState::Failed),
//!     ])
//!     .then_events(&[
//!         Started, StepCompleted, StepCompleted, StepCompleted, StepFailed, Compensating,
//!         StepCompensated, StepCompensated, Compensated,
//!     ]);
//! # });
//! ```
#![allow(clippy::missing_panics_doc)]

use super::{CrashPoint, Saga, SagaError, SagaEvent, SagaEventKind, SagaOutcome, SagaRecord, SagaRunner, StepState};
use crate::envelope::Envelope;
use crate::id::Identity;
use crate::subject::SubjectPattern;
use crate::transport::memory::MemoryTransport;
use crate::transport::{Consumer, ConsumerSpec, Transport};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

type Predicate = Arc<dyn Fn(&CrashPoint) -> bool + Send + Sync>;

/// Given: a saga, a fresh in-memory transport, and optionally a crash. Run it under
/// `#[tokio::test(start_paused = true)]`: retries, back-offs, timeouts and leases take no real time.
pub struct SagaFixture<S: Saga> {
    transport: MemoryTransport,
    saga: S,
    crash: Option<Predicate>,
}

impl<S: Saga> std::fmt::Debug for SagaFixture<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaFixture")
            .field("saga", &S::NAME)
            .field("crash", &self.crash.is_some())
            .finish_non_exhaustive()
    }
}

static FIXTURES: AtomicU32 = AtomicU32::new(0);

impl<S: Saga + Clone> SagaFixture<S> {
    /// Given `saga` on a fresh [`MemoryTransport`].
    pub fn new(saga: S) -> Self {
        Self {
            transport: MemoryTransport::new(),
            saga,
            crash: None,
        }
    }

    /// Given a transport with some history (e.g. records of earlier runs).
    pub fn with_transport(mut self, transport: MemoryTransport) -> Self {
        self.transport = transport;
        self
    }

    /// The transport, to arrange more (publish events, seed the bucket).
    pub fn transport(&self) -> &MemoryTransport {
        &self.transport
    }

    /// Given that the process dies at the first crash point matching `at`; the fixture then
    /// restarts (a fresh runner with the same instance name) and resumes, as a real restart would.
    pub fn given_crash_at(mut self, at: impl Fn(&CrashPoint) -> bool + Send + Sync + 'static) -> Self {
        self.crash = Some(Arc::new(at));
        self
    }

    async fn runner(&self, crash: Option<(Predicate, Arc<AtomicBool>)>) -> SagaRunner<S, MemoryTransport> {
        let mut b = SagaRunner::builder(self.transport.clone(), self.saga.clone()).instance("fixture");
        if let Some((at, fired)) = crash {
            b = b.fault_hook(move |p| at(p) && !fired.swap(true, Ordering::SeqCst));
        }
        b.build().await.expect("saga runner")
    }

    /// When saga `id` is started with `data` (as a root conversation).
    pub async fn when_started(self, id: &str, data: S::Data) -> SagaThen<S> {
        self.when_started_by(id, data, Identity::root()).await
    }

    /// When saga `id` is started with `data` by the message with `identity`.
    pub async fn when_started_by(self, id: &str, data: S::Data, identity: Identity) -> SagaThen<S> {
        let crash = self.crash.clone().map(|p| (p, Arc::new(AtomicBool::new(false))));
        let runner = self.runner(crash).await;
        let mut outcome = runner.start_with_identity(id, data, identity).await;
        if let Ok(settled) = &outcome {
            // A crash in the background half of settling (`Write::Settle`) is a crash too.
            let settled = settled.clone();
            outcome = runner.settled().await.map(|()| settled);
        }
        let mut crashed_at = None;
        if let Err(SagaError::Crashed(point)) = &outcome {
            crashed_at = Some(point.clone());
            let restarted = self.runner(None).await;
            outcome = restarted.resume_saga(id).await;
        }
        self.then(id, outcome, crashed_at).await
    }

    /// When the runner restarts and resumes every unfinished saga; `then` looks at saga `id`.
    pub async fn when_resumed(self, id: &str) -> SagaThen<S> {
        let runner = self.runner(None).await;
        let outcome = match runner.resume().await {
            Ok(_) => match runner.status(id).await {
                Ok(Some(rec)) => Ok(outcome_of_record(&rec)),
                Ok(None) => Err(SagaError::NotFound { id: id.to_owned() }),
                Err(e) => Err(e),
            },
            Err(e) => Err(e),
        };
        self.then(id, outcome, None).await
    }

    async fn then(
        self,
        id: &str,
        outcome: Result<SagaOutcome, SagaError>,
        crashed_at: Option<CrashPoint>,
    ) -> SagaThen<S> {
        let runner = self.runner(None).await;
        let record = runner.status(id).await.ok().flatten();
        let events = lifecycle_events(&self.transport, S::NAME, id).await;
        SagaThen {
            id: id.to_owned(),
            outcome,
            record,
            events,
            crashed_at,
            runner,
        }
    }
}

fn outcome_of_record<D>(rec: &SagaRecord<D>) -> SagaOutcome {
    let with = |state: StepState| {
        rec.steps
            .iter()
            .find(|s| s.state == state)
            .map(|s| (s.name.clone(), s.error.clone().unwrap_or_default()))
            .unwrap_or_default()
    };
    match rec.status {
        super::SagaStatus::Completed => SagaOutcome::Completed,
        super::SagaStatus::Compensated => {
            let (failed_step, error) = with(StepState::Failed);
            SagaOutcome::Compensated { failed_step, error }
        }
        super::SagaStatus::NeedsAttention => {
            let (step, error) = with(StepState::CompensationFailed);
            SagaOutcome::NeedsAttention { step, error }
        }
        _ => SagaOutcome::Busy {
            owner: rec.owner.clone(),
        },
    }
}

/// Every lifecycle event of saga `name` instance `id` published so far, in order.
pub async fn lifecycle_events<T: Transport>(t: &T, name: &str, id: &str) -> Vec<(Envelope, SagaEvent)> {
    let n = FIXTURES.fetch_add(1, Ordering::Relaxed);
    let Ok(filter) = SubjectPattern::new(format!("saga.{name}.>")) else {
        return Vec::new();
    };
    let spec = ConsumerSpec::new("SAGA_EVENTS", format!("fixture-{n}"), filter);
    let Ok(mut consumer) = t.consumer(&spec).await else {
        return Vec::new();
    };
    let mut out = Vec::new();
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(200), consumer.next()).await {
        if let Ok(env) = d.envelope()
            && let Ok(event) = SagaEvent::decode(env.payload())
            && event.saga_id == id
        {
            out.push((env, event));
        }
        let _ = d.ack().await;
    }
    let _ = t.delete_consumer("SAGA_EVENTS", &format!("fixture-{n}")).await;
    out
}

/// Then: what happened, with assertions that name what differs.
pub struct SagaThen<S: Saga> {
    id: String,
    outcome: Result<SagaOutcome, SagaError>,
    record: Option<SagaRecord<S::Data>>,
    events: Vec<(Envelope, SagaEvent)>,
    crashed_at: Option<CrashPoint>,
    runner: SagaRunner<S, MemoryTransport>,
}

impl<S: Saga> std::fmt::Debug for SagaThen<S>
where
    S::Data: std::fmt::Debug,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SagaThen")
            .field("id", &self.id)
            .field("outcome", &self.outcome)
            .field("record", &self.record)
            .field("crashed_at", &self.crashed_at)
            .finish_non_exhaustive()
    }
}

impl<S: Saga> SagaThen<S> {
    /// What a test host sees of saga `id`: its record (if any), the outcome it stands for, its
    /// lifecycle events.
    pub(crate) fn observed(
        id: &str,
        record: Option<SagaRecord<S::Data>>,
        events: Vec<(Envelope, SagaEvent)>,
        runner: SagaRunner<S, MemoryTransport>,
    ) -> Self {
        let outcome = record
            .as_ref()
            .map(outcome_of_record)
            .ok_or_else(|| SagaError::NotFound { id: id.to_owned() });
        Self {
            id: id.to_owned(),
            outcome,
            record,
            events,
            crashed_at: None,
            runner,
        }
    }

    /// The outcome of the last drive (after the restart, if the fixture crashed).
    pub fn outcome(&self) -> &Result<SagaOutcome, SagaError> {
        &self.outcome
    }
    /// The persisted record.
    pub fn record(&self) -> &SagaRecord<S::Data> {
        self.record
            .as_ref()
            .unwrap_or_else(|| panic!("saga `{}` has no record ({:?})", self.id, self.outcome))
    }
    /// The lifecycle events, with their envelopes.
    pub fn events(&self) -> &[(Envelope, SagaEvent)] {
        &self.events
    }
    /// Where the given crash happened, if it did.
    pub fn crashed_at(&self) -> Option<&CrashPoint> {
        self.crashed_at.as_ref()
    }
    /// A runner on the fixture's transport, for further whens (e.g. `retry_compensation`).
    pub fn runner(&self) -> &SagaRunner<S, MemoryTransport> {
        &self.runner
    }

    /// Then the outcome is `expected`.
    pub fn then_outcome(&self, expected: &SagaOutcome) -> &Self {
        match &self.outcome {
            Ok(o) => assert_eq!(o, expected, "outcome of saga `{}`", self.id),
            Err(e) => panic!("saga `{}` failed: {e}; expected {expected:?}", self.id),
        }
        self
    }
    /// Then every step completed.
    pub fn then_completed(&self) -> &Self {
        self.then_outcome(&SagaOutcome::Completed)
    }
    /// Then `failed_step` failed and the saga was fully compensated.
    pub fn then_compensated(&self, failed_step: &str) -> &Self {
        match &self.outcome {
            Ok(SagaOutcome::Compensated { failed_step: f, .. }) if f == failed_step => self,
            other => panic!(
                "saga `{}`: expected compensation after `{failed_step}` failed, got {other:?}",
                self.id
            ),
        }
    }
    /// Then the compensation of `step` failed for good and the saga needs attention.
    pub fn then_needs_attention(&self, step: &str) -> &Self {
        match &self.outcome {
            Ok(SagaOutcome::NeedsAttention { step: s, .. }) if s == step => self,
            other => panic!(
                "saga `{}`: expected needs-attention at `{step}`, got {other:?}",
                self.id
            ),
        }
    }
    /// Then the steps are in these states (all of them, in order).
    pub fn then_steps(&self, expected: &[(&str, StepState)]) -> &Self {
        let got: Vec<(&str, StepState)> = self.record().steps.iter().map(|s| (s.name.as_str(), s.state)).collect();
        assert_eq!(got, expected, "step states of saga `{}`", self.id);
        self
    }
    /// Then exactly these lifecycle events were published, in order.
    pub fn then_events(&self, expected: &[SagaEventKind]) -> &Self {
        let got: Vec<SagaEventKind> = self.events.iter().map(|(_, e)| e.kind).collect();
        assert_eq!(got, expected, "lifecycle events of saga `{}`", self.id);
        self
    }
    /// Then the data satisfies `check`.
    pub fn then_data(&self, check: impl FnOnce(&S::Data)) -> &Self {
        check(&self.record().data);
        self
    }
}
