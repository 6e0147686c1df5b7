//! Scale-out on a private nats-server: several services, each with its own connection (as
//! separate processes would have), on one durable consumer share the work, and no event is
//! handled twice across them.

use cim_integrate_runtime::handler::{HandlerOptions, Registration};
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::nats::NatsTransport;
use cim_integrate_runtime::transport::{OutboundMessage, PipelinedPublisher, StreamSpec, Transport};
use cim_integrate_runtime::{Envelope, Subject, SubjectPattern};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const INSTANCES: usize = 4;
const EVENTS: u32 = 400;
const HANDLER_TIME: Duration = Duration::from_millis(20);

type Log = Arc<Mutex<Vec<(usize, u32)>>>;

fn decode(payload: &[u8]) -> Result<u32, std::num::ParseIntError> {
    std::str::from_utf8(payload).unwrap_or_default().parse()
}

/// The same handler in every instance (so the same durable, `search-index`), at the default
/// options; each records which instance handled which event.
fn index(instance: usize, log: Log) -> Registration {
    index_taking(instance, log, HANDLER_TIME)
}

fn index_taking(instance: usize, log: Log, time: Duration) -> Registration {
    Registration::new(
        "index",
        SubjectPattern::new("document.created").expect("pattern"),
        "DocumentCreated",
        decode,
        move |_ctx, n: u32| {
            let log = log.clone();
            async move {
                tokio::time::sleep(time).await;
                log.lock().expect("log").push((instance, n));
                Ok(())
            }
        },
    )
}

async fn consumer_info(js: &async_nats::jetstream::Context) -> async_nats::jetstream::consumer::Info {
    js.get_stream("DOCUMENT_EVENTS")
        .await
        .expect("stream")
        .consumer_info("search-index")
        .await
        .expect("consumer info")
}

/// A private server with the `document` stream, and a transport on it.
async fn document_server() -> (NatsServer, NatsTransport) {
    let server = NatsServer::start().await.expect("nats-server");
    let publisher = NatsTransport::connect_url(&server.url()).await.expect("connect");
    publisher
        .ensure_stream(&StreamSpec::for_domain("document", None).expect("stream spec"))
        .await
        .expect("stream");
    (server, publisher)
}

/// Stores `n` events, payloads `0` to `n - 1`.
async fn publish_backlog(publisher: &NatsTransport, n: u32) {
    let mut p = PipelinedPublisher::new(publisher.clone(), 100);
    for n in 0..n {
        let subject = Subject::new("document.created").expect("subject");
        let env = Envelope::root(subject, n.to_string()).typed("DocumentCreated", "1.0");
        p.publish(OutboundMessage::from(&env)).await.expect("publish");
    }
    p.finish().await.expect("publish acks");
}

/// Polls `done` every 20 ms until it holds or `deadline` passes.
async fn until<F: Future<Output = bool>>(what: &str, deadline: Instant, mut done: impl FnMut() -> F) {
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_on_one_durable_share_the_work_and_handle_each_event_once() {
    let (server, publisher) = document_server().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("client"));

    let log: Log = Arc::default();
    let mut services: Vec<Service> = Vec::new();
    for i in 0..INSTANCES {
        let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
        let svc = Service::builder(t, "search")
            .handler("search", index(i, log.clone()))
            .start()
            .await
            .expect("service");
        services.push(svc);
    }
    // Every instance has its pull waiting before the first event exists, so none starts ahead.
    until("every instance's pull request", deadline, || async {
        consumer_info(&js).await.num_waiting >= INSTANCES
    })
    .await;

    publish_backlog(&publisher, EVENTS).await;

    until("every event handled", deadline, || async {
        log.lock().expect("log").len() >= EVENTS as usize
    })
    .await;
    // Nothing left for anyone: no delivery outstanding, nothing undelivered.
    until("the durable to settle", deadline, || async {
        let info = consumer_info(&js).await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    for svc in services {
        svc.shutdown(Duration::from_secs(5)).await;
    }

    let log = log.lock().expect("log").clone();
    let mut by_event: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    let mut by_instance = [0usize; INSTANCES];
    for (i, n) in &log {
        by_event.entry(*n).or_default().push(*i);
        by_instance[*i] += 1;
    }
    let twice: Vec<_> = by_event.iter().filter(|(_, who)| who.len() > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(by_event.len(), EVENTS as usize, "every event handled");
    assert_eq!(
        by_event.keys().copied().collect::<Vec<_>>(),
        (0..EVENTS).collect::<Vec<_>>()
    );
    assert_eq!(log.len(), EVENTS as usize);
    for (i, handled) in by_instance.iter().enumerate() {
        assert!(
            *handled * 10 >= EVENTS as usize,
            "instance {i} handled {handled} of {EVENTS} (less than 10%); shares {by_instance:?}"
        );
    }
    eprintln!("shares of {EVENTS} events across {INSTANCES} instances: {by_instance:?}");
}

/// A process holds what its own concurrency can start soon, not a client pull batch: with
/// concurrency 1 over a backlog, the durable shows a handful outstanding (1 in flight, 8
/// prefetched, at most one and a half pulls of 16 on the way), not the default batch of 200
/// that would be out of every other process's reach and ageing towards its ack wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_holds_only_its_prefetch() {
    let (server, publisher) = document_server().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    publish_backlog(&publisher, 200).await;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("client"));

    let log: Log = Arc::default();
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
    let svc = Service::builder(t, "search")
        .handler(
            "search",
            index_taking(0, log.clone(), Duration::from_millis(50)).with_options(HandlerOptions {
                concurrency: 1,
                ..HandlerOptions::default()
            }),
        )
        .start()
        .await
        .expect("service");
    until("a few events handled", deadline, || async {
        log.lock().expect("log").len() >= 3
    })
    .await;
    let mut most = 0;
    for _ in 0..10 {
        most = most.max(consumer_info(&js).await.num_ack_pending);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    svc.shutdown(Duration::from_secs(5)).await;
    assert!(most > 0, "nothing outstanding while handling a backlog");
    assert!(
        most <= 1 + 8 + 24,
        "one process with concurrency 1 held {most} deliveries"
    );
}

/// A service catching up over a backlog with the key-value dedup reads every mark (the
/// messages were stored before its durable existed); those reads wait outside the handler's
/// places, yet no more handler runs than `concurrency` happen at once, and a second service
/// started where the first stopped runs nothing the first handled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catching_up_with_mark_reads_keeps_the_concurrency_and_runs_nothing_twice() {
    const BACKLOG: u32 = 300;
    let (server, publisher) = document_server().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    publish_backlog(&publisher, BACKLOG).await;
    let js = async_nats::jetstream::new(async_nats::connect(server.url()).await.expect("client"));

    let log: Log = Arc::default();
    // Handler runs at once now, and the most seen.
    let gauge = Arc::new(Mutex::new((0usize, 0usize)));
    let service = |instance: usize| {
        let (log, gauge) = (log.clone(), gauge.clone());
        let url = server.url();
        async move {
            let registration = Registration::new(
                "index",
                SubjectPattern::new("document.created").expect("pattern"),
                "DocumentCreated",
                decode,
                move |_ctx, n: u32| {
                    let (log, gauge) = (log.clone(), gauge.clone());
                    async move {
                        {
                            let mut g = gauge.lock().expect("gauge");
                            g.0 += 1;
                            g.1 = g.1.max(g.0);
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        log.lock().expect("log").push((instance, n));
                        gauge.lock().expect("gauge").0 -= 1;
                        Ok(())
                    }
                },
            )
            .with_options(HandlerOptions {
                concurrency: 2,
                // What the first service had pulled and not started when it stopped comes back
                // after this (and is then a redelivery, whose mark is read too).
                ack_wait: Duration::from_secs(2),
                ..HandlerOptions::default()
            });
            let t = NatsTransport::connect_url(&url).await.expect("connect");
            Service::builder(t, "search")
                .handler("search", registration)
                .start()
                .await
                .expect("service")
        }
    };

    let first = service(0).await;
    until("a third of the backlog handled", deadline, || async {
        log.lock().expect("log").len() >= BACKLOG as usize / 3
    })
    .await;
    first.shutdown(Duration::from_secs(5)).await;
    let second = service(1).await;
    until("the durable to settle", deadline, || async {
        let info = consumer_info(&js).await;
        info.num_ack_pending == 0 && info.num_pending == 0
    })
    .await;
    second.shutdown(Duration::from_secs(5)).await;

    let log = log.lock().expect("log").clone();
    let mut by_event: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for (i, n) in &log {
        by_event.entry(*n).or_default().push(*i);
    }
    let twice: Vec<_> = by_event.iter().filter(|(_, who)| who.len() > 1).collect();
    assert!(twice.is_empty(), "handled more than once: {twice:?}");
    assert_eq!(by_event.len(), BACKLOG as usize, "every event handled");
    assert!(
        log.iter().any(|(i, _)| *i == 1),
        "the second service handled none: the first ran the whole backlog"
    );
    let most = gauge.lock().expect("gauge").1;
    assert!(most <= 2, "{most} handler runs at once, concurrency 2");
    assert_eq!(most, 2, "the handler never ran two at once");
}
