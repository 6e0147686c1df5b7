//! The command, waiter, process-manager, aggregation and correlation scenarios on NATS, against
//! a private nats-server per test (`NATS_SERVER_BIN`, else `nats-server` on the PATH).

mod process_scenarios;

use cim_integrate::testing::NatsServer;
use cim_integrate::transport::nats::NatsTransport;

async fn setup() -> (NatsTransport, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let transport = NatsTransport::connect_url(&server.url()).await.expect("connect");
    (transport, server)
}

scenarios!(setup: setup, tokio: [flavor = "multi_thread", worker_threads = 2]);
