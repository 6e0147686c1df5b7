//! The user crate's wire contract, pinned in `tests/contracts` through the facade's `testing`
//! feature only: the schema of every version of `PaymentTaken`, the golden payload of 2.0, and
//! the check that the committed 1.0 payload still decodes and upcasts.

use cim_integrate::testing::snapshot::WireContract;
use cim_integrate_testing_user::PaymentTaken;

#[test]
fn the_wire_contract_is_unchanged() {
    let report = WireContract::new()
        .event(&PaymentTaken {
            order: "o-1".into(),
            amount_cents: 1250,
            card_last4: Some("4242".into()),
        })
        .assert_matches_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/contracts"));
    assert_eq!(report.goldens_decoded.len(), 1, "{report:?}");
}
