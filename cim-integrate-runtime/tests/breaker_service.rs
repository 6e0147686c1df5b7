//! Circuit breakers end to end through `Service`: a handler whose downstream fails stops burning
//! retries; while its breaker is open, messages are deferred (naked with the cool-down), never
//! dead-lettered, and their deferrals do not count as attempts. On the in-memory transport under
//! paused time, and on NATS against a private server.

use cim_integrate_runtime::breaker::{BreakerSettings, BreakerState, CircuitBreaker};
use cim_integrate_runtime::handler::{Context, HandlerError, HandlerOptions, Registration, RetryPolicy};
use cim_integrate_runtime::service::{HandlerStats, Service};
use cim_integrate_runtime::transport::{StreamSpec, Transport};
use cim_integrate_runtime::{Envelope, Subject, SubjectPattern};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const COOL_DOWN: Duration = Duration::from_secs(2);
const PROBE_TIME: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Downstream {
    up: AtomicBool,
    /// Runs while the downstream was down.
    failed_runs: AtomicU32,
    /// (n, attempt as the handler saw it) of every successful run.
    done: Mutex<Vec<(u32, u64)>>,
}

fn decode(payload: &[u8]) -> Result<u32, std::num::ParseIntError> {
    std::str::from_utf8(payload).unwrap_or_default().parse()
}

fn options(concurrency: usize) -> HandlerOptions {
    HandlerOptions {
        retry: RetryPolicy::attempts(3).backoff(Duration::from_millis(100), 2, Duration::from_secs(1)),
        ack_wait: Duration::from_secs(10),
        concurrency,
        breaker: Some(BreakerSettings::new(2, Duration::from_secs(60), COOL_DOWN)),
        ..HandlerOptions::default()
    }
}

/// Fails while the downstream is down; otherwise takes [`PROBE_TIME`] (so that, half-open, the
/// other messages are refused over and over while the probe runs) and succeeds.
fn indexer(down: &Arc<Downstream>) -> Registration {
    let down = down.clone();
    let pattern = SubjectPattern::new("document.created").expect("pattern");
    Registration::new("indexer", pattern, "Numbered", decode, move |ctx: Context, n: u32| {
        let down = down.clone();
        async move {
            if !down.up.load(Ordering::SeqCst) {
                down.failed_runs.fetch_add(1, Ordering::SeqCst);
                return Err(HandlerError::transient("search index unavailable"));
            }
            tokio::time::sleep(PROBE_TIME).await;
            down.done.lock().expect("lock").push((n, ctx.delivered()));
            Ok(())
        }
    })
    .with_options(options(4))
}

async fn publish<T: Transport>(t: &T, n: u32) {
    let subject = Subject::new("document.created").expect("subject");
    t.publish_and_wait(Envelope::root(subject, n.to_string()).typed("Numbered", "1.0").into())
        .await
        .expect("publish");
}

async fn wait_until<T>(what: &str, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = probe() {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn stats(svc: &Service) -> HandlerStats {
    svc.handler_stats("search-indexer").expect("stats")
}

/// The scenario, the same on every transport.
async fn open_breaker_defers_and_loses_nothing<T: Transport>(t: T) {
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let down = Arc::new(Downstream::default());
    let svc = Service::builder(t.clone(), "search")
        .handler("search", indexer(&down))
        .start()
        .await
        .expect("start");
    assert_eq!(svc.breaker_state("search-indexer"), Some(BreakerState::Closed));

    // Two failures open the breaker.
    publish(&t, 1).await;
    publish(&t, 2).await;
    wait_until("the breaker to open", || {
        (svc.breaker_state("search-indexer") == Some(BreakerState::Open)).then_some(())
    })
    .await;
    assert_eq!(down.failed_runs.load(Ordering::SeqCst), 2);

    // While it is open, nothing runs: new messages are deferred.
    for n in 3..=6 {
        publish(&t, n).await;
    }
    wait_until("deferrals", || (stats(&svc).deferred >= 4).then_some(())).await;
    assert_eq!(down.failed_runs.load(Ordering::SeqCst), 2, "nothing ran while open");
    assert_eq!(svc.breaker_state("search-indexer"), Some(BreakerState::Open));

    // The downstream recovers; after the cool-down one probe runs (slowly) while every other
    // message is refused again and again, then the breaker closes and everything is handled.
    down.up.store(true, Ordering::SeqCst);
    // Handled, then marked, then counted: wait for the count, which comes last.
    wait_until("every message handled and counted", || {
        (down.done.lock().expect("lock").len() == 6 && stats(&svc).succeeded == 6).then_some(())
    })
    .await;
    assert_eq!(svc.breaker_state("search-indexer"), Some(BreakerState::Closed));

    let s = stats(&svc);
    assert_eq!(s.succeeded, 6, "{s:?}");
    assert_eq!(s.dead_lettered, 0, "{s:?}");
    assert_eq!(s.retried, 2, "only the two real failures were retries: {s:?}");
    assert!(
        s.deferred >= 10,
        "each waiting message was deferred while open and again while half-open: {s:?}"
    );
    // Many deliveries, few attempts: the deferrals did not count (max_attempts is 3).
    let done = down.done.lock().expect("lock").clone();
    assert!(done.iter().all(|(_, attempt)| *attempt <= 2), "{done:?}");
    let mut ns: Vec<u32> = done.iter().map(|(n, _)| *n).collect();
    ns.sort_unstable();
    assert_eq!(ns, [1, 2, 3, 4, 5, 6]);
    svc.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn memory_open_breaker_defers_and_loses_nothing() {
    open_breaker_defers_and_loses_nothing(cim_integrate_runtime::transport::memory::MemoryTransport::new()).await;
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_open_breaker_defers_and_loses_nothing() {
    let server = cim_integrate_runtime::testing::NatsServer::start()
        .await
        .expect("start nats-server");
    let t = cim_integrate_runtime::transport::nats::NatsTransport::connect_url(&server.url())
        .await
        .expect("connect");
    open_breaker_defers_and_loses_nothing(t).await;
}

/// A breaker around the handler's own outgoing call: its refusal (`?` on `BreakerError`) defers
/// the message the same way, with no breaker in the handler's options.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn refusal_of_an_inner_breaker_defers_the_message() {
    let t = cim_integrate_runtime::transport::memory::MemoryTransport::new();
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let breaker = CircuitBreaker::new(
        "search-api",
        BreakerSettings::new(1, Duration::from_secs(60), COOL_DOWN),
    );
    let up = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU32::new(0));
    let done = Arc::new(AtomicU32::new(0));
    let reg = {
        let (breaker, up, calls, done) = (breaker.clone(), up.clone(), calls.clone(), done.clone());
        let pattern = SubjectPattern::new("document.created").expect("pattern");
        Registration::new("indexer", pattern, "Numbered", decode, move |_ctx: Context, _n: u32| {
            let (breaker, up, calls, done) = (breaker.clone(), up.clone(), calls.clone(), done.clone());
            async move {
                breaker
                    .call(|| async {
                        calls.fetch_add(1, Ordering::SeqCst);
                        if up.load(Ordering::SeqCst) {
                            Ok(())
                        } else {
                            Err(std::io::Error::other("connection refused"))
                        }
                    })
                    .await?;
                done.fetch_add(1, Ordering::SeqCst);
                Ok(())
            }
        })
        .with_options(HandlerOptions {
            retry: RetryPolicy::attempts(2).backoff(Duration::from_millis(100), 1, Duration::from_millis(100)),
            concurrency: 1,
            ..HandlerOptions::default()
        })
    };
    let svc = Service::builder(t.clone(), "search")
        .handler("search", reg)
        .start()
        .await
        .expect("start");
    for n in 1..=3 {
        publish(&t, n).await;
    }
    wait_until("the breaker to open and defer", || {
        (stats(&svc).deferred >= 3).then_some(())
    })
    .await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one real call, then refusals");
    assert_eq!(breaker.state(), BreakerState::Open);
    up.store(true, Ordering::SeqCst);
    wait_until("all handled and counted", || {
        (done.load(Ordering::SeqCst) == 3 && stats(&svc).succeeded == 3).then_some(())
    })
    .await;
    let s = stats(&svc);
    assert_eq!((s.succeeded, s.dead_lettered), (3, 0), "{s:?}");
    assert_eq!(breaker.state(), BreakerState::Closed);
    svc.shutdown(Duration::from_secs(5)).await;
}

/// An ordered handler keeps its order through an open breaker: it waits the cool-down in place
/// instead of naking, so later messages cannot overtake the one that is waiting.
#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn ordered_handler_waits_in_place_and_keeps_order() {
    let t = cim_integrate_runtime::transport::memory::MemoryTransport::new();
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let failures_left = Arc::new(AtomicU32::new(2));
    let order = Arc::new(Mutex::new(Vec::new()));
    let reg = {
        let (failures_left, order) = (failures_left.clone(), order.clone());
        let pattern = SubjectPattern::new("document.created").expect("pattern");
        Registration::new("indexer", pattern, "Numbered", decode, move |_ctx: Context, n: u32| {
            let (failures_left, order) = (failures_left.clone(), order.clone());
            async move {
                if failures_left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |f| f.checked_sub(1))
                    .is_ok()
                {
                    return Err(HandlerError::transient("search index unavailable"));
                }
                order.lock().expect("lock").push(n);
                Ok(())
            }
        })
        .with_options(HandlerOptions {
            ordered: true,
            ..options(1)
        })
    };
    let svc = Service::builder(t.clone(), "search")
        .handler("search", reg)
        .start()
        .await
        .expect("start");
    let start = tokio::time::Instant::now();
    for n in 1..=4 {
        publish(&t, n).await;
    }
    wait_until("all handled in order, and counted", || {
        (order.lock().expect("lock").len() == 4 && stats(&svc).succeeded == 4).then_some(())
    })
    .await;
    assert!(start.elapsed() >= COOL_DOWN, "the retry waited for the cool-down");
    assert_eq!(*order.lock().expect("lock"), [1, 2, 3, 4]);
    let s = stats(&svc);
    // Message 1 failed twice, which opened the breaker; its retry waited in place for the rest of
    // the cool-down (not the 200 ms back-off), so its third attempt was the probe, which closed the
    // breaker. Nothing overtook it and nothing was dead-lettered.
    assert_eq!((s.succeeded, s.dead_lettered, s.retried), (4, 0, 2), "{s:?}");
    assert_eq!(svc.breaker_state("search-indexer"), Some(BreakerState::Closed));
    svc.shutdown(Duration::from_secs(5)).await;
}
