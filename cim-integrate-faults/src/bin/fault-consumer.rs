//! The consumer process of the kill test: `fault-consumer <nats-url> <run-log>`.
//!
//! Runs a `Service` with [`FaultConsumer`] on NATS until its stdin closes (then shuts down
//! gracefully) or it is killed. Prints `READY` once the service has started.

use cim_integrate::service::Service;
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::transport::{KvSpec, Transport};
use cim_integrate_faults::{EFFECTS_BUCKET, FaultConsumer, RunLog};
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(url: String, log: PathBuf) -> Result<(), BoxError> {
    let t = NatsTransport::connect_url(&url).await?;
    let kv = t.key_value(&KvSpec::new(EFFECTS_BUCKET)).await?;
    let log = RunLog::open(&log)?;
    let service = Service::builder(t, "faults")
        .register(FaultConsumer { kv, log })
        .start()
        .await?;
    println!("READY");
    // Stdin closing is the signal to stop gracefully.
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = tx.send(());
    });
    let _ = rx.await;
    service.shutdown(Duration::from_secs(5)).await;
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let (Some(url), Some(log)) = (args.next(), args.next()) else {
        eprintln!("usage: fault-consumer <nats-url> <run-log>");
        std::process::exit(2);
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match rt {
        Ok(rt) => rt.block_on(run(url, PathBuf::from(log))),
        Err(e) => Err(e.into()),
    };
    if let Err(e) = result {
        eprintln!("fault-consumer: {e}");
        std::process::exit(1);
    }
}
