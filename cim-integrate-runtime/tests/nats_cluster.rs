//! The three-node cluster harness: an R3 stream survives the loss of its leader, and a killed node
//! rejoins after a restart.

use async_nats::jetstream;
use cim_integrate_runtime::testing::{CLUSTER_SIZE, NatsCluster};
use std::time::{Duration, Instant};

#[path = "fixtures/consumer/next_info.rs"]
mod next_info;
use next_info::next_info;
#[path = "fixtures/indexer.rs"]
#[allow(dead_code)]
mod indexer;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn r3_stream_fails_over_and_the_killed_node_rejoins() {
    let started = Instant::now();
    let mut cluster = NatsCluster::start().await.expect("start cluster");
    assert_eq!(cluster.running(), (0..CLUSTER_SIZE).collect::<Vec<_>>());
    assert_eq!(cluster.urls().split(',').count(), CLUSTER_SIZE);
    for i in 0..CLUSTER_SIZE {
        assert_eq!(cluster.index_of(&cluster.server_name(i)), Some(i));
        assert!(cluster.urls().contains(&cluster.url(i)));
    }
    assert_eq!(cluster.index_of("n9"), None);
    assert_eq!(cluster.index_of("x"), None);
    let meta = cluster.meta_leader().await.expect("meta leader");
    assert!(meta < CLUSTER_SIZE);

    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(cluster.server_addrs())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "ORDERS".into(),
        subjects: vec!["orders.>".into()],
        num_replicas: 3,
        ..Default::default()
    })
    .await
    .expect("create R3 stream");
    let leader = cluster
        .wait_for_stream_leader("ORDERS", Duration::from_secs(10))
        .await
        .expect("stream leader");
    js.publish("orders.1", "one".into())
        .await
        .expect("publish")
        .await
        .expect("ack");

    // A consumer on the stream has a leader too, once its group elected one: the create's answer
    // can come before that.
    js.get_stream("ORDERS")
        .await
        .expect("stream")
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("reader".into()),
            ..Default::default()
        })
        .await
        .expect("consumer");
    let c = cluster
        .wait_for_consumer_leader("ORDERS", "reader", Duration::from_secs(10))
        .await
        .expect("consumer leader");
    assert!(c < CLUSTER_SIZE);

    cluster.kill(leader).expect("kill leader");
    assert!(!cluster.running().contains(&leader));
    let new_leader = cluster
        .wait_for_stream_leader("ORDERS", Duration::from_secs(15))
        .await
        .expect("new leader elected");
    assert_ne!(new_leader, leader);

    // Publishing goes on through a client that knows all three URLs.
    let ack = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match js.publish("orders.2", "two".into()).await {
                Ok(f) => match f.await {
                    Ok(ack) => return ack,
                    Err(e) => eprintln!("publish ack after failover: {e}"),
                },
                Err(e) => eprintln!("publish after failover: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("publish after failover");
    assert_eq!(ack.sequence, 2);

    cluster.restart(leader).await.expect("restart the killed node");
    assert_eq!(cluster.running().len(), CLUSTER_SIZE);
    // The restarted node caught up: it serves the stream's messages as a replica.
    let mut info = js
        .get_stream("ORDERS")
        .await
        .expect("stream")
        .info()
        .await
        .expect("info")
        .clone();
    let deadline = Instant::now() + Duration::from_secs(15);
    let restarted = cluster.server_name(leader);
    loop {
        let cl = info.cluster.as_ref().expect("cluster info");
        let current = cl.leader.as_deref() == Some(restarted.as_str())
            || cl
                .replicas
                .iter()
                .any(|r| r.name == restarted && r.current && !r.offline);
        if current && info.state.messages == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{restarted} did not rejoin: {:?}",
            info.cluster
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        info = js
            .get_stream("ORDERS")
            .await
            .expect("stream")
            .info()
            .await
            .expect("info")
            .clone();
    }
    assert!(cluster.meta_leader().await.is_ok());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// A consumer leader that steps down may leave deliveries its successor does not know of, which
/// the successor hands out again as first deliveries. The consumer handle reports the step-down
/// (`DeliveryInfo::resumed` moves to the election, past what was stored before it), so the
/// handler de-duplication reads the marks of those messages, and only of those.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_leader_step_down_is_reported_as_a_resume() {
    use cim_integrate_runtime::Envelope;
    use cim_integrate_runtime::subject::{Subject, SubjectPattern};
    use cim_integrate_runtime::transport::nats::{NatsOptions, NatsTransport};
    use cim_integrate_runtime::transport::{ConsumerSpec, Deployment, StreamSpec, Transport};
    let cluster = NatsCluster::start().await.expect("start cluster");
    let mut options = NatsOptions::new(cluster.urls());
    options.deployment = Deployment::new().replicas(3);
    options.request_timeout = Duration::from_secs(2);
    let t = NatsTransport::connect(options).await.expect("connect");
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let spec = ConsumerSpec::new(
        "DOCUMENT_EVENTS",
        "stepping",
        SubjectPattern::new("document.>").expect("pattern"),
    );
    let mut c = t.consumer(&spec).await.expect("consumer");
    let publish = |n: u32| {
        let t = t.clone();
        async move {
            let e = Envelope::root(
                Subject::new("document.created").expect("subject"),
                bytes::Bytes::from(format!("{{\"n\":{n}}}")),
            );
            tokio::time::timeout(Duration::from_secs(30), async {
                while let Err(e) = t.publish_and_wait((&e).into()).await {
                    eprintln!("publish: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            })
            .await
            .expect("published within 30 s");
        }
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish(1).await;
    let first = next_info(&mut c).await;
    assert!(first.resumed.expect("reported") < first.published);

    let old = cluster
        .wait_for_consumer_leader("DOCUMENT_EVENTS", "stepping", Duration::from_secs(10))
        .await
        .expect("consumer leader");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cluster.consumer_leader("DOCUMENT_EVENTS", "stepping").await.ok() == Some(old) {
        assert!(Instant::now() < deadline, "the consumer leader did not change");
        let _ = cluster
            .client()
            .request("$JS.API.CONSUMER.LEADER.STEPDOWN.DOCUMENT_EVENTS.stepping", "".into())
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    publish(2).await;
    let second = next_info(&mut c).await;
    let resumed = second.resumed.expect("reported");
    assert!(
        resumed > first.published,
        "the step-down is a resume: {resumed:?} after {:?}",
        first.published
    );
    // At the election's time (from the advisory), not at the delivery that noticed it: the
    // second message, stored after the new leader took over, is counted by it.
    assert!(
        resumed < second.published,
        "resumed at the election, {resumed:?}, before the second message was stored, {:?}",
        second.published
    );
}

/// Publishing straight to the transport while the stream's leader dies: every publish is
/// acknowledged (the "no responders" of an election is waited out, not reported), each stored
/// once; and a subject no stream captures is still `NoStream` at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_rides_out_its_streams_election() {
    use cim_integrate_runtime::Envelope;
    use cim_integrate_runtime::subject::Subject;
    use cim_integrate_runtime::transport::nats::{NatsOptions, NatsTransport};
    use cim_integrate_runtime::transport::{Deployment, StreamSpec, Transport, TransportError};
    let mut cluster = NatsCluster::start().await.expect("start cluster");
    let mut options = NatsOptions::new(cluster.urls());
    options.deployment = Deployment::new().replicas(3);
    let t = NatsTransport::connect(options).await.expect("connect");
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let leader = cluster
        .wait_for_stream_leader("DOCUMENT_EVENTS", Duration::from_secs(10))
        .await
        .expect("stream leader");

    let started = Instant::now();
    let nowhere = t
        .publish_and_wait(Envelope::root(Subject::new("person.created").expect("subject"), "{}").into())
        .await
        .expect_err("no stream captures person.>");
    assert!(matches!(nowhere, TransportError::NoStream { .. }), "{nowhere:?}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "took {:?}",
        started.elapsed()
    );

    // One publish after another, each awaited, as a script or an example's root event does.
    let (stop_tx, mut stop) = tokio::sync::watch::channel(false);
    let publisher = tokio::spawn({
        let t = t.clone();
        async move {
            let mut sent = 0u64;
            let mut failures = Vec::new();
            while !*stop.borrow_and_update() {
                let e = Envelope::root(
                    Subject::new("document.created").expect("subject"),
                    bytes::Bytes::from(format!("{{\"n\":{sent}}}")),
                );
                let began = Instant::now();
                if let Err(e) = t.publish_and_wait((&e).into()).await {
                    failures.push(format!("publish {sent} after {:?}: {e}", began.elapsed()));
                }
                sent += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (sent, failures)
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    cluster.kill(leader).expect("kill the stream leader");
    let new_leader = cluster
        .wait_for_stream_leader("DOCUMENT_EVENTS", Duration::from_secs(30))
        .await
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).expect("stop");
    let (sent, failures) = publisher.await.expect("publisher");
    assert!(
        failures.is_empty(),
        "{} of {sent} publishes failed: {failures:#?}",
        failures.len()
    );
    let stored = indexer::stream_messages(&t, "DOCUMENT_EVENTS").await;
    assert_eq!(stored, Some(sent), "each publish stored once");
}
