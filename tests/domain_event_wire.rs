//! The wire format of `#[domain_event]` types: golden payloads of every historical version decode
//! and upcast to the current one; encode/decode round-trips; and no input makes decode panic.

mod domain_event_examples;

use cim_integrate::event::{self, DecodeError, DomainEvent, PayloadVersion, Versioned};
use cim_integrate::prelude::*;
use domain_event_examples::*;
use proptest::prelude::*;

/// A golden payload, committed once and never regenerated.
fn fixture(path: &str) -> Vec<u8> {
    let full = format!("{}/tests/fixtures/events/{path}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&full).unwrap_or_else(|e| panic!("{full}: {e}"))
}

fn id<T: From<uuid_like::Uuid>>(s: &str) -> T {
    T::from(s.parse().unwrap())
}

mod uuid_like {
    pub use cim_integrate::__private::uuid::Uuid;
}

#[test]
fn document_created_1_0_upcasts_to_current() {
    let event = DocumentCreated::decode(&fixture("document_created/1.0.json")).unwrap();
    assert_eq!(
        event,
        DocumentCreated {
            document_id: id("0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071"),
            title: "Quarterly report".into(),
            author: None,
            tags: vec![],
        }
    );
}

#[test]
fn document_created_2_0_upcasts_to_current() {
    let event = DocumentCreated::decode(&fixture("document_created/2.0.json")).unwrap();
    assert_eq!(
        event,
        DocumentCreated {
            document_id: id("0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6072"),
            title: "Architecture decision: JetStream".into(),
            author: Some(id("0192f3c4-6000-7000-8000-00000000a11c")),
            tags: vec![],
        }
    );
}

#[test]
fn document_created_3_0_decodes_and_re_encodes() {
    let golden = fixture("document_created/3.0.json");
    let event = DocumentCreated::decode(&golden).unwrap();
    assert_eq!(
        event,
        DocumentCreated {
            document_id: id("0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6073"),
            title: "Onboarding guide".into(),
            author: None,
            tags: vec!["hr".into(), "onboarding".into()],
        }
    );
    assert_same_json(&event.encode().unwrap(), &golden);
}

#[test]
fn person_registered_1_0_upcasts_to_current() {
    let event = PersonRegistered::decode(&fixture("person_registered/1.0.json")).unwrap();
    assert_eq!(
        event,
        PersonRegistered {
            person_id: id("0192f3c4-7a00-7b00-8c00-0000000000b0"),
            given_name: "Ada".into(),
            family_name: "Lovelace".into(),
            email: None,
        }
    );
}

#[test]
fn person_registered_2_0_decodes_with_the_tag_last() {
    let golden = fixture("person_registered/2.0.json");
    let event = PersonRegistered::decode(&golden).unwrap();
    assert_eq!(
        event,
        PersonRegistered {
            person_id: id("0192f3c4-7a00-7b00-8c00-0000000000b1"),
            given_name: "Grace".into(),
            family_name: "Hopper".into(),
            email: Some("grace@example.org".into()),
        }
    );
    assert_same_json(&event.encode().unwrap(), &golden);
}

#[test]
fn frozen_versions_encode_as_their_fixtures() {
    let v1 = DocumentCreatedV1 {
        document_id: id("0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6071"),
        title: "Quarterly report".into(),
    };
    assert_same_json(
        &event::encode_version(&v1).unwrap(),
        &fixture("document_created/1.0.json"),
    );
}

fn assert_same_json(actual: &[u8], expected: &[u8]) {
    let actual: serde_json::Value = serde_json::from_slice(actual).unwrap();
    let expected: serde_json::Value = serde_json::from_slice(expected).unwrap();
    assert_eq!(actual, expected);
}

#[test]
fn wire_format_is_the_tag_then_the_fields() {
    let event = PersonRegistered {
        person_id: id("0192f3c4-7a00-7b00-8c00-0000000000b1"),
        given_name: "Grace".into(),
        family_name: "Hopper".into(),
        email: None,
    };
    assert_eq!(
        std::str::from_utf8(&event.encode().unwrap()).unwrap(),
        r#"{"version":"2.0","person_id":"0192f3c4-7a00-7b00-8c00-0000000000b1","given_name":"Grace","family_name":"Hopper"}"#
    );
}

#[test]
fn constants_describe_the_history() {
    assert_eq!(DocumentCreated::TYPE_NAME, "DocumentCreated");
    assert_eq!(DocumentCreated::SUBJECT, "document.created");
    assert_eq!(DocumentCreated::VERSION, "3.0");
    assert_eq!(DocumentCreated::VERSIONS, ["1.0", "2.0", "3.0"]);
    assert_eq!(DocumentCreatedV2::VERSION, "2.0");
    assert_eq!(PersonRegistered::VERSIONS, ["1.0", "2.0"]);
    assert_eq!(DocumentCreated::subject(), subject!("document.created"));
    // what a later `#[subscribe("document.*")]` checks at compile time
    const _: () = assert!(cim_integrate::subject::pattern_matches(
        "document.*",
        DocumentCreated::SUBJECT
    ));
    const _: () = assert!(!cim_integrate::subject::pattern_matches(
        "document.*",
        PersonRegistered::SUBJECT
    ));
}

#[test]
fn envelopes_carry_type_version_and_identity() {
    let event = DocumentCreated {
        document_id: DocumentId::new(),
        title: "t".into(),
        author: None,
        tags: vec![],
    };
    let root = event.to_envelope().unwrap();
    assert_eq!(root.subject().as_str(), "document.created");
    assert_eq!(root.event_type(), Some("DocumentCreated"));
    assert_eq!(root.event_version(), Some("3.0"));
    assert!(root.identity().is_root());
    let reaction = PersonRegistered {
        person_id: PersonId::new(),
        given_name: "a".into(),
        family_name: "b".into(),
        email: None,
    };
    let child = reaction.to_envelope_caused_by(root.identity()).unwrap();
    assert_eq!(child.correlation_id(), root.correlation_id());
    assert_eq!(child.causation_id().into_uuid(), root.message_id().into_uuid());
    assert_eq!(PersonRegistered::from_envelope(&child).unwrap(), reaction);
    assert_eq!(DocumentCreated::from_envelope(&root).unwrap(), event);
}

#[test]
fn every_bad_payload_is_a_typed_error_naming_type_and_version() {
    let decode = |json: &str| DocumentCreated::decode(json.as_bytes()).unwrap_err();
    let e = decode("not json");
    assert!(matches!(e, DecodeError::InvalidJson { .. }), "{e:?}");
    assert_eq!(e.type_name(), "DocumentCreated");
    let e = decode(r#"{"title":"t"}"#);
    assert!(matches!(e, DecodeError::MissingVersion { .. }), "{e:?}");
    let e = decode(r#"{"version":3}"#);
    assert!(matches!(e, DecodeError::NonStringVersion { .. }), "{e:?}");
    assert!(e.to_string().contains("the number 3"), "{e}");
    let e = decode(r#"{"version":"4.0","title":"t"}"#);
    assert_eq!(
        e.to_string(),
        r#"cannot decode `DocumentCreated`: unknown version "4.0"; known versions: "1.0", "2.0", "3.0""#
    );
    assert_eq!(e.version(), Some("4.0"));
    let e = decode(r#"{"version":"2.0","document_id":"0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6072"}"#);
    assert!(matches!(e, DecodeError::InvalidFields { .. }), "{e:?}");
    assert!(
        e.to_string()
            .starts_with(r#"cannot decode `DocumentCreated` version "2.0": missing field `title`"#),
        "{e}"
    );
    let e = decode(r#"{"version":"1.0","document_id":"nope","title":"t"}"#);
    assert_eq!(e.version(), Some("1.0"));
}

fn document_id() -> impl Strategy<Value = DocumentId> {
    any::<u128>().prop_map(|n| DocumentId::from_uuid(uuid_like::Uuid::from_u128(n)))
}

fn user_id() -> impl Strategy<Value = UserId> {
    any::<u128>().prop_map(|n| UserId::from_uuid(uuid_like::Uuid::from_u128(n)))
}

proptest! {
    #[test]
    fn current_version_round_trips(
        document_id in document_id(),
        title in any::<String>(),
        author in proptest::option::of(user_id()),
        tags in proptest::collection::vec(any::<String>(), 0..4),
    ) {
        let event = DocumentCreated { document_id, title, author, tags };
        let bytes = event.encode().unwrap();
        prop_assert_eq!(DocumentCreated::decode(&bytes).unwrap(), event);
    }

    #[test]
    fn older_versions_round_trip_through_the_upcast(
        document_id in document_id(),
        title in any::<String>(),
        author in proptest::option::of(user_id()),
    ) {
        let v1 = DocumentCreatedV1 { document_id, title: title.clone() };
        let decoded = DocumentCreated::decode(&event::encode_version(&v1).unwrap()).unwrap();
        prop_assert_eq!(decoded, DocumentCreated::from(DocumentCreatedV2::from(v1)));
        let v2 = DocumentCreatedV2 { document_id, title, author };
        let decoded = DocumentCreated::decode(&event::encode_version(&v2).unwrap()).unwrap();
        prop_assert_eq!(decoded, DocumentCreated::from(v2));
    }

    #[test]
    fn person_round_trips(name in "\\PC{0,20}", email in proptest::option::of("\\PC{0,20}")) {
        let v1 = PersonRegisteredV1 { person_id: PersonId::new(), name };
        let decoded = PersonRegistered::decode(&event::encode_version(&v1).unwrap()).unwrap();
        prop_assert_eq!(&decoded, &PersonRegistered::from(v1));
        let current = PersonRegistered { email, ..decoded };
        prop_assert_eq!(PersonRegistered::decode(&current.encode().unwrap()).unwrap(), current);
    }

    #[test]
    fn arbitrary_bytes_never_panic(payload in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = DocumentCreated::decode(&payload);
        let _ = PersonRegistered::decode(&payload);
    }

    #[test]
    fn mutated_payloads_give_typed_errors_never_panics(
        cut in 0usize..200,
        flip in any::<u8>(),
        at in 0usize..200,
        which in 0usize..3,
    ) {
        let golden = fixture(["document_created/1.0.json", "document_created/2.0.json", "document_created/3.0.json"][which]);
        let mut bytes = golden.clone();
        if at < bytes.len() { bytes[at] ^= flip; }
        bytes.truncate(cut.max(1).min(bytes.len()));
        match DocumentCreated::decode(&bytes) {
            Ok(_) => {}
            Err(e) => prop_assert_eq!(e.type_name(), "DocumentCreated"),
        }
    }

    #[test]
    fn arbitrary_json_objects_never_panic(
        version in prop_oneof![Just(r#""1.0""#.to_owned()), Just(r#""3.0""#.to_owned()), Just("null".to_owned()), "\\PC{0,6}"],
        fields in proptest::collection::vec(("[a-z_]{1,12}", prop_oneof![Just("1".to_owned()), Just(r#""x""#.to_owned()), Just("[]".to_owned()), Just("{}".to_owned())]), 0..6),
    ) {
        let mut json = format!(r#"{{"version":{version}"#);
        for (k, v) in fields { json.push_str(&format!(r#","{k}":{v}"#)); }
        json.push('}');
        let _ = DocumentCreated::decode(json.as_bytes());
    }
}
