//! Throughput of the NATS transport against raw async-nats, on one private nats-server.
//!
//! `cargo bench -p cim-integrate-runtime --bench nats_transport` (nats-server from
//! `NATS_SERVER_BIN`, else the PATH). Prints msgs/s for
//!
//! - publish: (a) raw async-nats pipelined publish with `Nats-Msg-Id`, (b) this transport through
//!   `PipelinedPublisher`, (c) publish awaiting each ack (the guide's `DomainEventBus`);
//! - consume: (d) raw async-nats pull consume + ack, (e) `Consumer::next` + `Delivery::ack`;
//!
//! and the ratios. Counts are moderate so that the run takes seconds.

use async_nats::jetstream::{self, consumer::pull, message::PublishMessage};
use bytes::Bytes;
use cim_integrate_runtime::Envelope;
use cim_integrate_runtime::subject::{Subject, SubjectPattern};
use cim_integrate_runtime::transport::nats::NatsTransport;
use cim_integrate_runtime::transport::{
    Consumer, ConsumerSpec, OutboundMessage, PipelinedPublisher, StreamSpec, Transport,
};
use futures::StreamExt;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const N: usize = 20_000;
const N_AWAIT_EACH: usize = 2_000;
const WINDOW: usize = 256;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A throwaway nats-server (the bench cannot use the `testing` feature's harness).
struct Server {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Server {
    fn start() -> Result<Self, BoxError> {
        let bin = std::env::var_os("NATS_SERVER_BIN").unwrap_or_else(|| "nats-server".into());
        let dir = std::env::temp_dir().join(format!("cim-nats-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let child = Command::new(bin)
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "--store_dir"])
            .arg(dir.join("store"))
            .arg("--ports_file_dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let ports = dir.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = loop {
            if let Ok(text) = std::fs::read_to_string(&ports)
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
                && let Some(u) = v["nats"][0].as_str()
            {
                break u.to_owned();
            }
            if Instant::now() > deadline {
                return Err("nats-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(Self { child, dir, url })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn envelopes(domain: &str, n: usize) -> Vec<Envelope> {
    let subject = Subject::new(format!("{domain}.created")).unwrap_or_else(|e| panic!("subject: {e}"));
    (0..n)
        .map(|i| {
            let body = format!(
                r#"{{"version":"1.0","document_id":"doc-{i}","title":"benchmark document {i}","size":{}}}"#,
                i * 7
            );
            Envelope::root(subject.clone(), Bytes::from(body)).typed("DocumentCreated", "1.0")
        })
        .collect()
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

async fn run() -> Result<(), BoxError> {
    let server = Server::start()?;
    let t = NatsTransport::connect_url(&server.url).await?;
    for domain in ["rawpub", "ourpub", "awaitpub"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None)?).await?;
    }
    let client = async_nats::connect(&server.url).await?;
    let js = jetstream::new(client);

    // (a) raw async-nats, pipelined, with Nats-Msg-Id and the same headers
    let raw = envelopes("rawpub", N);
    let start = Instant::now();
    let mut in_flight = VecDeque::with_capacity(WINDOW);
    for env in &raw {
        if in_flight.len() >= WINDOW
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await?;
        }
        let mut headers = async_nats::HeaderMap::new();
        for (name, value) in env.to_headers().iter() {
            headers.append(name, value);
        }
        let msg = PublishMessage::build().payload(env.payload().clone()).headers(headers);
        in_flight.push_back(js.send_publish(env.subject().as_str().to_owned(), msg).await?);
    }
    for ack in in_flight {
        ack.await?;
    }
    let a = rate(N, start.elapsed());

    // (b) this transport through PipelinedPublisher
    let ours = envelopes("ourpub", N);
    let start = Instant::now();
    let mut publisher = PipelinedPublisher::new(t.clone(), WINDOW);
    for env in &ours {
        publisher
            .publish(OutboundMessage::from(env))
            .await
            .map_err(|e| e.error.to_string())?;
    }
    publisher.finish().await.map_err(|e| e.error.to_string())?;
    let b = rate(N, start.elapsed());

    // (c) one round trip per message
    let each = envelopes("awaitpub", N_AWAIT_EACH);
    let start = Instant::now();
    for env in &each {
        t.publish_and_wait(env.into()).await?;
    }
    let c = rate(N_AWAIT_EACH, start.elapsed());

    // (d) raw pull consume + ack
    let stream = js.get_stream("RAWPUB_EVENTS").await?;
    let consumer: pull::Config = pull::Config {
        durable_name: Some("raw".into()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ..Default::default()
    };
    let consumer = stream.create_consumer(consumer).await?;
    let start = Instant::now();
    let mut messages = consumer.messages().await?;
    let mut got = 0;
    while got < N {
        let m = messages.next().await.ok_or("raw stream ended")??;
        m.ack().await?;
        got += 1;
    }
    let d = rate(N, start.elapsed());

    // (e) this transport's consumer loop
    let spec = ConsumerSpec::new("OURPUB_EVENTS", "ours", SubjectPattern::new("ourpub.>")?);
    let mut ours_consumer = t.consumer(&spec).await?;
    let start = Instant::now();
    for _ in 0..N {
        ours_consumer.next().await?.ack().await?;
    }
    let e = rate(N, start.elapsed());
    t.flush().await?;

    println!(
        "nats_transport benchmark ({} messages, window {WINDOW}, server {})",
        N, server.url
    );
    println!("publish  (a) raw async-nats pipelined, Nats-Msg-Id : {a:>10.0} msgs/s");
    println!(
        "publish  (b) NatsTransport + PipelinedPublisher     : {b:>10.0} msgs/s   b/a = {:.2}",
        b / a
    );
    println!(
        "publish  (c) publish awaiting each ack ({N_AWAIT_EACH} msgs) : {c:>10.0} msgs/s   c/a = {:.3}",
        c / a
    );
    println!("consume  (d) raw async-nats pull + ack              : {d:>10.0} msgs/s");
    println!(
        "consume  (e) Consumer::next + Delivery::ack          : {e:>10.0} msgs/s   e/d = {:.2}",
        e / d
    );
    Ok(())
}

fn main() {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run()) {
        eprintln!("benchmark failed: {e}");
        std::process::exit(1);
    }
}
