//! A child process of the benchmark runner: drains a backlog and reports its own peak RSS, so
//! that the figure is isolated from the runner.
//!
//! `drain-rss <memory-service|memory-raw> <n>`: loads `n` events into an embedded transport (in
//! this process: the backlog's memory is part of the figure, and reported separately), then
//! drains them. `drain-rss <nats-service|nats-raw> <n> <url>`: drains a backlog of `n` events the
//! runner published to the server at `url`. Prints one JSON line.

use cim_integrate::SubjectPattern;
use cim_integrate::event::DomainEvent;
use cim_integrate::event::Versioned;
use cim_integrate::handler::Registration;
use cim_integrate::service::Service;
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::transport::{Consumer, ConsumerSpec, OutboundMessage, PipelinedPublisher, StreamSpec, Transport};
use cim_integrate_bench::{BoxError, DocumentCreated, RawDocumentCreated, event, rss_kib};
use futures::StreamExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

async fn load_memory(n: u64) -> Result<MemoryTransport, BoxError> {
    let t = MemoryTransport::new();
    t.ensure_stream(&StreamSpec::for_domain("document", None)?).await?;
    let mut p = PipelinedPublisher::new(t.clone(), 1000);
    for i in 0..n {
        p.publish(OutboundMessage::from(&event(i).to_envelope()?))
            .await
            .map_err(|e| e.error.to_string())?;
    }
    p.finish().await.map_err(|e| e.error.to_string())?;
    Ok(t)
}

async fn service<T: Transport>(t: T, n: u64) -> Result<(), BoxError> {
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    let reg = Registration::new(
        "drain",
        SubjectPattern::new("document.created")?,
        "DocumentCreated",
        DocumentCreated::decode,
        move |_ctx, e: DocumentCreated| {
            let c = c.clone();
            async move {
                if !e.title.is_empty() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        },
    );
    // The default de-duplication store: a key-value bucket on the same transport.
    let svc = Service::builder(t, "drain").handler("bench", reg).start().await?;
    while count.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    svc.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

async fn raw_memory(t: MemoryTransport, n: u64) -> Result<(), BoxError> {
    let spec =
        ConsumerSpec::new("DOCUMENT_EVENTS", "raw", SubjectPattern::new("document.created")?).max_ack_pending(64);
    let mut c = t.consumer(&spec).await?;
    let mut done = 0;
    while done < n {
        let d = c.next().await?;
        match serde_json::from_slice::<RawDocumentCreated>(d.payload()) {
            Ok(_) => d.ack().await?,
            Err(_) => d.term().await?,
        }
        done += 1;
    }
    Ok(())
}

async fn raw_nats(url: &str, n: u64) -> Result<(), BoxError> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let stream = js.get_stream("DOCUMENT_EVENTS").await?;
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some("raw".into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let mut done = 0;
    while done < n {
        let m = match messages.next().await.ok_or("stream ended")? {
            Ok(m) => m,
            // A missed heartbeat on a loaded machine: async-nats goes on pulling.
            Err(e) if e.kind() == async_nats::jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let _ = serde_json::from_slice::<RawDocumentCreated>(&m.payload);
        m.ack().await?;
        done += 1;
    }
    Ok(())
}

async fn run(mode: &str, n: u64, url: Option<String>) -> Result<serde_json::Value, BoxError> {
    let start_rss = rss_kib().map(|r| r.1);
    let mut loaded_rss = None;
    let started = Instant::now();
    match (mode, url) {
        ("memory-service", _) => {
            let t = load_memory(n).await?;
            loaded_rss = rss_kib().map(|r| r.1);
            service(t, n).await?;
        }
        ("memory-raw", _) => {
            let t = load_memory(n).await?;
            loaded_rss = rss_kib().map(|r| r.1);
            raw_memory(t, n).await?;
        }
        ("nats-service", Some(url)) => service(NatsTransport::connect_url(&url).await?, n).await?,
        ("nats-raw", Some(url)) => raw_nats(&url, n).await?,
        _ => return Err(format!("unknown mode {mode}").into()),
    }
    let (peak, end) = rss_kib().unzip();
    Ok(serde_json::json!({
        "mode": mode,
        "events": n,
        "secs": started.elapsed().as_secs_f64(),
        "start_rss_kib": start_rss,
        "loaded_rss_kib": loaded_rss,
        "peak_rss_kib": peak,
        "end_rss_kib": end,
    }))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(mode), Some(n)) = (args.first(), args.get(1).and_then(|n| n.parse().ok())) else {
        eprintln!("usage: drain-rss <memory-service|memory-raw|nats-service|nats-raw> <n> [url]");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(run(mode, n, args.get(2).cloned())),
        Err(e) => Err(e.into()),
    };
    match result {
        Ok(v) => println!("{v}"),
        Err(e) => {
            eprintln!("drain-rss: {e}");
            std::process::exit(1);
        }
    }
}
