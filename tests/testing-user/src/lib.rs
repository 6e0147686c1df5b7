//! A user crate, as a new user writes one: a payment saga with a compensation, written against
//! `cim_integrate::prelude` only. Its tests (`tests/saga_fixture.rs`) drive it with
//! `cim_integrate::testing::SagaFixture`, enabled by the facade's `testing` feature as a
//! dev-dependency, with no dependency on the runtime crate.

use cim_integrate::prelude::*;

/// The saga's persisted data: what was done, in order (`+step`, `-compensation`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Payment {
    /// The order paid for.
    pub order: String,
    /// Make the shipping step fail for good, to show the compensation.
    pub undeliverable: bool,
    /// What ran, in order.
    pub log: Vec<String>,
}

/// Charges a card, then books shipping; a failed shipping refunds the charge.
#[derive(Debug, Clone, Default)]
pub struct Checkout;

#[saga(data = Payment)]
impl Checkout {
    #[step(compensate = "refund")]
    async fn charge(&self, ctx: &mut StepContext<Payment>) -> Result<(), HandlerError> {
        ctx.data_mut().log.push("+charge".into());
        Ok(())
    }

    #[step(no_compensation = "the last step: nothing after it can fail")]
    async fn ship(&self, ctx: &mut StepContext<Payment>) -> Result<(), HandlerError> {
        if ctx.data().undeliverable {
            return Err(HandlerError::permanent(format!(
                "order {} cannot be delivered",
                ctx.data().order
            )));
        }
        ctx.data_mut().log.push("+ship".into());
        Ok(())
    }

    async fn refund(&self, ctx: &mut StepContext<Payment>) -> Result<(), HandlerError> {
        ctx.data_mut().log.push("-charge".into());
        Ok(())
    }
}
