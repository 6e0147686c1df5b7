//! `ops` on the state of a running deployment, against a private nats-server per test: sagas
//! listed by state (stuck included), retried from `Ops` and finished by a host's runner,
//! forgotten; a process manager's pending deadline; handlers' lag; hosts' status documents and
//! the observed topology.

use cim_integrate_runtime::breaker::BreakerSettings;
use cim_integrate_runtime::event::{DecodeError, DomainEvent, PayloadVersion, Versioned};
use cim_integrate_runtime::handler::{HandlerError, HandlerOptions, Registration, RetryPolicy};
use cim_integrate_runtime::ops::{Ops, OpsError, SagaFilter, SagaState};
use cim_integrate_runtime::process::{ProcessContext, ProcessHandler, ProcessManager, ProcessRunner};
use cim_integrate_runtime::saga::conformance::{LEASE, Order, STEP_TIMEOUT, Shop};
use cim_integrate_runtime::saga::{SagaOutcome, SagaRunner, Write};
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::nats::NatsTransport;
use cim_integrate_runtime::transport::{ConsumerSpec, Transport};
use cim_integrate_runtime::{Envelope, Subject, SubjectPattern};
use futures::future::BoxFuture;
use std::future::Future;
use std::time::Duration;

const RESCAN: Duration = Duration::from_millis(200);

async fn setup() -> (NatsTransport, Ops, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let transport = NatsTransport::connect_url(&server.url()).await.expect("connect");
    let ops = Ops::new(transport.clone());
    (transport, ops, server)
}

/// Polls `probe` until it gives a value, for at most 30 s.
async fn eventually<T, F: Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> F) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn state_of(ops: &Ops, id: &str) -> SagaState {
    ops.saga("shop", id).await.expect("saga view").summary.state
}

async fn host(t: &NatsTransport, shop: &Shop, instance: &str) -> Service {
    let runner = SagaRunner::builder(t.clone(), shop.clone())
        .instance(instance)
        .lease(LEASE)
        .rescan_interval(Some(RESCAN))
        .build()
        .await
        .expect("runner");
    Service::builder(t.clone(), "shop-host")
        .status_interval(None)
        .saga(runner)
        .start()
        .await
        .expect("start host")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_needing_attention_is_retried_from_ops_and_compensated_by_the_host() {
    let (t, ops, _server) = setup().await;
    let shop = Shop::default();
    // The refund (charge's compensation) fails, always, until it is mended.
    shop.script.broken.lock().expect("lock").insert("charge");
    let service = host(&t, &shop, "host").await;
    let runner = SagaRunner::builder(t.clone(), shop.clone())
        .instance("starter")
        .lease(LEASE)
        .build()
        .await
        .expect("runner");
    let outcome = runner.start("o-1", Order::failing_at("publish")).await.expect("start");
    assert!(matches!(outcome, SagaOutcome::NeedsAttention { .. }), "{outcome:?}");

    assert_eq!(ops.saga_names().await.expect("names"), ["shop"]);
    let listed = ops
        .sagas("shop", &SagaFilter::state(SagaState::NeedsAttention))
        .await
        .expect("list");
    assert_eq!(listed.iter().map(|s| s.id.as_str()).collect::<Vec<_>>(), ["o-1"]);
    assert_eq!(listed[0].current_step.as_deref(), Some("charge"));
    let view = ops.saga("shop", "o-1").await.expect("view");
    assert_eq!(view.steps.len(), 4);
    assert_eq!(view.remaining.first().map(String::as_str), Some("charge"), "{view:?}");
    assert!(view.remaining.contains(&"reserve".to_owned()), "{view:?}");
    assert!(view.data["done"].as_array().is_some_and(|d| !d.is_empty()), "{view:?}");
    // Not settled: it cannot be forgotten.
    assert!(matches!(
        ops.forget_saga("shop", "o-1").await,
        Err(OpsError::Invalid(_))
    ));

    shop.script.broken.lock().expect("lock").clear();
    let released = ops.retry_saga("shop", "o-1").await.expect("retry");
    assert_eq!((released.state, released.round), (SagaState::Released, 1));
    // Released twice is refused: a host takes it.
    assert!(matches!(ops.retry_saga("shop", "o-1").await, Err(OpsError::Invalid(_))));

    // The host's rescan drives the compensation on.
    eventually("the host to compensate o-1", || async {
        (state_of(&ops, "o-1").await == SagaState::Compensated).then_some(())
    })
    .await;
    let calls = shop.script.calls_of("o-1");
    assert!(
        calls.ends_with(&["-charge".to_owned(), "-reserve".to_owned()]),
        "{calls:?}"
    );
    let view = ops.saga("shop", "o-1").await.expect("view");
    assert!(view.summary.settled && view.remaining.is_empty(), "{view:?}");

    // Settled: forgotten, then gone.
    ops.forget_saga("shop", "o-1").await.expect("forget");
    assert!(matches!(ops.saga("shop", "o-1").await, Err(OpsError::NotFound(_))));
    // Bad input: typed errors, no panic.
    assert!(matches!(
        ops.saga("shop", "no such id").await,
        Err(OpsError::Invalid(_))
    ));
    assert!(matches!(
        ops.sagas("nosuchsaga", &SagaFilter::all()).await,
        Err(OpsError::NotFound(_))
    ));
    assert!(matches!(
        ops.sagas("bad.name", &SagaFilter::all()).await,
        Err(OpsError::Invalid(_))
    ));
    service.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_saga_is_listed_and_retried_so_a_runner_finishes_it() {
    let (t, ops, _server) = setup().await;
    let shop = Shop::default();
    // Its runner dies right after `reserve` completed.
    let doomed = SagaRunner::builder(t.clone(), shop.clone())
        .instance("doomed")
        .lease(LEASE)
        .rescan_interval(None)
        .fault_hook(|p| p.write == Write::StepCompleted && p.step == Some("reserve"))
        .build()
        .await
        .expect("runner");
    assert!(doomed.start("o-2", Order::default()).await.is_err());
    drop(doomed);

    let stuck = eventually("o-2 to be listed as stuck", || async {
        let stuck = ops
            .sagas("shop", &SagaFilter::state(SagaState::Stuck))
            .await
            .expect("list");
        (!stuck.is_empty()).then_some(stuck)
    })
    .await;
    assert_eq!((stuck[0].id.as_str(), stuck[0].owner.as_str()), ("o-2", "doomed"));
    assert!(matches!(
        ops.forget_saga("shop", "o-2").await,
        Err(OpsError::Invalid(_))
    ));

    let released = ops.retry_saga("shop", "o-2").await.expect("retry");
    assert_eq!(released.state, SagaState::Released);
    assert_eq!(ops.saga("shop", "o-2").await.expect("view").summary.owner, "ops");

    let service = host(&t, &shop, "rescuer").await;
    eventually("a runner to complete o-2", || async {
        (state_of(&ops, "o-2").await == SagaState::Completed).then_some(())
    })
    .await;
    // A settled saga is not retried.
    assert!(matches!(ops.retry_saga("shop", "o-2").await, Err(OpsError::Invalid(_))));
    service.shutdown(Duration::from_secs(1)).await;
}

/// A task was opened (the process manager's event).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct TaskOpened {
    task: String,
}

impl PayloadVersion for TaskOpened {
    const VERSION: &'static str = "1.0";
}

impl Versioned for TaskOpened {
    const TYPE_NAME: &'static str = "TaskOpened";
    const VERSIONS: &'static [&'static str] = &["1.0"];
    fn decode_version(version: &str, payload: &[u8]) -> Result<Option<Self>, DecodeError> {
        cim_integrate_runtime::event::decode_oldest::<Self>("1.0", Self::TYPE_NAME, version, payload)
    }
}

impl DomainEvent for TaskOpened {
    const SUBJECT: &'static str = "task.opened";
}

/// Reminds of an open task after an hour.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Reminder {
    task: String,
}

impl ProcessManager for Reminder {
    const NAME: &'static str = "reminders";
    fn handlers() -> Vec<ProcessHandler<Self>> {
        fn opened<'a>(
            s: &'a mut Reminder,
            ctx: &'a mut ProcessContext,
            e: TaskOpened,
        ) -> BoxFuture<'a, Result<(), HandlerError>> {
            Box::pin(async move {
                s.task = e.task;
                ctx.schedule("remind", Duration::from_secs(3600));
                Ok(())
            })
        }
        vec![ProcessHandler::new::<TaskOpened>("opened", |e| e.task.clone(), opened)]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn process_manager_is_listed_with_its_pending_deadline() {
    let (t, ops, _server) = setup().await;
    let runner = ProcessRunner::<_, Reminder>::open(t.clone()).await.expect("open");
    let service = Service::builder(t.clone(), "tasks")
        .status_interval(None)
        .process(runner)
        .start()
        .await
        .expect("start");
    let env = TaskOpened { task: "t-1".into() }.to_envelope().expect("encode");
    t.publish_and_wait(env.into()).await.expect("publish");

    assert_eq!(ops.process_names().await.expect("names"), ["reminders"]);
    let listed = eventually("the process to be stored", || async {
        let l = ops.processes("reminders").await.expect("list");
        (!l.is_empty()).then_some(l)
    })
    .await;
    assert_eq!(listed[0].key, "t-1");
    assert_eq!(
        listed[0].next_deadline.as_ref().map(|d| d.name.as_str()),
        Some("remind")
    );
    let view = ops.process("reminders", "t-1").await.expect("view");
    assert_eq!(view.state["task"], "t-1");
    assert_eq!(view.pending.len(), 1);
    let due = view.pending[0].due_ms;
    assert!(due > cim_integrate_runtime::clock::now_millis() + 3_000_000, "{view:?}");
    assert_eq!(view.indexed_due_ms, Some(due));
    assert!(matches!(
        ops.process("reminders", "t-2").await,
        Err(OpsError::NotFound(_))
    ));
    assert!(matches!(ops.processes("nothing").await, Err(OpsError::NotFound(_))));
    service.shutdown(Duration::from_secs(1)).await;
}

fn numbered(payload: &[u8]) -> Result<u32, std::num::ParseIntError> {
    std::str::from_utf8(payload).unwrap_or_default().parse()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_lag_hosts_and_topology_show_a_running_service() {
    let (t, ops, _server) = setup().await;
    // A handler whose downstream is down: its breaker opens.
    let pattern = SubjectPattern::new("document.created").expect("pattern");
    let failing = Registration::new(
        "indexer",
        pattern.clone(),
        "Numbered",
        numbered,
        |_ctx, _n: u32| async { Err::<(), _>(HandlerError::transient("search index unavailable")) },
    )
    .with_options(HandlerOptions {
        retry: RetryPolicy::attempts(3).backoff(Duration::from_millis(50), 2, Duration::from_millis(200)),
        breaker: Some(BreakerSettings::new(
            2,
            Duration::from_secs(60),
            Duration::from_secs(600),
        )),
        ..HandlerOptions::default()
    });
    let service = Service::builder(t.clone(), "search")
        .status_interval(Some(Duration::from_millis(200)))
        .handler("search", failing)
        .start()
        .await
        .expect("start");
    // A durable nobody reads: its backlog is its lag.
    let _idle = t
        .consumer(&ConsumerSpec::new("DOCUMENT_EVENTS", "archive-copier", pattern))
        .await
        .expect("consumer");
    for n in 0..5u32 {
        let env =
            Envelope::root(Subject::new("document.created").expect("subject"), n.to_string()).typed("Numbered", "1.0");
        t.publish_and_wait(env.into()).await.expect("publish");
    }

    let lag = eventually("the backlog and the open breaker", || async {
        let lag = ops.handlers().await.expect("handlers");
        let open = lag
            .iter()
            .any(|h| h.durable == "search-indexer" && h.breakers.iter().any(|(_, s)| s == "open"));
        open.then_some(lag)
    })
    .await;
    let idle = lag
        .iter()
        .find(|h| h.durable == "archive-copier")
        .expect("idle durable listed");
    assert_eq!((idle.stream.as_str(), idle.num_pending), ("DOCUMENT_EVENTS", 5));
    assert_eq!(idle.filters, ["document.created"]);
    assert!(
        lag.iter()
            .any(|h| h.stream == "DEAD_LETTERS" && h.durable == "search-indexer-redrive")
    );

    let hosts = ops.hosts().await.expect("hosts");
    assert_eq!(hosts.len(), 1);
    let h = &hosts[0];
    assert_eq!(h.service, "search");
    let indexer = h
        .handlers
        .iter()
        .find(|x| x.stats.handler == "search-indexer")
        .expect("handler");
    assert_eq!(indexer.breaker.as_deref(), Some("open"));
    assert!(indexer.stats.retried + indexer.stats.deferred > 0, "{indexer:?}");

    let topo = ops.topology().await.expect("topology");
    let events = topo
        .streams
        .iter()
        .find(|s| s.name == "DOCUMENT_EVENTS")
        .expect("stream");
    assert_eq!(events.subjects, ["document.>"]);
    assert_eq!((events.messages, events.replicas), (5, 1));
    let durables: Vec<&str> = events.consumers.iter().map(|c| c.durable.as_str()).collect();
    assert_eq!(durables, ["archive-copier", "search-indexer"]);
    assert!(topo.streams.iter().all(|s| !s.name.starts_with("KV_")));
    assert_eq!(topo.hosts, [format!("search.{}", h.instance)]);
    let subs = topo.declared["subscriptions"].as_array().expect("subscriptions");
    assert!(subs.iter().any(|s| s["pattern"] == "document.created"), "{subs:?}");
    service.shutdown(Duration::from_secs(1)).await;
    // Shut down, the host is no longer listed (not for the bucket's max age, 30 s).
    assert_eq!(ops.hosts().await.expect("hosts"), []);
    assert_eq!(ops.topology().await.expect("topology").hosts, Vec::<String>::new());
}

/// The runner's rescan (what a hosting service calls every interval) takes over a saga only once
/// its lease has run out, whoever owns it; on the in-memory transport under paused time.
#[tokio::test(start_paused = true)]
async fn rescan_takes_over_only_sagas_whose_lease_ran_out() {
    use cim_integrate_runtime::transport::memory::MemoryTransport;
    let t = MemoryTransport::new();
    let shop = Shop::default();
    let doomed = SagaRunner::builder(t.clone(), shop.clone())
        .instance("doomed")
        .lease(LEASE)
        .fault_hook(|p| p.write == Write::StepCompleted && p.step == Some("charge"))
        .build()
        .await
        .expect("runner");
    assert!(doomed.start("o-4", Order::default()).await.is_err());
    let rescuer = SagaRunner::builder(t.clone(), shop.clone())
        .instance("rescuer")
        .lease(LEASE)
        .build()
        .await
        .expect("runner");
    let early = rescuer.rescan().await.expect("rescan");
    assert!(early.completed.is_empty() && early.busy.is_empty(), "{early:?}");
    // The lease of the crashed write covers the next step's timeout too.
    tokio::time::sleep(LEASE + STEP_TIMEOUT * 3).await;
    let late = rescuer.rescan().await.expect("rescan");
    assert_eq!(late.completed, ["o-4"]);
    let again = rescuer.rescan().await.expect("rescan");
    assert!(again.completed.is_empty(), "{again:?}");
}
