//! The command, waiter, process-manager, aggregation and correlation scenarios through a leaf
//! node: a hub with JetStream domain `hub` and a leaf node with a JetStream of its own, as an
//! edge site has; each test's host connects to the leaf and addresses the hub's domain
//! (`NATS_JS_DOMAIN=hub`), so commands, replies, events, process records and timers all go
//! through the leaf connection.

mod process_scenarios;

use cim_integrate::testing::{self, NatsServer};
use cim_integrate::transport::nats::{NatsOptions, NatsTransport};

/// A transport on the leaf node addressing the hub's domain; the servers are the guard.
async fn setup() -> (NatsTransport, (NatsServer, NatsServer)) {
    let (hub, leaf) = testing::hub_and_leaf().await.expect("hub and leaf");
    let mut options = NatsOptions::new(leaf.url());
    options.js_domain = Some("hub".to_owned());
    let transport = NatsTransport::connect(options).await.expect("connect to the leaf");
    (transport, (hub, leaf))
}

scenarios!(setup: setup, tokio: [flavor = "multi_thread", worker_threads = 2]);

/// Where the onboarding process's streams and buckets land: on the hub's JetStream (among them
/// the process's records, `KV_cim_pm_onboarding`), none on the leaf node's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_process_keeps_its_streams_and_buckets_on_the_hub() {
    use futures::TryStreamExt as _;
    let (t, (hub, leaf)) = setup().await;
    process_scenarios::onboarding_process_runs_to_its_end(t.clone()).await;
    let names = |server: &NatsServer| {
        let url = server.url();
        async move {
            let own = NatsTransport::connect(NatsOptions::new(url)).await.expect("connect");
            own.jetstream()
                .stream_names()
                .try_collect::<Vec<String>>()
                .await
                .expect("stream names")
        }
    };
    let on_hub = names(&hub).await;
    assert!(on_hub.iter().any(|n| n == "KV_cim_pm_onboarding"), "{on_hub:?}");
    assert_eq!(names(&leaf).await, Vec::<String>::new());
}
