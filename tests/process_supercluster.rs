//! The command, waiter, process-manager, aggregation and correlation scenarios across a gateway:
//! on a super-cluster of three one-server clusters, each test in an account of its own on server
//! `b`, with every stream and bucket placed in cluster `A` (the runtime's
//! `tests/fixtures/supercluster.rs`, shared with its `nats_supercluster` tests). Commands,
//! replies, events, process records and timers all cross the gateway.

#[path = "../cim-integrate-runtime/tests/fixtures/supercluster.rs"]
#[allow(dead_code)]
mod supercluster;

mod process_scenarios;

use cim_integrate::transport::nats::NatsTransport;

async fn setup() -> (NatsTransport, ()) {
    let options = supercluster::on_b(supercluster::account());
    let transport = NatsTransport::connect(options).await.expect("connect to b");
    (transport, ())
}

scenarios!(setup: setup, tokio: [flavor = "multi_thread", worker_threads = 2]);

/// Where the onboarding process's streams and buckets land: every one of the account's streams
/// (events, commands' answers, the process's records and timers) is in cluster `A`, across the
/// gateway from the host on `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_keeps_its_streams_and_buckets_in_the_placed_cluster() {
    use futures::TryStreamExt as _;
    let (t, ()) = setup().await;
    process_scenarios::onboarding_process_runs_to_its_end(t.clone()).await;
    let names: Vec<String> = t.jetstream().stream_names().try_collect().await.expect("stream names");
    assert!(names.iter().any(|n| n == "KV_cim_pm_onboarding"), "{names:?}");
    for name in &names {
        assert_eq!(supercluster::cluster_of(&t, name).await.as_deref(), Some("A"), "{name}");
    }
}
