//! The whole transport conformance suite through `Prefixed<MemoryTransport>` (prefix `prod.eu`),
//! and the decorator's own cases seen from a plain client, under paused time.

use cim_integrate_runtime::subject;
use cim_integrate_runtime::transport::Prefixed;
use cim_integrate_runtime::transport::memory::MemoryTransport;

async fn setup() -> (Prefixed<MemoryTransport>, ()) {
    (Prefixed::new(MemoryTransport::new(), Some(subject!("prod.eu"))), ())
}

async fn raw() -> (MemoryTransport, ()) {
    (MemoryTransport::new(), ())
}

cim_integrate_runtime::conformance_tests!(setup: setup, tokio: [flavor = "current_thread", start_paused = true]);
cim_integrate_runtime::prefixed_tests!(setup: raw, tokio: [flavor = "current_thread", start_paused = true]);
