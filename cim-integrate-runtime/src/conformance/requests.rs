//! Request/reply behaviour, the same on every transport: round trip with headers, no responders,
//! timeouts, queue groups sharing the load (each request handled once), one copy per group, and
//! a member leaving its group.

use crate::headers::Headers;
use crate::subject::{Subject, SubjectPattern};
use crate::transport::{Reply, Request, Responder, Transport, TransportError};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(2);
const SOON: Duration = Duration::from_secs(10);

fn request(subject: &str, body: &str) -> Request {
    Request {
        subject: Subject::new(subject).expect("subject"),
        headers: Headers::new(),
        payload: Bytes::copy_from_slice(body.as_bytes()),
    }
}

fn pattern(p: &str) -> SubjectPattern {
    SubjectPattern::new(p).expect("pattern")
}

/// Answers every request with `{tag}:{payload}` and records what it saw.
fn answer_all(mut responder: Responder, tag: &'static str, seen: Arc<Mutex<Vec<(String, String)>>>) {
    tokio::spawn(async move {
        while let Some(req) = responder.next().await {
            let body = String::from_utf8_lossy(req.payload()).into_owned();
            seen.lock().expect("lock").push((tag.to_owned(), body.clone()));
            let mut headers = Headers::new();
            headers.insert("X-Answered-By", tag).expect("header");
            let reply = Reply {
                headers,
                payload: Bytes::from(format!("{tag}:{body}")),
            };
            req.respond(reply).await.expect("respond");
        }
    });
}

/// A request reaches a responder with its headers; the reply comes back with its own.
pub async fn request_reply_round_trip<T: Transport>(t: T) {
    let mut responder = t
        .serve(&pattern("commands.document.>"), "document")
        .await
        .expect("serve");
    assert_eq!(responder.group(), "document");
    let server = tokio::spawn(async move {
        let req = responder.next().await.expect("a request");
        assert_eq!(req.subject(), "commands.document.create");
        assert_eq!(req.headers().get("X-Correlation-ID"), Some("c-1"));
        assert_eq!(&req.payload()[..], b"hello");
        let mut headers = Headers::new();
        headers.insert("X-Status", "accepted").expect("header");
        req.respond(Reply {
            headers,
            payload: Bytes::from_static(b"done"),
        })
        .await
        .expect("respond");
        responder
    });
    let mut req = request("commands.document.create", "hello");
    req.headers.insert("X-Correlation-ID", "c-1").expect("header");
    let reply = t.request(req, TIMEOUT).await.expect("reply");
    assert_eq!(&reply.payload[..], b"done");
    assert_eq!(reply.headers.get("X-Status"), Some("accepted"));
    drop(server.await.expect("server task"));
}

/// Nobody serves the subject: `NoResponders` at once, not a timeout.
pub async fn request_without_responders_fails<T: Transport>(t: T) {
    let started = tokio::time::Instant::now();
    let err = t
        .request(request("commands.nobody.home", "x"), Duration::from_secs(5))
        .await
        .expect_err("no responders");
    assert!(
        matches!(err, TransportError::NoResponders { ref subject } if subject == "commands.nobody.home"),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "reported at once, not after the timeout"
    );
}

/// A responder that drops the request unanswered: the requester times out after its timeout.
pub async fn request_times_out_when_unanswered<T: Transport>(t: T) {
    let mut responder = t.serve(&pattern("commands.slow.*"), "slow").await.expect("serve");
    let server = tokio::spawn(async move {
        let req = responder.next().await.expect("a request");
        drop(req);
        // Stay subscribed: the requester must time out, not get "no responders".
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(responder);
    });
    let started = tokio::time::Instant::now();
    let err = t
        .request(request("commands.slow.op", "x"), Duration::from_millis(1500))
        .await
        .expect_err("timeout");
    assert!(matches!(err, TransportError::Timeout(_)), "{err:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(6),
        "{waited:?}"
    );
    server.abort();
}

/// Two members of one queue group: every request is answered once, by one of them, and both
/// take a share.
pub async fn queue_group_shares_requests<T: Transport>(t: T) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    answer_all(
        t.serve(&pattern("commands.document.*"), "document")
            .await
            .expect("serve a"),
        "a",
        seen.clone(),
    );
    answer_all(
        t.serve(&pattern("commands.document.*"), "document")
            .await
            .expect("serve b"),
        "b",
        seen.clone(),
    );
    for i in 0..24 {
        let reply = t
            .request(request("commands.document.create", &i.to_string()), TIMEOUT)
            .await
            .expect("reply");
        let text = String::from_utf8_lossy(&reply.payload).into_owned();
        assert!(text == format!("a:{i}") || text == format!("b:{i}"), "{text}");
    }
    let seen = seen.lock().expect("lock").clone();
    assert_eq!(seen.len(), 24, "each request handled exactly once: {seen:?}");
    let mut per_member: HashMap<String, usize> = HashMap::new();
    for (tag, _) in &seen {
        *per_member.entry(tag.clone()).or_default() += 1;
    }
    assert_eq!(per_member.len(), 2, "both members took a share: {per_member:?}");
    let mut bodies: Vec<u32> = seen.iter().map(|(_, b)| b.parse().expect("number")).collect();
    bodies.sort_unstable();
    assert_eq!(bodies, (0..24).collect::<Vec<_>>());
}

/// Two queue groups on one subject: each gets one copy; the requester takes the first reply.
pub async fn each_queue_group_gets_one_copy<T: Transport>(t: T) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    for (tag, group) in [("a1", "audit"), ("a2", "audit"), ("w1", "work"), ("w2", "work")] {
        answer_all(
            t.serve(&pattern("commands.document.archive"), group)
                .await
                .expect("serve"),
            tag,
            seen.clone(),
        );
    }
    t.request(request("commands.document.archive", "x"), TIMEOUT)
        .await
        .expect("reply");
    let deadline = tokio::time::Instant::now() + SOON;
    loop {
        let tags: Vec<String> = seen.lock().expect("lock").iter().map(|(t, _)| t.clone()).collect();
        if tags.len() >= 2 {
            // Give a third copy the chance to show up, if one were (wrongly) sent.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let tags: Vec<String> = seen.lock().expect("lock").iter().map(|(t, _)| t.clone()).collect();
            assert_eq!(tags.len(), 2, "one copy per group: {tags:?}");
            assert_eq!(tags.iter().filter(|t| t.starts_with('a')).count(), 1, "{tags:?}");
            assert_eq!(tags.iter().filter(|t| t.starts_with('w')).count(), 1, "{tags:?}");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "both groups should see the request: {tags:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A dropped responder leaves its group: requests go to the remaining member, and with none
/// left there are no responders.
pub async fn dropped_responder_leaves_group<T: Transport>(t: T) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let leaving = t.serve(&pattern("commands.person.*"), "person").await.expect("serve");
    answer_all(
        t.serve(&pattern("commands.person.*"), "person").await.expect("serve"),
        "stays",
        seen.clone(),
    );
    drop(leaving);
    // Unsubscribing reaches a server asynchronously: allow it a moment.
    tokio::time::sleep(Duration::from_millis(200)).await;
    t.flush().await.expect("flush");
    for i in 0..6 {
        let reply = t
            .request(request("commands.person.register", &i.to_string()), TIMEOUT)
            .await
            .expect("every request answered by the member that stayed");
        assert_eq!(reply.payload, Bytes::from(format!("stays:{i}")));
    }
    let err = t
        .request(request("commands.other.register", "x"), TIMEOUT)
        .await
        .expect_err("nobody serves other");
    assert!(matches!(err, TransportError::NoResponders { .. }), "{err:?}");
}

/// A request over the payload limit is refused before it is sent.
pub async fn request_payload_too_large_is_refused<T: Transport>(t: T) {
    let _responder = t.serve(&pattern("commands.big.*"), "big").await.expect("serve");
    let big = Request {
        subject: Subject::new("commands.big.upload").expect("subject"),
        headers: Headers::new(),
        payload: Bytes::from(vec![b'x'; 2 * 1024 * 1024]),
    };
    let err = t.request(big, TIMEOUT).await.expect_err("too large");
    assert!(matches!(err, TransportError::PayloadTooLarge { .. }), "{err:?}");
}

/// An invalid queue group name is refused.
pub async fn invalid_queue_group_is_refused<T: Transport>(t: T) {
    let err = t
        .serve(&pattern("commands.x.*"), "bad group")
        .await
        .expect_err("invalid");
    assert!(matches!(err, TransportError::Invalid(_)), "{err:?}");
}
