//! The guide's scenarios with the DSL, written once over any transport: commands (queue groups,
//! timeouts, rejections, identity), the waiter, the onboarding process manager, the
//! WorkflowReadyChecker aggregation, and a correlation with a timeout. `process_memory.rs` runs
//! them on the embedded transport under paused time, `process_nats.rs` on private nats-servers.
#![allow(dead_code)]

use bytes::Bytes;
use cim_integrate::aggregate::Aggregation;
use cim_integrate::command::{
    CommandAck, CommandBus, CommandError, CommandRejection, CommandResult, CommandService, CommandServiceError,
};
use cim_integrate::correlate::{Correlator, Verdict};
use cim_integrate::handler::{Context, HandlerError, HandlerOptions, RetryPolicy};
use cim_integrate::prelude::*;
use cim_integrate::process::{Deadline, ProcessContext, ProcessOptions, ProcessRunner};
use cim_integrate::service::Service;
use cim_integrate::transport::{Consumer, ConsumerSpec, KeyValue, KvSpec, Prefixed, StreamSpec, TransportError};
use cim_integrate::waiter::Waiter;
use cim_integrate::{command, domain_event, process};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

typed_id! {
    /// A person.
    pub struct PersonId;
}
typed_id! {
    /// An organization.
    pub struct OrganizationId;
}
typed_id! {
    /// A document.
    pub struct DocumentId;
}
typed_id! {
    /// A workflow.
    pub struct WorkflowId;
}

// ---- events -------------------------------------------------------------------------------

#[domain_event(subject = "person.created", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PersonCreated {
    pub person_id: PersonId,
    pub name: String,
    pub organization_id: OrganizationId,
}

#[domain_event(subject = "organization.member_added", version = "1.0")]
#[derive(Debug, Clone)]
pub struct MemberAdded {
    pub person_id: PersonId,
    pub organization_id: OrganizationId,
}

#[domain_event(subject = "document.created", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentCreated {
    pub document_id: DocumentId,
    pub owner_id: PersonId,
    pub template: String,
}

#[domain_event(subject = "person.onboarded", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PersonOnboarded {
    pub person_id: PersonId,
    pub documents: Vec<String>,
}

#[domain_event(subject = "person.onboarding_overdue", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OnboardingOverdue {
    pub person_id: PersonId,
}

#[domain_event(subject = "workflow.documents_attached", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentsAttached {
    pub workflow_id: WorkflowId,
    pub documents: u32,
}

#[domain_event(subject = "workflow.approvers_assigned", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ApproversAssigned {
    pub workflow_id: WorkflowId,
    pub approvers: Vec<String>,
}

#[domain_event(subject = "workflow.schedule_set", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ScheduleSet {
    pub workflow_id: WorkflowId,
}

#[domain_event(subject = "workflow.ready", version = "1.0")]
#[derive(Debug, Clone)]
pub struct WorkflowReady {
    pub workflow_id: WorkflowId,
    pub documents: u32,
    pub approvers: u32,
}

#[domain_event(subject = "review.requested", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReviewRequested {
    pub document_id: DocumentId,
}

#[domain_event(subject = "review.approved", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReviewApproved {
    pub document_id: DocumentId,
    pub reviewer: String,
}

#[domain_event(subject = "review.completed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReviewCompleted {
    pub document_id: DocumentId,
    pub approvals: u32,
}

#[domain_event(subject = "review.timed_out", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReviewTimedOut {
    pub document_id: DocumentId,
    pub approvals: u32,
}

#[domain_event(subject = "counter.ticked", version = "1.0")]
#[derive(Debug, Clone)]
pub struct Ticked {
    pub counter_id: WorkflowId,
    pub n: u32,
}

// ---- commands ------------------------------------------------------------------------------

/// Add a person to an organization (version 2: with a role; version 1 had none).
#[command(subject = "organization.add_member", version = "2.0", previous = [AddMemberV1])]
#[derive(Debug, Clone)]
pub struct AddMember {
    pub person_id: PersonId,
    pub organization_id: OrganizationId,
    pub role: String,
}

#[command(version = "1.0", frozen)]
#[derive(Debug, Clone)]
pub struct AddMemberV1 {
    pub person_id: PersonId,
    pub organization_id: OrganizationId,
}

impl From<AddMemberV1> for AddMember {
    fn from(v1: AddMemberV1) -> Self {
        Self {
            person_id: v1.person_id,
            organization_id: v1.organization_id,
            role: "member".into(),
        }
    }
}

#[command(subject = "document.create_from_template", version = "1.0")]
#[derive(Debug, Clone)]
pub struct CreateFromTemplate {
    pub document_id: DocumentId,
    pub owner_id: PersonId,
    pub template: String,
}

#[command(subject = "echo.work", version = "1.0")]
#[derive(Debug, Clone)]
pub struct Work {
    pub n: u32,
    pub sleep_ms: u64,
    pub reject: bool,
}

// ---- command handlers ------------------------------------------------------------------------

pub struct OrganizationCommands;

#[command(name = "organization")]
impl OrganizationCommands {
    async fn add_member(&self, ctx: &Context, command: AddMember) -> CommandResult {
        if command.role.is_empty() {
            return Err(CommandRejection::reject("a member needs a role"));
        }
        ctx.publish(&MemberAdded {
            person_id: command.person_id,
            organization_id: command.organization_id,
        })
        .await?;
        Ok(())
    }
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn create_from_template(&self, ctx: &Context, command: CreateFromTemplate) -> CommandResult {
        ctx.publish(&DocumentCreated {
            document_id: command.document_id,
            owner_id: command.owner_id,
            template: command.template,
        })
        .await?;
        Ok(())
    }
}

/// Counts the commands it handles, per instance and in total.
pub struct Worker {
    pub mine: Arc<AtomicU32>,
    pub total: Arc<AtomicU32>,
    pub seen: Arc<std::sync::Mutex<Vec<Identity>>>,
}

#[command(name = "echo")]
impl Worker {
    async fn work(&self, ctx: &Context, command: Work) -> CommandResult {
        self.mine.fetch_add(1, Ordering::SeqCst);
        self.total.fetch_add(1, Ordering::SeqCst);
        self.seen.lock().unwrap().push(*ctx.identity());
        if command.sleep_ms > 0 {
            tokio::time::sleep(Duration::from_millis(command.sleep_ms)).await;
        }
        if command.reject {
            return Err(CommandRejection::reject(format!("work {} refused", command.n)));
        }
        Ok(())
    }
}

// ---- the onboarding process manager ---------------------------------------------------------

pub const TEMPLATES: [&str; 2] = ["handbook", "contract"];

/// Person created -> added to the organization -> documents created from templates.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Onboarding {
    pub name: String,
    pub organization: Option<OrganizationId>,
    pub documents: Vec<String>,
}

fn document_for(person: PersonId, template: &str) -> DocumentId {
    let id = cim_integrate::__private::uuid::Uuid::new_v5(person.as_uuid(), template.as_bytes());
    DocumentId::from_uuid(id)
}

#[process(name = "onboarding", key = person_id)]
impl Onboarding {
    async fn person_created(&mut self, ctx: &mut ProcessContext, e: PersonCreated) -> Result<(), HandlerError> {
        self.name = e.name;
        ctx.send(&AddMember {
            person_id: e.person_id,
            organization_id: e.organization_id,
            role: "employee".into(),
        })
        .map_err(HandlerError::permanent)?;
        ctx.schedule("complete_by", Duration::from_secs(8));
        Ok(())
    }

    async fn member_added(&mut self, ctx: &mut ProcessContext, e: MemberAdded) -> Result<(), HandlerError> {
        self.organization = Some(e.organization_id);
        for template in TEMPLATES {
            let command = CreateFromTemplate {
                document_id: document_for(e.person_id, template),
                owner_id: e.person_id,
                template: template.into(),
            };
            ctx.send(&command).map_err(HandlerError::permanent)?;
        }
        Ok(())
    }

    #[key(owner_id)]
    async fn document_created(&mut self, ctx: &mut ProcessContext, e: DocumentCreated) -> Result<(), HandlerError> {
        if !self.documents.contains(&e.template) {
            self.documents.push(e.template);
        }
        if self.documents.len() == TEMPLATES.len() {
            ctx.publish(&PersonOnboarded {
                person_id: e.owner_id,
                documents: self.documents.clone(),
            })
            .map_err(HandlerError::permanent)?;
            ctx.end();
        }
        Ok(())
    }

    #[deadline]
    async fn overdue(&mut self, ctx: &mut ProcessContext, deadline: Deadline) -> Result<(), HandlerError> {
        assert_eq!(deadline.name, "complete_by");
        let person_id: PersonId = ctx.key().parse().map_err(HandlerError::permanent)?;
        ctx.publish(&OnboardingOverdue { person_id })
            .map_err(HandlerError::permanent)?;
        ctx.end();
        Ok(())
    }
}

/// A counter: concurrent events for one key must all be counted.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Tally {
    pub total: u32,
    pub events: u32,
}

#[process(name = "tally", key = counter_id)]
impl Tally {
    async fn ticked(&mut self, _ctx: &mut ProcessContext, e: Ticked) -> Result<(), HandlerError> {
        // Yield between the read and the write so that concurrent handlers interleave.
        tokio::task::yield_now().await;
        self.total += e.n;
        self.events += 1;
        Ok(())
    }
}

// ---- helpers ----------------------------------------------------------------------------------

pub fn fast() -> HandlerOptions {
    HandlerOptions {
        retry: RetryPolicy::attempts(20).backoff(Duration::from_millis(50), 2, Duration::from_millis(500)),
        ack_wait: Duration::from_secs(5),
        ..HandlerOptions::default()
    }
}

pub fn process_options() -> ProcessOptions {
    ProcessOptions {
        handler: fast(),
        command_timeout: Duration::from_secs(5),
        timer_interval: Duration::from_millis(200),
        ..ProcessOptions::default()
    }
}

pub async fn event<T: Transport, E: DomainEvent>(t: &T, e: &E) {
    let domain = E::SUBJECT.split('.').next().unwrap();
    t.ensure_stream(&StreamSpec::for_domain(domain, None).unwrap())
        .await
        .unwrap();
    t.publish_and_wait(e.to_envelope().unwrap().into()).await.unwrap();
}

/// How many `E` are stored in its stream (read with a fresh consumer until quiet).
pub async fn count_stored<T: Transport, E: DomainEvent>(t: &T) -> usize {
    let domain = E::SUBJECT.split('.').next().unwrap();
    let spec = StreamSpec::for_domain(domain, None).unwrap();
    let durable = format!("count-{}", cim_integrate::__private::uuid::Uuid::now_v7().simple());
    let mut c = t
        .consumer(&ConsumerSpec::new(
            spec.name.clone(),
            durable.clone(),
            SubjectPattern::new(E::SUBJECT).unwrap(),
        ))
        .await
        .unwrap();
    let mut n = 0;
    while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(1500), c.next()).await {
        n += 1;
        d.ack().await.unwrap();
    }
    t.delete_consumer(&spec.name, &durable).await.unwrap();
    n
}

async fn eventually<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn worker() -> (Worker, Arc<AtomicU32>) {
    let mine = Arc::new(AtomicU32::new(0));
    (
        Worker {
            mine: mine.clone(),
            total: Arc::new(AtomicU32::new(0)),
            seen: Default::default(),
        },
        mine,
    )
}

// ---- command scenarios -----------------------------------------------------------------------

/// Two instances of one service: each command is handled once, and both take a share.
pub async fn command_to_two_instances_handled_once<T: Transport>(t: T) {
    let total = Arc::new(AtomicU32::new(0));
    let (a_count, b_count) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
    let a = Worker {
        mine: a_count.clone(),
        total: total.clone(),
        seen: Default::default(),
    };
    let b = Worker {
        mine: b_count.clone(),
        total: total.clone(),
        seen: Default::default(),
    };
    let sa = CommandService::builder(t.clone(), "echo")
        .register(a)
        .start()
        .await
        .unwrap();
    let sb = CommandService::builder(t.clone(), "echo")
        .register(b)
        .start()
        .await
        .unwrap();
    let bus = CommandBus::new(t.clone()).timeout(Duration::from_secs(5));
    for n in 0..30 {
        let ack = bus
            .send(&Work {
                n,
                sleep_ms: 0,
                reject: false,
            })
            .await
            .unwrap();
        assert_eq!(ack, CommandAck::Accepted(()));
    }
    assert_eq!(total.load(Ordering::SeqCst), 30, "each command handled exactly once");
    let (x, y) = (a_count.load(Ordering::SeqCst), b_count.load(Ordering::SeqCst));
    assert_eq!(x + y, 30);
    assert!(x > 0 && y > 0, "both instances share the load: {x} and {y}");
    sa.shutdown(Duration::from_secs(1)).await;
    sb.shutdown(Duration::from_secs(1)).await;
}

/// A handler slower than the sender's timeout: `Timeout`; nobody serving: `NoHandler`.
pub async fn command_timeout_and_no_handler<T: Transport>(t: T) {
    let bus = CommandBus::new(t.clone()).timeout(Duration::from_millis(800));
    let err = bus
        .send(&Work {
            n: 1,
            sleep_ms: 0,
            reject: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::NoHandler { .. }), "{err:?}");
    let (w, _) = worker();
    let s = CommandService::builder(t.clone(), "echo")
        .register(w)
        .start()
        .await
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = bus
        .send(&Work {
            n: 2,
            sleep_ms: 3000,
            reject: false,
        })
        .await
        .unwrap_err();
    assert!(matches!(err, CommandError::Timeout { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(started.elapsed() >= Duration::from_millis(700) && started.elapsed() < Duration::from_secs(3));
    s.shutdown(Duration::from_secs(5)).await;
}

/// Rejections come back typed with their reason; a repeated send (same identity) gets the
/// remembered acknowledgement without running the handler again.
pub async fn command_rejection_and_idempotent_resend<T: Transport>(t: T) {
    let (w, mine) = worker();
    let s = CommandService::builder(t.clone(), "echo")
        .register(w)
        .start()
        .await
        .unwrap();
    let bus = CommandBus::new(t.clone());
    let ack = bus
        .send(&Work {
            n: 7,
            sleep_ms: 0,
            reject: true,
        })
        .await
        .unwrap();
    assert_eq!(
        ack,
        CommandAck::Rejected {
            reason: "work 7 refused".into()
        }
    );
    assert_eq!(ack.reason(), Some("work 7 refused"));
    let identity = Identity::root();
    let cmd = Work {
        n: 8,
        sleep_ms: 0,
        reject: false,
    };
    let first = bus.send_with(identity, &cmd, Duration::from_secs(5)).await.unwrap();
    let again = bus.send_with(identity, &cmd, Duration::from_secs(5)).await.unwrap();
    assert_eq!((first, again), (CommandAck::Accepted(()), CommandAck::Accepted(())));
    assert_eq!(
        mine.load(Ordering::SeqCst),
        2,
        "the repeated send did not run the handler"
    );
    s.shutdown(Duration::from_secs(1)).await;
}

/// Two handlers for one command in one service: refused at start-up.
pub async fn duplicate_command_handler_fails_start<T: Transport>(t: T) {
    let (a, _) = worker();
    let (b, _) = worker();
    let err = CommandService::builder(t, "echo")
        .register(a)
        .register(b)
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandServiceError::DuplicateHandler { ref command, .. } if command == "Work"),
        "{err}"
    );
}

/// Correlation and causation flow from the sender through the command to the events its
/// handler publishes; the waiter, subscribed before the send, sees the event.
pub async fn identity_propagates_and_waiter_sees_event<T: Transport>(t: T) {
    let s = CommandService::builder(t.clone(), "docs")
        .register(DocumentCommands)
        .start()
        .await
        .unwrap();
    let bus = CommandBus::new(t.clone());
    let waiter = Waiter::new(t.clone());
    let document_id = DocumentId::new();
    let expectation = waiter
        .expect::<DocumentCreated, _>(move |e| e.document_id == document_id)
        .await
        .unwrap();
    let parent = Identity::root();
    let cmd = CreateFromTemplate {
        document_id,
        owner_id: PersonId::new(),
        template: "memo".into(),
    };
    assert_eq!(
        bus.send_caused_by(&parent, &cmd).await.unwrap(),
        CommandAck::Accepted(())
    );
    // The event is already published; waiting only now must not miss it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got = expectation.wait(Duration::from_secs(5)).await.unwrap();
    assert_eq!(got.event.template, "memo");
    assert_eq!(
        got.envelope.correlation_id(),
        parent.correlation_id,
        "correlation flows through the command"
    );
    assert_ne!(
        got.envelope.causation_id().into_uuid(),
        parent.message_id.into_uuid(),
        "the command is the cause"
    );
    let err = waiter
        .wait_for::<DocumentCreated, _>(move |e| e.document_id == document_id, Duration::from_millis(500))
        .await
        .unwrap_err();
    assert!(
        matches!(err, cim_integrate::waiter::WaitError::Timeout { .. }),
        "{err:?}"
    );
    s.shutdown(Duration::from_secs(1)).await;
}

// ---- process manager scenarios -----------------------------------------------------------------

async fn onboarding_services<T: Transport>(t: &T) -> (CommandService, Service, ProcessRunner<T, Onboarding>) {
    let commands = CommandService::builder(t.clone(), "backoffice")
        .register(OrganizationCommands)
        .register(DocumentCommands)
        .start()
        .await
        .unwrap();
    let runner = ProcessRunner::<T, Onboarding>::with_options(t.clone(), process_options())
        .await
        .unwrap();
    let service = Service::builder(t.clone(), "onboarding")
        .register(runner.clone())
        .start()
        .await
        .unwrap();
    (commands, service, runner)
}

/// The guide's onboarding: person created -> member added -> two documents from templates ->
/// onboarded, and the process's state is deleted at its end.
pub async fn onboarding_process_runs_to_its_end<T: Transport>(t: T) {
    let (commands, service, runner) = onboarding_services(&t).await;
    let person_id = PersonId::new();
    let waiter = Waiter::new(t.clone());
    let done = waiter
        .expect::<PersonOnboarded, _>(move |e| e.person_id == person_id)
        .await
        .unwrap();
    let created = PersonCreated {
        person_id,
        name: "Ada".into(),
        organization_id: OrganizationId::new(),
    };
    let envelope = created.to_envelope().unwrap();
    event(&t, &created).await;
    let _ = envelope;
    let got = done.wait(Duration::from_secs(20)).await.unwrap();
    let mut docs = got.event.documents.clone();
    docs.sort();
    assert_eq!(docs, ["contract", "handbook"]);
    eventually("the ended process's state is deleted", || {
        let runner = runner.clone();
        async move { runner.state(&person_id.to_string()).await.unwrap().is_none() }
    })
    .await;
    service.shutdown(Duration::from_secs(2)).await;
    commands.shutdown(Duration::from_secs(2)).await;
}

/// Concurrent events for one process, on two service instances with concurrency: no update is
/// lost (compare-and-set with retries).
pub async fn concurrent_events_lose_no_update<T: Transport>(t: T) {
    let options = ProcessOptions {
        handler: HandlerOptions {
            concurrency: 8,
            ..fast()
        },
        ..process_options()
    };
    let r1 = ProcessRunner::<T, Tally>::with_options(t.clone(), options.clone())
        .await
        .unwrap();
    let r2 = ProcessRunner::<T, Tally>::with_options(t.clone(), options)
        .await
        .unwrap();
    let s1 = Service::builder(t.clone(), "tally")
        .register(r1.clone())
        .start()
        .await
        .unwrap();
    let s2 = Service::builder(t.clone(), "tally").register(r2).start().await.unwrap();
    let counter_id = WorkflowId::new();
    for n in 1..=40 {
        event(&t, &Ticked { counter_id, n }).await;
    }
    eventually("all 40 events are counted", || {
        let r1 = r1.clone();
        async move {
            r1.state(&counter_id.to_string())
                .await
                .unwrap()
                .is_some_and(|s| s.events == 40)
        }
    })
    .await;
    let state = r1.state(&counter_id.to_string()).await.unwrap().unwrap();
    assert_eq!(state.total, (1..=40).sum::<u32>());
    s1.shutdown(Duration::from_secs(2)).await;
    s2.shutdown(Duration::from_secs(2)).await;
}

/// A restart between events: the state lives in the bucket, not in the process.
pub async fn restart_between_events<T: Transport>(t: T) {
    let counter_id = WorkflowId::new();
    let key = counter_id.to_string();
    {
        let r = ProcessRunner::<T, Tally>::with_options(t.clone(), process_options())
            .await
            .unwrap();
        let s = Service::builder(t.clone(), "tally")
            .register(r.clone())
            .start()
            .await
            .unwrap();
        for n in 1..=3 {
            event(&t, &Ticked { counter_id, n }).await;
        }
        eventually("3 events counted", || {
            let r = r.clone();
            let key = key.clone();
            async move { r.state(&key).await.unwrap().is_some_and(|s| s.events == 3) }
        })
        .await;
        s.shutdown(Duration::from_secs(2)).await;
    }
    for n in 4..=6 {
        event(&t, &Ticked { counter_id, n }).await;
    }
    let r = ProcessRunner::<T, Tally>::with_options(t.clone(), process_options())
        .await
        .unwrap();
    let s = Service::builder(t.clone(), "tally")
        .register(r.clone())
        .start()
        .await
        .unwrap();
    eventually("6 events counted after the restart", || {
        let r = r.clone();
        let key = key.clone();
        async move {
            r.state(&key)
                .await
                .unwrap()
                .is_some_and(|s| s.events == 6 && s.total == 21)
        }
    })
    .await;
    s.shutdown(Duration::from_secs(2)).await;
}

/// A deadline set before a restart fires after it, once, through the new instance's scanner.
pub async fn deadline_fires_after_restart<T: Transport>(t: T) {
    let person_id = PersonId::new();
    let waiter = Waiter::new(t.clone());
    let overdue = waiter
        .expect::<OnboardingOverdue, _>(move |e| e.person_id == person_id)
        .await
        .unwrap();
    {
        // No command service: the process starts, its command cannot be delivered (retried from
        // the outbox), and the deadline is stored.
        let r = ProcessRunner::<T, Onboarding>::with_options(
            t.clone(),
            ProcessOptions {
                command_timeout: Duration::from_millis(200),
                ..process_options()
            },
        )
        .await
        .unwrap();
        let s = Service::builder(t.clone(), "onboarding")
            .register(r.clone())
            .start()
            .await
            .unwrap();
        let timers = r.spawn_timers();
        event(
            &t,
            &PersonCreated {
                person_id,
                name: "Grace".into(),
                organization_id: OrganizationId::new(),
            },
        )
        .await;
        eventually("the process started", || {
            let r = r.clone();
            async move { r.state(&person_id.to_string()).await.unwrap().is_some() }
        })
        .await;
        // "Crash": stop everything before the deadline.
        drop(timers);
        s.shutdown(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(9)).await;
    let r = ProcessRunner::<T, Onboarding>::with_options(t.clone(), process_options())
        .await
        .unwrap();
    let _timers = r.spawn_timers();
    let got = overdue.wait(Duration::from_secs(20)).await.unwrap();
    assert_eq!(got.event.person_id, person_id);
    assert_eq!(
        count_stored::<T, OnboardingOverdue>(&t).await,
        1,
        "the deadline fired once"
    );
}

// ---- aggregation -----------------------------------------------------------------------------

/// The guide's WorkflowReadyChecker.
pub fn workflow_ready_checker() -> Aggregation<WorkflowReady> {
    Aggregation::<WorkflowReady>::new("workflow_ready")
        .require::<DocumentsAttached>(|e| e.workflow_id.to_string())
        .require::<ApproversAssigned>(|e| e.workflow_id.to_string())
        .require::<ScheduleSet>(|e| e.workflow_id.to_string())
        .outcome(|_key, parts| {
            let documents = parts.get::<DocumentsAttached>()?;
            let approvers = parts.get::<ApproversAssigned>()?;
            Ok(WorkflowReady {
                workflow_id: documents.workflow_id,
                documents: documents.documents,
                approvers: approvers.approvers.len() as u32,
            })
        })
        .handler_options(HandlerOptions {
            concurrency: 8,
            ..fast()
        })
}

/// Every required event delivered twice (distinct message ids, so handler de-duplication does
/// not hide them) on two racing instances: the outcome is published exactly once.
pub async fn aggregation_outcome_exactly_once<T: Transport>(t: T) {
    let a = workflow_ready_checker().open(t.clone()).await.unwrap();
    let b = workflow_ready_checker().open(t.clone()).await.unwrap();
    let sa = Service::builder(t.clone(), "workflow")
        .register(a)
        .start()
        .await
        .unwrap();
    let sb = Service::builder(t.clone(), "workflow")
        .register(b)
        .start()
        .await
        .unwrap();
    let waiter = Waiter::new(t.clone());
    let workflow_id = WorkflowId::new();
    let ready = waiter
        .expect::<WorkflowReady, _>(move |e| e.workflow_id == workflow_id)
        .await
        .unwrap();
    for _ in 0..2 {
        event(
            &t,
            &DocumentsAttached {
                workflow_id,
                documents: 3,
            },
        )
        .await;
        event(
            &t,
            &ApproversAssigned {
                workflow_id,
                approvers: vec!["ann".into(), "bob".into()],
            },
        )
        .await;
        event(&t, &ScheduleSet { workflow_id }).await;
    }
    let got = ready.wait(Duration::from_secs(20)).await.unwrap();
    assert_eq!((got.event.documents, got.event.approvers), (3, 2));
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count_stored::<T, WorkflowReady>(&t).await,
        1,
        "the outcome is published exactly once"
    );
    // Late duplicates change nothing.
    event(&t, &ScheduleSet { workflow_id }).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(count_stored::<T, WorkflowReady>(&t).await, 1);
    sa.shutdown(Duration::from_secs(2)).await;
    sb.shutdown(Duration::from_secs(2)).await;
}

// ---- correlation -------------------------------------------------------------------------------

pub fn review_correlator() -> Correlator {
    Correlator::new("review")
        .on::<ReviewRequested>(|e| e.document_id.to_string())
        .on::<ReviewApproved>(|e| e.document_id.to_string())
        .window(Duration::from_secs(3))
        .max_buffer(4)
        .timer_interval(Duration::from_millis(200))
        .handler_options(fast())
        .rule(|key, buffer, ctx| {
            let approvals = buffer.count::<ReviewApproved>() as u32;
            if buffer.has::<ReviewRequested>() && approvals >= 2 {
                ctx.publish(&ReviewCompleted {
                    document_id: key.parse()?,
                    approvals,
                })?;
                return Ok(Verdict::Done);
            }
            Ok(Verdict::Wait)
        })
        .on_timeout(|key, buffer, ctx| {
            let approvals = buffer.count::<ReviewApproved>() as u32;
            ctx.publish(&ReviewTimedOut {
                document_id: key.parse()?,
                approvals,
            })?;
            Ok(())
        })
}

/// One key completes by its rule; another times out with what it had; the buffer is bounded.
pub async fn correlation_rule_and_timeout<T: Transport>(t: T) {
    let c = review_correlator().open(t.clone()).await.unwrap();
    let timers = c.spawn_timers();
    let c = Arc::new(c);
    let s = Service::builder(t.clone(), "review")
        .register_arc(c.clone())
        .start()
        .await
        .unwrap();
    let waiter = Waiter::new(t.clone());
    let (done_id, late_id) = (DocumentId::new(), DocumentId::new());
    let completed = waiter
        .expect::<ReviewCompleted, _>(move |e| e.document_id == done_id)
        .await
        .unwrap();
    let timed_out = waiter
        .expect::<ReviewTimedOut, _>(move |e| e.document_id == late_id)
        .await
        .unwrap();
    event(&t, &ReviewRequested { document_id: done_id }).await;
    event(&t, &ReviewRequested { document_id: late_id }).await;
    event(
        &t,
        &ReviewApproved {
            document_id: done_id,
            reviewer: "ann".into(),
        },
    )
    .await;
    event(
        &t,
        &ReviewApproved {
            document_id: late_id,
            reviewer: "ann".into(),
        },
    )
    .await;
    event(
        &t,
        &ReviewApproved {
            document_id: done_id,
            reviewer: "bob".into(),
        },
    )
    .await;
    let got = completed.wait(Duration::from_secs(10)).await.unwrap();
    assert_eq!(got.event.approvals, 2);
    let got = timed_out.wait(Duration::from_secs(15)).await.unwrap();
    assert_eq!(
        got.event.approvals, 1,
        "the timed-out outcome carries what was buffered"
    );
    eventually("both correlations closed", || {
        let c = c.clone();
        async move {
            c.buffer(&done_id.to_string()).await.unwrap().is_none()
                && c.buffer(&late_id.to_string()).await.unwrap().is_none()
        }
    })
    .await;
    // Bounded: 6 requests for one key keep the latest 4.
    let busy = DocumentId::new();
    for _ in 0..6 {
        event(&t, &ReviewRequested { document_id: busy }).await;
    }
    eventually("the busy buffer is bounded", || {
        let c = c.clone();
        async move {
            c.buffer(&busy.to_string())
                .await
                .unwrap()
                .is_some_and(|b| b.len() == 4 && b.dropped == 2)
        }
    })
    .await;
    drop(timers);
    s.shutdown(Duration::from_secs(2)).await;
}

// ---- under a deployment prefix ------------------------------------------------------------------

/// The deployment prefix of the prefixed scenarios.
fn prod<T: Transport>(raw: &T) -> Prefixed<T> {
    Prefixed::new(raw.clone(), Some(subject!("prod")))
}

/// Reads `n` messages on `filter` from stream `stream` with a plain consumer on the *raw*
/// transport: subjects as stored on the server, and payloads.
async fn read_raw<T: Transport>(raw: &T, stream: &str, filter: &str, n: usize) -> Vec<(String, Bytes)> {
    let durable = format!("plain-{}", cim_integrate::__private::uuid::Uuid::now_v7().simple());
    let mut c = raw
        .consumer(&ConsumerSpec::new(
            stream,
            durable.clone(),
            SubjectPattern::new(filter).unwrap(),
        ))
        .await
        .unwrap_or_else(|e| panic!("a plain consumer on `{stream}`: {e}"));
    let mut got = Vec::new();
    while got.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(20), c.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} messages on `{filter}` in `{stream}`", got.len()))
            .unwrap();
        got.push((d.subject().to_owned(), d.payload().clone()));
        d.ack().await.unwrap();
    }
    raw.delete_consumer(stream, &durable).await.unwrap();
    got
}

/// No stream of that (unprefixed) name exists on the raw transport.
async fn assert_no_stream<T: Transport>(raw: &T, stream: &str) {
    let err = raw
        .consumer(&ConsumerSpec::new(stream, "probe", SubjectPattern::new("x.>").unwrap()))
        .await
        .expect_err("no unprefixed stream");
    assert!(matches!(err, TransportError::StreamNotFound { .. }), "{err:?}");
}

/// The WorkflowReadyChecker over `Prefixed<T>` (prefix `prod`), registered on a service over the
/// same prefixed transport: a plain client sees its outcome on `prod.workflow.ready` in
/// `PROD_WORKFLOW_EVENTS`, and its records in the bucket `prod_cim_pm_workflow_ready`.
pub async fn aggregation_under_a_deployment_prefix<T: Transport>(raw: T) {
    let t = prod(&raw);
    let checker = workflow_ready_checker().open(t.clone()).await.unwrap();
    let service = Service::builder(t.clone(), "workflow")
        .register(checker)
        .start()
        .await
        .unwrap();
    let workflow_id = WorkflowId::new();
    event(
        &t,
        &DocumentsAttached {
            workflow_id,
            documents: 3,
        },
    )
    .await;
    event(
        &t,
        &ApproversAssigned {
            workflow_id,
            approvers: vec!["ann".into()],
        },
    )
    .await;
    event(&t, &ScheduleSet { workflow_id }).await;

    let got = read_raw(&raw, "PROD_WORKFLOW_EVENTS", "prod.workflow.ready", 1).await;
    let (subject, payload) = &got[0];
    assert_eq!(subject, "prod.workflow.ready");
    let ready = WorkflowReady::decode(payload).unwrap();
    assert_eq!(
        (ready.workflow_id, ready.documents, ready.approvers),
        (workflow_id, 3, 1)
    );
    assert_no_stream(&raw, "WORKFLOW_EVENTS").await;
    let records = raw.key_value(&KvSpec::new("prod_cim_pm_workflow_ready")).await.unwrap();
    assert_eq!(records.keys().await.unwrap(), [workflow_id.to_string()]);
    service.shutdown(Duration::from_secs(2)).await;
}

/// The review correlator over `Prefixed<T>` (prefix `prod`): a plain client sees both its rule's
/// outcome and its timeout's outcome on `prod.review.*` in `PROD_REVIEW_EVENTS`.
pub async fn correlation_under_a_deployment_prefix<T: Transport>(raw: T) {
    let t = prod(&raw);
    let c = review_correlator().open(t.clone()).await.unwrap();
    let timers = c.spawn_timers();
    let service = Service::builder(t.clone(), "review").register(c).start().await.unwrap();
    let (done_id, late_id) = (DocumentId::new(), DocumentId::new());
    event(&t, &ReviewRequested { document_id: done_id }).await;
    event(&t, &ReviewRequested { document_id: late_id }).await;
    for reviewer in ["ann", "bob"] {
        event(
            &t,
            &ReviewApproved {
                document_id: done_id,
                reviewer: reviewer.into(),
            },
        )
        .await;
    }

    let completed = read_raw(&raw, "PROD_REVIEW_EVENTS", "prod.review.completed", 1).await;
    assert_eq!(completed[0].0, "prod.review.completed");
    let done = ReviewCompleted::decode(&completed[0].1).unwrap();
    assert_eq!((done.document_id, done.approvals), (done_id, 2));
    let timed_out = read_raw(&raw, "PROD_REVIEW_EVENTS", "prod.review.timed_out", 1).await;
    assert_eq!(timed_out[0].0, "prod.review.timed_out");
    let late = ReviewTimedOut::decode(&timed_out[0].1).unwrap();
    assert_eq!((late.document_id, late.approvals), (late_id, 0));
    assert_no_stream(&raw, "REVIEW_EVENTS").await;
    drop(timers);
    service.shutdown(Duration::from_secs(2)).await;
}

/// Expands to one test per scenario.
#[macro_export]
macro_rules! scenarios {
    (setup: $setup:path, tokio: [$($tokio:tt)*]) => {
        $crate::scenarios!(@each ($($tokio)*) $setup; [
            command_to_two_instances_handled_once,
            command_timeout_and_no_handler,
            command_rejection_and_idempotent_resend,
            duplicate_command_handler_fails_start,
            identity_propagates_and_waiter_sees_event,
            onboarding_process_runs_to_its_end,
            concurrent_events_lose_no_update,
            restart_between_events,
            deadline_fires_after_restart,
            aggregation_outcome_exactly_once,
            correlation_rule_and_timeout,
            aggregation_under_a_deployment_prefix,
            correlation_under_a_deployment_prefix,
            settings_that_would_spin_are_refused,
        ]);
    };
    (@each $tokio:tt $setup:path; [$($case:ident),* $(,)?]) => {
        $(
            #[::tokio::test $tokio]
            async fn $case() {
                let (transport, _guard) = $setup().await;
                process_scenarios::$case(transport).await;
            }
        )*
    };
}

/// A zero `timer_interval` (the deadline scanner listing its index back to back) or a zero
/// `command_timeout` (every command timing out before its answer, sent again for ever) is
/// refused when the runner opens, naming the setting; so is a correlator's zero timer interval.
pub async fn settings_that_would_spin_are_refused<T: Transport>(t: T) {
    use cim_integrate::correlate::CorrelatorError;
    use cim_integrate::process::ProcessError;
    for (setting, options) in [
        (
            "timer_interval",
            ProcessOptions {
                timer_interval: Duration::ZERO,
                ..process_options()
            },
        ),
        (
            "command_timeout",
            ProcessOptions {
                command_timeout: Duration::ZERO,
                ..process_options()
            },
        ),
    ] {
        match ProcessRunner::<_, Onboarding>::with_options(t.clone(), options).await {
            Err(ProcessError::Settings(e)) => {
                let message = e.to_string();
                assert_eq!(e.setting(), setting, "{message}");
                assert_eq!(e.owner(), "process `onboarding`", "{message}");
                assert!(message.contains("is zero") && message.contains("default"), "{message}");
            }
            Err(e) => panic!("{setting}: {e}"),
            Ok(_) => panic!("{setting}: opened"),
        }
    }
    match review_correlator().timer_interval(Duration::ZERO).open(t.clone()).await {
        Err(CorrelatorError::Process(ProcessError::Settings(e))) => {
            assert_eq!(e.setting(), "timer_interval", "{e}");
            assert!(e.owner().starts_with("correlator `"), "{e}");
            assert!(e.to_string().contains("it is zero"), "{e}");
        }
        Err(e) => panic!("correlator: {e}"),
        Ok(_) => panic!("correlator: opened"),
    }
    // The defaults and the scenarios' options open.
    ProcessRunner::<_, Onboarding>::with_options(t.clone(), process_options())
        .await
        .expect("the scenarios' options");
}
