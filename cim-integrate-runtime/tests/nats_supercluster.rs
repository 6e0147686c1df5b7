//! Hosts in one cluster of a super-cluster whose assets are placed in another, against real
//! servers: three clusters (`A`, `B`, `C`, one server each) joined by gateways into one JetStream
//! whose meta group spans the three. A host connects to `b` and places everything in cluster `A`
//! (`NATS_PLACEMENT_CLUSTER=A`), so every stream, bucket, pull request and acknowledgement crosses
//! a gateway. The transport and saga conformance suites run that way; the cases below check where
//! things land and what a restart across the gateway costs.
//!
//! The super-cluster is started once for this test binary (a JetStream meta leader takes about
//! 5 s to be elected) and every test gets an account of its own on it, with its own JetStream:
//! the suites' fixed stream and bucket names do not meet.

#[path = "fixtures/indexer.rs"]
#[allow(dead_code)]
mod indexer;

#[path = "fixtures/supercluster.rs"]
mod supercluster;

use cim_integrate_runtime::handler::HandlerOptions;
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::transport::nats::NatsTransport;
use std::time::{Duration, Instant};
use supercluster::{account, cluster_of, on_b};

/// A transport on server `b`, in a fresh account, placing in cluster `A`.
async fn setup() -> (NatsTransport, ()) {
    let t = NatsTransport::connect(on_b(account())).await.expect("connect to b");
    (t, ())
}

mod transport {
    cim_integrate_runtime::conformance_tests!(setup: super::setup, tokio: [flavor = "multi_thread", worker_threads = 2]);
}

mod saga {
    cim_integrate_runtime::saga_conformance_tests!(setup: super::setup, tokio: [flavor = "multi_thread", worker_threads = 2]);
}

/// The indexer (durable `search-indexer`), with `ack_wait`, started on `b` in `account`.
async fn indexer_on_b(account: usize, ack_wait: Duration) -> (NatsTransport, Service) {
    let t = NatsTransport::connect(on_b(account)).await.expect("connect");
    let service = Service::builder(t.clone(), "search")
        .handler(
            "search",
            indexer::indexer().with_options(HandlerOptions {
                ack_wait,
                ..HandlerOptions::default()
            }),
        )
        .start()
        .await
        .expect("start on b, assets in A");
    (t, service)
}

/// Waits (up to `within`) until the indexer handled one event; nothing dead-lettered or retried.
async fn handled_once(service: &Service, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let stats = service.handler_stats("search-indexer").expect("stats");
        assert_eq!((stats.dead_lettered, stats.retried), (0, 0), "{stats:?}");
        if stats.succeeded == 1 {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "not handled in {within:?}: {stats:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_in_one_cluster_keeps_its_assets_where_they_are_placed() {
    let (t, service) = indexer_on_b(account(), Duration::from_secs(30)).await;
    indexer::publish_created(&t).await;
    handled_once(&service, Duration::from_secs(20)).await;
    service.shutdown(Duration::from_secs(5)).await;
    for stream in ["DOCUMENT_EVENTS", "SEARCH_EVENTS", "KV_cim_dedup_search"] {
        assert_eq!(cluster_of(&t, stream).await.as_deref(), Some("A"), "{stream}");
    }
    assert_eq!(indexer::stream_messages(&t, "SEARCH_EVENTS").await, Some(1));
    assert_eq!(indexer::stream_messages(&t, "KV_cim_dedup_search").await, Some(1));
}

/// A host in cluster `B` stops and starts again while its assets are in `A`, and an event is
/// published right after the stop. The stopped host's pull request outlives it at `a` until
/// `a` learns, across the gateway, that nobody listens (one or two heartbeats); what `a` hands
/// it meanwhile is lost in transit. The event is handled once by the restarted host after the
/// ack wait, never dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_restarting_across_a_gateway_handles_what_it_missed_once() {
    let account = account();
    let ack_wait = Duration::from_secs(3);
    let (t, first) = indexer_on_b(account, ack_wait).await;
    // Pulling, and waiting for messages.
    tokio::time::sleep(Duration::from_millis(500)).await;
    first.shutdown(Duration::from_secs(5)).await;
    drop(t);
    let publisher = NatsTransport::connect(on_b(account)).await.expect("connect");
    indexer::publish_created(&publisher).await;
    let (t, second) = indexer_on_b(account, ack_wait).await;
    handled_once(&second, ack_wait + Duration::from_secs(10)).await;
    second.shutdown(Duration::from_secs(5)).await;
    assert_eq!(indexer::stream_messages(&t, "SEARCH_EVENTS").await, Some(1));
}

/// How long each of `count` consumers created in turn from `b` (placed in `A`, with an inactive
/// threshold if given) waits for its first delivery of an event stored before; each is deleted
/// after, and must still exist then (the server removes a consumer nobody pulls for its
/// threshold).
async fn first_deliveries(count: usize, inactive_threshold: Option<Duration>) -> Vec<Duration> {
    use cim_integrate_runtime::envelope::Envelope;
    use cim_integrate_runtime::subject::{Subject, SubjectPattern};
    use cim_integrate_runtime::transport::{Consumer, ConsumerSpec, StreamSpec, Transport, TransportError};
    const STREAM: &str = "DOCUMENT_EVENTS";
    let t = NatsTransport::connect(on_b(account())).await.expect("connect");
    let spec = StreamSpec::for_domain("document", None).expect("spec");
    t.ensure_stream(&spec).await.expect("stream");
    let subject = Subject::new("document.created").expect("subject");
    let event = Envelope::root(subject, bytes::Bytes::from_static(b"{}")).typed("TestEvent", "1.0");
    t.publish_and_wait((&event).into()).await.expect("publish");
    let filter = SubjectPattern::new("document.>").expect("pattern");
    let mut firsts = Vec::with_capacity(count);
    for i in 0..count {
        let durable = format!("fresh-{i}");
        let mut spec = ConsumerSpec::new(STREAM, &durable, filter.clone());
        if let Some(threshold) = inactive_threshold {
            spec = spec.inactive_threshold(threshold);
        }
        let mut c = t.consumer(&spec).await.expect("consumer");
        let start = Instant::now();
        match tokio::time::timeout(Duration::from_secs(5), c.next()).await {
            Ok(Ok(d)) => d.ack().await.expect("ack"),
            Ok(Err(e)) => panic!("`{durable}`: {e} after {:?}", start.elapsed()),
            Err(_) => {
                let gone = matches!(
                    t.delete_consumer(STREAM, &durable).await,
                    Err(TransportError::ConsumerNotFound { .. })
                );
                panic!("`{durable}`: nothing within 5 s (removed by the server: {gone})");
            }
        }
        firsts.push(start.elapsed());
        drop(c);
        t.delete_consumer(STREAM, &durable)
            .await
            .expect("the consumer outlived its first pull");
    }
    firsts.sort();
    firsts
}

/// A consumer created across the gateway gets what is stored at once: its first pull request is
/// sent once a request on the pull's subject reached the consumer leader. Published right after
/// the creation, 1-2 in 300 reached nobody without a word (the leader's interest had not crossed
/// the gateway yet) and were sent again only after two missed heartbeats (2.1 s with the default
/// 1 s); this test failed in 1 of 2 runs so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_consumers_across_a_gateway_get_their_first_delivery_at_once() {
    let firsts = first_deliveries(200, None).await;
    let (median, slowest) = (firsts[firsts.len() / 2], firsts[firsts.len() - 1]);
    // A request lost on its way costs a quarter of a heartbeat (250 ms), not two heartbeats.
    assert!(
        slowest < Duration::from_secs(1),
        "slowest first delivery {slowest:?} (median {median:?})"
    );
}

/// A lost pull request is sent again after two missed idle heartbeats; for a consumer with a
/// short inactive threshold that must happen within the threshold, or the server removes the
/// consumer under the handle waiting on it (`inactive_consumer_is_removed` failed that way in CI,
/// before pulls waited for the leader): its heartbeat is a quarter of the threshold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_consumers_with_a_short_inactive_threshold_outlive_a_lost_first_pull() {
    let firsts = first_deliveries(60, Some(Duration::from_secs(1))).await;
    let slowest = firsts[firsts.len() - 1];
    assert!(slowest < Duration::from_secs(1), "slowest first delivery {slowest:?}");
}
