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

use cim_integrate_runtime::handler::HandlerOptions;
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::testing::{free_ports, log_tail, read_client_port, server_bin, wait_for_jetstream};
use cim_integrate_runtime::transport::nats::{NatsAuth, NatsOptions, NatsTransport};
use cim_integrate_runtime::transport::{Deployment, Placement};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The clusters' names, one server each; the host connects to the second.
const CLUSTERS: [&str; 3] = ["A", "B", "C"];
/// Accounts on the super-cluster, one per test (the suites hold 92 cases).
const ACCOUNTS: usize = 128;
/// How long the super-cluster may take to elect a JetStream meta leader.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// The running super-cluster: each server's client URL.
struct SuperCluster {
    urls: Vec<String>,
}

/// The super-cluster, started by the first test that asks; a start that failed fails every test.
fn supercluster() -> &'static SuperCluster {
    static SHARED: OnceLock<Result<SuperCluster, String>> = OnceLock::new();
    let shared = SHARED.get_or_init(|| {
        // On a thread of its own: the callers are tests inside a runtime of their own.
        std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let mut last = String::new();
            for _ in 0..3 {
                match rt.block_on(start()) {
                    Ok(sc) => return Ok(sc),
                    Err(e) => last = e,
                }
            }
            Err(last)
        })
        .join()
        .unwrap_or_else(|_| Err("the start panicked".to_owned()))
    });
    shared
        .as_ref()
        .unwrap_or_else(|e| panic!("the super-cluster did not start: {e}"))
}

/// The accounts block every server shares: account `tN`, user `uN`, with JetStream.
fn accounts() -> String {
    let accounts: Vec<String> = (0..ACCOUNTS)
        .map(|i| format!("  t{i}: {{ jetstream: enabled, users: [ {{ user: u{i}, password: p{i} }} ] }}"))
        .collect();
    format!("accounts {{\n{}\n}}\n", accounts.join("\n"))
}

/// Starts one server per cluster, with gateways to the others, and waits until each answers
/// JetStream requests. Each runs under `sh`, reading this process's pipe: when this process
/// exits, the pipe closes and `sh` kills its server and removes its directory.
async fn start() -> Result<SuperCluster, String> {
    let ports = free_ports(2 * CLUSTERS.len()).map_err(|e| e.to_string())?;
    let (gateway_ports, route_ports) = ports.split_at(CLUSTERS.len());
    let gateways = CLUSTERS
        .iter()
        .zip(gateway_ports)
        .map(|(c, p)| format!("{{ name: {c}, url: \"nats://127.0.0.1:{p}\" }}"))
        .collect::<Vec<_>>()
        .join(", ");
    let accounts = accounts();
    let mut urls = Vec::new();
    let mut dirs = Vec::new();
    for (i, cluster) in CLUSTERS.iter().enumerate() {
        // nats-server 2.9 starts a clustered JetStream only with routes configured: each
        // one-server cluster names itself, a route the server recognises and drops.
        let config = format!(
            "server_name: {name}\n\
             cluster {{ name: {cluster}, listen: \"127.0.0.1:{route}\", routes: [\"nats://127.0.0.1:{route}\"] }}\n\
             gateway {{ name: {cluster}, listen: \"127.0.0.1:{gateway}\", gateways: [{gateways}] }}\n\
             {accounts}",
            name = cluster.to_lowercase(),
            route = route_ports[i],
            gateway = gateway_ports[i],
        );
        let dir = std::env::temp_dir().join(format!(
            "cim-nats-supercluster-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(dir.join("ports")).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("server.conf"), config).map_err(|e| e.to_string())?;
        spawn(&dir)?;
        urls.push(format!("nats://127.0.0.1:{}", client_port(&dir).await?));
        dirs.push(dir);
    }
    for url in &urls {
        let client = async_nats::ConnectOptions::with_user_and_password("u0".into(), "p0".into())
            .connect(url.as_str())
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = wait_for_jetstream(&client, "$JS.API", READY_TIMEOUT).await {
            let logs: Vec<String> = dirs.iter().map(|d| log_tail(&d.join("server.log"))).collect();
            return Err(format!("{e}\n{}", logs.join("\n---\n")));
        }
    }
    Ok(SuperCluster { urls })
}

/// Runs the server configured in `dir` under `sh`, which ends it when its standard input closes.
fn spawn(dir: &Path) -> Result<(), String> {
    let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"dir="$1"; shift; "$@" & pid=$!; cat >/dev/null; kill -9 "$pid"; wait "$pid"; rm -rf "$dir""#)
        .arg("sh")
        .arg(dir)
        .arg(server_bin())
        .args(["-a", "127.0.0.1", "-p", "-1", "-js", "--store_dir"])
        .arg(dir.join("store"))
        .arg("--ports_file_dir")
        .arg(dir.join("ports"))
        .arg("-c")
        .arg(dir.join("server.conf"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .spawn()
        .map_err(|e| format!("starting {}: {e}", server_bin().display()))?;
    // Kept open for the life of this process, never written.
    let stdin = child.stdin.take().expect("piped");
    std::mem::forget(stdin);
    std::mem::forget(child);
    Ok(())
}

/// The client port the server in `dir` wrote to its ports file.
async fn client_port(dir: &Path) -> Result<u16, String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Named by the server's process id, which `sh` keeps to itself.
        let found = std::fs::read_dir(dir.join("ports"))
            .ok()
            .into_iter()
            .flatten()
            .flatten()
            .find_map(|e| read_client_port(&e.path()));
        if let Some(port) = found {
            return Ok(port);
        }
        if Instant::now() > deadline {
            return Err(format!("no ports file\n{}", log_tail(&dir.join("server.log"))));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A fresh account of the super-cluster for the calling test.
fn account() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(1);
    let i = NEXT.fetch_add(1, Ordering::Relaxed);
    assert!(i < ACCOUNTS, "more tests than accounts ({ACCOUNTS})");
    i
}

/// Options for a client of server `b` in `account`, placing what it creates in cluster `A`.
fn on_b(account: usize) -> NatsOptions {
    let mut o = NatsOptions::new(supercluster().urls[1].clone());
    o.auth = NatsAuth::UserPassword {
        user: format!("u{account}"),
        password: format!("p{account}"),
    };
    o.deployment = Deployment::new().placement(Placement::cluster("A"));
    o
}

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

/// The cluster stream `name` is placed in.
async fn cluster_of(t: &NatsTransport, name: &str) -> Option<String> {
    let mut stream = t.jetstream().get_stream(name).await.ok()?;
    stream.info().await.ok()?.cluster.as_ref().and_then(|c| c.name.clone())
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

/// A pull request sent across the gateway right after its consumer was created can reach nobody
/// (the consumer leader's interest has not crossed yet; about 2 % of fresh consumers on a loaded
/// machine). The pull is sent again after two missed idle heartbeats; for a consumer with a short
/// inactive threshold that must happen within the threshold, or the server removes the consumer
/// under the handle waiting on it (`inactive_consumer_is_removed` failed that way in CI).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_consumers_with_a_short_inactive_threshold_outlive_a_lost_first_pull() {
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
    let mut slowest = Duration::ZERO;
    for i in 0..60 {
        let durable = format!("fresh-{i}");
        let spec = ConsumerSpec::new(STREAM, &durable, filter.clone()).inactive_threshold(Duration::from_secs(1));
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
        slowest = slowest.max(start.elapsed());
        t.delete_consumer(STREAM, &durable)
            .await
            .expect("the consumer outlived its first pull");
    }
    // a lost pull is sent again after two heartbeats of a quarter of the threshold
    assert!(slowest < Duration::from_secs(1), "slowest first delivery {slowest:?}");
}
