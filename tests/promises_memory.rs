//! The cross-cutting promises (span, bounded metrics, panic caught and retried, breaker deferring)
//! for command handlers, saga starts and process handlers, on the embedded transport under paused
//! time.

mod promises;

use cim_integrate::transport::memory::MemoryTransport;

async fn setup() -> (MemoryTransport, ()) {
    (MemoryTransport::new(), ())
}

promises!(setup: setup, tokio: [flavor = "current_thread", start_paused = true]);
