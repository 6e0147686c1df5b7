//! `cim-integrate`: the operator's tool. See `docs/operations.md`.
//!
//! Configured like the library: `NATS_URL` and the credential variables (`NATS_CREDS`,
//! `NATS_USER`/`NATS_PASSWORD`, `NATS_TOKEN`, `NATS_NKEY_SEED`, TLS ones), and `CIM_PREFIX` for a
//! deployment prefix. Tables for people, `--json` for scripts.
//!
//! Exit codes: 0 done; 1 failed (the message says why); 2 usage error; 3 not found; 4 NATS
//! unavailable (timeouts, no responders, no leader: try again later); 5 declined (a destructive
//! action not confirmed); 6 partly done (some selected items were skipped; the output lists
//! them).

mod cli;
mod console;
mod table;

use clap::Parser;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(if args.verbose {
            tracing::Level::DEBUG
        } else {
            tracing::Level::WARN
        })
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(cli::EXIT_FAILED);
        }
    };
    let code = runtime.block_on(cli::run(args));
    ExitCode::from(code)
}
