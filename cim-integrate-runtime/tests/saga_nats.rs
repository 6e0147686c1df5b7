//! The saga conformance suite on NATS JetStream, against a private nats-server per test.

use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::nats::NatsTransport;

async fn setup() -> (NatsTransport, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let transport = NatsTransport::connect_url(&server.url()).await.expect("connect");
    (transport, server)
}

cim_integrate_runtime::saga_conformance_tests!(setup: setup, tokio: [flavor = "multi_thread", worker_threads = 2]);
