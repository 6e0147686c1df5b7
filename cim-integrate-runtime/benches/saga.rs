//! Persisted saga steps per second, on the embedded transport and on NATS JetStream (a private
//! nats-server with file storage).
//!
//! A saga of five steps that do nothing but mark the data: every step costs two compare-and-set
//! writes of the saga record (intent and outcome) and one lifecycle event; every saga adds its
//! creation, its final write, the settle write and two events. Sagas run one at a time (latency
//! bound) and 32 at a time (throughput).
//!
//! `cargo bench -p cim-integrate-runtime --features testing --bench saga`
//! (`SAGA_BENCH_SAGAS` sets the number of sagas per run, default 2000 on memory, 400 on NATS).

use cim_integrate_runtime::handler::HandlerError;
use cim_integrate_runtime::saga::{Saga, SagaOutcome, SagaRunner, Step, StepContext, StepFuture};
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::Transport;
use cim_integrate_runtime::transport::memory::MemoryTransport;
use cim_integrate_runtime::transport::nats::NatsTransport;
use futures::StreamExt;
use std::time::Instant;

const STEPS: usize = 5;

#[derive(Clone)]
struct Bench;

async fn mark(_: &Bench, ctx: &mut StepContext<Vec<u8>>) -> Result<(), HandlerError> {
    let n = u8::try_from(ctx.data().len()).unwrap_or(u8::MAX);
    ctx.data_mut().push(n);
    Ok(())
}

fn step<'a>(s: &'a Bench, c: &'a mut StepContext<Vec<u8>>) -> StepFuture<'a> {
    Box::pin(mark(s, c))
}

impl Saga for Bench {
    type Data = Vec<u8>;
    const NAME: &'static str = "bench";
    fn steps() -> Vec<Step<Self>> {
        vec![
            Step::new("s1", step).compensate("c1", step),
            Step::new("s2", step).compensate("c2", step),
            Step::new("s3", step).compensate("c3", step),
            Step::new("s4", step).compensate("c4", step),
            Step::new("s5", step).no_compensation("pivot"),
        ]
    }
}

async fn run<T: Transport>(label: &str, transport: T, sagas: usize) {
    let runner = SagaRunner::builder(transport, Bench).build().await.expect("runner");
    // Warm-up.
    for i in 0..20 {
        runner.start(&format!("warm-{i}"), Vec::new()).await.expect("warm-up");
    }
    for concurrency in [1usize, 32] {
        let started = Instant::now();
        let outcomes: Vec<_> = futures::stream::iter(0..sagas)
            .map(|i| {
                let runner = runner.clone();
                async move { runner.start(&format!("c{concurrency}-{i}"), Vec::new()).await }
            })
            .buffer_unordered(concurrency)
            .collect()
            .await;
        let elapsed = started.elapsed();
        assert!(outcomes.iter().all(|o| matches!(o, Ok(SagaOutcome::Completed))));
        let steps = (sagas * STEPS) as f64;
        println!(
            "{label:<8} concurrency {concurrency:>2}: {sagas} sagas x {STEPS} steps in {:>8.1} ms = {:>9.0} persisted steps/s, {:>7.0} sagas/s",
            elapsed.as_secs_f64() * 1000.0,
            steps / elapsed.as_secs_f64(),
            sagas as f64 / elapsed.as_secs_f64(),
        );
    }
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let sagas = |default: usize| {
        std::env::var("SAGA_BENCH_SAGAS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    };
    rt.block_on(async {
        run("memory", MemoryTransport::new(), sagas(2000)).await;
        let server = NatsServer::start().await.expect("nats-server");
        let nats = NatsTransport::connect_url(&server.url()).await.expect("connect");
        run("nats", nats, sagas(400)).await;
    });
}
