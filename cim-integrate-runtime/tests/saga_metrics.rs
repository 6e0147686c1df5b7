//! Saga metrics have bounded labels: 1,000 sagas (started directly and by events, completing and
//! compensating, every step publishing) produce exactly the metric series 10 do, and no label
//! value names a saga instance. Message ids of step publishes stay per instance.

use cim_integrate_runtime::Envelope;
use cim_integrate_runtime::handler::{Context, HandlerError};
use cim_integrate_runtime::id::Identity;
use cim_integrate_runtime::saga::{Saga, SagaOutcome, SagaRunner, SagaStatus, Step, StepContext, StepFuture};
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::subject::{Subject, SubjectPattern};
use cim_integrate_runtime::transport::memory::MemoryTransport;
use cim_integrate_runtime::transport::{Consumer, ConsumerSpec, StreamSpec, Transport};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::time::Duration;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Transfer {
    /// `notify` fails permanently, so `debit` is compensated.
    fail: bool,
}

/// Debit (compensated by credit), then notify; each publishes one event.
struct Ledger;

impl Ledger {
    async fn act(&self, ctx: &mut StepContext<Transfer>) -> Result<(), HandlerError> {
        let token = match (ctx.step(), ctx.is_compensation()) {
            ("debit", false) => "debited",
            ("debit", true) => "credited",
            _ => "notified",
        };
        if token == "notified" && ctx.data().fail {
            return Err(HandlerError::permanent("notification refused"));
        }
        let subject = Subject::new(format!("ledger.{token}")).map_err(HandlerError::permanent)?;
        let ack = ctx
            .context()
            .publish_bytes(&subject, "LedgerEvent", "1.0", ctx.saga_id().as_bytes().to_vec())
            .await
            .map_err(HandlerError::transient)?;
        if ack.duplicate {
            return Err(HandlerError::permanent(format!(
                "{token} of {} dropped as a duplicate",
                ctx.saga_id()
            )));
        }
        Ok(())
    }
}

fn act<'a>(s: &'a Ledger, c: &'a mut StepContext<Transfer>) -> StepFuture<'a> {
    Box::pin(s.act(c))
}

impl Saga for Ledger {
    type Data = Transfer;
    const NAME: &'static str = "ledger";
    fn steps() -> Vec<Step<Self>> {
        vec![
            Step::new("debit", act).compensate("credit", act),
            Step::new("notify", act).no_compensation("a notification cannot be taken back"),
        ]
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct TransferRequested {
    id: String,
    fail: bool,
}

/// A saga id that no label may contain.
fn saga_id(i: usize) -> String {
    format!("tx{i:04}q")
}

/// Every metric series (name and sorted labels) recorded so far.
fn series(snapshotter: &Snapshotter) -> BTreeSet<(String, Vec<(String, String)>)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, _)| {
            let key = key.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            (key.name().to_owned(), labels)
        })
        .collect()
}

/// Runs sagas `range`: every fifth started by a `ledger.requested` event through the service,
/// the others directly; every third fails and compensates. Waits until all have settled.
async fn run(t: &MemoryTransport, runner: &SagaRunner<Ledger, MemoryTransport>, range: std::ops::Range<usize>) {
    for i in range.clone() {
        let (id, fail) = (saga_id(i), i % 3 == 0);
        if i % 5 == 0 {
            let body = serde_json::to_vec(&TransferRequested { id, fail }).expect("json");
            let subject = Subject::new("ledger.requested").expect("subject");
            let env = Envelope::root(subject, body).typed("TransferRequested", "1.0");
            t.publish_and_wait((&env).into()).await.expect("publish");
        } else {
            let outcome = runner.start(&id, Transfer { fail }).await.expect("start");
            assert_eq!(matches!(outcome, SagaOutcome::Completed), !fail, "{id}: {outcome:?}");
        }
    }
    for i in range {
        let id = saga_id(i);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let rec = runner.status(&id).await.expect("status");
            if rec.is_some_and(|r| matches!(r.status, SagaStatus::Completed | SagaStatus::Compensated)) {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "saga {id} did not settle");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn metric_series_do_not_grow_with_sagas() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Thread-local: the current-thread runtime runs every saga and the service on this thread.
    let _guard = metrics::set_default_local_recorder(&recorder);

    let t = MemoryTransport::new();
    for domain in ["ledger"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None).expect("spec"))
            .await
            .expect("stream");
    }
    let runner = SagaRunner::builder(t.clone(), Ledger).build().await.expect("runner");
    let registration = runner.start_on(
        "start_transfer",
        SubjectPattern::new("ledger.requested").expect("pattern"),
        "TransferRequested",
        |b: &[u8]| serde_json::from_slice::<TransferRequested>(b),
        |_ctx: &Context, e: TransferRequested| Ok((e.id, Transfer { fail: e.fail })),
    );
    let svc = Service::builder(t.clone(), "ledger")
        .handler("ledger", registration)
        .start()
        .await
        .expect("service");

    run(&t, &runner, 0..10).await;
    let after_10 = series(&snapshotter);
    let published: Vec<_> = after_10
        .iter()
        .filter(|(name, _)| name == "cim_published_total")
        .collect();
    assert!(!published.is_empty(), "step publishes are counted: {after_10:#?}");
    for (_, labels) in &published {
        let publisher = labels.iter().find(|(k, _)| k == "publisher").map(|(_, v)| v.as_str());
        assert!(
            matches!(
                publisher,
                Some("ledger.debit" | "ledger.notify" | "ledger.debit.compensate")
            ),
            "{labels:?}"
        );
    }

    run(&t, &runner, 10..1_000).await;
    let after_1000 = series(&snapshotter);
    assert_eq!(
        after_1000.len(),
        after_10.len(),
        "new series after 990 more sagas: {:#?}",
        after_1000.difference(&after_10).collect::<Vec<_>>()
    );
    assert_eq!(after_1000, after_10);
    let ids: Vec<String> = (0..1_000).map(saga_id).collect();
    for (name, labels) in &after_1000 {
        for (key, value) in labels {
            assert!(
                !ids.iter().any(|id| value.contains(id.as_str())),
                "{name}{{{key}={value}}} names a saga id"
            );
        }
    }
    svc.shutdown(Duration::from_secs(5)).await;
}

/// Two sagas started by one message (same identity) publish from the same step: the label is the
/// same, yet the message ids are derived from each instance's idempotency key, so they differ in
/// their hashed part (a scope shared by both would leave only the millisecond apart, and two
/// starts in the same millisecond would collide in the duplicate window).
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn step_publishes_keep_per_instance_ids() {
    let t = MemoryTransport::new();
    let spec = StreamSpec::for_domain("ledger", None).expect("spec");
    t.ensure_stream(&spec).await.expect("stream");
    let runner = SagaRunner::builder(t.clone(), Ledger).build().await.expect("runner");
    let cause = Identity::root();
    for id in ["a", "b"] {
        let outcome = runner
            .start_with_identity(id, Transfer::default(), cause)
            .await
            .expect("start");
        assert_eq!(outcome, SagaOutcome::Completed, "{id}");
    }
    let pattern = SubjectPattern::new("ledger.debited").expect("pattern");
    let mut consumer = t
        .consumer(&ConsumerSpec::new(spec.name.clone(), "check", pattern))
        .await
        .expect("consumer");
    let mut ids = Vec::new();
    while ids.len() < 2 {
        let d = tokio::time::timeout(Duration::from_secs(5), consumer.next())
            .await
            .expect("two debits")
            .expect("next");
        let env = d.envelope().expect("envelope");
        assert_eq!(env.correlation_id(), cause.correlation_id);
        ids.push(env.message_id().into_uuid());
        d.ack().await.expect("ack");
    }
    assert_ne!(ids[0].as_bytes()[6..], ids[1].as_bytes()[6..], "{ids:?}");
}
