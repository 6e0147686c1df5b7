//! The snapshot helpers of `cim_integrate::testing::snapshot`, used as a user's CI would:
//!
//! - the project's own example events (`tests/domain_event_examples`) against the golden
//!   payloads committed in `tests/fixtures/events` (plus a schema per version written beside
//!   them), and a command and a topology against `tests/contracts`;
//! - a renamed field is caught by the wire snapshot, naming the field;
//! - a removed upcast (an older version dropped from `previous`) and a changed upcast (a `From`
//!   that now panics) are caught by the golden check, naming the file and the version.
//!
//! The failing cases run in `SnapshotMode::Check`, so `CIM_SNAPSHOTS=update` never lets them
//! rewrite the committed files they are checked against.

mod domain_event_examples;

use cim_integrate::prelude::*;
use cim_integrate::testing::TestHost;
use cim_integrate::testing::snapshot::{ProblemKind, SnapshotMode, WireContract, assert_topology, check_topology};
use domain_event_examples::*;

fn dir(path: &str) -> String {
    format!("{}/tests/{path}", env!("CARGO_MANIFEST_DIR"))
}

fn id<T: From<cim_integrate::__private::uuid::Uuid>>(s: &str) -> T {
    T::from(s.parse().unwrap())
}

/// The examples are the values of the committed golden payloads of the current versions.
fn document_created() -> DocumentCreated {
    DocumentCreated {
        document_id: id("0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6073"),
        title: "Onboarding guide".into(),
        author: None,
        tags: vec!["hr".into(), "onboarding".into()],
    }
}

fn person_registered() -> PersonRegistered {
    PersonRegistered {
        person_id: id("0192f3c4-7a00-7b00-8c00-0000000000b1"),
        given_name: "Grace".into(),
        family_name: "Hopper".into(),
        email: Some("grace@example.org".into()),
    }
}

#[test]
fn the_example_events_match_their_committed_contract() {
    let report = WireContract::new()
        .event(&document_created())
        .event(&person_registered())
        .assert_matches_dir(dir("fixtures/events"));
    // Every older golden payload decoded and upcast: document_created 1.0, 2.0; person 1.0.
    assert_eq!(report.goldens_decoded.len(), 3, "{report:?}");
    assert!(report.goldens_missing.is_empty(), "{report:?}");
}

/// An order's orders: a command with a history, and the events of the must-show cases.
mod orders {
    use cim_integrate::prelude::*;

    /// Cancels an order. 2.0 added `reason`.
    #[command(subject = "order.cancel", version = "2.0", previous = [CancelOrderV1])]
    #[derive(Debug, Clone, PartialEq)]
    pub struct CancelOrder {
        pub order_id: String,
        #[serde(default)]
        pub reason: String,
    }

    /// Frozen.
    #[command(version = "1.0", frozen)]
    pub struct CancelOrderV1 {
        pub order_id: String,
    }

    impl From<CancelOrderV1> for CancelOrder {
        fn from(v1: CancelOrderV1) -> Self {
            Self {
                order_id: v1.order_id,
                reason: String::new(),
            }
        }
    }
}

#[test]
fn a_command_with_history_matches_its_committed_contract() {
    let report = WireContract::new()
        .command(&orders::CancelOrder {
            order_id: "o-1".into(),
            reason: "changed my mind".into(),
        })
        .assert_matches_dir(dir("contracts"));
    assert_eq!(report.goldens_decoded.len(), 1, "{report:?}");
}

/// The event as committed: `tests/contracts/order_placed/1.0.*`.
mod placed {
    use cim_integrate::prelude::*;

    #[domain_event(subject = "order.placed", version = "1.0")]
    #[derive(Debug, Clone)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub quantity: u32,
        pub note: Option<String>,
    }
}

/// The same event, with `quantity` renamed `amount`: the same Rust code compiles, and every
/// stored `order.placed` payload would fail to decode.
mod placed_renamed {
    use cim_integrate::prelude::*;

    #[domain_event(subject = "order.placed", version = "1.0")]
    #[derive(Debug, Clone)]
    pub struct OrderPlaced {
        pub order_id: String,
        pub amount: u32,
        pub note: Option<String>,
    }
}

#[test]
fn the_committed_order_placed_matches() {
    WireContract::new()
        .event(&placed::OrderPlaced {
            order_id: "o-1".into(),
            quantity: 2,
            note: None,
        })
        .assert_matches_dir(dir("contracts"));
}

#[test]
fn the_wire_snapshot_catches_a_renamed_field() {
    let mismatch = WireContract::new()
        .event(&placed_renamed::OrderPlaced {
            order_id: "o-1".into(),
            amount: 2,
            note: None,
        })
        .mode(SnapshotMode::Check)
        .check_dir(dir("contracts"))
        .unwrap_err();
    let message = mismatch.to_string();
    let schema = mismatch
        .problems
        .iter()
        .find(|p| p.file.ends_with("order_placed/1.0.schema.json"))
        .unwrap_or_else(|| panic!("no schema problem in:\n{message}"));
    assert_eq!(schema.kind, ProblemKind::Changed);
    assert_eq!(
        (schema.subject.as_str(), schema.version.as_str()),
        ("event `OrderPlaced`", "1.0")
    );
    assert!(
        schema
            .detail
            .contains(r#"field `quantity` removed (was "integer", required)"#),
        "{message}"
    );
    assert!(
        schema.detail.contains(r#"field `amount` added ("integer", required)"#),
        "{message}"
    );
    let golden = mismatch
        .problems
        .iter()
        .find(|p| p.file.ends_with("order_placed/1.0.json"))
        .unwrap_or_else(|| panic!("no golden problem in:\n{message}"));
    assert!(golden.detail.contains("`/quantity` removed (was 2)"), "{message}");
    assert!(message.contains("CIM_SNAPSHOTS=update cargo test"), "{message}");
}

/// `order.shipped` as committed: 2.0 current, 1.0 frozen with a golden payload.
mod shipped {
    use cim_integrate::prelude::*;

    #[domain_event(subject = "order.shipped", version = "2.0", previous = [OrderShippedV1])]
    #[derive(Debug, Clone, PartialEq)]
    pub struct OrderShipped {
        pub order_id: String,
        pub carrier: String,
        pub parcels: u32,
    }

    /// Frozen: one parcel per shipment.
    #[domain_event(version = "1.0")]
    pub struct OrderShippedV1 {
        pub order_id: String,
        pub carrier: String,
    }

    impl From<OrderShippedV1> for OrderShipped {
        fn from(v1: OrderShippedV1) -> Self {
            Self {
                order_id: v1.order_id,
                carrier: v1.carrier,
                parcels: 1,
            }
        }
    }

    pub fn example() -> OrderShipped {
        OrderShipped {
            order_id: "o-1".into(),
            carrier: "post".into(),
            parcels: 2,
        }
    }
}

/// The same event with 1.0 dropped from `previous` (and its `From` deleted).
mod shipped_without_upcast {
    use cim_integrate::prelude::*;

    #[domain_event(subject = "order.shipped", version = "2.0")]
    #[derive(Debug, Clone, PartialEq)]
    pub struct OrderShipped {
        pub order_id: String,
        pub carrier: String,
        pub parcels: u32,
    }
}

/// The same event whose upcast from 1.0 changed: it now parses the carrier as a number.
mod shipped_changed_upcast {
    use cim_integrate::prelude::*;

    #[domain_event(subject = "order.shipped", version = "2.0", previous = [OrderShippedV1])]
    #[derive(Debug, Clone, PartialEq)]
    pub struct OrderShipped {
        pub order_id: String,
        pub carrier: String,
        pub parcels: u32,
    }

    #[domain_event(version = "1.0")]
    pub struct OrderShippedV1 {
        pub order_id: String,
        pub carrier: String,
    }

    impl From<OrderShippedV1> for OrderShipped {
        fn from(v1: OrderShippedV1) -> Self {
            let parcels = v1.carrier.parse().expect("a carrier code");
            Self {
                order_id: v1.order_id,
                carrier: v1.carrier,
                parcels,
            }
        }
    }
}

#[test]
fn the_committed_order_shipped_history_decodes() {
    let report = WireContract::new()
        .event(&shipped::example())
        .assert_matches_dir(dir("contracts"));
    assert!(
        report.goldens_decoded[0].ends_with("order_shipped/1.0.json"),
        "{report:?}"
    );
}

#[test]
fn the_golden_check_catches_a_removed_upcast() {
    let e = shipped::example();
    let mismatch = WireContract::new()
        .event(&shipped_without_upcast::OrderShipped {
            order_id: e.order_id,
            carrier: e.carrier,
            parcels: e.parcels,
        })
        .mode(SnapshotMode::Check)
        .check_dir(dir("contracts"))
        .unwrap_err();
    let message = mismatch.to_string();
    assert_eq!(mismatch.problems.len(), 1, "{message}");
    let p = &mismatch.problems[0];
    assert_eq!(p.kind, ProblemKind::GoldenNotDecodable);
    assert!(p.file.ends_with("order_shipped/1.0.json"), "{message}");
    assert_eq!(p.version, "1.0");
    assert!(p.detail.contains(r#"unknown version "1.0""#), "{message}");
    assert!(
        p.detail
            .contains("version 1.0 is no longer in `OrderShipped`'s history"),
        "{message}"
    );
}

#[test]
fn the_golden_check_catches_a_changed_upcast() {
    let e = shipped::example();
    let mismatch = WireContract::new()
        .event(&shipped_changed_upcast::OrderShipped {
            order_id: e.order_id,
            carrier: e.carrier,
            parcels: e.parcels,
        })
        .mode(SnapshotMode::Check)
        .check_dir(dir("contracts"))
        .unwrap_err();
    let message = mismatch.to_string();
    assert_eq!(mismatch.problems.len(), 1, "{message}");
    let p = &mismatch.problems[0];
    assert_eq!((p.kind, p.version.as_str()), (ProblemKind::GoldenNotDecodable, "1.0"));
    assert!(p.detail.contains("an upcast panicked: a carrier code"), "{message}");
}

/// A frozen version whose struct was edited fails even in `Update` mode.
mod shipped_frozen_edited {
    use cim_integrate::prelude::*;

    #[domain_event(subject = "order.shipped", version = "2.0", previous = [OrderShippedV1])]
    #[derive(Debug, Clone, PartialEq)]
    pub struct OrderShipped {
        pub order_id: String,
        pub carrier: String,
        pub parcels: u32,
    }

    #[domain_event(version = "1.0")]
    pub struct OrderShippedV1 {
        pub order_id: String,
        pub carrier_code: String,
    }

    impl From<OrderShippedV1> for OrderShipped {
        fn from(v1: OrderShippedV1) -> Self {
            Self {
                order_id: v1.order_id,
                carrier: v1.carrier_code,
                parcels: 1,
            }
        }
    }
}

#[test]
fn an_edited_frozen_version_is_never_accepted_by_update() {
    let e = shipped::example();
    let scratch = scratch_dir("frozen");
    copy_dir(&dir("contracts/order_shipped"), &scratch.join("order_shipped"));
    let mismatch = WireContract::new()
        .event(&shipped_frozen_edited::OrderShipped {
            order_id: e.order_id,
            carrier: e.carrier,
            parcels: e.parcels,
        })
        .mode(SnapshotMode::Update)
        .check_dir(&scratch)
        .unwrap_err();
    let message = mismatch.to_string();
    let kinds: Vec<ProblemKind> = mismatch.problems.iter().map(|p| p.kind).collect();
    // The schema of 1.0 changed, and the 1.0 golden payload no longer decodes.
    assert_eq!(
        kinds,
        [ProblemKind::FrozenChanged, ProblemKind::GoldenNotDecodable],
        "{message}"
    );
    assert!(message.contains("field `carrier_code` added"), "{message}");
    assert!(message.contains("A frozen version is on the wire"), "{message}");
    let _ = std::fs::remove_dir_all(scratch);
}

#[test]
fn missing_snapshots_fail_in_check_mode_and_are_written_locally() {
    let scratch = scratch_dir("missing");
    let contract = || {
        WireContract::new().event(&placed::OrderPlaced {
            order_id: "o-1".into(),
            quantity: 2,
            note: None,
        })
    };
    let mismatch = contract().mode(SnapshotMode::Check).check_dir(&scratch).unwrap_err();
    let kinds: Vec<ProblemKind> = mismatch.problems.iter().map(|p| p.kind).collect();
    assert_eq!(kinds, [ProblemKind::Missing, ProblemKind::Missing], "{mismatch}");
    // An older version without a golden payload is reported, not failed.
    let history = WireContract::new()
        .event(&shipped::example())
        .mode(SnapshotMode::Local)
        .check_dir(&scratch)
        .unwrap();
    assert_eq!(history.goldens_missing, [("OrderShipped".to_owned(), "1.0".to_owned())]);
    let report = contract().mode(SnapshotMode::Local).check_dir(&scratch).unwrap();
    assert_eq!(report.written.len(), 2, "{report:?}");
    // The golden payload is the wire bytes, the version tag first.
    let golden = std::fs::read_to_string(scratch.join("order_placed/1.0.json")).unwrap();
    assert_eq!(
        golden,
        "{\"version\":\"1.0\",\"order_id\":\"o-1\",\"quantity\":2,\"note\":null}\n"
    );
    let again = contract().mode(SnapshotMode::Check).check_dir(&scratch).unwrap();
    assert_eq!((again.matched.len(), again.written.len()), (2, 0));
    let _ = std::fs::remove_dir_all(scratch);
}

/// A shipping domain reacting to placed orders.
struct Shipping;

#[handlers(domain = "shipping")]
impl Shipping {
    #[subscribe("order.placed", publishes = [shipped::OrderShipped])]
    async fn ship(&self, ctx: &Context, e: placed::OrderPlaced) -> Result<(), HandlerError> {
        ctx.publish(&shipped::OrderShipped {
            order_id: e.order_id,
            carrier: "post".into(),
            parcels: e.quantity,
        })
        .await?;
        Ok(())
    }
}

#[test]
fn the_topology_matches_its_committed_snapshot() {
    let builder = TestHost::service("shop")
        .register(Shipping)
        .declare_event::<placed::OrderPlaced>();
    let topology = builder.topology();
    assert_topology(&topology, dir("contracts"), "topology");
    // A new subscriber changes the snapshot.
    let mut changed = topology.clone();
    changed.add_subscription("billing", "invoice", "order.shipped", Some("OrderShipped"));
    let mismatch = check_topology(&changed, dir("contracts"), "topology", SnapshotMode::Check).unwrap_err();
    let message = mismatch.to_string();
    assert!(
        message.contains(r#"+    m_order_shipped -->|"invoice"| p_billing"#),
        "{message}"
    );
}

fn scratch_dir(name: &str) -> std::path::PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("cim-wire-contract-{name}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn copy_dir(from: &str, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}
