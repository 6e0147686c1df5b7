//! The benchmark runner: `cargo run --release -p cim-integrate-bench [-- options]`.
//!
//! Every row is measured beside its baseline in the same run, on the same machine and server, and
//! printed with the ratio; the whole table is also written as JSON (default
//! `<target>/bench-results.json`) so that two commits can be compared (`bench-compare A.json B.json`,
//! `src/bin/bench-compare.rs`).
//!
//! Options: `--quick` (a fifth of the messages: a smoke run), `--markdown` (the table again as
//! Markdown), `--only a,b` / `--skip a,b` with the
//! sections `publish`, `consume`, `scale-out`, `dispatch`, `saga`, `decode`, `rss`, `check`
//! (`--skip check-instructions` leaves out its instruction counts under valgrind, about two minutes),
//! `--out PATH`, `--dispatch-rounds N` (default 5), `--dispatch-rows kv,mem16,mem1,live-kv,live-mem16,live-mem1` (default all),
//! `--dispatch-side ours|baseline` (default both), `--saga-rows nats,mem` (default both),
//! `--saga-side ours|baseline|by-hand` (default all), `--saga-events all,outcomes,none` (the runner's
//! [`LifecycleEvents`], a row each; default all three),
//! `--rss-events N` (default 1,000,000 on the embedded transport), `--rss-nats-events N` (default
//! 1,000,000), `--log FILTER` (install `tracing_subscriber`'s formatter, writing nowhere, with a
//! target filter such as `info` or `info,cim_integrate::handle=off`: what the spans cost in a
//! deployment that logs; default no subscriber).

mod generate;

#[global_allocator]
static ALLOC: cim_integrate_bench::CountingAlloc = cim_integrate_bench::CountingAlloc;

use cim_integrate::Envelope;
use cim_integrate::Identity;
use cim_integrate::Subject;
use cim_integrate::SubjectPattern;
use cim_integrate::Timestamp;
use cim_integrate::dedup::MemoryDedup;
use cim_integrate::event::DomainEvent;
use cim_integrate::event::Versioned;
use cim_integrate::handler::{HandlerError, HandlerOptions, Registration};
use cim_integrate::saga::{LifecycleEvents, Saga, SagaOutcome, SagaRunner, Step, StepContext, StepFuture};
use cim_integrate::service::{Service, ServiceBuilder};
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::transport::{
    Consumer, ConsumerSpec, KeyValue, KvSpec, OutboundMessage, PipelinedPublisher, StreamSpec, Transport,
};
use cim_integrate_bench::server::Server;
use cim_integrate_bench::{AuditRecorded, BoxError, DocumentCreated, RawDocumentCreated, event, fmt_num, raw_event};
use futures::StreamExt;
use std::collections::VecDeque;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[path = "../../tests/domain_event_examples/mod.rs"]
#[allow(dead_code, missing_docs)]
mod domain_event_examples;

/// One line of the table: a measurement and its baseline.
#[derive(Debug, Clone, serde::Serialize)]
struct Row {
    section: &'static str,
    name: String,
    value: f64,
    unit: &'static str,
    baseline_name: String,
    baseline: f64,
    /// value / baseline.
    ratio: f64,
    /// Messages, sagas or events measured (what was scaled to fit the time budget).
    count: u64,
    higher_is_better: bool,
    /// Rows measured over several rounds: the value and baseline are medians, these their
    /// [min, max].
    #[serde(skip_serializing_if = "Option::is_none")]
    value_range: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_range: Option<[f64; 2]>,
    /// Allocations per message (medians over the rounds), where counted.
    #[serde(skip_serializing_if = "Option::is_none")]
    allocs_per_msg: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    baseline_allocs_per_msg: Option<f64>,
}

struct Runner {
    rows: Vec<Row>,
    scale: f64,
    only: Option<Vec<String>>,
    skip: Vec<String>,
    rss_events: u64,
    rss_nats_events: u64,
    /// Rounds of the dispatch rows (`--dispatch-rounds`, default 5).
    dispatch_rounds: usize,
    /// Only these dispatch rows (`--dispatch-rows kv,mem16,mem1,live-kv,live-mem16,live-mem1`; default all), e.g. to profile one.
    dispatch_rows: Option<Vec<String>>,
    /// Only one side of the dispatch rows (`--dispatch-side ours|baseline`), e.g. to count its
    /// instructions under callgrind.
    dispatch_side: Option<String>,
    /// Only these saga transports (`--saga-rows nats,mem`; default both).
    saga_rows: Option<Vec<String>>,
    /// Only one side of the saga rows (`--saga-side ours|baseline|by-hand`), e.g. to count its
    /// instructions under callgrind.
    saga_side: Option<String>,
    /// Only these lifecycle-event settings of the saga rows (`--saga-events all,outcomes,none`).
    saga_events: Option<Vec<String>>,
    notes: Vec<String>,
}

impl Runner {
    fn wants(&self, section: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s == section)) && !self.skips(section)
    }

    /// `--skip` names `part` (a section, or `check-instructions`).
    fn skips(&self, part: &str) -> bool {
        self.skip.iter().any(|s| s == part)
    }

    fn n(&self, full: u64) -> u64 {
        ((full as f64 * self.scale) as u64).max(100)
    }

    #[allow(clippy::too_many_arguments)]
    fn row(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        value: f64,
        unit: &'static str,
        baseline_name: impl Into<String>,
        baseline: f64,
        count: u64,
        higher_is_better: bool,
    ) {
        let row = Row {
            section,
            name: name.into(),
            value,
            unit,
            baseline_name: baseline_name.into(),
            baseline,
            ratio: if baseline > 0.0 { value / baseline } else { f64::NAN },
            count,
            higher_is_better,
            value_range: None,
            baseline_range: None,
            allocs_per_msg: None,
            baseline_allocs_per_msg: None,
        };
        eprintln!(
            "  [{section}] {}: {} {unit} (baseline {}: {} {unit}; x{:.2})",
            row.name,
            fmt_num(row.value),
            row.baseline_name,
            fmt_num(row.baseline),
            row.ratio
        );
        self.rows.push(row);
    }
}

impl Runner {
    /// A row measured over several rounds: medians, with each side's min-max printed and kept.
    #[allow(clippy::too_many_arguments)]
    fn row_rounds(
        &mut self,
        section: &'static str,
        name: impl Into<String>,
        values: &[f64],
        unit: &'static str,
        baseline_name: impl Into<String>,
        baselines: &[f64],
        count: u64,
        higher_is_better: bool,
    ) {
        let (v, b) = (median(values), median(baselines));
        self.row(section, name, v, unit, baseline_name, b, count, higher_is_better);
        let (vr, br) = (min_max(values), min_max(baselines));
        eprintln!(
            "    {} rounds: value {}-{}, baseline {}-{} (medians above)",
            values.len(),
            fmt_num(vr[0]),
            fmt_num(vr[1]),
            fmt_num(br[0]),
            fmt_num(br[1])
        );
        if let Some(row) = self.rows.last_mut() {
            row.value_range = Some(vr);
            row.baseline_range = Some(br);
        }
    }
}

impl Runner {
    /// Sets the allocations per message of the last row and its baseline.
    fn allocs(&mut self, value: f64, baseline: f64) {
        eprintln!("    allocations per message: {value:.1} (baseline {baseline:.1})");
        if let Some(row) = self.rows.last_mut() {
            row.allocs_per_msg = Some(value);
            row.baseline_allocs_per_msg = Some(baseline);
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn min_max(v: &[f64]) -> [f64; 2] {
    v.iter().fold([f64::INFINITY, f64::NEG_INFINITY], |[lo, hi], x| {
        [lo.min(*x), hi.max(*x)]
    })
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// publish

const PUBLISH_WINDOW: usize = 1024;
const ROUNDS: usize = 5;

/// Messages/s and allocations per message of one publish run.
type Measured = (f64, f64);

/// Runs `f` over `n` messages: its rate and the allocations per message it made (process-wide).
async fn measured<F: std::future::Future<Output = Result<(), BoxError>>>(n: u64, f: F) -> Result<Measured, BoxError> {
    measured_span(n, async {
        f.await?;
        Ok(None)
    })
    .await
}

/// As [`measured`], for a run that times its own span (e.g. from the first message handled, so
/// that start-up is left out); `None`: the whole run.
async fn measured_span<F>(n: u64, f: F) -> Result<Measured, BoxError>
where
    F: std::future::Future<Output = Result<Option<Duration>, BoxError>>,
{
    let allocs = cim_integrate_bench::allocations();
    let start = Instant::now();
    let span = f.await?.unwrap_or_else(|| start.elapsed());
    Ok((
        rate(n, span),
        (cim_integrate_bench::allocations() - allocs) as f64 / n as f64,
    ))
}

/// Raw async-nats: serde encode, a fresh id, pipelined `send_publish` (window 1024), acks awaited
/// oldest first; with only `Nats-Msg-Id`, or with the same seven headers as ours.
async fn raw_publish(
    js: &async_nats::jetstream::Context,
    subject: &str,
    n: u64,
    all_headers: bool,
) -> Result<(), BoxError> {
    let mut in_flight = VecDeque::with_capacity(PUBLISH_WINDOW);
    for i in 0..n {
        if in_flight.len() >= PUBLISH_WINDOW
            && let Some(ack) = in_flight.pop_front()
        {
            ack.await?;
        }
        let payload = serde_json::to_vec(&raw_event(i))?;
        let id = uuid::Uuid::now_v7().to_string();
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Nats-Msg-Id", id.as_str());
        if all_headers {
            headers.insert("X-Message-ID", id.as_str());
            headers.insert("X-Correlation-ID", id.as_str());
            headers.insert("X-Causation-ID", id.as_str());
            headers.insert("X-Event-Type", "DocumentCreated");
            headers.insert("X-Event-Version", "1.0");
            headers.insert("X-Occurred-At", cim_integrate::Timestamp::now().to_rfc3339().as_str());
        }
        let msg = async_nats::jetstream::message::PublishMessage::build()
            .payload(payload.into())
            .headers(headers);
        in_flight.push_back(js.send_publish(subject.to_owned(), msg).await?);
    }
    for ack in in_flight {
        ack.await?;
    }
    Ok(())
}

/// Ours: `#[domain_event]` encode + envelope + `PipelinedPublisher` (window 1024).
async fn typed_publish(t: &NatsTransport, n: u64, compact: bool) -> Result<(), BoxError> {
    let mut p = PipelinedPublisher::new(t.clone(), PUBLISH_WINDOW);
    for i in 0..n {
        let env = event(i).to_envelope()?;
        let message = if compact {
            OutboundMessage::compact(&env)
        } else {
            OutboundMessage::from(&env)
        };
        p.publish(message).await.map_err(|e| e.error.to_string())?;
    }
    p.finish().await.map_err(|e| e.error.to_string())?;
    Ok(())
}

/// Messages per round of the publish and consume sections: rounds of 20,000 (about 0.2 s each)
/// varied by up to 30% between runs on the 2-core machine; rounds this long average over the
/// machine's hiccups.
const NATS_ROUND: u64 = 50_000;

async fn bench_publish(r: &mut Runner) -> Result<(), BoxError> {
    let n = r.n(NATS_ROUND);
    let n_each = r.n(2_000);
    let server = Server::start("publish")?;
    let t = NatsTransport::connect_url(&server.url).await?;
    for d in ["rawpub", "document", "awaitpub"] {
        t.ensure_stream(&StreamSpec::for_domain(d, None)?).await?;
    }
    let js = async_nats::jetstream::new(async_nats::connect(&server.url).await?);
    // Warm-up: connections, streams, allocator.
    raw_publish(&js, "rawpub.created", 2_000, true).await?;
    typed_publish(&t, 2_000, false).await?;
    // For profiling one variant alone (`callgrind` counts the whole process): its index (0 raw
    // with `Nats-Msg-Id` only, 1 raw with our headers, 2 ours, 3 ours compact), `none` for
    // set-up only.
    if let Ok(v) = std::env::var("CIM_BENCH_PUBLISH_ALONE") {
        for _ in 0..ROUNDS {
            match v.as_str() {
                "0" => raw_publish(&js, "rawpub.created", n, false).await?,
                "1" => raw_publish(&js, "rawpub.created", n, true).await?,
                "2" => typed_publish(&t, n, false).await?,
                "3" => typed_publish(&t, n, true).await?,
                _ => {}
            }
        }
        return Ok(());
    }
    // [raw id only, raw same headers, ours, ours compact], each a list of rounds.
    let mut m: [Vec<Measured>; 4] = Default::default();
    for round in 0..ROUNDS {
        // The order rotates every round, so that drift favours no side.
        for k in 0..4 {
            let which = (k + round) % 4;
            let v = match which {
                0 => measured(n, raw_publish(&js, "rawpub.created", n, false)).await?,
                1 => measured(n, raw_publish(&js, "rawpub.created", n, true)).await?,
                2 => measured(n, typed_publish(&t, n, false)).await?,
                _ => measured(n, typed_publish(&t, n, true)).await?,
            };
            m[which].push(v);
        }
    }
    let rates = |i: usize| m[i].iter().map(|v| v.0).collect::<Vec<_>>();
    let allocs = |i: usize| median(&m[i].iter().map(|v| v.1).collect::<Vec<_>>());
    let (raw_id, raw_all) = (
        "raw async-nats pipelined (1024), Nats-Msg-Id only",
        "raw async-nats pipelined (1024), our 7 headers",
    );
    let rows = [
        (
            "typed publish + PipelinedPublisher (1024), full CIM headers",
            2,
            raw_all,
            1,
        ),
        (
            "typed publish + PipelinedPublisher (1024), full CIM headers",
            2,
            raw_id,
            0,
        ),
        (
            "typed publish + PipelinedPublisher (1024), compact identity",
            3,
            raw_id,
            0,
        ),
    ];
    for (name, ours, base, b) in rows {
        r.row_rounds("publish", name, &rates(ours), "msgs/s", base, &rates(b), n, true);
        r.allocs(allocs(ours), allocs(b));
    }

    // One round trip per message (the guide's DomainEventBus), for scale: not a target.
    let each = measured(n_each, async {
        for i in 0..n_each {
            let mut env = event(i).to_envelope()?;
            env = cim_integrate::Envelope::with_identity(
                *env.identity(),
                cim_integrate::Subject::new("awaitpub.created")?,
                env.payload().clone(),
            )
            .typed("DocumentCreated", "1.0");
            t.publish_and_wait((&env).into()).await?;
        }
        Ok(())
    })
    .await?;
    r.row(
        "publish",
        format!("publish awaiting each ack ({n_each} msgs)"),
        each.0,
        "msgs/s",
        raw_all,
        median(&rates(1)),
        n_each,
        true,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// consume: the end-to-end handler path on NATS

/// Events counted by a handler, and the gate it waits at before counting.
#[derive(Default)]
struct Counter {
    count: AtomicU64,
    open: std::sync::atomic::AtomicBool,
    opened: tokio::sync::Notify,
}

impl Counter {
    fn handled(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    fn open(&self) {
        self.open.store(true, Ordering::Release);
        self.opened.notify_waiters();
    }

    /// Waits until the gate is open (one load when it is).
    async fn pass(&self) {
        while !self.open.load(Ordering::Acquire) {
            let opened = self.opened.notified();
            if self.open.load(Ordering::Acquire) {
                break;
            }
            opened.await;
        }
    }
}

fn counting_registration(counter: Arc<Counter>, concurrency: usize) -> Result<Registration, BoxError> {
    Ok(Registration::new(
        "bench",
        SubjectPattern::new("document.created")?,
        "DocumentCreated",
        DocumentCreated::decode,
        move |_ctx, e: DocumentCreated| {
            let c = counter.clone();
            async move {
                c.pass().await;
                if !e.title.is_empty() {
                    c.count.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        },
    )
    .with_options(HandlerOptions {
        concurrency,
        ..HandlerOptions::default()
    }))
}

async fn publish_backlog<T: Transport>(t: &T, n: u64) -> Result<(), BoxError> {
    t.ensure_stream(&StreamSpec::for_domain("document", None)?).await?;
    let mut p = PipelinedPublisher::new(t.clone(), 1000);
    for i in 0..n {
        p.publish(OutboundMessage::from(&event(i).to_envelope()?))
            .await
            .map_err(|e| e.error.to_string())?;
    }
    p.finish().await.map_err(|e| e.error.to_string())?;
    Ok(())
}

/// Starts the service and measures the rate at which `count` reaches `n`.
async fn drain_rate<T: Transport>(b: ServiceBuilder<T>, count: &AtomicU64, n: u64) -> Result<f64, BoxError> {
    let start = Instant::now();
    let svc = b.start().await?;
    while count.load(Ordering::Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let r = rate(n, start.elapsed());
    svc.shutdown(Duration::from_secs(5)).await;
    Ok(r)
}

/// Raw async-nats: a pull consumer on its durable (created before the backlog), serde decode,
/// ack; timed from the first message.
async fn raw_consume(url: &str, durable: &str, n: u64) -> Result<Option<Duration>, BoxError> {
    let js = async_nats::jetstream::new(async_nats::connect(url).await?);
    let consumer: async_nats::jetstream::consumer::PullConsumer =
        js.get_stream("DOCUMENT_EVENTS").await?.get_consumer(durable).await?;
    let mut messages = consumer.messages().await?;
    let mut got = 0;
    let mut start = None;
    while got < n {
        let m = match messages.next().await.ok_or("raw stream ended")? {
            Ok(m) => m,
            // A missed heartbeat on a loaded machine: async-nats goes on pulling.
            Err(e) if e.kind() == async_nats::jetstream::consumer::pull::MessagesErrorKind::MissingHeartbeat => {
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        start.get_or_insert_with(Instant::now);
        let e: RawDocumentCreated = serde_json::from_slice(&m.payload)?;
        black_box(e);
        m.ack().await?;
        got += 1;
    }
    Ok(start.map(|s| s.elapsed()))
}

/// `Service` with one handler (concurrency 16) on the durable of `set`, started with its handler
/// held at a gate (pulling, its first deliveries waiting) until [`drain`](Self::drain).
struct Draining {
    svc: Service,
    counter: Arc<Counter>,
}

impl Draining {
    async fn start(url: &str, set: &str, kv_dedup: bool) -> Result<Self, BoxError> {
        let t = NatsTransport::connect_url(url).await?;
        let counter = Arc::new(Counter::default());
        let mut b = Service::builder(t, set).handler(set, counting_registration(counter.clone(), 16)?);
        if !kv_dedup {
            b = b.dedup_store(MemoryDedup::default());
        }
        Ok(Self {
            svc: b.start().await?,
            counter,
        })
    }

    /// Opens the gate and waits until `n` events are handled; timed from the first.
    async fn drain(self, n: u64) -> Result<Option<Duration>, BoxError> {
        self.counter.open();
        while self.counter.handled() == 0 {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        let start = Instant::now();
        while self.counter.handled() < n {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let span = start.elapsed();
        self.svc.shutdown(Duration::from_secs(5)).await;
        Ok(Some(span))
    }
}

/// A `Service` started over the backlog, drained until `n` events are handled.
async fn service_consume(url: &str, set: &str, n: u64, kv_dedup: bool) -> Result<Option<Duration>, BoxError> {
    Draining::start(url, set, kv_dedup).await?.drain(n).await
}

/// The raw consumer's durable, created ahead of the backlog.
async fn raw_durable(url: &str, durable: &str) -> Result<(), BoxError> {
    async_nats::jetstream::new(async_nats::connect(url).await?)
        .get_stream("DOCUMENT_EVENTS")
        .await?
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(durable.into()),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    Ok(())
}

async fn bench_consume(r: &mut Runner) -> Result<(), BoxError> {
    let n = r.n(NATS_ROUND);
    let server = Server::start("consume")?;
    let url = &server.url;
    let t = NatsTransport::connect_url(url).await?;
    t.ensure_stream(&StreamSpec::for_domain("document", None)?).await?;
    // The services run before the backlog is stored, as a service that a burst outpaces: their
    // first deliveries need no dedup read. Each waits at a gate until its turn; it has pulled
    // its first deliveries meanwhile. (A service started over a stored backlog reads every
    // mark, since a server may have lost delivery counts while it was away: the last row.)
    let mut running: Vec<[Option<Draining>; 2]> = Vec::new();
    for round in 0..ROUNDS {
        raw_durable(url, &format!("raw{round}")).await?;
        running.push([
            Some(Draining::start(url, &format!("mem{round}"), false).await?),
            Some(Draining::start(url, &format!("kv{round}"), true).await?),
        ]);
    }
    tokio::time::sleep(cim_integrate::dedup::CLOCK_MARGIN + Duration::from_secs(1)).await;
    publish_backlog(&t, n).await?;
    // [raw, Service in-memory dedup, Service key-value dedup, Service key-value dedup started
    // over the backlog]; in an order that rotates every round.
    let mut m: [Vec<Measured>; 4] = Default::default();
    // For profiling one variant alone (`callgrind` counts the whole process): its index, or
    // `none` for set-up only.
    let alone = std::env::var("CIM_BENCH_CONSUME_ALONE").ok();
    let mut take = |round: usize, kv: bool| running[round][usize::from(kv)].take().ok_or("drained twice");
    if let Some(v) = &alone {
        for round in 0..ROUNDS {
            match v.as_str() {
                "0" => drop(raw_consume(url, &format!("raw{round}"), n).await?),
                "1" => drop(take(round, false)?.drain(n).await?),
                "2" => drop(take(round, true)?.drain(n).await?),
                _ => {}
            }
        }
        return Ok(());
    }
    for round in 0..ROUNDS {
        for k in 0..4 {
            let which = (k + round) % 4;
            let v = match which {
                0 => measured_span(n, raw_consume(url, &format!("raw{round}"), n)).await?,
                1 => measured_span(n, take(round, false)?.drain(n)).await?,
                2 => measured_span(n, take(round, true)?.drain(n)).await?,
                _ => measured_span(n, service_consume(url, &format!("kvh{round}"), n, true)).await?,
            };
            m[which].push(v);
        }
    }
    let rates = |i: usize| m[i].iter().map(|v| v.0).collect::<Vec<_>>();
    let allocs = |i: usize| median(&m[i].iter().map(|v| v.1).collect::<Vec<_>>());
    let base = "raw async-nats pull + serde decode + ack";
    for (label, i) in [
        (
            "Service (NATS), in-memory dedup, concurrency 16, running before the backlog",
            1,
        ),
        (
            "Service (NATS), key-value dedup (default), concurrency 16, running before the backlog",
            2,
        ),
        (
            "Service (NATS), key-value dedup, started over the backlog (catching up)",
            3,
        ),
    ] {
        r.row_rounds("consume", label, &rates(i), "events/s", base, &rates(0), n, true);
        r.allocs(allocs(i), allocs(0));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// fan-out: a handler that publishes k events per handled one

const FAN_OUT: u32 = 8;
const FAN_OUT_ROUNDS: usize = 5;

/// A handler publishing `FAN_OUT` events per event, with `emit` (acks awaited together) or
/// `publish` (each ack awaited in turn).
fn fan_out_registration(count: Arc<AtomicU64>, emit: bool) -> Result<Registration, BoxError> {
    Ok(Registration::new(
        if emit { "fan_emit" } else { "fan_publish" },
        SubjectPattern::new("document.created")?,
        "DocumentCreated",
        DocumentCreated::decode,
        move |ctx: cim_integrate::handler::Context, e: DocumentCreated| {
            let c = count.clone();
            async move {
                for n in 0..FAN_OUT {
                    let a = AuditRecorded {
                        document_id: e.document_id,
                        n,
                    };
                    if emit {
                        ctx.emit(&a).await?;
                    } else {
                        ctx.publish(&a).await?;
                    }
                }
                c.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        },
    )
    .with_options(HandlerOptions {
        concurrency: 1,
        ..HandlerOptions::default()
    }))
}

async fn fan_out_rate(url: &str, n: u64, emit: bool, round: usize) -> Result<f64, BoxError> {
    let t = NatsTransport::connect_url(url).await?;
    let count = Arc::new(AtomicU64::new(0));
    let name = format!("fan{round}{}", if emit { "e" } else { "p" });
    // A fresh durable (`{set}-{handler}`) per round, reading the whole backlog.
    let b = Service::builder(t, name.clone())
        .handler(&name, fan_out_registration(count.clone(), emit)?)
        .dedup_store(MemoryDedup::default());
    drain_rate(b, &count, n).await
}

async fn bench_fan_out(r: &mut Runner) -> Result<(), BoxError> {
    let n = r.n(1_000);
    let server = Server::start("fan-out")?;
    let t = NatsTransport::connect_url(&server.url).await?;
    publish_backlog(&t, n).await?;
    let (mut emitted, mut published) = (Vec::new(), Vec::new());
    for round in 0..FAN_OUT_ROUNDS {
        // Alternating order; each round a fresh durable over the same backlog.
        if round % 2 == 0 {
            emitted.push(fan_out_rate(&server.url, n, true, round).await?);
            published.push(fan_out_rate(&server.url, n, false, round).await?);
        } else {
            published.push(fan_out_rate(&server.url, n, false, round).await?);
            emitted.push(fan_out_rate(&server.url, n, true, round).await?);
        }
    }
    r.row_rounds(
        "fan-out",
        format!("handler publishing {FAN_OUT} events with ctx.emit (acks awaited together), concurrency 1"),
        &emitted,
        "events/s",
        format!("the same with ctx.publish ({FAN_OUT} acks awaited in turn)"),
        &published,
        n,
        true,
    );
    // In process, where no round trip hides what a handler's publish costs: its work per
    // publish (envelope, id, encode, span, metrics, topology record) is the whole of it.
    let n = r.n(20_000);
    let (mut emitted, mut published, mut allocs) = (Vec::new(), Vec::new(), [Vec::new(), Vec::new()]);
    for round in 0..FAN_OUT_ROUNDS {
        for emit in if round % 2 == 0 { [true, false] } else { [false, true] } {
            let (rate, a) = fan_out_rate_mem(n, emit, round).await?;
            if emit { &mut emitted } else { &mut published }.push(rate);
            allocs[usize::from(!emit)].push(a);
        }
    }
    r.row_rounds(
        "fan-out",
        format!("embedded: handler publishing {FAN_OUT} events with ctx.emit, concurrency 1"),
        &emitted,
        "events/s",
        format!("the same with ctx.publish ({FAN_OUT} acks awaited in turn)"),
        &published,
        n,
        true,
    );
    r.notes.push(format!(
        "fan-out, embedded: allocations per handled event (each publishing {FAN_OUT}): emit {:.1}, publish {:.1}; medians",
        median(&allocs[0]),
        median(&allocs[1])
    ));
    Ok(())
}

/// [`fan_out_rate`] on the embedded transport, with the allocations per handled event.
async fn fan_out_rate_mem(n: u64, emit: bool, round: usize) -> Result<(f64, f64), BoxError> {
    let t = MemoryTransport::new();
    publish_backlog(&t, n).await?;
    let count = Arc::new(AtomicU64::new(0));
    let name = format!("fan{round}{}", if emit { "e" } else { "p" });
    let b = Service::builder(t, name.clone())
        .handler(&name, fan_out_registration(count.clone(), emit)?)
        .dedup_store(MemoryDedup::default());
    let a0 = cim_integrate_bench::allocations();
    let rate = drain_rate(b, &count, n).await?;
    Ok((rate, (cim_integrate_bench::allocations() - a0) as f64 / n as f64))
}

// ---------------------------------------------------------------------------------------------
// scale-out: N processes on one durable

const SCALE_HANDLER_SLEEP: Duration = Duration::from_millis(50);
const SCALE_WARMUP: Duration = Duration::from_millis(500);
const SCALE_WINDOW: Duration = Duration::from_secs(2);
const SCALE_ROUNDS: usize = 5;
const SCALE_PROCESSES: usize = 8;

fn sleeping_registration(count: Arc<AtomicU64>) -> Result<Registration, BoxError> {
    // The default options (concurrency 16), as a deployed handler would have them.
    Ok(Registration::new(
        "bench",
        SubjectPattern::new("document.created")?,
        "DocumentCreated",
        DocumentCreated::decode,
        move |_ctx, e: DocumentCreated| {
            let c = count.clone();
            async move {
                tokio::time::sleep(SCALE_HANDLER_SLEEP).await;
                if !e.title.is_empty() {
                    c.fetch_add(1, Ordering::Relaxed);
                }
                Ok(())
            }
        },
    ))
}

/// Events/s handled by `processes` services, each with its own connection, on one fresh durable
/// (`set`) over the backlog: counted over `SCALE_WINDOW` after `SCALE_WARMUP` from the first
/// event handled. Returns the rate, each process's share of the window and the durable's
/// outstanding deliveries mid-window.
async fn scale_rate(url: &str, set: &str, processes: usize) -> Result<(f64, Vec<u64>, usize), BoxError> {
    let mut counts = Vec::with_capacity(processes);
    let mut services = Vec::with_capacity(processes);
    for _ in 0..processes {
        let count = Arc::new(AtomicU64::new(0));
        // Its own client, as a separate process would have; the same service and handler names,
        // so every one reads the same durable (`{set}-bench`) and the same dedup bucket.
        let t = NatsTransport::connect_url(url).await?;
        let svc = Service::builder(t, "scale")
            .handler(set, sleeping_registration(count.clone())?)
            .start()
            .await?;
        counts.push(count);
        services.push(svc);
    }
    let total = || counts.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(20);
    while total() == 0 {
        if Instant::now() > deadline {
            return Err("scale-out: nothing handled in 20 s".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(SCALE_WARMUP).await;
    let before: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let start = Instant::now();
    tokio::time::sleep(SCALE_WINDOW / 2).await;
    // What the durable has outstanding mid-window: every process's prefetch and pull together.
    let ack_pending = async_nats::jetstream::new(async_nats::connect(url).await?)
        .get_stream("DOCUMENT_EVENTS")
        .await?
        .consumer_info(format!("{set}-bench"))
        .await?
        .num_ack_pending;
    tokio::time::sleep(SCALE_WINDOW.saturating_sub(start.elapsed())).await;
    let after: Vec<u64> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    let elapsed = start.elapsed();
    let shares: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
    let r = rate(shares.iter().sum(), elapsed);
    for svc in services {
        svc.shutdown(Duration::from_secs(5)).await;
    }
    Ok((r, shares, ack_pending))
}

async fn bench_scale_out(r: &mut Runner) -> Result<(), BoxError> {
    // Enough backlog that no measurement runs dry: each reads its own durable from the start.
    let per_round_max = (SCALE_PROCESSES as f64 * 16.0 / SCALE_HANDLER_SLEEP.as_secs_f64()
        * (SCALE_WARMUP + SCALE_WINDOW + Duration::from_secs(1)).as_secs_f64()) as u64;
    let backlog = per_round_max * 2;
    let server = Server::start("scale-out")?;
    let t = NatsTransport::connect_url(&server.url).await?;
    publish_backlog(&t, backlog).await?;
    let (mut one, mut many) = (Vec::new(), Vec::new());
    let mut spread = Vec::new();
    let mut pending = [Vec::new(), Vec::new()];
    for round in 0..SCALE_ROUNDS {
        // Alternating order, so that drift favours neither side.
        let order: [usize; 2] = if round % 2 == 0 {
            [1, SCALE_PROCESSES]
        } else {
            [SCALE_PROCESSES, 1]
        };
        for n in order {
            let (v, shares, ack_pending) = scale_rate(&server.url, &format!("scale-r{round}-n{n}"), n).await?;
            eprintln!(
                "    round {round}, {n} process(es): {} events/s, per process {shares:?}, ack pending {ack_pending}",
                fmt_num(v)
            );
            if n == 1 {
                one.push(v);
                pending[0].push(ack_pending);
            } else {
                many.push(v);
                pending[1].push(ack_pending);
                let (lo, hi) = (shares.iter().min().copied(), shares.iter().max().copied());
                spread.push(format!("{}-{}", lo.unwrap_or(0), hi.unwrap_or(0)));
            }
        }
    }
    r.row_rounds(
        "scale-out",
        format!("Service x {SCALE_PROCESSES} (own connections), one durable, 50 ms handler, concurrency 16"),
        &many,
        "events/s",
        "Service x 1, same handler",
        &one,
        backlog,
        true,
    );
    let ratios: Vec<f64> = many.iter().zip(&one).map(|(m, o)| m / o).collect();
    let [lo, hi] = min_max(&ratios);
    r.notes.push(format!(
        "scale-out: {SCALE_ROUNDS} alternating rounds of {:.1} s windows; ratio per round {lo:.2}-{hi:.2}; events per process per window with {SCALE_PROCESSES} (min-max per round): {}; durable ack pending mid-window: 1 process {:?}, {SCALE_PROCESSES} processes {:?}",
        SCALE_WINDOW.as_secs_f64(),
        spread.join(", "),
        pending[0],
        pending[1]
    ));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// embedded dispatch

fn allocations() -> u64 {
    cim_integrate_bench::allocations()
}

/// One round of a dispatch measurement: the rate over both phases, each phase's rate, and the
/// allocations per message of each phase (the baseline's phases overlap: one figure).
#[derive(Debug, Clone, Copy, Default)]
struct DispatchRound {
    rate: f64,
    publish_rate: f64,
    drain_rate: f64,
    publish_allocs: f64,
    drain_allocs: f64,
}

impl DispatchRound {
    /// A round of two phases: `n` events published as `p` tells, then drained, the last one
    /// handled `total` after `p.start`, with the allocation count `a2` then.
    fn phases(n: u64, p: &Published, total: Duration, a2: u64) -> Self {
        let per_message = |allocs: u64| allocs as f64 / n as f64;
        Self {
            rate: rate(n, total),
            publish_rate: rate(n, p.published),
            drain_rate: rate(n, total - p.published),
            publish_allocs: per_message(p.a1 - p.a0),
            drain_allocs: per_message(a2 - p.a1),
        }
    }
}

/// The baseline's handler: what a hand-written consumer calls after decoding.
async fn handle_raw(e: RawDocumentCreated, count: &AtomicU64) {
    if !e.title.is_empty() {
        count.fetch_add(1, Ordering::Relaxed);
    }
}

/// The publish-then-drain rows' baseline: an unbounded tokio mpsc, every event `serde_json`
/// encoded and sent first, then every one received, decoded and passed to a direct async call,
/// on the runtime's `block_on` thread (where our publish runs); both phases timed.
async fn mpsc_then_round(n: u64) -> Result<DispatchRound, BoxError> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Vec<u8>>();
    let count = AtomicU64::new(0);
    let (a0, start) = (allocations(), Instant::now());
    for i in 0..n {
        tx.send(serde_json::to_vec(&raw_event(i))?)?;
    }
    drop(tx);
    let p = Published {
        start,
        published: start.elapsed(),
        a0,
        a1: allocations(),
    };
    while let Some(bytes) = rx.recv().await {
        if let Ok(e) = serde_json::from_slice::<RawDocumentCreated>(&bytes) {
            handle_raw(e, &count).await;
        }
    }
    let (total, a2) = (start.elapsed(), allocations());
    if count.load(Ordering::Relaxed) != n {
        return Err("mpsc baseline lost messages".into());
    }
    Ok(DispatchRound::phases(n, &p, total, a2))
}

/// The publish-while-draining rows' baseline: tokio mpsc (bounded, 1024), `serde_json` encode
/// on send; decode and a direct async call on receive. Sender and receiver run at once (the
/// channel is bounded), timed from the first send to the last call.
async fn mpsc_round(n: u64) -> Result<DispatchRound, BoxError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
    let count = Arc::new(AtomicU64::new(0));
    let a0 = allocations();
    let start = Instant::now();
    let receiver = tokio::spawn({
        let count = count.clone();
        async move {
            while let Some(bytes) = rx.recv().await {
                if let Ok(e) = serde_json::from_slice::<RawDocumentCreated>(&bytes) {
                    handle_raw(e, &count).await;
                }
            }
        }
    });
    for i in 0..n {
        tx.send(serde_json::to_vec(&raw_event(i))?).await?;
    }
    drop(tx);
    receiver.await?;
    let elapsed = start.elapsed();
    let allocs = (allocations() - a0) as f64 / n as f64;
    if count.load(Ordering::Relaxed) != n {
        return Err("mpsc baseline lost messages".into());
    }
    Ok(DispatchRound {
        rate: rate(n, elapsed),
        publish_rate: f64::NAN,
        drain_rate: f64::NAN,
        publish_allocs: allocs,
        drain_allocs: 0.0,
    })
}

/// Typed publish of `n` events into a fresh [`MemoryTransport`], then a [`Service`] drains them;
/// both phases timed. `live`: the service is started first and this task (the runtime's
/// `block_on` thread, where the baseline's sender runs) publishes while the service drains on
/// the workers; one rate, over both at once.
async fn service_round(n: u64, kv_dedup: bool, concurrency: usize, live: bool) -> Result<DispatchRound, BoxError> {
    let t = MemoryTransport::new();
    t.ensure_stream(&StreamSpec::for_domain("document", None)?).await?;
    let count = Arc::new(AtomicU64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let registration = Registration::new(
        "bench",
        SubjectPattern::new("document.created")?,
        "DocumentCreated",
        DocumentCreated::decode,
        {
            let (count, done) = (count.clone(), done.clone());
            move |_ctx, e: DocumentCreated| {
                let (count, done) = (count.clone(), done.clone());
                async move {
                    if !e.title.is_empty() && count.fetch_add(1, Ordering::Relaxed) + 1 == n {
                        done.notify_one();
                    }
                    Ok(())
                }
            }
        },
    )
    .with_options(HandlerOptions {
        concurrency,
        ..HandlerOptions::default()
    });
    let mut b = Service::builder(t.clone(), "bench").handler("search", registration);
    if !kv_dedup {
        b = b.dedup_store(MemoryDedup::default());
    }
    let started = if live { Ok(b.start().await?) } else { Err(b) };
    let p = publish_timed(&t, n).await?;
    let svc = match started {
        Ok(svc) => svc,
        Err(b) => b.start().await?,
    };
    tokio::time::timeout(Duration::from_secs(120), done.notified())
        .await
        .map_err(|_| "the service did not handle every event in 120 s")?;
    let (total, a2) = (p.start.elapsed(), allocations());
    svc.shutdown(Duration::from_secs(5)).await;
    Ok(if live {
        DispatchRound {
            rate: rate(n, total),
            publish_rate: f64::NAN,
            drain_rate: f64::NAN,
            publish_allocs: (a2 - p.a0) as f64 / n as f64,
            drain_allocs: 0.0,
        }
    } else {
        DispatchRound::phases(n, &p, total, a2)
    })
}

/// The publish phase of a round: when it began, how long it took, and the allocation count
/// before and after.
struct Published {
    start: Instant,
    published: Duration,
    a0: u64,
    a1: u64,
}

/// Publishes the `n` benchmark events into `t` one by one, each stored before the next.
async fn publish_timed(t: &MemoryTransport, n: u64) -> Result<Published, BoxError> {
    let a0 = allocations();
    let start = Instant::now();
    for i in 0..n {
        t.publish_and_wait(OutboundMessage::from(event(i).to_envelope()?))
            .await?;
    }
    Ok(Published {
        start,
        published: start.elapsed(),
        a0,
        a1: allocations(),
    })
}

/// The embedded transport alone, a floor under [`service_round`] publishing then draining: the
/// same typed publish of `n` events, then one loop on this task takes each delivery
/// (`try_next`, else `next`), builds its envelope, decodes the event, counts it and
/// acknowledges it; no `Service` (no pipeline, dedup, metrics or handler context). Both phases
/// timed.
async fn transport_round(n: u64) -> Result<DispatchRound, BoxError> {
    let t = MemoryTransport::new();
    let spec = StreamSpec::for_domain("document", None)?;
    t.ensure_stream(&spec).await?;
    let mut consumer = t
        .consumer(&ConsumerSpec::new(
            spec.name.clone(),
            "bench-transport",
            SubjectPattern::new("document.created")?,
        ))
        .await?;
    let p = publish_timed(&t, n).await?;
    let mut count = 0;
    while count < n {
        let delivery = match consumer.try_next() {
            Some(d) => d?,
            None => consumer.next().await?,
        };
        let e = DocumentCreated::decode(delivery.envelope()?.payload())?;
        if !e.title.is_empty() {
            count += 1;
        }
        delivery.ack().await?;
    }
    Ok(DispatchRound::phases(n, &p, p.start.elapsed(), allocations()))
}

async fn bench_dispatch(r: &mut Runner) -> Result<(), BoxError> {
    let n = r.n(200_000);
    // (key, label, the service's (key-value dedup, concurrency); `None`: the transport alone).
    let configs = [
        (
            "kv",
            "Service (embedded), default options (key-value dedup, concurrency 16)",
            Some((true, 16)),
        ),
        (
            "mem16",
            "Service (embedded), in-memory dedup, concurrency 16",
            Some((false, 16)),
        ),
        (
            "mem1",
            "Service (embedded), in-memory dedup, concurrency 1",
            Some((false, 1)),
        ),
        (
            "transport",
            "embedded transport alone, no Service (deliver, envelope, decode, ack)",
            None,
        ),
    ];
    // Each configuration publishing then draining (`kv`), and publishing while draining (`live-kv`).
    let rows = [false, true]
        .into_iter()
        .flat_map(|live| configs.into_iter().map(move |c| (live, c)));
    for (live, (key, label, service)) in rows {
        // The transport alone is a floor under the publish-then-drain rows.
        if live && service.is_none() {
            continue;
        }
        let (key, mode) = if live {
            (format!("live-{key}"), "publish while draining")
        } else {
            (key.to_owned(), "publish then drain")
        };
        if r.dispatch_rows.as_ref().is_some_and(|rows| !rows.contains(&key)) {
            continue;
        }
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        let side = r.dispatch_side.as_deref();
        for _ in 0..r.dispatch_rounds {
            if side != Some("ours") {
                theirs.push(if live {
                    mpsc_round(n).await?
                } else {
                    mpsc_then_round(n).await?
                });
            }
            if side != Some("baseline") {
                ours.push(match service {
                    Some((kv, conc)) => service_round(n, kv, conc, live).await?,
                    None => transport_round(n).await?,
                });
            }
        }
        let pick = |v: &[DispatchRound], f: fn(&DispatchRound) -> f64| v.iter().map(f).collect::<Vec<f64>>();
        // Each shape against the baseline of the same shape.
        let base = if live {
            "tokio mpsc (bounded 1024, sender and receiver at once) + serde_json encode/decode + direct call"
        } else {
            "tokio mpsc (unbounded, send all then drain) + serde_json encode/decode + direct call"
        };
        r.row_rounds(
            "dispatch",
            format!("{label}: {mode}, {n} events"),
            &pick(&ours, |d| d.rate),
            "events/s",
            base,
            &pick(&theirs, |d| d.rate),
            n,
            true,
        );
        let note = if live {
            format!(
                "dispatch, {label}, {mode}: allocations per message {:.1} (baseline: {:.1})",
                median(&pick(&ours, |d| d.publish_allocs)),
                median(&pick(&theirs, |d| d.publish_allocs)),
            )
        } else {
            let phases = |v: &[DispatchRound]| {
                format!(
                    "publish {} events/s, drain {} events/s; allocations per message: publish {:.1}, drain {:.1}",
                    fmt_num(median(&pick(v, |d| d.publish_rate))),
                    fmt_num(median(&pick(v, |d| d.drain_rate))),
                    median(&pick(v, |d| d.publish_allocs)),
                    median(&pick(v, |d| d.drain_allocs)),
                )
            };
            format!(
                "dispatch, {label}: {} (baseline: {}); medians",
                phases(&ours),
                phases(&theirs)
            )
        };
        eprintln!("    {note}");
        r.notes.push(note);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// sagas

/// Steps per benchmark saga (as in issue 15's measurement).
const SAGA_STEPS: u64 = 3;
/// Rounds per saga row, ours and the baseline alternating which goes first.
const SAGA_ROUNDS: usize = 5;

#[derive(Clone)]
struct BenchSaga;

async fn mark(_: &BenchSaga, ctx: &mut StepContext<Vec<u8>>) -> Result<(), HandlerError> {
    let n = u8::try_from(ctx.data().len()).unwrap_or(u8::MAX);
    ctx.data_mut().push(n);
    Ok(())
}

fn step<'a>(s: &'a BenchSaga, c: &'a mut StepContext<Vec<u8>>) -> StepFuture<'a> {
    Box::pin(mark(s, c))
}

impl Saga for BenchSaga {
    type Data = Vec<u8>;
    const NAME: &'static str = "bench";
    fn steps() -> Vec<Step<Self>> {
        vec![
            Step::new("s1", step).compensate("c1", step),
            Step::new("s2", step).compensate("c2", step),
            Step::new("s3", step).no_compensation("pivot"),
        ]
    }
}

/// The baseline: a minimal durable log. Per saga, one `create` of a small JSON record, then one
/// compare-and-set `update` per step with the step's result folded in; nothing else (no
/// lifecycle events, no settled bucket).
///
/// `CIM_BENCH_LOG_PAD=N` adds a field of `N` bytes to its record, to see what a record the size
/// of ours (about 700 bytes) costs the log (read once, not per saga).
async fn minimal_log<K: KeyValue>(kv: &K, id: &str) -> Result<(), BoxError> {
    static PAD: std::sync::LazyLock<Option<String>> = std::sync::LazyLock::new(|| {
        let n = std::env::var("CIM_BENCH_LOG_PAD").ok()?.parse::<usize>().ok()?;
        Some("x".repeat(n))
    });
    let mut record = serde_json::json!({"id": id, "step": 0, "data": []});
    if let Some(pad) = &*PAD {
        record["pad"] = pad.as_str().into();
    }
    let mut rev = kv.create(id, serde_json::to_vec(&record)?.into()).await?;
    for i in 0..SAGA_STEPS {
        record["step"] = (i + 1).into();
        if let Some(data) = record["data"].as_array_mut() {
            data.push(i.into());
        }
        rev = kv.update(id, serde_json::to_vec(&record)?.into(), rev).await?;
    }
    Ok(())
}

/// The payload of a lifecycle event, as [`minimal_log_with_events`] writes it: the fields of the
/// runner's `SagaEvent`, borrowed.
#[derive(serde::Serialize)]
struct HandEvent<'a> {
    version: &'a str,
    kind: &'a str,
    saga: &'a str,
    saga_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    step: Option<&'a str>,
    seq: u32,
}

/// The second baseline of the rows with lifecycle events: [`minimal_log`] plus the same events
/// published by hand. Each write's events (`started` after the create, `step_completed` after
/// each step's write, `completed` after the last; with `outcomes_only`, `completed` alone) are
/// published right after the write, pipelined, with the runner's subjects, `X-Event-Type`,
/// payload fields and identity headers and message ids derived from (saga, id, event number);
/// every acknowledgement is awaited once, at the end. No settled bucket, no outbox: it is the
/// least a hand-written saga with the same observable events does, so the ratio to it is the
/// runner's own overhead for the same work.
async fn minimal_log_with_events<T: Transport>(
    t: &T,
    kv: &T::KeyValue,
    subjects: &[Subject; 3],
    id: &str,
    outcomes_only: bool,
) -> Result<(), BoxError> {
    const KINDS: [&str; 3] = ["started", "step_completed", "completed"];
    let root = Identity::root();
    let at = Timestamp::now();
    let scope = format!("saga/bench/{id}");
    let mut seq = 0u32;
    let mut acks = Vec::with_capacity(if outcomes_only { 1 } else { 5 });
    let mut publish = async |kind: usize, step: Option<&str>| -> Result<(), BoxError> {
        let payload = serde_json::to_vec(&HandEvent {
            version: "1.0",
            kind: KINDS[kind],
            saga: "bench",
            saga_id: id,
            step,
            seq,
        })?;
        let env = Envelope::with_identity(root.derived_child(&scope, seq, at), subjects[kind].clone(), payload)
            .typed("SagaEvent", "1.0");
        seq += 1;
        acks.push(t.publish(OutboundMessage::from(env)).await?);
        Ok(())
    };
    let mut record = serde_json::json!({"id": id, "step": 0, "data": []});
    let mut rev = kv.create(id, serde_json::to_vec(&record)?.into()).await?;
    if !outcomes_only {
        publish(0, None).await?;
    }
    for (i, step) in (0..SAGA_STEPS).zip(["s1", "s2", "s3"]) {
        record["step"] = (i + 1).into();
        if let Some(data) = record["data"].as_array_mut() {
            data.push(i.into());
        }
        rev = kv.update(id, serde_json::to_vec(&record)?.into(), rev).await?;
        if !outcomes_only {
            publish(1, Some(step)).await?;
        }
    }
    publish(2, None).await?;
    futures::future::try_join_all(acks).await?;
    Ok(())
}

/// Steps per second of `sagas` runs of `one`, `concurrency` at a time, then `finish` (inside the
/// measured time: the runner's background settles), and allocations per saga (of the whole
/// process, the client's side of the benchmark).
async fn saga_rate<F, Fut>(
    sagas: u64,
    concurrency: usize,
    one: F,
    finish: impl std::future::Future<Output = Result<(), BoxError>>,
) -> Result<(f64, f64), BoxError>
where
    F: Fn(u64) -> Fut,
    Fut: std::future::Future<Output = Result<(), BoxError>>,
{
    let allocs = cim_integrate_bench::allocations();
    let start = Instant::now();
    let results: Vec<Result<(), BoxError>> = futures::stream::iter(0..sagas)
        .map(one)
        .buffer_unordered(concurrency)
        .collect()
        .await;
    finish.await?;
    let took = start.elapsed();
    let allocs = cim_integrate_bench::allocations() - allocs;
    results.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok((rate(sagas * SAGA_STEPS, took), allocs as f64 / sagas as f64))
}

/// The saga rows' lifecycle-event settings: the option's token, the setting, and its label.
const SAGA_EVENTS: [(&str, LifecycleEvents, &str); 3] = [
    ("all", LifecycleEvents::All, "every lifecycle event (default)"),
    ("outcomes", LifecycleEvents::Outcomes, "outcome events only"),
    ("none", LifecycleEvents::None, "no lifecycle events"),
];

async fn saga_pair<T: Transport>(
    r: &mut Runner,
    label: &str,
    t: T,
    sagas: [u64; 2],
    (mode, events, events_label): (&str, LifecycleEvents, &str),
) -> Result<(), BoxError> {
    // A bucket per setting: each row starts sagas of the same ids.
    let runner = SagaRunner::builder(t.clone(), BenchSaga)
        .bucket(format!("cim_saga_bench_{mode}"))
        .lifecycle_events(events)
        .build()
        .await?;
    let kv = t.key_value(&KvSpec::new(format!("bench_minimal_log_{mode}"))).await?;
    for i in 0..20 {
        runner.start(&format!("warm-{i}"), Vec::new()).await?;
        minimal_log(&kv, &format!("warm-{i}")).await?;
    }
    // With lifecycle events, a second baseline publishes the same events by hand.
    let evented = events != LifecycleEvents::None;
    let outcomes_only = events == LifecycleEvents::Outcomes;
    let subjects = ["started", "step_completed", "completed"].map(|k| Subject::new(format!("saga.bench.{k}")));
    let subjects = [subjects[0].clone()?, subjects[1].clone()?, subjects[2].clone()?];
    for (concurrency, sagas) in [1usize, 32].into_iter().zip(sagas) {
        let (mut ours, mut baseline, mut by_hand) = (Vec::new(), Vec::new(), Vec::new());
        for round in 0..SAGA_ROUNDS {
            let run_ours = || {
                saga_rate(
                    sagas,
                    concurrency,
                    |i| {
                        let runner = runner.clone();
                        async move {
                            match runner.start(&format!("c{concurrency}-{round}-{i}"), Vec::new()).await? {
                                SagaOutcome::Completed => Ok(()),
                                other => Err(format!("a benchmark saga did not complete: {other:?}").into()),
                            }
                        }
                    },
                    async {
                        // The active records' deletes, done in the background, are part of the work.
                        runner.settled().await.map_err(BoxError::from)
                    },
                )
            };
            let run_baseline = || {
                saga_rate(
                    sagas,
                    concurrency,
                    |i| {
                        let kv = kv.clone();
                        async move { minimal_log(&kv, &format!("m{concurrency}-{round}-{i}")).await }
                    },
                    async { Ok(()) },
                )
            };
            let run_by_hand = || {
                saga_rate(
                    sagas,
                    concurrency,
                    |i| {
                        let (t, kv, subjects) = (&t, kv.clone(), &subjects);
                        async move {
                            let id = format!("e{concurrency}-{round}-{i}");
                            minimal_log_with_events(t, &kv, subjects, &id, outcomes_only).await
                        }
                    },
                    async { Ok(()) },
                )
            };
            let side = r.saga_side.as_deref();
            let with_ours = side.is_none_or(|s| s == "ours");
            let with_baseline = side.is_none_or(|s| s == "baseline");
            let with_by_hand = evented && side.is_none_or(|s| s == "by-hand");
            // The sides in an order rotating every round.
            for k in 0..3 {
                match (k + round) % 3 {
                    0 if with_ours => ours.push(run_ours().await?),
                    1 if with_baseline => baseline.push(run_baseline().await?),
                    2 if with_by_hand => by_hand.push(run_by_hand().await?),
                    _ => {}
                }
            }
        }
        let pick = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| v.iter().map(f).collect::<Vec<f64>>();
        r.row_rounds(
            "saga",
            format!("SagaRunner ({label}, {events_label}), {SAGA_STEPS}-step sagas, {concurrency} at a time"),
            &pick(&ours, |o| o.0),
            "steps/s",
            "minimal durable log (create + 1 CAS per step)",
            &pick(&baseline, |b| b.0),
            sagas,
            true,
        );
        if evented {
            r.row_rounds(
                "saga",
                format!("SagaRunner ({label}, {events_label}), {SAGA_STEPS}-step sagas, {concurrency} at a time"),
                &pick(&ours, |o| o.0),
                "steps/s",
                "minimal durable log + the same lifecycle events by hand (pipelined, acks awaited at the end)",
                &pick(&by_hand, |b| b.0),
                sagas,
                true,
            );
        }
        let by_hand_allocs = if evented {
            format!(", by hand with the events {:.1}", median(&pick(&by_hand, |b| b.1)))
        } else {
            String::new()
        };
        let note = format!(
            "saga, {label}, {events_label}, {concurrency} at a time: allocations per saga {:.1} (baseline {:.1}{by_hand_allocs}), medians",
            median(&pick(&ours, |o| o.1)),
            median(&pick(&baseline, |b| b.1)),
        );
        eprintln!("    {note}");
        r.notes.push(note);
    }
    Ok(())
}

async fn bench_saga(r: &mut Runner) -> Result<(), BoxError> {
    let wants = |row: &str| r.saga_rows.as_ref().is_none_or(|rows| rows.iter().any(|k| k == row));
    let (nats_row, mem_row) = (wants("nats"), wants("mem"));
    let settings: Vec<_> = SAGA_EVENTS
        .into_iter()
        .filter(|(mode, ..)| r.saga_events.as_ref().is_none_or(|m| m.iter().any(|k| k == mode)))
        .collect();
    if nats_row {
        let server = Server::start("saga")?;
        let nats = [r.n(600), r.n(3_000)];
        for setting in &settings {
            saga_pair(
                r,
                "NATS",
                NatsTransport::connect_url(&server.url).await?,
                nats,
                *setting,
            )
            .await?;
        }
    }
    if mem_row {
        // The embedded stream keeps every lifecycle event (up to five per saga) in memory.
        let mem = [r.n(5_000), r.n(10_000)];
        for setting in &settings {
            saga_pair(r, "embedded", MemoryTransport::new(), mem, *setting).await?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// decode

/// A decode under test: `true` if the payload decoded.
type Decoder = dyn Fn(&[u8]) -> bool;

/// Decodes per second over one 200 ms window.
fn decode_rate(payload: &[u8], decode: &dyn Fn(&[u8]) -> bool) -> f64 {
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(200) {
        for _ in 0..1000 {
            black_box(decode(black_box(payload)));
        }
        n += 1000;
    }
    rate(n, start.elapsed())
}

fn bench_decode(r: &mut Runner) -> Result<(), BoxError> {
    use domain_event_examples::*;
    #[derive(serde::Deserialize)]
    #[serde(tag = "version")]
    #[allow(dead_code)]
    enum SerdeTagged {
        #[serde(rename = "1.0")]
        V1(DocumentCreatedV1),
        #[serde(rename = "2.0")]
        V2(DocumentCreatedV2),
        #[serde(rename = "3.0")]
        V3(DocumentCreated),
    }
    let v1 = DocumentCreatedV1 {
        document_id: DocumentId::new(),
        title: "Architecture decision record: use JetStream for every cross-domain event".into(),
    };
    let current = DocumentCreated {
        document_id: v1.document_id,
        title: v1.title.clone(),
        author: Some(UserId::new()),
        tags: vec!["architecture".into(), "nats".into(), "adr".into()],
    };
    let oldest = cim_integrate::event::encode_version(&v1)?;
    let latest = current.encode()?;
    let ours = |p: &[u8]| DocumentCreated::decode(p).is_ok();
    let serde = |p: &[u8]| serde_json::from_slice::<SerdeTagged>(p).is_ok();
    // [ours latest, ours oldest, serde latest, serde oldest], in an order rotating every round.
    let runs: [(&[u8], &Decoder); 4] = [(&latest, &ours), (&oldest, &ours), (&latest, &serde), (&oldest, &serde)];
    let mut m: [Vec<f64>; 4] = Default::default();
    for round in 0..ROUNDS {
        for k in 0..4 {
            let which = (k + round) % 4;
            let (payload, decode) = runs[which];
            m[which].push(decode_rate(payload, decode));
        }
    }
    let rows = [
        (
            "#[domain_event] decode, oldest version 1.0 (2 upcasts)",
            1,
            "#[domain_event] decode, latest version 3.0",
            0,
        ),
        (
            "#[domain_event] decode, latest version 3.0",
            0,
            "serde #[serde(tag = \"version\")] enum, latest",
            2,
        ),
        (
            "#[domain_event] decode, oldest version 1.0",
            1,
            "serde #[serde(tag = \"version\")] enum, oldest (no upcast)",
            3,
        ),
    ];
    for (name, ours, base, b) in rows {
        r.row_rounds("decode", name, &m[ours], "events/s", base, &m[b], 0, true);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// consumer memory

fn drain_child(mode: &str, n: u64, url: Option<&str>) -> Result<serde_json::Value, BoxError> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("drain-rss");
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg(mode).arg(n.to_string());
    if let Some(u) = url {
        cmd.arg(u);
    }
    let out = cmd
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {} ({e}): it is built beside the runner (`cargo build --release -p cim-integrate-bench`) and looked for next to it", bin.display()))?;
    if !out.status.success() {
        return Err(format!("{} {mode} failed ({})", bin.display(), out.status).into());
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

fn mib(v: &serde_json::Value, field: &str) -> f64 {
    v[field].as_f64().unwrap_or(f64::NAN) / 1024.0
}

async fn bench_rss(r: &mut Runner) -> Result<(), BoxError> {
    let n = r.rss_events;
    let service = drain_child("memory-service", n, None)?;
    let raw = drain_child("memory-raw", n, None)?;
    let note = format!(
        "embedded, {n} events: backlog loaded = {:.0} MiB RSS (service run) / {:.0} MiB (raw run); drain took {:.1} s (Service) vs {:.1} s (raw)",
        mib(&service, "loaded_rss_kib"),
        mib(&raw, "loaded_rss_kib"),
        service["secs"].as_f64().unwrap_or(f64::NAN),
        raw["secs"].as_f64().unwrap_or(f64::NAN),
    );
    r.notes.push(note);
    r.row(
        "rss",
        format!("peak RSS draining {n} events, Service + key-value dedup (embedded; the backlog lives in the process)"),
        mib(&service, "peak_rss_kib"),
        "MiB",
        "hand-written loop, same backlog",
        mib(&raw, "peak_rss_kib"),
        n,
        false,
    );
    let n = r.rss_nats_events;
    let server = Server::start("rss")?;
    let t = NatsTransport::connect_url(&server.url).await?;
    let start = Instant::now();
    publish_backlog(&t, n).await?;
    let published = start.elapsed();
    let service = drain_child("nats-service", n, Some(&server.url))?;
    // The raw consumer gets its own server with the same backlog.
    drop(server);
    let server = Server::start("rss-raw")?;
    let t = NatsTransport::connect_url(&server.url).await?;
    publish_backlog(&t, n).await?;
    let raw = drain_child("nats-raw", n, Some(&server.url))?;
    r.notes.push(format!(
        "NATS, {n} events (backlog published in {:.1} s): drain took {:.1} s (Service, key-value dedup on the server) vs {:.1} s (raw)",
        published.as_secs_f64(),
        service["secs"].as_f64().unwrap_or(f64::NAN),
        raw["secs"].as_f64().unwrap_or(f64::NAN),
    ));
    r.row(
        "rss",
        format!("peak RSS draining {n} events, Service + key-value dedup (NATS consumer process)"),
        mib(&service, "peak_rss_kib"),
        "MiB",
        "raw async-nats pull + ack consumer process",
        mib(&raw, "peak_rss_kib"),
        n,
        false,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// cargo check of generated crates

fn target_dir() -> PathBuf {
    // <target>/release/cim-integrate-bench
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().and_then(Path::parent).map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("target"))
}

fn bench_check(r: &mut Runner) -> Result<(), BoxError> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace")?
        .to_path_buf();
    let root = std::env::temp_dir().join(format!("cim-bench-gen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let shape = generate::Shape {
        events: 100,
        handlers: 100,
        sagas: 10,
    };
    let (macros, hand) = generate::write_crates(&root, &workspace, &shape)?;
    let target = target_dir().join("bench-gen");
    let check = |dir: &Path| -> Result<Duration, BoxError> {
        let start = Instant::now();
        cargo_check(dir, &target, &[])?;
        Ok(start.elapsed())
    };
    eprintln!("  [check] warming the shared target dir {} ...", target.display());
    if std::env::var_os("CIM_BENCH_KEEP_GEN").is_some() {
        eprintln!("  [check] generated crates kept in {}", root.display());
    }
    check(&macros)?;
    check(&hand)?;
    let mut times: [Vec<f64>; 2] = Default::default();
    for round in 0..ROUNDS {
        let crates = [(&macros, generate::MACRO_CRATE), (&hand, generate::HAND_CRATE)];
        for k in 0..2 {
            // Alternating order.
            let i = (k + round) % 2;
            let (dir, pkg) = crates[i];
            cargo_clean(&root, pkg, &target)?;
            times[i].push(check(dir)?.as_secs_f64());
        }
    }
    r.notes.push(format!(
        "generated crates in {} ({} and {} lines of Rust)",
        root.display(),
        generate::lines(&macros.join("src/lib.rs")),
        generate::lines(&hand.join("src/lib.rs")),
    ));
    r.row_rounds(
        "check",
        format!(
            "cargo check, macros: {} events x 2 versions, {} handlers, {} sagas",
            shape.events, shape.handlers, shape.sagas
        ),
        &times[0],
        "s",
        "the same written by hand against the runtime API",
        &times[1],
        0,
        false,
    );
    if r.skips("check-instructions") {
        r.notes
            .push("check: instruction counts skipped (--skip check-instructions)".to_owned());
    } else if let Err(e) = check_instructions(r, &root, &target, &shape) {
        // Not a failure of the section: the timed rows stand; say why the count is missing.
        eprintln!("  [check] no instruction counts: {e}");
        r.notes.push(format!("check: no instruction counts: {e}"));
    }
    // `CIM_BENCH_KEEP_GEN=1` keeps them, to look at their expansion.
    if std::env::var_os("CIM_BENCH_KEEP_GEN").is_none() {
        let _ = std::fs::remove_dir_all(&root);
    }
    Ok(())
}

/// The instructions `rustc` executes to check each generated crate, counted by valgrind's
/// cachegrind (`--cache-sim=no`): the same work as the timed rows, as a count that does not move
/// with the machine's load (the timed ratio moved between 1.04 and 1.17 over runs with nothing
/// changed). One check of each crate from clean, with `RUSTC_WORKSPACE_WRAPPER` running only the
/// generated crate's `rustc` under valgrind (its dependencies are already checked and are not
/// wrapped). About a minute per crate; needs `valgrind` on `PATH` (Debian's `valgrind`).
fn check_instructions(r: &mut Runner, root: &Path, target: &Path, shape: &generate::Shape) -> Result<(), BoxError> {
    use std::os::unix::fs::PermissionsExt;
    let found = std::process::Command::new("valgrind")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        return Err("valgrind is not on PATH".into());
    }
    let wrapper = root.join("cachegrind-rustc.sh");
    std::fs::write(
        &wrapper,
        "#!/bin/sh\n# RUSTC_WORKSPACE_WRAPPER: rustc of the generated crate under cachegrind.\n\
         rustc=\"$1\"; shift\n\
         exec valgrind --tool=cachegrind --cache-sim=no --cachegrind-out-file=\"$CIM_BENCH_CG_OUT\" \"$rustc\" \"$@\"\n",
    )?;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let mut counts = [0f64; 2];
    for (i, pkg) in [generate::MACRO_CRATE, generate::HAND_CRATE].into_iter().enumerate() {
        eprintln!("  [check] counting the instructions of checking {pkg} (about a minute) ...");
        cargo_clean(root, pkg, target)?;
        let out_file = root.join(format!("{pkg}.cachegrind"));
        let _ = std::fs::remove_file(&out_file);
        cargo_check(
            &root.join(pkg),
            target,
            &[
                ("RUSTC_WORKSPACE_WRAPPER", wrapper.as_os_str()),
                ("CIM_BENCH_CG_OUT", out_file.as_os_str()),
            ],
        )?;
        counts[i] = cachegrind_summary(&std::fs::read_to_string(&out_file)?)
            .ok_or_else(|| format!("no `summary:` line in {}", out_file.display()))?;
    }
    r.row(
        "check",
        format!(
            "rustc instructions (cachegrind) to check the macros crate: {} events x 2 versions, {} handlers, {} sagas",
            shape.events, shape.handlers, shape.sagas
        ),
        counts[0],
        "instr",
        "the same written by hand against the runtime API",
        counts[1],
        0,
        false,
    );
    Ok(())
}

/// `cargo check` of the crate in `dir` into the shared target dir `target`, with `env` set and
/// without the caller's `RUSTFLAGS` (which would rebuild the dependencies).
fn cargo_check(dir: &Path, target: &Path, env: &[(&str, &std::ffi::OsStr)]) -> Result<(), BoxError> {
    let out = std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["check", "--offline", "--quiet"])
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", target)
        .envs(env.iter().copied())
        .env_remove("RUSTFLAGS")
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "cargo check in {} failed:\n{}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(())
}

/// `cargo clean -p package` of the generated crate `root/package` in the shared target dir.
fn cargo_clean(root: &Path, package: &str, target: &Path) -> Result<(), BoxError> {
    std::process::Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(["clean", "--offline", "--quiet", "-p", package])
        .current_dir(root.join(package))
        .env("CARGO_TARGET_DIR", target)
        .status()?;
    Ok(())
}

/// The total of a cachegrind output file (its `summary: N` line).
fn cachegrind_summary(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("summary:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

// ---------------------------------------------------------------------------------------------

fn print_table(r: &Runner) {
    println!();
    println!(
        "{:<9} {:<92} {:>14}  {:<8} {:<60} {:>14}  {:>6}",
        "section", "measured", "value", "unit", "baseline (same run)", "baseline", "ratio"
    );
    println!("{}", "-".repeat(215));
    for row in &r.rows {
        println!(
            "{:<9} {:<92} {:>14}  {:<8} {:<60} {:>14}  {:>6.2}",
            row.section,
            row.name,
            fmt_num(row.value),
            row.unit,
            row.baseline_name,
            fmt_num(row.baseline),
            row.ratio
        );
    }
    for n in &r.notes {
        println!("note: {n}");
    }
}

/// The table as Markdown (for docs/benchmarks.md): medians, ranges where measured in rounds,
/// allocations per message where counted.
fn print_markdown(r: &Runner) {
    let range = |r: Option<[f64; 2]>| r.map_or(String::new(), |[lo, hi]| format!(" ({}-{})", fmt_num(lo), fmt_num(hi)));
    let allocs = |a: Option<f64>| a.map_or(String::new(), |a| format!("; {a:.0} allocs/msg"));
    println!();
    println!("| section | measured | value | baseline (same run) | baseline | ratio |");
    println!("| --- | --- | ---: | --- | ---: | ---: |");
    for row in &r.rows {
        println!(
            "| {} | {} | {} {}{}{} | {} | {}{}{} | {:.2} |",
            row.section,
            row.name,
            fmt_num(row.value),
            row.unit,
            range(row.value_range),
            allocs(row.allocs_per_msg),
            row.baseline_name,
            fmt_num(row.baseline),
            range(row.baseline_range),
            allocs(row.baseline_allocs_per_msg),
            row.ratio
        );
    }
}

fn parse_list(v: Option<String>) -> Vec<String> {
    v.map(|s| s.split(',').map(str::to_owned).collect()).unwrap_or_default()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut r = Runner {
        rows: Vec::new(),
        scale: 1.0,
        only: None,
        skip: Vec::new(),
        rss_events: 1_000_000,
        rss_nats_events: 1_000_000,
        dispatch_rounds: 5,
        dispatch_rows: None,
        dispatch_side: None,
        saga_rows: None,
        saga_side: None,
        saga_events: None,
        notes: Vec::new(),
    };
    let mut out = None;
    let mut markdown = false;
    let mut log: Option<String> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => r.scale = 0.2,
            "--log" => log = args.next(),
            "--markdown" => markdown = true,
            "--only" => r.only = Some(parse_list(args.next())),
            "--dispatch-rounds" => {
                r.dispatch_rounds = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(r.dispatch_rounds)
                    .max(1)
            }
            "--dispatch-rows" => r.dispatch_rows = Some(parse_list(args.next())),
            "--dispatch-side" => r.dispatch_side = args.next(),
            "--saga-rows" => r.saga_rows = Some(parse_list(args.next())),
            "--saga-side" => r.saga_side = args.next(),
            "--saga-events" => r.saga_events = Some(parse_list(args.next())),
            "--skip" => r.skip = parse_list(args.next()),
            "--out" => out = args.next().map(PathBuf::from),
            "--rss-events" => r.rss_events = args.next().and_then(|v| v.parse().ok()).unwrap_or(r.rss_events),
            "--rss-nats-events" => {
                r.rss_nats_events = args.next().and_then(|v| v.parse().ok()).unwrap_or(r.rss_nats_events)
            }
            other => {
                eprintln!("unknown option {other}; see the top of cim-integrate-bench/src/main.rs");
                std::process::exit(2);
            }
        }
    }
    if r.scale < 1.0 {
        r.rss_events = (r.rss_events as f64 * r.scale) as u64;
        r.rss_nats_events = (r.rss_nats_events as f64 * r.scale) as u64;
    }
    if let Some(filter) = &log {
        // A subscriber as a deployment installs one (formatted lines), writing nowhere: the cost
        // of the spans and events the filter lets through (`info`; `info,cim_integrate::handle=off`),
        // not of a terminal.
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let filter: tracing_subscriber::filter::Targets = match filter.parse() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("--log takes a filter such as `info` or `info,cim_integrate::handle=off`: {e}");
                std::process::exit(2);
            }
        };
        tracing_subscriber::registry()
            .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink))
            .with(filter)
            .init();
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tokio: {e}");
            std::process::exit(1);
        }
    };
    let started = Instant::now();
    eprintln!(
        "cim-integrate benchmarks: {} worker threads, {} CPUs, {}",
        2,
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        Server::version()
    );
    let mut failed = Vec::new();
    let sections: [(&str, u8); 9] = [
        ("publish", 0),
        ("consume", 1),
        ("fan-out", 8),
        ("scale-out", 7),
        ("dispatch", 2),
        ("saga", 3),
        ("decode", 4),
        ("rss", 5),
        ("check", 6),
    ];
    for (name, id) in sections {
        if !r.wants(name) {
            continue;
        }
        eprintln!("== {name} ({:.0} s so far)", started.elapsed().as_secs_f64());
        let result = match id {
            0 => rt.block_on(bench_publish(&mut r)),
            1 => rt.block_on(bench_consume(&mut r)),
            2 => rt.block_on(bench_dispatch(&mut r)),
            3 => rt.block_on(bench_saga(&mut r)),
            4 => bench_decode(&mut r),
            5 => rt.block_on(bench_rss(&mut r)),
            7 => rt.block_on(bench_scale_out(&mut r)),
            8 => rt.block_on(bench_fan_out(&mut r)),
            _ => bench_check(&mut r),
        };
        if let Err(e) = result {
            eprintln!("section {name} failed: {e}");
            failed.push(name);
        }
    }
    let total = started.elapsed();
    print_table(&r);
    if markdown {
        print_markdown(&r);
    }
    let out = out.unwrap_or_else(|| target_dir().join("bench-results.json"));
    let json = serde_json::json!({
        "commit": std::process::Command::new("git").args(["rev-parse", "HEAD"]).output().ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned()),
        "nats_server": Server::version(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "scale": r.scale,
        "seconds": total.as_secs_f64(),
        "failed_sections": failed,
        "rows": r.rows,
        "notes": r.notes,
    });
    match serde_json::to_vec_pretty(&json).map(|b| std::fs::write(&out, b)) {
        Ok(Ok(())) => println!("results: {} ({:.0} s)", out.display(), total.as_secs_f64()),
        Ok(Err(e)) => eprintln!("writing {}: {e}", out.display()),
        Err(e) => eprintln!("encoding results: {e}"),
    }
    if !failed.is_empty() {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::cachegrind_summary;

    #[test]
    fn the_total_of_a_cachegrind_file_is_its_summary_line() {
        let file = "desc: I1 cache: 32768 B\ncmd: rustc --crate-name gen_macros\nevents: Ir\nfl=???\n\
                    fn=free\n0 348898961\nsummary: 11337809705\n";
        assert_eq!(cachegrind_summary(file), Some(11_337_809_705.0));
        assert_eq!(cachegrind_summary("events: Ir\nfn=free\n0 12\n"), None);
        assert_eq!(cachegrind_summary("summary: lots\n"), None);
    }
}
