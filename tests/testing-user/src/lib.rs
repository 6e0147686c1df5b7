//! A user crate, as a new user writes one: a payment saga with a compensation, written against
//! `cim_integrate::prelude` only. Its tests (`tests/saga_fixture.rs`) drive it with
//! `cim_integrate::testing::SagaFixture`, enabled by the facade's `testing` feature as a
//! dev-dependency, with no dependency on the runtime crate; `tests/wire_contract.rs` pins the
//! wire contract of its event `PaymentTaken` with `cim_integrate::testing::snapshot`.

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

/// A payment was taken. 2.0 counts in cents; its wire contract is pinned by
/// `tests/wire_contract.rs`.
#[domain_event(subject = "payment.taken", version = "2.0", previous = [PaymentTakenV1])]
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentTaken {
    /// The order paid for.
    pub order: String,
    /// The amount, in cents.
    pub amount_cents: u64,
    /// The card's last four digits, when known.
    pub card_last4: Option<String>,
}

/// Frozen: the amount in whole units.
#[domain_event(version = "1.0")]
pub struct PaymentTakenV1 {
    /// The order paid for.
    pub order: String,
    /// The amount, in whole units.
    pub amount: u32,
}

impl From<PaymentTakenV1> for PaymentTaken {
    fn from(v1: PaymentTakenV1) -> Self {
        Self {
            order: v1.order,
            amount_cents: u64::from(v1.amount) * 100,
            card_last4: None,
        }
    }
}
