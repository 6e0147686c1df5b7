//! The user crate's saga, driven by `SagaFixture` through the facade's `testing` feature.

use cim_integrate::prelude::*;
use cim_integrate::saga::SagaEventKind::{
    Compensated, Compensating, Completed, Started, StepCompensated, StepCompleted, StepFailed,
};
use cim_integrate::saga::StepState;
use cim_integrate::testing::SagaFixture;
use cim_integrate_testing_user::{Checkout, Payment};

fn payment(order: &str, undeliverable: bool) -> Payment {
    Payment {
        order: order.into(),
        undeliverable,
        log: Vec::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_delivered_order_completes() {
    SagaFixture::new(Checkout)
        .when_started("o-1", payment("o-1", false))
        .await
        .then_completed()
        .then_steps(&[("charge", StepState::Completed), ("ship", StepState::Completed)])
        .then_events(&[Started, StepCompleted, StepCompleted, Completed])
        .then_data(|d| assert_eq!(d.log, ["+charge", "+ship"]));
}

#[tokio::test(start_paused = true)]
async fn an_undeliverable_order_is_refunded() {
    let then = SagaFixture::new(Checkout)
        .when_started("o-2", payment("o-2", true))
        .await;
    then.then_compensated("ship")
        .then_steps(&[("charge", StepState::Compensated), ("ship", StepState::Failed)])
        .then_events(&[
            Started,
            StepCompleted,
            StepFailed,
            Compensating,
            StepCompensated,
            Compensated,
        ])
        .then_data(|d| assert_eq!(d.log, ["+charge", "-charge"]));
    match then.outcome() {
        Ok(SagaOutcome::Compensated { failed_step, error }) => {
            assert_eq!(failed_step, "ship");
            assert!(error.contains("o-2 cannot be delivered"), "{error}");
        }
        other => panic!("expected compensated, got {other:?}"),
    }
}
