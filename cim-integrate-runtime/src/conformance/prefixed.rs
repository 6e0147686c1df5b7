//! Cases of the [`Prefixed`] decorator, seen from a plain client: each takes the *raw* transport,
//! wraps it under a prefix, and checks with the raw transport what really is on the server.
//!
//! (The whole conformance suite also runs through a [`Prefixed`] transport:
//! `tests/memory_prefixed.rs`, `tests/nats_prefixed.rs`.)

use super::{SOON, event, next_within, none_within, pattern, subject};
use crate::headers::Headers;
use crate::subject::Subject;
use crate::transport::{
    ConsumerSpec, KeyValue, KvSpec, OutboundMessage, Prefixed, Reply, Request, StreamSpec, Transport,
};
use bytes::Bytes;
use std::time::Duration;

fn prod_eu<T: Transport>(raw: &T) -> Prefixed<T> {
    Prefixed::new(raw.clone(), Some(Subject::new("prod.eu").expect("prefix")))
}

/// Published through the decorator, a message is stored on `prod.eu.document.created` in
/// `PROD_EU_DOCUMENT_EVENTS`; published raw on a prefixed subject, it reaches a prefixed consumer
/// with the prefix stripped.
pub async fn plain_client_sees_prefixed_subjects_and_streams<T: Transport>(raw: T) {
    let prod = prod_eu(&raw);
    prod.ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    let ack = prod
        .publish_and_wait(event("document.created", "{}").into())
        .await
        .expect("publish");
    assert_eq!((&*ack.stream, ack.sequence), ("DOCUMENT_EVENTS", 1));

    let mut plain = raw
        .consumer(&ConsumerSpec::new(
            "PROD_EU_DOCUMENT_EVENTS",
            "plain",
            pattern("prod.eu.document.>"),
        ))
        .await
        .expect("the stream exists under its prefixed name");
    let d = next_within(&mut plain, SOON).await;
    assert_eq!(d.subject(), "prod.eu.document.created");
    assert_eq!(&*d.info().stream, "PROD_EU_DOCUMENT_EVENTS");
    d.ack().await.expect("ack");
    let err = raw
        .consumer(&ConsumerSpec::new("DOCUMENT_EVENTS", "plain", pattern("document.>")))
        .await
        .expect_err("no unprefixed stream was created");
    assert!(
        matches!(err, crate::transport::TransportError::StreamNotFound { .. }),
        "{err:?}"
    );

    let foreign = OutboundMessage {
        subject: subject("prod.eu.document.updated"),
        headers: Headers::new(),
        payload: Bytes::from_static(b"{}"),
    };
    assert_eq!(
        &*raw.publish_and_wait(foreign).await.expect("raw publish").stream,
        "PROD_EU_DOCUMENT_EVENTS"
    );
    let mut c = prod
        .consumer(&ConsumerSpec::new(
            "DOCUMENT_EVENTS",
            "reader",
            pattern("document.updated"),
        ))
        .await
        .expect("consumer");
    let d = next_within(&mut c, SOON).await;
    assert_eq!(d.subject(), "document.updated");
    assert_eq!(&*d.info().stream, "DOCUMENT_EVENTS");
    assert_eq!(d.envelope().expect("envelope").subject().as_str(), "document.updated");
    d.ack().await.expect("ack");
    none_within(&mut c, Duration::from_millis(300)).await;
    prod.delete_consumer("DOCUMENT_EVENTS", "reader")
        .await
        .expect("delete through the decorator");
    let err = raw
        .delete_consumer("PROD_EU_DOCUMENT_EVENTS", "reader")
        .await
        .expect_err("it was the prefixed stream's consumer, and it is gone");
    assert!(
        matches!(err, crate::transport::TransportError::ConsumerNotFound { .. }),
        "{err:?}"
    );
}

/// Two prefixes on one server: the same logical stream twice, without overlap, and no message
/// crosses from one deployment to the other.
pub async fn deployments_are_isolated<T: Transport>(raw: T) {
    let prod = Prefixed::new(raw.clone(), Some(Subject::new("prod").expect("prefix")));
    let staging = Prefixed::new(raw.clone(), Some(Subject::new("staging").expect("prefix")));
    let spec = StreamSpec::for_domain("document", None).expect("spec");
    prod.ensure_stream(&spec).await.expect("prod stream");
    staging.ensure_stream(&spec).await.expect("staging stream");
    prod.publish_and_wait(event("document.created", r#"{"in":"prod"}"#).into())
        .await
        .expect("publish");
    let mut s = staging
        .consumer(&ConsumerSpec::new("DOCUMENT_EVENTS", "reader", pattern("document.>")))
        .await
        .expect("consumer");
    none_within(&mut s, Duration::from_millis(300)).await;
    let mut p = prod
        .consumer(&ConsumerSpec::new("DOCUMENT_EVENTS", "reader", pattern("document.>")))
        .await
        .expect("consumer");
    let d = next_within(&mut p, SOON).await;
    assert_eq!(d.payload().as_ref(), br#"{"in":"prod"}"#);
    d.ack().await.expect("ack");
}

/// Buckets are `prod_eu_{bucket}`: what the decorator writes, a plain client reads there.
pub async fn buckets_are_prefixed<T: Transport>(raw: T) {
    let prod = prod_eu(&raw);
    let kv = prod.key_value(&KvSpec::new("state")).await.expect("bucket");
    kv.put("k", Bytes::from_static(b"prod")).await.expect("put");
    let plain = raw.key_value(&KvSpec::new("prod_eu_state")).await.expect("bucket");
    assert_eq!(
        plain.get("k").await.expect("get").map(|e| e.value),
        Some(Bytes::from_static(b"prod"))
    );
    let unprefixed = raw.key_value(&KvSpec::new("state")).await.expect("bucket");
    assert_eq!(unprefixed.get("k").await.expect("get"), None);
}

/// Requests go to `prod.eu.{subject}`; a decorated responder sees them unprefixed, in its
/// unprefixed group, and a plain requester reaches it on the prefixed subject.
pub async fn requests_are_prefixed<T: Transport>(raw: T) {
    let prod = prod_eu(&raw);
    let mut responder = prod
        .serve(&pattern("commands.document.>"), "document")
        .await
        .expect("serve");
    assert_eq!(
        (responder.pattern(), responder.group()),
        ("commands.document.>", "document")
    );
    let serving = tokio::spawn(async move {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let req = responder.next().await.expect("a request");
            seen.push(req.subject().to_owned());
            let payload = Bytes::copy_from_slice(req.subject().as_bytes());
            req.respond(Reply {
                headers: Headers::new(),
                payload,
            })
            .await
            .expect("respond");
        }
        seen
    });
    let request = |s: &str| Request {
        subject: subject(s),
        headers: Headers::new(),
        payload: Bytes::from_static(b"{}"),
    };
    let reply = raw
        .request(request("prod.eu.commands.document.create"), SOON)
        .await
        .expect("a plain requester reaches the prefixed subject");
    assert_eq!(reply.payload.as_ref(), b"commands.document.create");
    let reply = prod
        .request(request("commands.document.archive"), SOON)
        .await
        .expect("request through the decorator");
    assert_eq!(reply.payload.as_ref(), b"commands.document.archive");
    let err = raw
        .request(request("commands.document.create"), Duration::from_secs(1))
        .await
        .expect_err("nobody serves the unprefixed subject");
    assert!(
        matches!(
            err,
            crate::transport::TransportError::NoResponders { .. } | crate::transport::TransportError::Timeout(_)
        ),
        "{err:?}"
    );
    assert_eq!(
        serving.await.expect("responder task"),
        ["commands.document.create", "commands.document.archive"]
    );
}

/// Without a prefix the decorator changes nothing: names on the server are the ones given.
pub async fn no_prefix_is_a_pass_through<T: Transport>(raw: T) {
    let plain = Prefixed::new(raw.clone(), None);
    plain
        .ensure_stream(&StreamSpec::for_domain("document", None).expect("spec"))
        .await
        .expect("stream");
    plain
        .publish_and_wait(event("document.created", "{}").into())
        .await
        .expect("publish");
    plain.key_value(&KvSpec::new("state")).await.expect("bucket");
    let mut c = raw
        .consumer(&ConsumerSpec::new("DOCUMENT_EVENTS", "plain", pattern("document.>")))
        .await
        .expect("the stream has its own name");
    assert_eq!(next_within(&mut c, SOON).await.subject(), "document.created");
    raw.key_value(&KvSpec::new("state").history(5))
        .await
        .expect_err("the bucket `state` exists (with history 1)");
}

/// Expands to one `#[tokio::test]` per case of [`crate::conformance::prefixed`]; `setup` returns
/// the raw transport and a guard, as for [`conformance_tests!`](crate::conformance_tests!).
#[macro_export]
macro_rules! prefixed_tests {
    (setup: $setup:path, tokio: [$($tokio:tt)*] $(,)?) => {
        $crate::prefixed_tests!(@cases ($($tokio)*) $setup; [
            plain_client_sees_prefixed_subjects_and_streams,
            deployments_are_isolated,
            buckets_are_prefixed,
            requests_are_prefixed,
            no_prefix_is_a_pass_through,
        ]);
    };
    (@cases $tokio:tt $setup:path; [$($case:ident),* $(,)?]) => {
        $(
            #[::tokio::test $tokio]
            async fn $case() {
                let (transport, _guard) = $setup().await;
                $crate::conformance::prefixed::$case(transport).await;
            }
        )*
    };
}
