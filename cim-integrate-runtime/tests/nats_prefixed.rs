//! The whole transport conformance suite through `Prefixed<NatsTransport>` (prefix `prod.eu`),
//! and the decorator's own cases seen from a plain client, against a private nats-server per
//! test (`NATS_SERVER_BIN`, else `nats-server` on the PATH).

use cim_integrate_runtime::subject;
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::Prefixed;
use cim_integrate_runtime::transport::nats::NatsTransport;

async fn raw() -> (NatsTransport, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let transport = NatsTransport::connect_url(&server.url()).await.expect("connect");
    (transport, server)
}

async fn setup() -> (Prefixed<NatsTransport>, NatsServer) {
    let (transport, server) = raw().await;
    (Prefixed::new(transport, Some(subject!("prod.eu"))), server)
}

cim_integrate_runtime::conformance_tests!(setup: setup, tokio: [flavor = "multi_thread", worker_threads = 2]);
cim_integrate_runtime::prefixed_tests!(setup: raw, tokio: [flavor = "multi_thread", worker_threads = 2]);
