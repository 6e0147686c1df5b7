//! The transport conformance suite on NATS JetStream, against a private nats-server per test
//! (`NATS_SERVER_BIN`, else `nats-server` on the PATH).

use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::nats::NatsTransport;

async fn setup() -> (NatsTransport, NatsServer) {
    let server = NatsServer::start().await.expect("start nats-server");
    let transport = NatsTransport::connect_url(&server.url()).await.expect("connect");
    (transport, server)
}

cim_integrate_runtime::conformance_tests!(setup: setup, tokio: [flavor = "multi_thread", worker_threads = 2]);

/// A changed filter follows what the server can do: changed in place on nats-server 2.10 and
/// later; a conflict naming the server on 2.9, which takes a changed filter and then delivers
/// nothing (the conformance case `consumer_conflict_and_update` accepts either; this pins which).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_filter_follows_what_the_server_can_do() {
    use cim_integrate_runtime::SubjectPattern;
    use cim_integrate_runtime::transport::{ConsumerSpec, StreamSpec, Transport, TransportError};
    let (t, _server) = setup().await;
    t.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let spec = |filter: &str| {
        ConsumerSpec::new(
            "DOCUMENT_EVENTS",
            "reader",
            SubjectPattern::new(filter).expect("pattern"),
        )
    };
    t.consumer(&spec("document.created")).await.expect("create");
    let changed = t.consumer(&spec("document.>")).await;
    let (major, minor, _) = cim_integrate_runtime::testing::server_version().expect("version");
    if (major, minor) >= (2, 10) {
        changed.expect("changed in place");
    } else {
        match changed {
            Err(TransportError::ConsumerConflict { detail, .. }) => {
                assert!(detail.contains("delivers nothing"), "{detail}");
            }
            other => panic!("{:?}", other.err()),
        }
    }
}
