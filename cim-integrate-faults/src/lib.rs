//! Shared pieces of the fault-tolerance suite: the events, the handler and the saga that the
//! helper binaries (`fault-consumer`, `fault-saga`) run while the tests in `tests/faults.rs` kill
//! them, and the append-only run log the tests count from.
//!
//! How effects are counted: every run of the handler (or of a saga step) first appends a line
//! `run ...` to a log file opened with `O_APPEND` (one `write(2)` per line, so a SIGKILL leaves
//! whole lines only); then it applies its effect idempotently, the way `dedup.rs` tells users to:
//! a key-value `create` keyed by the message id (the saga step's idempotency key), which fails
//! with `AlreadyExists` if a previous run already applied it. The log then says `effect ...`
//! (applied now) or `skip ...` (a re-run that found the effect present: the crash window between
//! a successful run and its dedup mark). The key-value bucket is the ground truth for effects;
//! the log counts raw runs.
#![warn(missing_docs)]

use bytes::Bytes;
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::saga::StepContext;
use cim_integrate::transport::nats::NatsKeyValue;
use cim_integrate::transport::{KeyValue, KvError};
use cim_integrate::{domain_event, handlers, saga};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::Arc;

/// The bucket holding the consumer's effects (`fx.{message id}` -> `n`).
pub const EFFECTS_BUCKET: &str = "faults_effects";
/// The bucket holding the saga steps' effects (idempotency key -> empty).
pub const SAGA_EFFECTS_BUCKET: &str = "faults_saga_effects";
/// The durable consumer of `FaultConsumer::apply`.
pub const CONSUMER_DURABLE: &str = "faults-apply";

/// The load: one event per number.
#[domain_event(subject = "load.item", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct ItemCreated {
    /// Which one.
    pub n: u64,
    /// Some text, so that payloads are not trivially small.
    pub label: String,
}

/// What the consumer publishes for every item it handled (through `Context::publish`, whose
/// derived message ids make a re-run's publish a duplicate that JetStream drops).
#[domain_event(subject = "processed.item", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct ItemProcessed {
    /// The item.
    pub n: u64,
}

/// An append-only log file: one `write(2)` per line.
#[derive(Debug, Clone)]
pub struct RunLog {
    file: Arc<File>,
}

impl RunLog {
    /// Opens (creating) `path` for appending.
    pub fn open(path: &Path) -> std::io::Result<Self> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { file: Arc::new(file) })
    }

    /// Appends `line` and a newline in one write.
    pub fn record(&self, line: &str) {
        let mut buf = Vec::with_capacity(line.len() + 1);
        buf.extend_from_slice(line.as_bytes());
        buf.push(b'\n');
        if let Err(e) = (&*self.file).write_all(&buf) {
            tracing::error!(error = %e, "run log write failed");
        }
    }
}

/// Counts of a run log: per key, how many `run`, `effect` and `skip` lines.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct LogCounts {
    /// key -> (runs, effects, skips).
    pub per_key: BTreeMap<String, (u64, u64, u64)>,
}

impl LogCounts {
    /// Reads a run log (lines `run KEY`, `effect KEY`, `skip KEY`; other lines are ignored).
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let mut per_key: BTreeMap<String, (u64, u64, u64)> = BTreeMap::new();
        for line in text.lines() {
            let Some((kind, key)) = line.split_once(' ') else {
                continue;
            };
            let entry = per_key.entry(key.to_owned()).or_default();
            match kind {
                "run" => entry.0 += 1,
                "effect" => entry.1 += 1,
                "skip" => entry.2 += 1,
                _ => {}
            }
        }
        Self { per_key }
    }

    /// Total `run` lines.
    pub fn runs(&self) -> u64 {
        self.per_key.values().map(|c| c.0).sum()
    }
    /// Keys run more than once.
    pub fn rerun_keys(&self) -> usize {
        self.per_key.values().filter(|c| c.0 > 1).count()
    }
    /// Total `skip` lines: re-runs that found their effect already applied.
    pub fn skips(&self) -> u64 {
        self.per_key.values().map(|c| c.2).sum()
    }
    /// Keys with more than one `effect` line (must be none: `create` refuses a second one).
    pub fn double_effects(&self) -> usize {
        self.per_key.values().filter(|c| c.1 > 1).count()
    }
    /// Number of `run` lines in the whole file, cheaply (for progress polling).
    pub fn count_runs(path: &Path) -> usize {
        std::fs::read(path)
            .map(|b| b.split(|c| *c == b'\n').filter(|l| l.starts_with(b"run ")).count())
            .unwrap_or(0)
    }
}

/// Applies `key`'s effect once: a key-value `create`, which fails if an earlier run applied it.
async fn apply_once<K: KeyValue>(kv: &K, log: &RunLog, key: &str, value: Bytes) -> Result<(), HandlerError> {
    match kv.create(key, value).await {
        Ok(_) => log.record(&format!("effect {key}")),
        Err(KvError::AlreadyExists { .. }) => log.record(&format!("skip {key}")),
        Err(e) => return Err(HandlerError::transient(e)),
    }
    Ok(())
}

/// The consumer the kill test runs in a child process.
pub struct FaultConsumer {
    /// Effects bucket.
    pub kv: NatsKeyValue,
    /// Run log.
    pub log: RunLog,
}

#[handlers(domain = "faults")]
impl FaultConsumer {
    /// Records the run, applies the effect once (keyed by message id), publishes `ItemProcessed`.
    ///
    /// `max_attempts` is high because deliveries a killed process never finished count as
    /// attempts; `ack_wait` is short so that they come back quickly after a kill.
    #[subscribe(
        "load.item",
        max_attempts = 100,
        backoff = "100ms",
        ack_wait = "2s",
        concurrency = 16
    )]
    async fn apply(&self, ctx: &Context, event: ItemCreated) -> Result<(), HandlerError> {
        let key = format!("fx.{}", ctx.message_id());
        self.log.record(&format!("run {key}"));
        apply_once(&self.kv, &self.log, &key, Bytes::from(event.n.to_string())).await?;
        ctx.publish(&ItemProcessed { n: event.n }).await?;
        Ok(())
    }
}

/// The saga's persisted data: the steps and compensations that completed, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransferData {
    /// `reserve`, `charge`, ..., and `-charge` for a compensation.
    pub done: Vec<String>,
}

/// A four-step saga (three compensable steps and a pivot) whose every step and compensation
/// applies an idempotent effect keyed by its idempotency key. With `fail` the pivot fails
/// permanently, so the three compensations run.
pub struct Transfer {
    /// Effects bucket.
    pub kv: NatsKeyValue,
    /// Run log.
    pub log: RunLog,
    /// Make `confirm` fail permanently.
    pub fail: bool,
}

impl Transfer {
    async fn effect(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        let key = ctx.idempotency_key().to_owned();
        self.log.record(&format!("run {key}"));
        apply_once(&self.kv, &self.log, &key, Bytes::new()).await?;
        let label = if ctx.is_compensation() {
            format!("-{}", ctx.step())
        } else {
            ctx.step().to_owned()
        };
        ctx.data_mut().done.push(label);
        Ok(())
    }
}

#[saga(data = TransferData, name = "transfer")]
impl Transfer {
    #[step(compensate = "release")]
    async fn reserve(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        self.effect(ctx).await
    }

    #[step(compensate = "refund")]
    async fn charge(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        self.effect(ctx).await
    }

    #[step(compensate = "unship")]
    async fn ship(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        self.effect(ctx).await
    }

    #[step(no_compensation = "pivot: once confirmed, the transfer stands")]
    async fn confirm(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        if self.fail {
            let key = ctx.idempotency_key().to_owned();
            self.log.record(&format!("run {key}"));
            return Err(HandlerError::permanent("confirmation declined"));
        }
        self.effect(ctx).await
    }

    async fn release(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        self.effect(ctx).await
    }

    async fn refund(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        self.effect(ctx).await
    }

    async fn unship(&self, ctx: &mut StepContext<TransferData>) -> Result<(), HandlerError> {
        self.effect(ctx).await
    }
}
