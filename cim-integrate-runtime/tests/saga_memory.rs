//! The saga conformance suite on the in-memory transport, under paused (virtual) time.

use cim_integrate_runtime::transport::memory::MemoryTransport;

async fn setup() -> (MemoryTransport, ()) {
    (MemoryTransport::new(), ())
}

cim_integrate_runtime::saga_conformance_tests!(setup: setup, tokio: [flavor = "current_thread", start_paused = true]);
