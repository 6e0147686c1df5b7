//! Fault tests on a private nats-server: restarts while publishing and while consuming, and a
//! consumer handle dropped mid-batch.

use bytes::Bytes;
use cim_integrate_runtime::Envelope;
use cim_integrate_runtime::subject::{Subject, SubjectPattern};
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::nats::{NatsOptions, NatsTransport};
use cim_integrate_runtime::transport::{Consumer, ConsumerSpec, OutboundMessage, StreamSpec, Transport};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[path = "fixtures/consumer/next_info.rs"]
mod next_info;
use next_info::next_info;
#[path = "fixtures/indexer.rs"]
#[allow(dead_code)]
mod indexer;
use indexer::stream_messages;

const STREAM: &str = "DOCUMENT_EVENTS";

async fn setup() -> (NatsTransport, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let mut options = NatsOptions::new(server.url());
    options.request_timeout = Duration::from_secs(2);
    options.pull_heartbeat = Duration::from_secs(1);
    options.pull_expires = Duration::from_secs(5);
    let t = NatsTransport::connect(options).await.expect("connect");
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    (t, server)
}

fn envelope(i: usize) -> Envelope {
    Envelope::root(
        Subject::new("document.created").expect("subject"),
        Bytes::from(format!("{{\"n\":{i}}}")),
    )
    .typed("DocumentCreated", "1.0")
}

async fn stored_messages(t: &NatsTransport) -> u64 {
    stream_messages(t, STREAM).await.expect("stream")
}

/// Publishes every message until each is acknowledged, re-publishing (same id) whatever failed.
/// Returns the acks that reported a duplicate.
async fn publish_all(t: NatsTransport, messages: Vec<OutboundMessage>, window: usize) -> u64 {
    publish_counting(t, messages, window, Arc::default()).await
}

async fn publish_counting(
    t: NatsTransport,
    messages: Vec<OutboundMessage>,
    window: usize,
    acked: Arc<AtomicUsize>,
) -> u64 {
    let mut queue: VecDeque<OutboundMessage> = messages.into();
    let mut in_flight = VecDeque::new();
    let mut duplicates = 0;
    while !queue.is_empty() || !in_flight.is_empty() {
        while in_flight.len() < window
            && let Some(m) = queue.pop_front()
        {
            match t.publish(m.clone()).await {
                Ok(ack) => in_flight.push_back((m, ack)),
                Err(e) => {
                    assert!(e.is_transient(), "{e:?}");
                    queue.push_front(m);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    break;
                }
            }
        }
        if let Some((m, ack)) = in_flight.pop_front() {
            match ack.await {
                Ok(ack) => {
                    duplicates += u64::from(ack.duplicate);
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    assert!(e.is_transient(), "{e:?}");
                    queue.push_back(m);
                }
            }
        }
    }
    duplicates
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_while_publishing_loses_nothing() {
    let (t, mut server) = setup().await;
    const N: usize = 20_000;
    let messages: Vec<OutboundMessage> = (0..N).map(|i| OutboundMessage::from(envelope(i))).collect();
    let acked = Arc::new(AtomicUsize::new(0));
    let publisher = tokio::spawn(publish_counting(t.clone(), messages.clone(), 200, acked.clone()));
    // restart while the publisher is busy
    while acked.load(Ordering::Relaxed) < N / 10 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.restart().await.expect("restart");
    let at_restart = acked.load(Ordering::Relaxed);
    assert!(at_restart < N, "the publisher finished before the restart");
    let duplicates = tokio::time::timeout(Duration::from_secs(60), publisher)
        .await
        .expect("publisher done")
        .expect("join");
    assert_eq!(stored_messages(&t).await, N as u64, "every message stored exactly once");
    // the same ids again, now that the server is back: all are duplicates, nothing new is stored
    let again = publish_all(t.clone(), messages[..200].to_vec(), 50).await;
    assert_eq!(again, 200);
    assert_eq!(stored_messages(&t).await, N as u64);
    eprintln!("restarted after {at_restart} acks; duplicate acks across the restart: {duplicates}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_while_consuming_loses_nothing() {
    let (t, mut server) = setup().await;
    const N: usize = 600;
    let messages: Vec<OutboundMessage> = (0..N).map(|i| OutboundMessage::from(envelope(i))).collect();
    let ids: HashSet<String> = messages.iter().filter_map(|m| m.msg_id().map(str::to_owned)).collect();
    assert_eq!(publish_all(t.clone(), messages, 200).await, 0);

    let spec = ConsumerSpec::new(STREAM, "reader", SubjectPattern::new("document.>").expect("pattern"))
        .ack_wait(Duration::from_secs(2));
    let mut c = t.consumer(&spec).await.expect("consumer");
    let mut seen: HashMap<String, u32> = HashMap::new();
    let mut restarted = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.len() < N {
        let d = tokio::time::timeout_at(deadline, c.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} consumed", seen.len()))
            .expect("the consumer survives the restart");
        let id = d.envelope().expect("envelope").message_id().to_string();
        *seen.entry(id).or_default() += 1;
        // Acks lost in the restart just mean a redelivery.
        let _ = d.ack().await;
        if !restarted && seen.len() == N / 4 {
            server.restart().await.expect("restart");
            restarted = true;
        }
    }
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), ids);
    let redelivered = seen.values().filter(|&&n| n > 1).count();
    eprintln!("messages delivered more than once across the restart: {redelivered}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_dropped_mid_batch_is_redelivered_to_a_new_handle() {
    let (t, _server) = setup().await;
    const N: usize = 20;
    let messages: Vec<OutboundMessage> = (0..N).map(|i| OutboundMessage::from(envelope(i))).collect();
    publish_all(t.clone(), messages, 20).await;
    let spec = ConsumerSpec::new(STREAM, "worker", SubjectPattern::new("document.>").expect("pattern"))
        .ack_wait(Duration::from_secs(1));
    {
        let mut c = t.consumer(&spec).await.expect("consumer");
        for _ in 0..2 {
            c.next().await.expect("next").ack().await.expect("ack");
        }
        let _held = (c.next().await.expect("next"), c.next().await.expect("next"));
        // handle and two unacknowledged deliveries dropped here, with more prefetched
    }
    let mut c = t.consumer(&spec).await.expect("new handle");
    let mut got = Vec::new();
    while got.len() < N - 2 {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("in time")
            .expect("next");
        got.push((d.info().stream_sequence, d.info().delivered));
        d.ack().await.expect("ack");
    }
    got.sort_unstable();
    let seqs: Vec<u64> = got.iter().map(|g| g.0).collect();
    assert_eq!(seqs, (3..=N as u64).collect::<Vec<_>>());
    assert_eq!(got[0], (3, 2));
    assert_eq!(got[1], (4, 2));
    assert!(
        tokio::time::timeout(Duration::from_secs(2), c.next()).await.is_err(),
        "nothing more"
    );
}

/// The default de-duplication (no mark read on a first delivery to a durable older than the
/// message) through a server restart mid-drain: acknowledgements and mark writes lost in the
/// restart bring redeliveries, which are checked, so every message runs exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_through_server_restart_runs_each_message_once() {
    use cim_integrate_runtime::handler::{Context, HandlerOptions, Registration};
    use cim_integrate_runtime::service::Service;
    use std::sync::Mutex;
    let (t, mut server) = setup().await;
    const N: usize = 600;
    let runs: Arc<Mutex<HashMap<String, u32>>> = Arc::default();
    let registration = {
        let runs = runs.clone();
        Registration::new(
            "once",
            SubjectPattern::new("document.created").expect("pattern"),
            "DocumentCreated",
            |b: &[u8]| Ok::<_, std::convert::Infallible>(b.to_vec()),
            move |ctx: Context, _: Vec<u8>| {
                let runs = runs.clone();
                async move {
                    *runs
                        .lock()
                        .expect("lock")
                        .entry(ctx.message_id().to_string())
                        .or_default() += 1;
                    Ok(())
                }
            },
        )
        .with_options(HandlerOptions {
            ack_wait: Duration::from_secs(2),
            ..HandlerOptions::default()
        })
    };
    let start = || {
        Service::builder(t.clone(), "faults")
            .dedup_clock_margin(Duration::ZERO)
            .handler("search", registration.clone())
            .start()
    };
    // The durable exists before the messages are stored: their first deliveries are not checked.
    start()
        .await
        .expect("create the durable")
        .shutdown(Duration::from_secs(5))
        .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let messages: Vec<OutboundMessage> = (0..N).map(|i| OutboundMessage::from(envelope(i))).collect();
    assert_eq!(publish_all(t.clone(), messages, 200).await, 0);
    let svc = start().await.expect("start");
    let handled = || runs.lock().expect("lock").len();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while handled() < N / 4 {
        assert!(tokio::time::Instant::now() < deadline, "only {} handled", handled());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    server.restart().await.expect("restart");
    // Everything handled, and nothing left unacknowledged on the durable.
    loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {N} handled",
            handled()
        );
        if handled() == N
            && let Ok(s) = t.jetstream().get_stream(STREAM).await
            && let Ok(info) = s.consumer_info("search-once").await
            && info.num_pending == 0
            && info.num_ack_pending == 0
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let stats = svc.handler_stats("search-once").expect("stats");
    svc.shutdown(Duration::from_secs(5)).await;
    let twice: Vec<_> = runs
        .lock()
        .expect("lock")
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(id, _)| id.clone())
        .collect();
    assert!(twice.is_empty(), "ran more than once: {twice:?}");
    eprintln!(
        "redeliveries recognised as duplicates across the restart: {}",
        stats.duplicates
    );
}

/// A server that lost its JetStream state under a running service (a container restarted
/// without its volume; memory storage after a restart; streams deleted by hand): the service
/// provisions its streams, consumers and buckets again as it did when it started, and goes on.
/// An event stored afterwards is handled (its de-duplication bucket made again), its handler's
/// publish into a domain it had provisioned before is stored (that stream made again), and the
/// host's status is written again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_lost_its_jetstream_state_is_provisioned_again() {
    use cim_integrate_runtime::handler::{Context, HandlerError, Registration};
    use cim_integrate_runtime::service::{HOSTS_BUCKET, Service};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (t, mut server) = setup().await;
    let handled = Arc::new(AtomicUsize::new(0));
    let registration = {
        let handled = handled.clone();
        Registration::new(
            "lost",
            SubjectPattern::new("document.created").expect("pattern"),
            "DocumentCreated",
            |b: &[u8]| Ok::<_, std::convert::Infallible>(b.to_vec()),
            move |ctx: Context, _: Vec<u8>| {
                let handled = handled.clone();
                async move {
                    let subject = Subject::new("workflow.started").map_err(HandlerError::permanent)?;
                    ctx.publish_bytes(&subject, "WorkflowStarted", "1.0", "{}").await?;
                    handled.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            },
        )
    };
    let svc = Service::builder(t.clone(), "faults")
        .status_interval(Some(Duration::from_millis(300)))
        .handler("search", registration)
        .start()
        .await
        .expect("start");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let wait_for = |what: &str, ok: bool| {
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within 60 s");
        ok
    };
    t.publish_and_wait(OutboundMessage::from(envelope(0)))
        .await
        .expect("publish");
    while !wait_for("the first event handled", handled.load(Ordering::SeqCst) == 1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stream_messages(&t, "WORKFLOW_EVENTS").await, Some(1));

    server.restart_empty().await.expect("restart with an empty store");
    assert_eq!(stream_messages(&t, "WORKFLOW_EVENTS").await, None, "the store is empty");
    // The event stream comes back when the handler's consumer finds it gone; until then nothing
    // captures the subject.
    let created = envelope(1);
    while let Err(e) = t.publish_and_wait(OutboundMessage::from(&created)).await {
        assert!(wait_for("the event stream provisioned again", e.is_transient()), "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    while !wait_for("the event after the loss handled", handled.load(Ordering::SeqCst) == 2) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The follow-up is stored in its stream, made again; the buckets are back.
    assert_eq!(stream_messages(&t, "WORKFLOW_EVENTS").await, Some(1));
    assert!(stream_messages(&t, "KV_cim_dedup_faults").await.is_some_and(|n| n >= 1));
    let hosts = format!("KV_{HOSTS_BUCKET}");
    while !wait_for(
        "the host status written again",
        stream_messages(&t, &hosts).await.is_some(),
    ) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stats = svc.handler_stats("search-lost").expect("stats");
    assert_eq!((stats.succeeded, stats.dead_lettered), (2, 0), "{stats:?}");
    svc.shutdown(Duration::from_secs(5)).await;
}

/// A stream with no room (an operator's stream at its limits with the `new` discard policy; an
/// account at its JetStream quota answers the same way, 10002 instead of 10077) refuses a
/// publish as unavailable, transient: a handler that publishes into it is deferred, never
/// dead-lettered, and goes through once the operator makes room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_stream_defers_its_publishers_until_there_is_room() {
    use async_nats::jetstream::stream::{Config, DiscardPolicy};
    use cim_integrate_runtime::service::Service;
    let (t, _server) = setup().await;
    let mut index = t
        .jetstream()
        .create_stream(Config {
            name: "INDEX".into(),
            subjects: vec!["search.>".into()],
            max_messages: 1,
            discard: DiscardPolicy::New,
            ..Default::default()
        })
        .await
        .expect("the operator's stream");
    let indexed = || Envelope::root(Subject::new("search.indexed").expect("subject"), "{}");
    t.publish_and_wait(indexed().into()).await.expect("the first fits");
    let full = t.publish_and_wait(indexed().into()).await.expect_err("no room");
    assert!(full.is_transient(), "{full:?}");
    assert!(full.to_string().contains("lack of room"), "{full}");

    let svc = Service::builder(t.clone(), "faults")
        .handler("search", indexer::indexer())
        .start()
        .await
        .expect("start");
    t.publish_and_wait(OutboundMessage::from(envelope(0)))
        .await
        .expect("publish");
    indexer::deferred_until(|| svc.handler_stats("search-indexer").expect("stats"), async {
        index.purge().await.expect("the operator makes room");
    })
    .await;
    assert_eq!(
        index.info().await.expect("info").state.messages,
        1,
        "the handler's event stored"
    );
    assert_eq!(
        stream_messages(&t, cim_integrate_runtime::service::DEAD_LETTER_STREAM_NAME)
            .await
            .unwrap_or(0),
        0
    );
    svc.shutdown(Duration::from_secs(5)).await;
}

/// An account at its JetStream storage quota refuses a publish as unavailable (transient, "no
/// room"), and takes it again once room is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_at_its_quota_refuses_publishes_as_transient() {
    let server = NatsServer::start_with_config(
        "accounts { A { jetstream { max_file: 20000, max_mem: 20000 }, users: [ { user: u, password: p } ] } }",
    )
    .await
    .expect("start nats-server");
    let t = NatsTransport::connect(NatsOptions::new(server.url().replace("nats://", "nats://u:p@")))
        .await
        .expect("connect");
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let big = Bytes::from(format!("{{\"text\":\"{}\"}}", "x".repeat(3000)));
    let event = || Envelope::root(Subject::new("document.created").expect("subject"), big.clone());
    let mut stored = 0;
    let refused = loop {
        match t.publish_and_wait(event().into()).await {
            Ok(_) => stored += 1,
            Err(e) => break e,
        }
        assert!(stored < 100, "the quota never applied");
    };
    assert!(refused.is_transient(), "{refused:?}");
    assert!(refused.to_string().contains("lack of room"), "{refused}");
    t.jetstream()
        .get_stream(STREAM)
        .await
        .expect("stream")
        .purge()
        .await
        .expect("purge");
    t.publish_and_wait(event().into()).await.expect("room again");
}

/// An account at its JetStream limits on assets (`max_streams`, `max_consumers`): a handler
/// publishing into a domain whose stream cannot be created is deferred, saying which limit (not
/// "no stream captures the subject"), never dead-lettered, and goes through once the operator
/// raises the limit; a stream or consumer refused for a limit is `LimitReached`, which
/// provisioning reports at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_at_its_limit_of_streams_defers_and_says_which_limit() {
    use cim_integrate_runtime::service::Service;
    use cim_integrate_runtime::transport::TransportError;
    let config = |streams: u32| {
        format!(
            "accounts {{ A {{ jetstream {{ max_file: 64M, max_mem: 64M, max_streams: {streams}, max_consumers: 1 }}, users: [ {{ user: u, password: p }} ] }} }}"
        )
    };
    let mut server = NatsServer::start_with_config(&config(3))
        .await
        .expect("start nats-server");
    let mut o = NatsOptions::new(server.url().replace("nats://", "nats://u:p@"));
    o.request_timeout = Duration::from_secs(2);
    let t = NatsTransport::connect(o).await.expect("connect");
    // Three streams: the dedup bucket, the dead letters, the handler's domain.
    let svc = Service::builder(t.clone(), "limits")
        .status_interval(None)
        .handler("search", indexer::indexer())
        .start()
        .await
        .expect("start");

    let refused = t
        .ensure_stream(&StreamSpec::for_domain("person", None).expect("spec"))
        .await
        .expect_err("a fourth stream");
    assert!(
        matches!(&refused, TransportError::LimitReached { detail } if detail.contains("PERSON_EVENTS") && detail.contains("10027")),
        "{refused:?}"
    );
    assert!(refused.is_transient() && refused.needs_operator(), "{refused:?}");
    assert!(refused.to_string().contains("max_streams"), "{refused}");
    let second = t
        .consumer(&ConsumerSpec::new(
            STREAM,
            "second",
            SubjectPattern::new("document.>").expect("pattern"),
        ))
        .await
        .map(|_| ())
        .expect_err("a second consumer on the stream");
    assert!(
        matches!(&second, TransportError::LimitReached { detail } if detail.contains("consumer `second`")),
        "{second:?}"
    );

    indexer::publish_created(&t).await;
    indexer::deferred_until(
        || svc.handler_stats("search-indexer").expect("stats"),
        indexer::reconfigure(&mut server, &config(4)),
    )
    .await;
    assert_eq!(stream_messages(&t, "SEARCH_EVENTS").await, Some(1), "published once");
    svc.shutdown(Duration::from_secs(5)).await;
}

/// A read while the server is down is unavailability (transient), never "not found", on both
/// read paths: the direct get of a bucket of one replica and the leader's `STREAM.MSG.GET` (a
/// bucket of one replica that disallows direct gets, as a plain client may make one). It fails
/// after its own request timeout, not after a request timeout more for each question asked
/// beside it (whether the bucket is gone, how many replicas it has: a read waited for up to three
/// timeouts one after the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kv_reads_while_the_server_is_down_are_transient() {
    use cim_integrate_runtime::transport::{KeyValue, KvSpec};
    let (t, mut server) = setup().await;
    let direct = t.key_value(&KvSpec::new("reads")).await.expect("bucket");
    let js = t.jetstream();
    js.create_stream(async_nats::jetstream::stream::Config {
        name: "KV_leader_reads".into(),
        subjects: vec!["$KV.leader_reads.>".into()],
        max_messages_per_subject: 1,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: false,
        discard: async_nats::jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .expect("a bucket without direct gets");
    let leader = t.key_value(&KvSpec::new("leader_reads")).await.expect("bucket");
    for kv in [&direct, &leader] {
        kv.create("k", Bytes::from_static(b"v")).await.expect("create");
    }
    server.stop().await.expect("stop");
    for kv in [&direct, &leader] {
        let started = std::time::Instant::now();
        let err = kv.get("k").await.expect_err("no server");
        assert!(err.is_transient(), "{err:?}");
        // The request timeout (2 s) and the bounded check whether the bucket is gone (0.5 s);
        // the check waited a whole request timeout before: 4 s.
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(3_300),
            "a read during the outage took {took:?}"
        );
    }
    server.restart().await.expect("restart");
    for kv in [&direct, &leader] {
        let mut value = None;
        for _ in 0..100 {
            match kv.get("k").await {
                Ok(entry) => {
                    value = entry.map(|e| e.value);
                    break;
                }
                Err(e) => {
                    assert!(e.is_transient(), "{e:?}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        assert_eq!(value.as_deref(), Some(&b"v"[..]));
    }
}

/// A server that loses the counts of deliveries (a consumer leader dying before it replicated
/// them, a server killed before writing them) hands those messages out again as *first*
/// deliveries. The consumer tells the handler de-duplication when that may have happened
/// (`DeliveryInfo::resumed`): from its opening, and again after every interruption. Here a
/// restart of the server interrupts the pull: a message stored before it is no longer taken as
/// one nobody had, and one stored afterwards, with nothing in between, is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consumer_reports_when_delivery_counts_may_have_been_lost() {
    let (t, mut server) = setup().await;
    let spec = ConsumerSpec::new(STREAM, "resumes", SubjectPattern::new("document.>").expect("pattern"));
    let mut c = t.consumer(&spec).await.expect("consumer");
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish_all(t.clone(), vec![OutboundMessage::from(envelope(1))], 1).await;
    let before = next_info(&mut c).await;
    let opened = before.resumed.expect("NATS reports when the consumer resumed");
    assert!(opened < before.published, "opened before the message was stored");

    server.restart().await.expect("restart");
    assert_eq!(
        publish_all(t.clone(), vec![OutboundMessage::from(envelope(2))], 1).await,
        0
    );
    let after = next_info(&mut c).await;
    let resumed = after.resumed.expect("resumed");
    assert!(
        resumed > before.published,
        "after the interruption, {resumed:?} is later than what was stored before it ({:?})",
        before.published
    );
    // No trouble since: the next message is stored after the last resume.
    tokio::time::sleep(Duration::from_millis(20)).await;
    publish_all(t.clone(), vec![OutboundMessage::from(envelope(3))], 1).await;
    let later = next_info(&mut c).await;
    assert_eq!(later.resumed, Some(resumed), "no interruption since");
    assert!(later.published > resumed);
}

/// A service whose server is gone still shuts down within its bounds: the grace for in-flight
/// handlers, at most 2 s more for the host status heartbeat's delete (which now runs at shutdown),
/// and the flush's `grace` (at least 2 s); the heartbeat does not run on after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_with_the_server_gone_is_bounded() {
    use cim_integrate_runtime::handler::Registration;
    use cim_integrate_runtime::service::Service;
    let (t, mut server) = setup().await;
    let registration = Registration::new(
        "idle",
        SubjectPattern::new("document.created").expect("pattern"),
        "DocumentCreated",
        |b: &[u8]| Ok::<_, std::convert::Infallible>(b.to_vec()),
        |_ctx, _: Vec<u8>| async { Ok(()) },
    );
    let svc = Service::builder(t.clone(), "gone")
        .status_interval(Some(Duration::from_millis(100)))
        .handler("search", registration)
        .start()
        .await
        .expect("start");
    // At least one status written, so that the heartbeat has a document to delete.
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.stop().await.expect("stop");
    let grace = Duration::from_secs(3);
    let began = tokio::time::Instant::now();
    svc.shutdown(grace).await;
    let took = began.elapsed();
    // grace + 2 s for the heartbeat + grace for the flush, and a second of slack.
    assert!(took < grace * 2 + Duration::from_secs(3), "shutdown took {took:?}");
}

/// JetStream not enabled, as a new user may run nats-server (no `-js`) or configure an account
/// (no `jetstream: enabled`): provisioning says so at once, naming the fix, instead of waiting
/// a minute for what it took to be an election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_not_enabled_is_reported_at_once() {
    use cim_integrate_runtime::service::Service;
    use cim_integrate_runtime::transport::TransportError;
    use std::time::Instant;
    let no_js = NatsServer::start_without_jetstream().await.expect("start nats-server");
    let no_account_js = NatsServer::start_with_config("accounts { A { users: [ { user: u, password: p } ] } }")
        .await
        .expect("start nats-server");
    for url in [no_js.url(), no_account_js.url().replace("nats://", "nats://u:p@")] {
        let t = NatsTransport::connect(NatsOptions::new(&url)).await.expect("connect");
        let began = Instant::now();
        let e = t
            .ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
            .await
            .expect_err("no JetStream");
        assert!(matches!(e, TransportError::JetStreamDisabled { .. }), "{url}: {e:?}");
        assert!(e.to_string().contains("-js"), "names the fix: {e}");
        let noop = cim_integrate_runtime::handler::Registration::new(
            "noop",
            SubjectPattern::new("document.created").expect("pattern"),
            "DocumentCreated",
            |b: &[u8]| Ok::<_, std::convert::Infallible>(b.to_vec()),
            |_, _: Vec<u8>| async { Ok(()) },
        );
        let e = Service::builder(t.clone(), "nojs")
            .handler("search", noop)
            .start()
            .await
            .expect_err("a host cannot start without JetStream");
        assert!(e.to_string().contains("JetStream is not enabled"), "{url}: {e}");
        assert!(
            began.elapsed() < Duration::from_secs(10),
            "{url}: at once, not after {:?}",
            began.elapsed()
        );
    }
}
