//! Interoperability with plain NATS clients, key-value buckets on the server, and `AnyTransport`
//! over NATS, on a private nats-server.

use bytes::Bytes;
use cim_integrate_runtime::Envelope;
use cim_integrate_runtime::headers;
use cim_integrate_runtime::subject::{Subject, SubjectPattern};
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::any::AnyTransport;
use cim_integrate_runtime::transport::nats::NatsTransport;
use cim_integrate_runtime::transport::{
    Consumer, ConsumerSpec, KeyValue, KvError, KvSpec, StreamSpec, Transport, TransportError,
};
use futures::StreamExt;
use std::time::Duration;

const STREAM: &str = "DOCUMENT_EVENTS";

async fn setup() -> (NatsTransport, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    (t, server)
}

fn spec(durable: &str) -> ConsumerSpec {
    ConsumerSpec::new(STREAM, durable, SubjectPattern::new("document.>").expect("pattern"))
        .ack_wait(Duration::from_secs(1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_client_messages_are_consumed_with_stable_derived_ids() {
    let (t, server) = setup().await;
    let plain = async_nats::connect(server.url()).await.expect("plain client");
    let js = async_nats::jetstream::new(plain.clone());
    js.publish("document.created", Bytes::from_static(b"{\"title\":\"js\"}"))
        .await
        .expect("publish")
        .await
        .expect("ack");
    // a core publish is captured by the stream too
    plain
        .publish("document.updated", Bytes::from_static(b"{}"))
        .await
        .expect("core publish");
    plain.flush().await.expect("flush");

    let mut c = t.consumer(&spec("reader")).await.expect("consumer");
    let mut ids = Vec::new();
    for subject in ["document.created", "document.updated"] {
        let d = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("in time")
            .expect("next");
        assert_eq!(d.subject(), subject);
        assert!(d.headers().get(headers::MESSAGE_ID).is_none());
        let env = d.envelope().expect("envelope of a foreign message");
        assert!(env.is_derived());
        ids.push(*env.identity());
        drop(d); // redelivered after the ack wait
    }
    assert_ne!(ids[0], ids[1]);
    for expected in &ids {
        let d = tokio::time::timeout(Duration::from_secs(5), c.next())
            .await
            .expect("in time")
            .expect("next");
        assert_eq!(d.info().delivered, 2);
        assert_eq!(
            d.envelope().expect("envelope").identity(),
            expected,
            "same id on redelivery"
        );
        d.ack().await.expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_subscriber_sees_cim_headers() {
    let (t, server) = setup().await;
    let plain = async_nats::connect(server.url()).await.expect("plain client");
    let mut sub = plain.subscribe("document.>").await.expect("subscribe");
    // `flush` only writes the SUB to the socket; a request answered by the server on the same
    // connection proves it was processed before anything is published (a failure on 2.15.1 in
    // CI: the publish from the other connection arrived first and the subscriber saw nothing).
    plain
        .request("$JS.API.INFO", Bytes::new())
        .await
        .expect("a round trip after subscribing");

    let parent = Envelope::root(Subject::new("document.created").expect("s"), Bytes::from_static(b"{}"));
    let env = Envelope::caused_by(
        parent.identity(),
        Subject::new("document.indexed").expect("s"),
        &b"{\"v\":1}"[..],
    )
    .typed("DocumentIndexed", "2.0")
    .header("X-Tenant", "acme")
    .expect("header");
    let ack = t.publish_and_wait((&env).into()).await.expect("publish");
    assert_eq!((&*ack.stream, ack.sequence, ack.duplicate), (STREAM, 1, false));

    let m = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("in time")
        .expect("message");
    assert_eq!(m.subject.as_str(), "document.indexed");
    assert_eq!(&m.payload[..], b"{\"v\":1}");
    let h = m.headers.expect("headers");
    let sent = env.to_headers();
    for name in headers::IDENTITY_HEADERS {
        let got = h.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(got.as_deref(), sent.get(name), "header {name}");
        assert!(got.is_some(), "header {name} present");
    }
    assert_eq!(h.get("X-Tenant").map(|v| v.as_str()), Some("acme"));
    assert_eq!(
        h.get(headers::NATS_MSG_ID).map(|v| v.as_str()),
        Some(env.message_id().to_string().as_str())
    );
    assert_eq!(
        h.get(headers::CAUSATION_ID).map(|v| v.as_str()),
        Some(parent.message_id().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_consumer_ends_the_loop_with_an_error() {
    let (t, _server) = setup().await;
    let mut c = t.consumer(&spec("doomed")).await.expect("consumer");
    let waiting = tokio::spawn(async move { c.next().await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    t.delete_consumer(STREAM, "doomed").await.expect("delete");
    let r = tokio::time::timeout(Duration::from_secs(15), waiting)
        .await
        .expect("ends in time")
        .expect("join");
    assert!(matches!(r, Err(TransportError::ConsumerNotFound { .. })), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_on_the_server_interoperates_with_plain_clients() {
    let (t, server) = setup().await;
    let kv = t.key_value(&KvSpec::new("sagas").history(3)).await.expect("bucket");
    let r1 = kv
        .create("saga.1", Bytes::from_static(b"started"))
        .await
        .expect("create");
    let r2 = kv
        .update("saga.1", Bytes::from_static(b"step-1"), r1)
        .await
        .expect("update");
    assert!(matches!(
        kv.update("saga.1", Bytes::from_static(b"late"), r1).await,
        Err(KvError::Conflict { expected, .. }) if expected == r1
    ));
    assert!(matches!(
        kv.create("saga.1", Bytes::from_static(b"again")).await,
        Err(KvError::AlreadyExists { .. })
    ));

    // a plain client sees a regular KV bucket
    let plain = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("plain"));
    let store = plain.get_key_value("sagas").await.expect("plain bucket");
    assert_eq!(store.get("saga.1").await.expect("get").as_deref(), Some(&b"step-1"[..]));
    let r3 = store.put("saga.2", Bytes::from_static(b"x")).await.expect("plain put");
    assert!(r3 > r2);
    assert_eq!(kv.get("saga.2").await.expect("get").map(|e| e.revision), Some(r3));
    let mut stream = plain.get_stream("KV_sagas").await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.subjects, ["$KV.sagas.>"]);
    assert_eq!(config.max_messages_per_subject, 3);
    assert!(config.allow_rollup && config.deny_delete && config.allow_direct);

    kv.delete("saga.2", Some(r3)).await.expect("delete");
    assert_eq!(kv.keys().await.expect("keys"), ["saga.1"]);
    assert_eq!(store.get("saga.2").await.expect("plain get"), None);

    let err = t
        .key_value(&KvSpec::new("sagas").max_age(Duration::from_secs(60)))
        .await
        .expect_err("conflict");
    assert!(matches!(err, KvError::BucketConflict { .. }), "{err:?}");
}

/// A bucket of one replica is read with a direct get, which only its leader can answer: not with
/// the JetStream API's `STREAM.MSG.GET` (replicated buckets are: `tests/cluster_nats.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_reads_of_a_single_replica_bucket_take_a_direct_get() {
    let (t, server) = setup().await;
    let kv = t.key_value(&KvSpec::new("direct")).await.expect("bucket");
    let plain = async_nats::connect(server.url()).await.expect("plain");
    let count = |subject| cim_integrate_runtime::testing::count_messages(&plain, subject);
    let direct = count("$JS.API.DIRECT.GET.KV_direct.>").await.expect("listen");
    let api = count("$JS.API.STREAM.MSG.GET.KV_direct").await.expect("listen");
    let r1 = kv.create("k1", Bytes::from_static(b"one")).await.expect("create");
    let r2 = kv.create("k2", Bytes::from_static(b"two")).await.expect("create");
    kv.delete("k2", Some(r2)).await.expect("delete");
    let entry = kv.get("k1").await.expect("get").expect("k1");
    assert_eq!((&entry.value[..], entry.revision), (&b"one"[..], r1));
    assert_eq!(kv.get("k2").await.expect("get deleted"), None);
    assert_eq!(kv.get("never").await.expect("get absent"), None);
    assert!(matches!(kv.get("not a key").await, Err(KvError::InvalidKey(_))));
    plain.flush().await.expect("flush");
    tokio::time::sleep(Duration::from_millis(200)).await;
    use std::sync::atomic::Ordering::SeqCst;
    assert_eq!(
        (direct.load(SeqCst), api.load(SeqCst)),
        (3, 0),
        "(direct gets, API gets)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_ttl_expiry_on_the_server() {
    let (t, _server) = setup().await;
    let kv = t
        .key_value(&KvSpec::new("marks").max_age(Duration::from_secs(1)))
        .await
        .expect("bucket");
    for k in ["h1.e1", "h1.e2"] {
        kv.create(k, Bytes::from_static(b"done")).await.expect("create");
    }
    assert_eq!(kv.keys().await.expect("keys"), ["h1.e1", "h1.e2"]);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(kv.keys().await.expect("keys").is_empty());
    assert_eq!(kv.get("h1.e1").await.expect("get"), None);
    kv.create("h1.e1", Bytes::from_static(b"again"))
        .await
        .expect("create after expiry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_transport_over_nats() {
    let (t, _server) = setup().await;
    let any = AnyTransport::from(t);
    assert_eq!(any.kind(), "nats");
    let env = Envelope::root(Subject::new("document.created").expect("s"), Bytes::from_static(b"{}"));
    let ack = any.publish((&env).into()).await.expect("publish").await.expect("ack");
    assert_eq!(ack.sequence, 1);
    let mut c = any.consumer(&spec("any")).await.expect("consumer");
    let d = tokio::time::timeout(Duration::from_secs(5), c.next())
        .await
        .expect("in time")
        .expect("next");
    assert_eq!(d.envelope().expect("envelope").identity(), env.identity());
    d.ack().await.expect("ack");
    let kv = any.key_value(&KvSpec::new("any")).await.expect("bucket");
    kv.put("k", Bytes::from_static(b"v")).await.expect("put");
    assert_eq!(kv.keys().await.expect("keys"), ["k"]);
    any.flush().await.expect("flush");
}
