//! The user crate's saga hosted by a `TestHost`, through the facade's `testing` feature only.

use cim_integrate::prelude::*;
use cim_integrate::saga::StepState;
use cim_integrate::testing::TestHost;
use cim_integrate_testing_user::{Checkout, Payment};

#[tokio::test(start_paused = true)]
async fn a_hosted_saga_is_compensated_and_its_events_are_seen() {
    let builder = TestHost::service("checkout");
    let runner = SagaRunner::builder(builder.transport().clone(), Checkout)
        .build()
        .await
        .unwrap();
    let host = TestHost::start(builder.saga(runner.clone())).await.unwrap();
    let data = Payment {
        order: "o-1".into(),
        undeliverable: true,
        log: Vec::new(),
    };
    let outcome = host.start_saga(&runner, "o-1", data).await.unwrap();
    assert!(matches!(outcome, SagaOutcome::Compensated { .. }), "{outcome:?}");
    host.settle().await;
    host.saga(&runner, "o-1")
        .await
        .then_compensated("ship")
        .then_steps(&[("charge", StepState::Compensated), ("ship", StepState::Failed)])
        .then_data(|d| assert_eq!(d.log, ["+charge", "-charge"]));
    host.dead_letters().expect_none();
    host.shutdown().await;
}
