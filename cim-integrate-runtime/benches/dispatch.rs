//! Embedded dispatch: `Service` (envelope, dedup check, decode, handler, dedup mark, ack) against
//! a hand-written loop over the same in-memory transport doing only decode, call and ack.
//!
//! `cargo bench -p cim-integrate-runtime --bench dispatch`

use cim_integrate_runtime::dedup::MemoryDedup;
use cim_integrate_runtime::handler::{HandlerOptions, Registration};
use cim_integrate_runtime::service::Service;
use cim_integrate_runtime::transport::memory::MemoryTransport;
use cim_integrate_runtime::transport::{Consumer, ConsumerSpec, PipelinedPublisher, StreamSpec, Transport};
use cim_integrate_runtime::{Envelope, Subject, SubjectPattern};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Serialize, Deserialize)]
struct DocumentCreated {
    version: String,
    document_id: uuid::Uuid,
    title: String,
    author: String,
}

const N: u64 = 100_000;

async fn loaded_transport() -> MemoryTransport {
    let t = MemoryTransport::new();
    t.ensure_stream(&StreamSpec::for_domain("document", None).unwrap())
        .await
        .unwrap();
    let subject = Subject::new("document.created").unwrap();
    let mut p = PipelinedPublisher::new(t.clone(), 1000);
    for i in 0..N {
        let e = DocumentCreated {
            version: "1.0".into(),
            document_id: uuid::Uuid::now_v7(),
            title: format!("Document {i}"),
            author: "alice".into(),
        };
        let env = Envelope::root(subject.clone(), serde_json::to_vec(&e).unwrap()).typed("DocumentCreated", "1.0");
        p.publish(env.into()).await.unwrap();
    }
    p.finish().await.unwrap();
    t
}

fn decode(b: &[u8]) -> Result<DocumentCreated, serde_json::Error> {
    serde_json::from_slice(b)
}

async fn handle(count: &AtomicU64, e: DocumentCreated) {
    if !e.title.is_empty() {
        count.fetch_add(1, Ordering::Relaxed);
    }
}

async fn hand_written() -> f64 {
    let t = loaded_transport().await;
    let count = AtomicU64::new(0);
    let spec = ConsumerSpec::new(
        "DOCUMENT_EVENTS",
        "hand",
        SubjectPattern::new("document.created").unwrap(),
    )
    .max_ack_pending(64);
    let mut c = t.consumer(&spec).await.unwrap();
    let start = Instant::now();
    while count.load(Ordering::Relaxed) < N {
        let d = c.next().await.unwrap();
        match decode(d.payload()) {
            Ok(e) => {
                handle(&count, e).await;
                d.ack().await.unwrap();
            }
            Err(_) => d.term().await.unwrap(),
        }
    }
    N as f64 / start.elapsed().as_secs_f64()
}

async fn service(kv_dedup: bool, concurrency: usize) -> f64 {
    let t = loaded_transport().await;
    let count = Arc::new(AtomicU64::new(0));
    let c2 = count.clone();
    let reg = Registration::new(
        "bench",
        SubjectPattern::new("document.created").unwrap(),
        "DocumentCreated",
        decode,
        move |_ctx, e: DocumentCreated| {
            let c = c2.clone();
            async move {
                handle(&c, e).await;
                Ok(())
            }
        },
    )
    .with_options(HandlerOptions {
        concurrency,
        ..HandlerOptions::default()
    });
    let mut b = Service::builder(t.clone(), "bench").handler("search", reg);
    if !kv_dedup {
        b = b.dedup_store(MemoryDedup::default());
    }
    let start = Instant::now();
    let svc = b.start().await.unwrap();
    while count.load(Ordering::Relaxed) < N {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let rate = N as f64 / start.elapsed().as_secs_f64();
    svc.shutdown(Duration::from_secs(5)).await;
    rate
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!("embedded dispatch, {N} events of ~150 bytes JSON, 2 worker threads");
        let base = hand_written().await;
        println!(
            "{:<48} {:>12.0} events/s  1.00x",
            "hand-written loop (decode, call, ack)", base
        );
        for (label, kv, conc) in [
            ("Service, in-memory dedup, concurrency 1", false, 1),
            ("Service, in-memory dedup, concurrency 16", false, 16),
            ("Service, key-value dedup, concurrency 16", true, 16),
        ] {
            let r = service(kv, conc).await;
            println!("{label:<48} {r:>12.0} events/s  {:.2}x", r / base);
        }
    });
}
