//! A service on a three-node JetStream cluster, with replicas from the deployment policy, while
//! the node leading its stream, its dedup bucket and its consumer is killed: nothing is lost,
//! nothing is handled twice, nothing is dead-lettered, and processing resumes within seconds.
//!
//! Fed by a foreign publisher (a plain async-nats client): events carry no CIM headers, only
//! `Nats-Msg-Id`, and the publisher sends again what was not acknowledged, as any careful
//! publisher does.

use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::service::{DEAD_LETTER_STREAM_NAME, Service};
use cim_integrate::testing::NatsCluster;
use cim_integrate::transport::Deployment;
use cim_integrate::transport::nats::{NatsOptions, NatsTransport};
use cim_integrate::{domain_event, handlers};
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[domain_event(subject = "orders.placed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OrderPlaced {
    pub n: u32,
}

/// Effects by order number, and when the last one happened.
#[derive(Default)]
struct Effects {
    counts: Mutex<HashMap<u32, u32>>,
    handled: AtomicUsize,
}

struct Fulfilment {
    effects: Arc<Effects>,
}

#[handlers(domain = "fulfilment")]
impl Fulfilment {
    #[subscribe("orders.placed", concurrency = 32)]
    async fn fulfil(&self, _ctx: &Context, event: OrderPlaced) -> Result<(), HandlerError> {
        *self.effects.counts.lock().unwrap().entry(event.n).or_default() += 1;
        self.effects.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

async fn transport(cluster: &NatsCluster) -> NatsTransport {
    let mut options = NatsOptions::new(cluster.urls());
    options.deployment = Deployment::new().replicas(3);
    options.request_timeout = Duration::from_secs(2);
    NatsTransport::connect(options).await.expect("connect")
}

/// Moves the leader of a stream (and of a consumer on it, if given) to `target` by step-downs.
async fn lead_from(
    cluster: &NatsCluster,
    client: &async_nats::Client,
    target: usize,
    stream: &str,
    consumer: Option<&str>,
) {
    for _ in 0..40 {
        let mut moved = true;
        if cluster.stream_leader(stream).await.ok() != Some(target) {
            moved = false;
            let _ = client
                .request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{stream}"), "".into())
                .await;
        }
        if let Some(c) = consumer
            && cluster.consumer_leader(stream, c).await.ok() != Some(target)
        {
            moved = false;
            let _ = client
                .request(format!("$JS.API.CONSUMER.LEADER.STEPDOWN.{stream}.{c}"), "".into())
                .await;
        }
        if moved {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("could not move the leaders of `{stream}` to node {target}");
}

async fn stream_messages(client: &async_nats::Client, stream: &str) -> u64 {
    let js = async_nats::jetstream::new(client.clone());
    for _ in 0..20 {
        if let Ok(mut s) = js.get_stream(stream).await
            && let Ok(info) = s.info().await
        {
            return info.state.messages;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("no info for stream `{stream}`");
}

/// Publishes `orders.placed` {n} for n in `range`, pipelined in windows, sending again (same
/// `Nats-Msg-Id`) whatever was not acknowledged.
async fn feed(client: async_nats::Client, range: std::ops::Range<u32>) {
    let js = async_nats::jetstream::new(client);
    let mut pending: Vec<u32> = range.collect();
    while !pending.is_empty() {
        let mut failed = Vec::new();
        for chunk in pending.chunks(200) {
            let mut acks = Vec::with_capacity(chunk.len());
            for &n in chunk {
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Nats-Msg-Id", format!("order-{n}").as_str());
                let payload = format!(r#"{{"version":"1.0","n":{n}}}"#);
                match js.publish_with_headers("orders.placed", headers, payload.into()).await {
                    Ok(ack) => acks.push((n, ack)),
                    Err(_) => failed.push(n),
                }
            }
            for (n, ack) in acks {
                if tokio::time::timeout(Duration::from_secs(5), ack)
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    failed.push(n);
                }
            }
            // A steady stream, not one burst: the kill lands mid-run.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !failed.is_empty() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        pending = failed;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leading_node_loses_nothing_and_runs_nothing_twice() {
    const EVENTS: u32 = 20_000;
    let mut cluster = NatsCluster::start().await.expect("cluster");
    let t = transport(&cluster).await;
    let effects = Arc::new(Effects::default());
    let service = Service::builder(t.clone(), "fulfilment")
        .register(Fulfilment {
            effects: effects.clone(),
        })
        .start()
        .await
        .expect("start");
    let client = cluster.client().clone();
    // The stream, the dedup bucket and the consumer are led by one node: the one we kill.
    let target = cluster.stream_leader("ORDERS_EVENTS").await.expect("stream leader");
    lead_from(&cluster, &client, target, "ORDERS_EVENTS", Some("fulfilment-fulfil")).await;
    lead_from(&cluster, &client, target, "KV_cim_dedup_fulfilment", None).await;
    for (stream, replicas) in [
        ("ORDERS_EVENTS", 3),
        ("KV_cim_dedup_fulfilment", 3),
        (DEAD_LETTER_STREAM_NAME, 3),
    ] {
        let info = async_nats::jetstream::new(client.clone())
            .get_stream(stream)
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .clone();
        assert_eq!(
            info.config.num_replicas, replicas,
            "{stream}: replicas from the deployment"
        );
    }

    // The publisher talks to the nodes that stay up.
    let survivors: Vec<async_nats::ServerAddr> = (0..3)
        .filter(|i| *i != target)
        .map(|i| cluster.url(i).parse().expect("addr"))
        .collect();
    let feeder_client = async_nats::connect(survivors).await.expect("publisher");
    let feeder = tokio::spawn(feed(feeder_client, 0..EVENTS));

    let wait_for = |n: usize, within: Duration| {
        let effects = effects.clone();
        async move {
            let deadline = Instant::now() + within;
            while effects.handled.load(Ordering::SeqCst) < n {
                assert!(
                    Instant::now() < deadline,
                    "handled {} of {n} within {within:?}",
                    effects.handled.load(Ordering::SeqCst)
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let begun = Instant::now();
    wait_for(5_000, Duration::from_secs(60)).await;
    eprintln!("5000 handled in {:?}", begun.elapsed());
    let at_kill = effects.handled.load(Ordering::SeqCst);
    cluster.kill(target).expect("kill");
    let killed = Instant::now();
    // More than could have been buffered before the kill: processing resumed.
    wait_for(at_kill + 300, Duration::from_secs(30)).await;
    let resumed = killed.elapsed();

    eprintln!("resumed {resumed:?} after the kill");
    feeder.await.expect("publisher");
    eprintln!(
        "all published after {:?}; handled {}",
        begun.elapsed(),
        effects.handled.load(Ordering::SeqCst)
    );
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let distinct = effects.counts.lock().unwrap().len();
        if distinct == EVENTS as usize {
            break;
        }
        assert!(Instant::now() < deadline, "only {distinct} of {EVENTS} orders handled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let redeliveries of lost acknowledgements come back and be recognised as duplicates.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let twice: Vec<(u32, u32)> = effects
        .counts
        .lock()
        .unwrap()
        .iter()
        .filter(|(_, c)| **c > 1)
        .map(|(n, c)| (*n, *c))
        .collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    let dead = stream_messages(&client, DEAD_LETTER_STREAM_NAME).await;
    assert_eq!(dead, 0, "dead letters after a node failure");
    assert!(
        resumed < Duration::from_secs(10),
        "processing resumed {resumed:?} after the kill"
    );
    service.shutdown(Duration::from_secs(5)).await;
    eprintln!("resumed {resumed:?} after the kill; {EVENTS} handled once each; 0 dead letters");
}
