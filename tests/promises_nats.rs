//! The cross-cutting promises (span, bounded metrics, panic caught and retried, breaker deferring)
//! for command handlers, saga starts and process handlers, on NATS, against a private nats-server
//! per test (`NATS_SERVER_BIN`, else `nats-server` on the PATH).

mod promises;

use cim_integrate::testing::NatsServer;
use cim_integrate::transport::nats::NatsTransport;

async fn setup() -> (NatsTransport, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let transport = NatsTransport::connect_url(&server.url()).await.expect("connect");
    (transport, server)
}

promises!(setup: setup, tokio: [flavor = "multi_thread", worker_threads = 2]);
