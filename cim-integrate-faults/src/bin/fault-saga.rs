//! The saga process of the kill test:
//! `fault-saga <nats-url> <run-log> start <saga-id> <happy|fail> <crash-at>` or
//! `fault-saga <nats-url> <run-log> resume <happy|fail>`.
//!
//! `start` runs the [`Transfer`] saga with a fault hook that counts crash points (every persisted
//! write of the saga log, before and after); at point number `crash-at` (0-based) it prints
//! `CRASH <point>` and blocks, waiting for the test to SIGKILL it. A run that finishes first
//! prints `DONE <outcome>`. `resume` resumes every unfinished saga (as a restarted process would)
//! and prints `RESUMED <report>`. Both use the same runner instance name, as a restarted process
//! in the same slot does.

use cim_integrate::saga::SagaRunner;
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::transport::{KvSpec, Transport};
use cim_integrate_faults::{RunLog, SAGA_EFFECTS_BUCKET, Transfer, TransferData};
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: Vec<String>) -> Result<(), BoxError> {
    let [url, log, mode, rest @ ..] = args.as_slice() else {
        return Err(
            "usage: fault-saga <nats-url> <run-log> start <id> <happy|fail> <crash-at> | resume <happy|fail>".into(),
        );
    };
    let t = NatsTransport::connect_url(url).await?;
    let kv = t.key_value(&KvSpec::new(SAGA_EFFECTS_BUCKET)).await?;
    let log = RunLog::open(&PathBuf::from(log))?;
    match (mode.as_str(), rest) {
        ("start", [id, kind, crash_at]) => {
            let crash_at: usize = crash_at.parse()?;
            let seen = Arc::new(AtomicUsize::new(0));
            let saga = Transfer {
                kv,
                log,
                fail: kind == "fail",
            };
            let runner = SagaRunner::builder(t, saga)
                .instance("slot-1")
                .fault_hook(move |point| {
                    if seen.fetch_add(1, Ordering::SeqCst) == crash_at {
                        let mut out = std::io::stdout().lock();
                        let _ = writeln!(out, "CRASH {point}");
                        let _ = out.flush();
                        // Wait here for the SIGKILL: nothing after this point may run.
                        loop {
                            std::thread::sleep(Duration::from_secs(3600));
                        }
                    }
                    false
                })
                .build()
                .await?;
            let outcome = runner.start(id, TransferData::default()).await?;
            // The last crash points (the active record's delete) come after `start` returned,
            // in the runner's background settle: wait for it, as a process that keeps running
            // would let it end.
            runner.settled().await?;
            println!("DONE {outcome:?}");
        }
        ("resume", [kind]) => {
            let saga = Transfer {
                kv,
                log,
                fail: kind == "fail",
            };
            let runner = SagaRunner::builder(t, saga).instance("slot-1").build().await?;
            let report = runner.resume().await?;
            println!("RESUMED {report:?}");
        }
        _ => return Err(format!("unknown arguments {args:?}").into()),
    }
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(run(args)),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        eprintln!("fault-saga: {e}");
        std::process::exit(1);
    }
}
