//! The cross-cutting promises of the pipeline, shown for each message kind the host runs: command
//! handlers, saga starts (a saga started by an event through `SagaRunner::start_on`) and process
//! handlers, and saga steps. For each kind, one case per promise, so that a failure names one
//! promise:
//!
//! - `*_span`: the message is handled inside a `handle` span carrying its correlation id, its
//!   message id, its kind and the handler's name;
//! - `*_metrics`: the handler's `cim_handler_messages_total` series exist, labelled by outcome,
//!   and no label value of any series contains a message id, correlation id, saga id or process
//!   key;
//! - `*_panic`: a handler that panics on its first run is retried and succeeds; its counters show
//!   one panic and one success;
//! - `*_breaker`: a handler whose breaker opened after a failure does not run the next message
//!   while it is open (a deferral, counted as such); an event runs once the cool-down has passed
//!   without the deferral counting as an attempt (with `max_attempts` 1 it is not dead-lettered);
//!   a command is answered `failed` at once.
//!
//! Written once over any transport: `promises_memory.rs` runs them on the embedded transport
//! under paused time, `promises_nats.rs` on private nats-servers. Spans and metrics are captured
//! by one global subscriber and recorder per test binary (`testing::observe`); each case finds
//! its own by correlation id or by handler names no other case uses.
#![allow(dead_code)]

use cim_integrate::breaker::{BreakerSettings, BreakerState};
use cim_integrate::command::{CommandAck, CommandBus, CommandError, CommandRejection, CommandResult};
use cim_integrate::handler::{Context, HandlerError, HandlerOptions, RetryPolicy};
use cim_integrate::monitor::{HANDLER_MESSAGES, HANDLER_PANICS};
use cim_integrate::prelude::*;
use cim_integrate::process::{ProcessContext, ProcessOptions, ProcessRunner};
use cim_integrate::saga::SagaRunner;
use cim_integrate::service::{HandlerStats, Service};
use cim_integrate::testing::observe;
use cim_integrate::transport::{Consumer, ConsumerSpec, StreamSpec};
use cim_integrate::{command, process};
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

typed_id! {
    /// The key of one piece of work: a process key, a saga id, a script entry.
    pub struct JobId;
}

// ---- messages -----------------------------------------------------------------------------------

/// Starts a saga or a process transition; `act` says how the handler behaves (see [`act`]).
#[domain_event(subject = "promise.requested", version = "1.0")]
#[derive(Debug, Clone)]
pub struct JobRequested {
    pub job_id: JobId,
    pub act: String,
}

/// A command; `act` says how its handler behaves (see [`act`]).
#[command(subject = "chore.do", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DoChore {
    pub job_id: JobId,
    pub act: String,
}

// ---- the script: what a handler does on each run, and when it ran ----------------------------

/// Succeeds.
pub const OK: &str = "ok";
/// Panics on its first run, succeeds afterwards.
pub const PANIC_ONCE: &str = "panic_once";
/// Fails (transiently) on its first run, succeeds afterwards.
pub const FAIL_ONCE: &str = "fail_once";

/// When each job's handler ran, by job id.
static RUNS: Mutex<BTreeMap<String, Vec<Instant>>> = Mutex::new(BTreeMap::new());

/// One run of a handler for `job`: noted, then as `act` says.
pub fn act(job: JobId, act: &str) -> Result<(), String> {
    let run = {
        let mut runs = RUNS.lock().unwrap_or_else(|p| p.into_inner());
        let times = runs.entry(job.to_string()).or_default();
        times.push(Instant::now());
        times.len()
    };
    match act {
        PANIC_ONCE if run == 1 => panic!("job {job}: the first run panics"),
        FAIL_ONCE if run == 1 => Err(format!("job {job}: the first run fails")),
        _ => Ok(()),
    }
}

/// When the handler ran for `job`.
pub fn runs(job: JobId) -> Vec<Instant> {
    RUNS.lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&job.to_string())
        .cloned()
        .unwrap_or_default()
}

// ---- command handlers ---------------------------------------------------------------------------

pub struct Chores;

#[command(name = "chores")]
impl Chores {
    async fn do_chore(&self, _ctx: &Context, command: DoChore) -> CommandResult {
        act(command.job_id, &command.act).map_err(CommandRejection::failed)?;
        Ok(())
    }
}

/// The same handler under another set name, so that the metrics case has series of its own.
pub struct MeteredChores;

#[command(name = "metered_chores")]
impl MeteredChores {
    async fn do_chore(&self, _ctx: &Context, command: DoChore) -> CommandResult {
        act(command.job_id, &command.act).map_err(CommandRejection::failed)?;
        Ok(())
    }
}

// ---- the saga -----------------------------------------------------------------------------------

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Job {
    pub job_id: Option<JobId>,
    pub done: bool,
}

pub struct JobSaga;

#[saga(data = Job)]
impl JobSaga {
    #[step(no_compensation = "only marks the job done")]
    async fn finish(&self, ctx: &mut StepContext<Job>) -> Result<(), HandlerError> {
        ctx.data_mut().done = true;
        Ok(())
    }
}

/// A saga whose one step acts as its data says, behind a breaker of its own around the
/// "downstream" (the act): the step-kind promises.
pub struct StepSaga {
    pub downstream: cim_integrate::breaker::CircuitBreaker,
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct StepJob {
    pub job_id: Option<JobId>,
    pub act: String,
}

#[saga(data = StepJob, name = "step_job")]
impl StepSaga {
    #[step(no_compensation = "the only step", attempts = 2, timeout = "5s")]
    async fn work(&self, ctx: &mut StepContext<StepJob>) -> Result<(), HandlerError> {
        let job = ctx.data().job_id.ok_or_else(|| HandlerError::permanent("no job"))?;
        let what = ctx.data().act.clone();
        self.downstream.call(|| async { act(job, &what) }).await?;
        Ok(())
    }
}

// ---- the process --------------------------------------------------------------------------------

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct JobProcess {
    pub requests: u32,
}

#[process(name = "job_process", key = job_id)]
impl JobProcess {
    async fn job_requested(&mut self, _ctx: &mut ProcessContext, e: JobRequested) -> Result<(), HandlerError> {
        act(e.job_id, &e.act).map_err(HandlerError::transient)?;
        self.requests += 1;
        Ok(())
    }
}

/// A process whose deadline handler acts as the request said: the deadline-kind promises.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DeadlineProcess {
    pub act: String,
    pub fired: u32,
}

#[process(name = "deadline_job", key = job_id)]
impl DeadlineProcess {
    async fn job_requested(&mut self, ctx: &mut ProcessContext, e: JobRequested) -> Result<(), HandlerError> {
        self.act = e.act;
        ctx.schedule("soon", Duration::from_millis(100));
        Ok(())
    }

    #[deadline]
    async fn due(&mut self, ctx: &mut ProcessContext, _d: Deadline) -> Result<(), HandlerError> {
        let job: JobId = ctx.key().parse().map_err(HandlerError::permanent)?;
        act(job, &self.act).map_err(HandlerError::transient)?;
        self.fired += 1;
        Ok(())
    }
}

// ---- helpers ------------------------------------------------------------------------------------

/// How long a breaker of an event handler stays open.
const COOL_DOWN: Duration = Duration::from_secs(2);
/// How long a command breaker stays open: longer than the longest wait in place of a command
/// (1 s), so that a command refused by it is answered at once.
const COMMAND_COOL_DOWN: Duration = Duration::from_secs(3);

/// Event handler options: quick retries, `max_attempts` attempts, and optionally a breaker that
/// opens on one failure.
fn options(max_attempts: u32, breaker: bool) -> HandlerOptions {
    HandlerOptions {
        retry: RetryPolicy::attempts(max_attempts).backoff(Duration::from_millis(50), 2, Duration::from_millis(500)),
        ack_wait: Duration::from_secs(5),
        breaker: breaker.then(|| BreakerSettings::new(1, Duration::from_secs(60), COOL_DOWN)),
        ..HandlerOptions::default()
    }
}

/// Publishes `JobRequested { job_id, act }` with a correlation id of its own (not its message id),
/// and returns its envelope.
async fn request<T: Transport>(t: &T, job_id: JobId, act: &str) -> Envelope {
    t.ensure_stream(&StreamSpec::for_domain("promise", None).unwrap())
        .await
        .unwrap();
    let e = JobRequested {
        job_id,
        act: act.to_owned(),
    };
    let envelope = e.to_envelope_caused_by(&Identity::root()).unwrap();
    assert_ne!(envelope.correlation_id().to_string(), envelope.message_id().to_string());
    t.publish_and_wait(envelope.clone().into()).await.unwrap();
    envelope
}

/// Sends `DoChore { job_id, act }` with a correlation id of its own; returns its identity and the
/// answer.
async fn send<T: Transport>(t: &T, job_id: JobId, act: &str) -> (Identity, Result<CommandAck, CommandError>) {
    let identity = Identity::root().child();
    let command = DoChore {
        job_id,
        act: act.to_owned(),
    };
    let answer = CommandBus::new(t.clone())
        .send_with(identity, &command, Duration::from_secs(10))
        .await;
    (identity, answer)
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stats(service: &Service, handler: &str) -> HandlerStats {
    service
        .handler_stats(handler)
        .unwrap_or_else(|| panic!("no handler `{handler}`; the service has {:?}", service.stats()))
}

async fn until_stats(
    service: &Service,
    handler: &str,
    what: &str,
    done: impl Fn(&HandlerStats) -> bool,
) -> HandlerStats {
    eventually(what, || {
        let s = stats(service, handler);
        let done = done(&s);
        async move { done }
    })
    .await;
    stats(service, handler)
}

/// The `handle` spans of `correlation_id`: at least one of kind `kind`, by `handler`, for
/// `message_id`.
fn assert_handle_span(correlation_id: &str, message_id: &str, kind: &str, handler: &str) {
    let spans = observe().spans_of("handle", correlation_id);
    assert!(
        spans.iter().any(|s| s.field("kind") == kind
            && s.field("handler") == handler
            && s.field("message_id") == message_id
            && s.field("correlation_id") == correlation_id),
        "no `handle` span of kind `{kind}` by `{handler}` for message {message_id} with correlation {correlation_id}; spans of that correlation: {spans:#?}"
    );
}

/// The panic is counted in the handler's metrics too (no other case makes `handler` panic).
fn assert_panic_metric(handler: &str) {
    assert_eq!(
        observe().counter(HANDLER_PANICS, &[("handler", handler)]),
        1,
        "`{HANDLER_PANICS}` of `{handler}`"
    );
}

/// The handler's `cim_handler_messages_total` series are labelled by outcome, and one success is
/// counted; no label of any series contains one of `ids`.
fn assert_bounded_metrics(handler: &str, ids: &[String]) {
    assert_bounded_labels(handler, ids);
    assert_eq!(
        observe().counter(HANDLER_MESSAGES, &[("handler", handler), ("outcome", "succeeded")]),
        1,
        "one success of `{handler}` counted"
    );
}

/// The handler's `cim_handler_messages_total` series exist and are labelled by outcome; no label
/// of any series contains one of `ids`.
fn assert_bounded_labels(handler: &str, ids: &[String]) {
    let observed = observe();
    let series = observed.series_with(HANDLER_MESSAGES, &[("handler", handler)]);
    assert!(!series.is_empty(), "no `{HANDLER_MESSAGES}` series for `{handler}`");
    for s in &series {
        let outcome = s.labels.get("outcome").map(String::as_str);
        assert!(
            matches!(
                outcome,
                Some("succeeded" | "duplicate" | "retried" | "deferred" | "skipped" | "dead_lettered" | "rejected")
            ),
            "a `{HANDLER_MESSAGES}` series of `{handler}` without a known outcome label: {s:?}"
        );
    }
    let forms: Vec<String> = ids.iter().flat_map(|id| [id.clone(), id.replace('-', "")]).collect();
    for s in observed.series() {
        for (key, value) in &s.labels {
            for id in &forms {
                assert!(
                    !value.contains(id.as_str()),
                    "series `{}` has label {key}={value:?}, which contains the id {id}",
                    s.name
                );
            }
        }
    }
}

// ---- command handlers -----------------------------------------------------------------------------

const CHORES: &str = "chores-do_chore";

async fn chores<T: Transport>(t: &T) -> Service {
    Service::builder(t.clone(), "chores")
        .commands(Chores)
        .start()
        .await
        .unwrap()
}

/// A command is handled inside a `handle` span of kind `command` carrying its correlation id.
pub async fn command_span<T: Transport>(t: T) {
    observe();
    let service = chores(&t).await;
    let job = JobId::new();
    let (identity, answer) = send(&t, job, OK).await;
    assert_eq!(answer.unwrap(), CommandAck::Accepted(()));
    assert_handle_span(
        &identity.correlation_id.to_string(),
        &identity.message_id.to_string(),
        "command",
        CHORES,
    );
    service.shutdown(Duration::from_secs(2)).await;
}

/// A command handler's metrics are labelled by outcome, never by an id.
pub async fn command_metrics<T: Transport>(t: T) {
    observe();
    let service = Service::builder(t.clone(), "metered_chores")
        .commands(MeteredChores)
        .start()
        .await
        .unwrap();
    let job = JobId::new();
    let (identity, answer) = send(&t, job, OK).await;
    assert_eq!(answer.unwrap(), CommandAck::Accepted(()));
    assert_bounded_metrics(
        "metered_chores-do_chore",
        &[
            identity.message_id.to_string(),
            identity.correlation_id.to_string(),
            identity.causation_id.to_string(),
            job.to_string(),
        ],
    );
    service.shutdown(Duration::from_secs(2)).await;
}

/// A command handler that panics is retried in place; the sender gets `Accepted`.
pub async fn command_panic<T: Transport>(t: T) {
    observe();
    let service = chores(&t).await;
    let job = JobId::new();
    let (_, answer) = send(&t, job, PANIC_ONCE).await;
    assert_eq!(
        answer.unwrap(),
        CommandAck::Accepted(()),
        "the panic was retried in place"
    );
    assert_eq!(runs(job).len(), 2, "one panicking run, one retry");
    let s = stats(&service, CHORES);
    assert_eq!((s.panicked, s.succeeded), (1, 1), "{s:?}");
    assert_panic_metric(CHORES);
    service.shutdown(Duration::from_secs(2)).await;
}

/// While a command handler's breaker is open, commands are answered `failed` at once without
/// running the handler; after the cool-down they run again.
pub async fn command_breaker<T: Transport>(t: T) {
    observe();
    let service = Service::builder(t.clone(), "chores")
        .commands(Chores)
        .command_retry(RetryPolicy::attempts(1))
        .command_breaker(BreakerSettings::new(1, Duration::from_secs(60), COMMAND_COOL_DOWN))
        .start()
        .await
        .unwrap();
    let failing = JobId::new();
    let (_, answer) = send(&t, failing, FAIL_ONCE).await;
    assert!(matches!(answer, Err(CommandError::Failed { .. })), "{answer:?}");
    assert_eq!(service.breaker_state(CHORES), Some(BreakerState::Open));

    let job = JobId::new();
    let sent = Instant::now();
    let (_, answer) = send(&t, job, OK).await;
    assert!(matches!(answer, Err(CommandError::Failed { .. })), "{answer:?}");
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "answered at once, not after the cool-down: {:?}",
        sent.elapsed()
    );
    assert!(
        runs(job).is_empty(),
        "the handler did not run while the breaker was open"
    );
    let s = stats(&service, CHORES);
    assert!(s.deferred >= 1, "the refusal is counted as a deferral: {s:?}");
    assert!(
        observe().counter(HANDLER_MESSAGES, &[("handler", CHORES), ("outcome", "deferred")]) >= 1,
        "the refusal is in the metrics"
    );
    assert_eq!(s.succeeded, 0, "{s:?}");

    eventually("the breaker lets probes through", || {
        let open = service.breaker_state(CHORES) == Some(BreakerState::Open);
        async move { !open }
    })
    .await;
    let (_, answer) = send(&t, job, OK).await;
    assert_eq!(answer.unwrap(), CommandAck::Accepted(()));
    assert_eq!(runs(job).len(), 1);
    assert_eq!(runs(failing).len(), 1);
    service.shutdown(Duration::from_secs(2)).await;
}

// ---- saga starts --------------------------------------------------------------------------------

/// A service whose handler `{set}-{name}` starts a `JobSaga` per `JobRequested`.
async fn saga_starter<T: Transport>(t: &T, name: &str, options: HandlerOptions) -> (Service, SagaRunner<JobSaga, T>) {
    let runner = SagaRunner::builder(t.clone(), JobSaga).build().await.unwrap();
    let start = runner
        .start_on(
            name,
            subject_pattern!("promise.requested"),
            JobRequested::TYPE_NAME,
            JobRequested::decode,
            |_ctx, e: JobRequested| {
                act(e.job_id, &e.act).map_err(HandlerError::transient)?;
                let data = Job {
                    job_id: Some(e.job_id),
                    done: false,
                };
                Ok((e.job_id.to_string(), data))
            },
        )
        .with_options(options);
    let service = Service::builder(t.clone(), "jobs")
        .handler("jobs", start)
        .start()
        .await
        .unwrap();
    (service, runner)
}

async fn until_saga_completed<T: Transport>(runner: &SagaRunner<JobSaga, T>, job: JobId) {
    eventually("the saga completed", || {
        let runner = runner.clone();
        async move {
            runner
                .status(&job.to_string())
                .await
                .unwrap()
                .is_some_and(|r| r.status == SagaStatus::Completed && r.data.done)
        }
    })
    .await;
}

/// A saga start is handled inside a `handle` span of kind `event` carrying the event's
/// correlation id.
pub async fn saga_start_span<T: Transport>(t: T) {
    observe();
    let (service, runner) = saga_starter(&t, "start_job", options(3, false)).await;
    let job = JobId::new();
    let envelope = request(&t, job, OK).await;
    until_saga_completed(&runner, job).await;
    assert_handle_span(
        &envelope.correlation_id().to_string(),
        &envelope.message_id().to_string(),
        "event",
        "jobs-start_job",
    );
    service.shutdown(Duration::from_secs(2)).await;
}

/// A saga start's metrics are labelled by outcome, never by an id (not by the saga id either).
pub async fn saga_start_metrics<T: Transport>(t: T) {
    observe();
    let (service, runner) = saga_starter(&t, "start_metered_job", options(3, false)).await;
    let job = JobId::new();
    let envelope = request(&t, job, OK).await;
    until_saga_completed(&runner, job).await;
    until_stats(&service, "jobs-start_metered_job", "the start is counted", |s| {
        s.succeeded == 1
    })
    .await;
    assert_bounded_metrics(
        "jobs-start_metered_job",
        &[
            envelope.message_id().to_string(),
            envelope.correlation_id().to_string(),
            envelope.causation_id().to_string(),
            job.to_string(),
        ],
    );
    service.shutdown(Duration::from_secs(2)).await;
}

/// A saga start that panics is retried and starts the saga.
pub async fn saga_start_panic<T: Transport>(t: T) {
    observe();
    let (service, runner) = saga_starter(&t, "start_job", options(3, false)).await;
    let job = JobId::new();
    request(&t, job, PANIC_ONCE).await;
    until_saga_completed(&runner, job).await;
    let s = until_stats(&service, "jobs-start_job", "the retry succeeded", |s| s.succeeded == 1).await;
    assert_eq!((s.panicked, s.succeeded, s.dead_lettered), (1, 1, 0), "{s:?}");
    assert_panic_metric("jobs-start_job");
    assert_eq!(runs(job).len(), 2, "one panicking run, one retry");
    service.shutdown(Duration::from_secs(2)).await;
}

/// Shows the breaker promise for an event handler `handler` of `service`: `failing` failed and
/// opened the breaker (and, with `max_attempts` 1, was dead-lettered); `job`, published while it
/// was open, is deferred without running, then runs once after the cool-down, not dead-lettered.
async fn assert_breaker_defers(service: &Service, handler: &str, failing: JobId, job: JobId) {
    let s = until_stats(service, handler, "the open breaker deferred the next message", |s| {
        s.deferred >= 1
    })
    .await;
    let failed_at = runs(failing)[0];
    if failed_at.elapsed() < COOL_DOWN {
        assert!(runs(job).is_empty(), "ran while the breaker was open: {s:?}");
    }
    let s = until_stats(service, handler, "the deferred message is settled", |s| {
        s.succeeded + s.dead_lettered >= 2
    })
    .await;
    let ran = runs(job);
    assert_eq!(ran.len(), 1, "the deferred message ran once: {s:?}");
    assert!(
        ran[0].duration_since(failed_at) >= COOL_DOWN,
        "ran {:?} after the breaker opened, before its cool-down of {COOL_DOWN:?}",
        ran[0].duration_since(failed_at)
    );
    assert_eq!(
        s.dead_lettered, 1,
        "only the failing message is dead-lettered; the deferrals were not attempts: {s:?}"
    );
    assert!(s.deferred >= 1, "{s:?}");
    assert!(
        observe().counter(HANDLER_MESSAGES, &[("handler", handler), ("outcome", "deferred")]) >= 1,
        "the deferral is in the metrics"
    );
    assert_eq!(runs(failing).len(), 1, "max_attempts 1: the failing message ran once");
}

/// A saga start whose breaker is open is deferred, not run, and starts the saga after the
/// cool-down without the deferral counting as an attempt.
pub async fn saga_start_breaker<T: Transport>(t: T) {
    observe();
    let (service, runner) = saga_starter(&t, "start_job", options(1, true)).await;
    let failing = JobId::new();
    request(&t, failing, FAIL_ONCE).await;
    until_stats(&service, "jobs-start_job", "the failure is dead-lettered", |s| {
        s.dead_lettered == 1
    })
    .await;
    assert_eq!(service.breaker_state("jobs-start_job"), Some(BreakerState::Open));
    let job = JobId::new();
    request(&t, job, OK).await;
    assert_breaker_defers(&service, "jobs-start_job", failing, job).await;
    until_saga_completed(&runner, job).await;
    assert!(runner.status(&failing.to_string()).await.unwrap().is_none());
    service.shutdown(Duration::from_secs(2)).await;
}

// ---- process handlers ---------------------------------------------------------------------------

const PROCESS_HANDLER: &str = "job_process-job_requested";

async fn process_service<T: Transport>(t: &T, handler: HandlerOptions) -> (Service, ProcessRunner<T, JobProcess>) {
    let options = ProcessOptions {
        handler,
        timer_interval: Duration::from_millis(200),
        ..ProcessOptions::default()
    };
    let runner = ProcessRunner::<T, JobProcess>::with_options(t.clone(), options)
        .await
        .unwrap();
    let service = Service::builder(t.clone(), "job_process")
        .process(runner.clone())
        .start()
        .await
        .unwrap();
    (service, runner)
}

async fn until_requests<T: Transport>(runner: &ProcessRunner<T, JobProcess>, job: JobId, n: u32) {
    eventually("the process state counts the request", || {
        let runner = runner.clone();
        async move {
            runner
                .state(&job.to_string())
                .await
                .unwrap()
                .is_some_and(|s| s.requests == n)
        }
    })
    .await;
}

/// A process transition is handled inside a `handle` span of kind `event` carrying the event's
/// correlation id.
pub async fn process_span<T: Transport>(t: T) {
    observe();
    let (service, runner) = process_service(&t, options(3, false)).await;
    let job = JobId::new();
    let envelope = request(&t, job, OK).await;
    until_requests(&runner, job, 1).await;
    assert_handle_span(
        &envelope.correlation_id().to_string(),
        &envelope.message_id().to_string(),
        "event",
        PROCESS_HANDLER,
    );
    service.shutdown(Duration::from_secs(2)).await;
}

/// A process handler's metrics are labelled by outcome, never by an id (not by the process key
/// either).
pub async fn process_metrics<T: Transport>(t: T) {
    observe();
    let handler = HandlerOptions {
        durable: Some("metered_job_process".into()),
        ..options(3, false)
    };
    let (service, runner) = process_service(&t, handler).await;
    let job = JobId::new();
    let envelope = request(&t, job, OK).await;
    until_requests(&runner, job, 1).await;
    until_stats(&service, "metered_job_process", "the transition is counted", |s| {
        s.succeeded == 1
    })
    .await;
    assert_bounded_metrics(
        "metered_job_process",
        &[
            envelope.message_id().to_string(),
            envelope.correlation_id().to_string(),
            envelope.causation_id().to_string(),
            job.to_string(),
        ],
    );
    service.shutdown(Duration::from_secs(2)).await;
}

/// A process handler that panics is retried and its transition applied once.
pub async fn process_panic<T: Transport>(t: T) {
    observe();
    let (service, runner) = process_service(&t, options(3, false)).await;
    let job = JobId::new();
    request(&t, job, PANIC_ONCE).await;
    until_requests(&runner, job, 1).await;
    let s = until_stats(&service, PROCESS_HANDLER, "the retry succeeded", |s| s.succeeded == 1).await;
    assert_eq!((s.panicked, s.succeeded, s.dead_lettered), (1, 1, 0), "{s:?}");
    assert_panic_metric(PROCESS_HANDLER);
    assert_eq!(runs(job).len(), 2, "one panicking run, one retry");
    service.shutdown(Duration::from_secs(2)).await;
}

/// A process handler whose breaker is open defers the next event, which is applied after the
/// cool-down without the deferral counting as an attempt.
pub async fn process_breaker<T: Transport>(t: T) {
    observe();
    let (service, runner) = process_service(&t, options(1, true)).await;
    let failing = JobId::new();
    request(&t, failing, FAIL_ONCE).await;
    until_stats(&service, PROCESS_HANDLER, "the failure is dead-lettered", |s| {
        s.dead_lettered == 1
    })
    .await;
    assert_eq!(service.breaker_state(PROCESS_HANDLER), Some(BreakerState::Open));
    let job = JobId::new();
    request(&t, job, OK).await;
    assert_breaker_defers(&service, PROCESS_HANDLER, failing, job).await;
    until_requests(&runner, job, 1).await;
    assert!(runner.state(&failing.to_string()).await.unwrap().is_none());
    service.shutdown(Duration::from_secs(2)).await;
}

// ---- saga steps ---------------------------------------------------------------------------------

const STEP: &str = "step_job.work";

/// A step saga over `t` whose downstream breaker opens after one failure for `cool_down`.
async fn step_saga<T: Transport>(t: &T, cool_down: Duration) -> SagaRunner<StepSaga, T> {
    let downstream = cim_integrate::breaker::CircuitBreaker::new(
        "step_downstream",
        BreakerSettings::new(1, Duration::from_secs(60), cool_down),
    );
    SagaRunner::builder(t.clone(), StepSaga { downstream })
        .build()
        .await
        .unwrap()
}

fn step_data(job: JobId, act: &str) -> StepJob {
    StepJob {
        job_id: Some(job),
        act: act.to_owned(),
    }
}

fn step_stats<T: Transport>(runner: &SagaRunner<StepSaga, T>) -> HandlerStats {
    runner
        .stats()
        .into_iter()
        .find(|s| s.handler == STEP)
        .unwrap_or_else(|| panic!("no `{STEP}` in {:?}", runner.stats()))
}

/// A saga step runs inside a `handle` span of kind `saga_step` carrying the saga's correlation
/// id, is counted under `{saga}.{step}`, and its metric labels never carry the saga id.
pub async fn saga_step_span_and_metrics<T: Transport>(t: T) {
    observe();
    let runner = step_saga(&t, Duration::from_secs(60)).await;
    let job = JobId::new();
    let identity = Identity::root();
    let outcome = runner
        .start_with_identity(&job.to_string(), step_data(job, OK), identity)
        .await
        .unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    let correlation = identity.correlation_id.to_string();
    let spans = observe().spans_of("handle", &correlation);
    assert!(
        spans
            .iter()
            .any(|s| s.field("kind") == "saga_step" && s.field("handler") == STEP),
        "no `handle` span of kind `saga_step` by `{STEP}` with correlation {correlation}: {spans:#?}"
    );
    // Other step cases of this binary count under the same (bounded) labels: the runner's own
    // counters say this saga's step succeeded once.
    assert_bounded_labels(STEP, &[job.to_string(), correlation, identity.message_id.to_string()]);
    assert_eq!(step_stats(&runner).succeeded, 1);
}

/// A step that panics on its first attempt is caught and retried by the saga; the second attempt
/// completes it.
pub async fn saga_step_panic<T: Transport>(t: T) {
    observe();
    let runner = step_saga(&t, Duration::from_secs(60)).await;
    let job = JobId::new();
    let outcome = runner
        .start(&job.to_string(), step_data(job, PANIC_ONCE))
        .await
        .unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    assert_eq!(runs(job).len(), 2, "one panic, one success");
    let s = step_stats(&runner);
    assert_eq!((s.panicked, s.succeeded), (1, 1), "{s:?}");
    assert_panic_metric(STEP);
}

/// While the step's own breaker is open, the step is deferred, not attempted: with 2 attempts,
/// a saga whose step is refused again and again still completes once the cool-down has passed,
/// and its record shows one attempt.
pub async fn saga_step_breaker<T: Transport>(t: T) {
    observe();
    let cool_down = Duration::from_secs(2);
    let runner = step_saga(&t, cool_down).await;
    // One failure opens the downstream breaker (threshold 1); the saga retries and, refused,
    // defers until the cool-down has passed.
    let failing = JobId::new();
    let started = Instant::now();
    let outcome = runner
        .start(&failing.to_string(), step_data(failing, FAIL_ONCE))
        .await
        .unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    let times = runs(failing);
    assert_eq!(times.len(), 2, "one failure, then one run after the cool-down");
    assert!(
        times[1] - times[0] >= cool_down,
        "ran again only once the breaker let it: {times:?}"
    );
    let s = step_stats(&runner);
    assert!(s.deferred >= 1, "the refused runs were deferrals: {s:?}");
    assert_eq!(s.retried, 1, "one real failure: {s:?}");
    let record = runner.status(&failing.to_string()).await.unwrap().unwrap();
    assert_eq!(
        record.steps[0].attempts, 2,
        "the deferrals spent no attempt: {record:?}"
    );
    assert!(started.elapsed() >= cool_down);
}

// ---- process deadlines -------------------------------------------------------------------------

/// A deadline transition runs through the pipeline too: a `handle` span of kind
/// `process_deadline`, and a deadline handler that panics is caught (the scanner goes on) and the
/// deadline fires again on the next scan, once.
pub async fn process_deadline_panic<T: Transport>(t: T) {
    observe();
    let options = ProcessOptions {
        timer_interval: Duration::from_millis(100),
        ..ProcessOptions::default()
    };
    let runner = ProcessRunner::<T, DeadlineProcess>::with_options(t.clone(), options)
        .await
        .unwrap();
    let service = Service::builder(t.clone(), "deadline_job")
        .process(runner.clone())
        .start()
        .await
        .unwrap();
    let job = JobId::new();
    request(&t, job, PANIC_ONCE).await;
    eventually("the deadline applied after its panic", || {
        let runner = runner.clone();
        async move {
            runner
                .state(&job.to_string())
                .await
                .unwrap()
                .is_some_and(|p| p.fired == 1)
        }
    })
    .await;
    assert_eq!(runs(job).len(), 2, "one panic, then one run that applied");
    assert_eq!(
        observe().counter(HANDLER_PANICS, &[("handler", "deadline_job.deadline")]),
        1
    );
    // The state is written before the run's outcome is counted: wait for the count.
    let s = until_stats(&service, "deadline_job.deadline", "the applied run counted", |s| {
        s.succeeded >= 1
    })
    .await;
    assert_eq!(
        (s.panicked, s.succeeded),
        (1, 1),
        "the host's stats count deadline transitions: {s:?}"
    );
    assert!(
        observe().spans().iter().any(|s| s.name == "handle"
            && s.field("kind") == "process_deadline"
            && s.field("handler") == "deadline_job.deadline"),
        "no `handle` span of kind `process_deadline`"
    );
    // Fired once: a later scan finds nothing due.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(runs(job).len(), 2);
    service.shutdown(Duration::from_secs(2)).await;
}

// ---- publishing into a domain nobody subscribes to ------------------------------------------------

pub struct Journal;

#[cim_integrate::handlers(domain = "journal")]
impl Journal {
    /// Three events per request, emitted: their acknowledgements are awaited together after the
    /// handler returned, before the request is acknowledged.
    #[subscribe("promise.requested", max_attempts = 1)]
    async fn journal(&self, ctx: &Context, e: JobRequested) -> Result<(), HandlerError> {
        for _ in 0..3 {
            ctx.emit(&EntryRecorded { job_id: e.job_id }).await?;
        }
        Ok(())
    }
}

/// `Context::emit`: k events for about one round trip; all stored, with distinct derived ids,
/// before the handled message counts as handled.
pub async fn emitted_events_are_acknowledged_together<T: Transport>(t: T) {
    let service = Service::builder(t.clone(), "journal")
        .register(Journal)
        .start()
        .await
        .unwrap();
    let job = JobId::new();
    request(&t, job, OK).await;
    let s = until_stats(&service, "journal-journal", "the request was handled", |s| {
        s.succeeded + s.dead_lettered + s.retried > 0
    })
    .await;
    assert_eq!((s.succeeded, s.retried, s.dead_lettered), (1, 0, 0), "{s:?}");
    // Counted as handled only once the three were stored: they are all there at once.
    assert_eq!(ledger_entries(&t, 3).await, vec![job; 3]);
    service.shutdown(Duration::from_secs(2)).await;
}

/// An event of a domain no handler in these tests subscribes to, so nothing provisions its stream
/// but the publish itself.
#[domain_event(subject = "ledger.entry_recorded", version = "1.0")]
#[derive(Debug, Clone)]
pub struct EntryRecorded {
    pub job_id: JobId,
}

pub struct Bookkeeping;

#[cim_integrate::handlers(domain = "bookkeeping")]
impl Bookkeeping {
    #[subscribe("promise.requested", max_attempts = 1)]
    async fn record_entry(&self, ctx: &Context, e: JobRequested) -> Result<(), HandlerError> {
        ctx.publish(&EntryRecorded { job_id: e.job_id }).await?;
        Ok(())
    }
}

pub struct LedgerSaga;

#[saga(data = Job, name = "ledger")]
impl LedgerSaga {
    #[step(no_compensation = "the only step")]
    async fn record(&self, ctx: &mut StepContext<Job>) -> Result<(), HandlerError> {
        let job_id = ctx.data().job_id.ok_or_else(|| HandlerError::permanent("no job"))?;
        ctx.context().publish(&EntryRecorded { job_id }).await?;
        ctx.data_mut().done = true;
        Ok(())
    }
}

/// The `ledger.entry_recorded` events stored, by job id.
async fn ledger_entries<T: Transport>(t: &T, expected: usize) -> Vec<JobId> {
    let spec = ConsumerSpec::new("LEDGER_EVENTS", "ledger-probe", subject_pattern!("ledger.>"));
    let mut consumer = t.consumer(&spec).await.expect("the ledger stream exists");
    let mut ids = Vec::new();
    while ids.len() < expected {
        let d = tokio::time::timeout(Duration::from_secs(10), consumer.next())
            .await
            .expect("an entry")
            .expect("delivery");
        let e = EntryRecorded::decode(d.payload()).expect("decode");
        ids.push(e.job_id);
        d.ack().await.expect("ack");
    }
    ids
}

/// A handler that publishes into a domain no handler subscribes to succeeds on its first
/// attempt: the domain's stream is provisioned when it is first published into.
pub async fn handler_publishes_into_an_unsubscribed_domain<T: Transport>(t: T) {
    let service = Service::builder(t.clone(), "bookkeeping")
        .register(Bookkeeping)
        .start()
        .await
        .unwrap();
    let job = JobId::new();
    request(&t, job, OK).await;
    let s = until_stats(&service, "bookkeeping-record_entry", "the entry was recorded", |s| {
        s.succeeded + s.dead_lettered + s.retried > 0
    })
    .await;
    assert_eq!((s.succeeded, s.retried, s.dead_lettered), (1, 0, 0), "{s:?}");
    assert_eq!(ledger_entries(&t, 1).await, vec![job]);
    service.shutdown(Duration::from_secs(2)).await;
}

/// A saga step that publishes into a domain nobody subscribes to completes the saga (it used to
/// fail on every attempt and compensate work that had succeeded).
pub async fn saga_step_publishes_into_an_unsubscribed_domain<T: Transport>(t: T) {
    let runner = SagaRunner::builder(t.clone(), LedgerSaga).build().await.unwrap();
    let job = JobId::new();
    let data = Job {
        job_id: Some(job),
        done: false,
    };
    let outcome = runner.start(&job.to_string(), data).await.expect("the saga ran");
    assert!(
        matches!(outcome, cim_integrate::saga::SagaOutcome::Completed),
        "{outcome:?}"
    );
    assert_eq!(ledger_entries(&t, 1).await, vec![job]);
}

/// Expands to one test per promise and message kind.
#[macro_export]
macro_rules! promises {
    (setup: $setup:path, tokio: [$($tokio:tt)*]) => {
        $crate::promises!(@each ($($tokio)*) $setup; [
            command_span,
            command_metrics,
            command_panic,
            command_breaker,
            saga_start_span,
            saga_start_metrics,
            saga_start_panic,
            saga_start_breaker,
            process_span,
            process_metrics,
            process_panic,
            process_breaker,
            saga_step_span_and_metrics,
            saga_step_panic,
            saga_step_breaker,
            process_deadline_panic,
            handler_publishes_into_an_unsubscribed_domain,
            saga_step_publishes_into_an_unsubscribed_domain,
            emitted_events_are_acknowledged_together,
        ]);
    };
    (@each $tokio:tt $setup:path; [$($case:ident),* $(,)?]) => {
        $(
            #[::tokio::test $tokio]
            async fn $case() {
                let (transport, _guard) = $setup().await;
                promises::$case(transport).await;
            }
        )*
    };
}
