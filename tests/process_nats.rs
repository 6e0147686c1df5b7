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

mod tombstones {
    use super::process_scenarios::{Onboarding, onboarding_process_runs_to_its_end, process_options};
    use super::setup;
    use cim_integrate::process::{ProcessOptions, ProcessRunner};
    use std::time::{Duration, Instant};

    /// A finished instance's record is deleted, which leaves a tombstone (a delete marker the
    /// bucket's stream keeps for good); the deadline scanner's sweep, when it starts and then
    /// every 30 scans, removes those older than `tombstone_age`, so a process's records bucket
    /// holds its running instances only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn finished_instances_leave_no_tombstones() {
        let (t, _server) = setup().await;
        onboarding_process_runs_to_its_end(t.clone()).await;
        let stored = || async {
            let mut stream = t.jetstream().get_stream("KV_cim_pm_onboarding").await.expect("bucket");
            stream.info().await.expect("info").state.messages
        };
        assert_eq!(stored().await, 1, "the deleted record's tombstone");
        let runner = ProcessRunner::<_, Onboarding>::with_options(
            t.clone(),
            ProcessOptions {
                tombstone_age: Duration::ZERO,
                ..process_options()
            },
        )
        .await
        .expect("runner");
        let _timers = runner.spawn_timers();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stored().await != 0 {
            assert!(Instant::now() < deadline, "the tombstone is still stored after 10 s");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
