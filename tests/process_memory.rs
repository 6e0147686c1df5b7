//! The command, waiter, process-manager, aggregation and correlation scenarios on the embedded
//! transport, under paused time.

mod process_scenarios;

use cim_integrate::transport::memory::MemoryTransport;

async fn setup() -> (MemoryTransport, ()) {
    (MemoryTransport::new(), ())
}

scenarios!(setup: setup, tokio: [flavor = "current_thread", start_paused = true]);
