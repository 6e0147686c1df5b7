//! A whole cluster of a super-cluster down while a host in another cluster keeps its streams
//! there, against real servers: three one-server clusters (`A`, `B`, `C`) joined by gateways,
//! started for this test alone (the shared super-cluster of `nats_supercluster.rs` stays up for
//! its cases). The host connects to `b` and places everything in cluster `A`, which is killed.

#[path = "fixtures/indexer.rs"]
#[allow(dead_code)]
mod indexer;

/// The shared super-cluster's configurations (its servers are not started here).
#[path = "fixtures/supercluster.rs"]
#[allow(dead_code)]
mod supercluster;

use cim_integrate_runtime::envelope::Envelope;
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::subject::Subject;
use cim_integrate_runtime::testing::{NatsServer, free_ports, wait_for_jetstream};
use cim_integrate_runtime::transport::nats::{NatsOptions, NatsTransport};
use cim_integrate_runtime::transport::{Deployment, Placement, Transport};
use std::time::Duration;

/// Three one-server clusters joined by gateways on fixed ports (a server restarted finds the
/// others, and they find it, where they were), each answering JetStream requests. Started again
/// (up to three times) if a port was taken before its server bound it.
async fn own_supercluster() -> Vec<NatsServer> {
    let mut last = String::new();
    for _ in 0..3 {
        match try_supercluster().await {
            Ok(servers) => return servers,
            Err(e) => last = e,
        }
    }
    panic!("the super-cluster did not start: {last}");
}

async fn try_supercluster() -> Result<Vec<NatsServer>, String> {
    let ports = free_ports(2 * supercluster::CLUSTERS.len()).map_err(|e| e.to_string())?;
    let mut servers = Vec::new();
    for config in supercluster::server_configs(&ports, "") {
        servers.push(
            NatsServer::start_with_config(&config)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for server in &servers {
        let client = async_nats::connect(server.url()).await.map_err(|e| e.to_string())?;
        if let Err(e) = wait_for_jetstream(&client, "$JS.API", Duration::from_secs(60)).await {
            let logs: Vec<String> = servers.iter().map(NatsServer::log_tail).collect();
            return Err(format!("{e}\n{}", logs.join("\n---\n")));
        }
    }
    Ok(servers)
}

fn created() -> Envelope {
    Envelope::root(Subject::new("document.created").expect("subject"), "{}").typed("DocumentCreated", "1.0")
}

/// Cluster `A`, which holds every stream and bucket of a host on `b`, goes down for longer than
/// a request's timeout and many pull heartbeats, and comes back: the host rides it out. What
/// was stored before is handled once; a publish during the outage either waits it out or fails
/// as unavailable (transient, never "no stream"); one after it is handled once, well within the
/// ack wait; nothing is dead-lettered and the host never stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_rides_out_an_outage_of_the_cluster_holding_its_streams() {
    let mut servers = own_supercluster().await;
    let mut o = NatsOptions::new(servers[1].url());
    o.deployment = Deployment::new().placement(Placement::cluster("A"));
    let t = NatsTransport::connect(o).await.expect("connect to b");
    let service = Service::builder(t.clone(), "search")
        .handler("search", indexer::indexer())
        .start()
        .await
        .expect("start on b, assets in A");
    indexer::publish_created(&t).await;
    indexer::handled(&service, 1, Duration::from_secs(20)).await;

    servers[0].kill().expect("kill cluster A");
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Its retries outlast the outage or it reports the cluster unavailable: either is right.
    let during = tokio::spawn({
        let t = t.clone();
        async move { t.publish_and_wait((&created()).into()).await }
    });
    // Longer than a request's timeout (5 s) and many pull heartbeats.
    tokio::time::sleep(Duration::from_secs(6)).await;
    servers[0]
        .restart()
        .await
        .expect("cluster A back, same ports and store");
    let back = tokio::time::Instant::now();

    let mut expected = 1;
    let during = during.await.expect("publish task");
    match &during {
        Ok(_) => expected += 1,
        Err(e) => assert!(e.is_transient(), "a publish during the outage: {e}"),
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Err(e) = t.publish_and_wait((&created()).into()).await {
        assert!(
            e.is_transient() && tokio::time::Instant::now() < deadline,
            "publishing after the outage: {e}\na: {}\nb: {}",
            servers[0].log_tail(),
            servers[1].log_tail()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    expected += 1;
    // Within the ack wait (30 s): a pull sent to `A` before its gateway to `b` was up lost what
    // `A` handed it in transit, and the events came back 30.5 s after the restart (2 runs of 3
    // on 2.9.10, before pulls waited for an answer of the consumer leader; 5.6 s since).
    indexer::handled(&service, expected, Duration::from_secs(20)).await;
    eprintln!(
        "the publish during the outage: {}; every event handled {:?} after cluster A was back",
        during.map_or_else(|e| e.to_string(), |_| "stored once A was back".to_owned()),
        back.elapsed()
    );
    let stats = service.handler_stats("search-indexer").expect("stats");
    assert_eq!((stats.succeeded, stats.dead_lettered), (expected, 0), "{stats:?}");
    service.shutdown(Duration::from_secs(5)).await;
    assert_eq!(indexer::stream_messages(&t, "DOCUMENT_EVENTS").await, Some(expected));
    assert_eq!(indexer::stream_messages(&t, "SEARCH_EVENTS").await, Some(expected));
}
