//! Conversions between async-nats types and ours: headers and errors.

use crate::headers::{self, Headers, Part, Stamp, Text};
use crate::id::{CausationId, CorrelationId, Identity, MessageId};
use crate::timestamp::Timestamp;
use crate::transport::TransportError;
use async_nats::header::{HeaderMap, HeaderName, HeaderValue};
use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::context::{RequestError, RequestErrorKind};
use std::str::FromStr;

/// The identity header names, parsed once, in the order of [`headers::IDENTITY_HEADERS`]: a
/// name found here costs no allocation per message.
static IDENTITY_NAMES: [HeaderName; 7] = [
    HeaderName::from_static(headers::NATS_MSG_ID),
    HeaderName::from_static(headers::MESSAGE_ID),
    HeaderName::from_static(headers::CORRELATION_ID),
    HeaderName::from_static(headers::CAUSATION_ID),
    HeaderName::from_static(headers::EVENT_TYPE),
    HeaderName::from_static(headers::EVENT_VERSION),
    HeaderName::from_static(headers::OCCURRED_AT),
];

fn header_name(name: &str) -> Result<HeaderName, TransportError> {
    if let Some(i) = headers::identity_index(name) {
        return Ok(IDENTITY_NAMES[i].clone());
    }
    HeaderName::from_str(name)
        .map_err(|_| TransportError::Invalid(format!("header name `{}`", name.chars().take(64).collect::<String>())))
}

/// Our headers as an async-nats map. Fails (never panics) on a name or value NATS refuses.
///
/// Headers an envelope wrote keep its identity as values ([`Headers`]' stamp): each is formatted
/// once, straight into the map's value, under a name parsed once per process.
pub(crate) fn header_map(headers: &Headers) -> Result<HeaderMap, TransportError> {
    let Some(stamp) = headers.stamp() else {
        return text_header_map(headers, HeaderMap::new());
    };
    let mut map = HeaderMap::new();
    for (name, part) in stamp.parts() {
        let value = match part {
            // Ids and times are written here: no CR or LF to look for.
            Part::Id(_) | Part::Time(_) => HeaderValue::from(part.render()),
            // A type or version: checked and copied once.
            Part::Text(text) => {
                HeaderValue::from_str(text).map_err(|_| TransportError::Invalid(format!("value of header `{name}`")))?
            }
        };
        map.insert(header_name(name)?, value);
    }
    // The extra headers never repeat an identity name (the envelope refuses them).
    text_header_map(&headers.unstamped(), map)
}

/// Adds text headers to `map`.
fn text_header_map(headers: &Headers, mut map: HeaderMap) -> Result<HeaderMap, TransportError> {
    for (i, (name, value)) in headers.iter().enumerate() {
        let n = header_name(name)?;
        let v =
            HeaderValue::from_str(value).map_err(|_| TransportError::Invalid(format!("value of header `{name}`")))?;
        // A name's first value is inserted (one hash); only a repeated name needs `append` (two).
        if headers
            .iter()
            .take(i)
            .any(|(earlier, _)| earlier.eq_ignore_ascii_case(name))
        {
            map.append(n, v);
        } else {
            map.insert(n, v);
        }
    }
    Ok(map)
}

/// Received headers as ours. async-nats keeps them in a hash map, so the order between
/// different names is lost on the way in; they are sorted by name to be deterministic. The
/// values of one name keep their order.
///
/// The full identity headers as this crate writes them (each once, in the exact text our
/// formatting gives) are kept as values, as [`Envelope::to_headers`](crate::Envelope::to_headers)
/// keeps them, then listed first: nothing is copied into strings, and the envelope takes them
/// as they are. Anything else (a foreign publisher, a compact identity) is kept as text.
pub(crate) fn headers_from(map: Option<&HeaderMap>, texts: &mut Texts) -> Headers {
    let Some(map) = map else { return Headers::new() };
    // One pass over the map picks the identity headers by name (no hashing per name).
    let mut identity: [Option<&[HeaderValue]>; 7] = [None; 7];
    let mut others = 0;
    for (name, values) in map.iter() {
        let Some(i) = headers::identity_index(name.as_ref()) else {
            others += 1;
            continue;
        };
        identity[i] = Some(values.as_slice());
    }
    if let Some(stamp) = stamp_of(&identity, texts) {
        if others == 0 {
            return Headers::stamped(stamp, &Headers::new());
        }
        return Headers::stamped(stamp, &text_headers(map, true));
    }
    text_headers(map, false)
}

/// The last event type and version received, shared by the next message that carries the same
/// (a consumer's messages are mostly of a few types): one allocation per change, not per message.
#[derive(Debug, Default)]
pub(crate) struct Texts {
    event_type: Option<Text>,
    event_version: Option<Text>,
}

fn shared(slot: &mut Option<Text>, value: &str) -> Text {
    match slot {
        Some(t) if **t == *value => t.clone(),
        _ => slot.insert(Text::Shared(std::sync::Arc::from(value))).clone(),
    }
}

/// The value of a header that may occur at most once: `Some(None)` if absent, `None` if repeated.
fn at_most_one(values: Option<&[HeaderValue]>) -> Option<Option<&str>> {
    match values {
        None | Some([]) => Some(None),
        Some([one]) => Some(Some(one.as_str())),
        Some(_) => None,
    }
}

/// The one value of a header that must occur exactly once.
fn single(values: Option<&[HeaderValue]>) -> Option<&str> {
    at_most_one(values).flatten()
}

/// A real (neither nil nor max) UUID whose text is exactly the one we write.
fn canonical_id(text: &str) -> Option<uuid::Uuid> {
    crate::id::canonical_uuid(text).filter(crate::envelope::names_a_message)
}

/// The identity headers' values, in the order of [`headers::IDENTITY_HEADERS`], as a stamp if
/// they are exactly what an envelope writes.
fn stamp_of(identity: &[Option<&[HeaderValue]>; 7], texts: &mut Texts) -> Option<Stamp> {
    let [
        msg_id,
        message_id,
        correlation,
        causation,
        event_type,
        event_version,
        occurred,
    ] = *identity;
    let id = single(message_id)?;
    if single(msg_id)? != id {
        return None;
    }
    let message_id = canonical_id(id)?;
    // A root message's correlation and causation are its own id, and a follow-up's correlation
    // is often its cause's: text equal to an id read already is not read again.
    let same_or_parse = |text: &str, known: &[(&str, uuid::Uuid)]| {
        known
            .iter()
            .find(|(k, _)| *k == text)
            .map_or_else(|| canonical_id(text), |&(_, u)| Some(u))
    };
    let correlation = single(correlation)?;
    let correlation_id = same_or_parse(correlation, &[(id, message_id)])?;
    let causation_id = same_or_parse(single(causation)?, &[(id, message_id), (correlation, correlation_id)])?;
    let identity = Identity {
        message_id: MessageId::from_uuid(message_id),
        correlation_id: CorrelationId::from_uuid(correlation_id),
        causation_id: CausationId::from_uuid(causation_id),
    };
    let text = |values: Option<&[HeaderValue]>, slot: &mut Option<Text>| -> Option<Option<Text>> {
        match at_most_one(values)? {
            None => Some(None),
            Some(v) => (!v.starts_with(char::is_whitespace) && !v.ends_with(char::is_whitespace))
                .then(|| Some(shared(slot, v))),
        }
    };
    let event_type = text(event_type, &mut texts.event_type)?;
    let event_version = text(event_version, &mut texts.event_version)?;
    let occurred_at = Timestamp::parse_canonical(single(occurred)?)?;
    Some(Stamp::new(identity, event_type, event_version, occurred_at))
}

/// The received headers as text, sorted by name; `skip_identity`: without the identity ones.
fn text_headers(map: &HeaderMap, skip_identity: bool) -> Headers {
    let mut headers = Headers::new();
    let mut names: Vec<_> = map
        .iter()
        .filter(|(n, _)| !skip_identity || !headers::IDENTITY_HEADERS.contains(&n.as_ref()))
        .collect();
    if names.is_empty() {
        return headers;
    }
    let values: usize = names.iter().map(|(_, v)| v.len()).sum();
    headers.reserve_received(values);
    names.sort_unstable_by(|(a, _), (b, _)| AsRef::<str>::as_ref(*a).cmp(b.as_ref()));
    for (name, values) in names {
        let name: &str = name.as_ref();
        for value in values {
            headers.push_received(name.to_owned(), value.as_str().to_owned());
        }
    }
    headers
}

/// A failed JetStream API request.
pub(crate) fn request_error(subject: &str, e: RequestError) -> TransportError {
    match e.kind() {
        RequestErrorKind::TimedOut => TransportError::Timeout(format!("JetStream request `{subject}`")),
        RequestErrorKind::NoResponders => {
            TransportError::Unavailable(format!("JetStream is not available (no responders to `{subject}`)"))
        }
        _ => TransportError::Other(format!("JetStream request `{subject}`: {e}")),
    }
}

/// JetStream error codes that mean "cannot serve right now": no meta leader, too few live
/// peers to place (or re-place) an asset, a stream or consumer offline. A node that has just
/// rejoined is reported as an offline peer for a while, so placement fails with these until the
/// cluster has caught up; they are retried like timeouts, never taken as configuration errors.
const UNAVAILABLE_CODES: [ErrorCode; 8] = [
    ErrorCode::CLUSTER_NOT_AVAILABLE,   // 10008: no meta leader
    ErrorCode::CLUSTER_NO_PEERS,        // 10005: no suitable peers for placement (peer offline)
    ErrorCode::INSUFFICIENT_RESOURCES,  // 10023: insufficient resources (nodes down)
    ErrorCode::PEER_REMAP,              // 10075: peer remap failed (nodes down)
    ErrorCode::STREAM_OFFLINE,          // 10118
    ErrorCode::CONSUMER_OFFLINE,        // 10119
    ErrorCode::STREAM_OFFLINE_REASON,   // 10194 (2.12+)
    ErrorCode::CONSUMER_OFFLINE_REASON, // 10195 (2.12+)
];

/// The transient reading of an API error, if it is one: HTTP-like code 503 or 408, or a code that
/// says the JetStream system, a stream or a consumer has no leader, is offline, or cannot be
/// placed on the peers alive now.
pub(crate) fn unavailable(e: &async_nats::jetstream::Error) -> Option<TransportError> {
    (e.code() == 503 || e.code() == 408 || UNAVAILABLE_CODES.contains(&e.error_code()))
        .then(|| TransportError::Unavailable(format!("JetStream: {e}")))
}

/// JetStream error codes that mean "no room": a stream at its limits with the `new` discard
/// policy (10077, "maximum messages exceeded", "maximum bytes exceeded", "maximum messages per
/// subject exceeded", or another storage failure), an account at its JetStream quota (10002), a
/// server out of storage or memory (10047, 10028).
const FULL_CODES: [ErrorCode; 4] = [
    ErrorCode::STREAM_STORE_FAILED,
    ErrorCode::ACCOUNT_RESOURCES_EXCEEDED,
    ErrorCode::STORAGE_RESOURCES_EXCEEDED,
    ErrorCode::MEMORY_RESOURCES_EXCEEDED,
];

/// The reading of an error a write (a publish, a key-value put) was answered with, if it says
/// there is no room to store it: capacity an operator gives back (raising limits, purging,
/// waiting for the max age) is unavailability, retried, never a reason to dead-letter what
/// caused the write.
pub(crate) fn full(e: &async_nats::jetstream::Error) -> Option<TransportError> {
    FULL_CODES.contains(&e.error_code()).then(|| {
        TransportError::Unavailable(format!(
            "JetStream: {e}: not stored for lack of room (a stream at its limits, an account at its quota or a server out of storage); retried until there is room"
        ))
    })
}

/// How a write's error reply reads: no room ([`full`]), unavailable ([`unavailable`]), or
/// something else (`None`).
pub(crate) fn write_unavailable(e: &async_nats::jetstream::Error) -> Option<TransportError> {
    full(e).or_else(|| unavailable(e))
}

/// The reading of an error a creation (a stream, a bucket, a consumer) was answered with, if the
/// account is at its limit of streams (10027) or of a stream's consumers (10026): `what` names
/// what was refused.
pub(crate) fn limit(e: &async_nats::jetstream::Error, what: &str) -> Option<TransportError> {
    [ErrorCode::MAXIMUM_STREAMS_LIMIT, ErrorCode::MAXIMUM_CONSUMERS_LIMIT]
        .contains(&e.error_code())
        .then(|| TransportError::LimitReached {
            detail: format!("{what} refused: {e}"),
        })
}

/// An error reply from the JetStream API that has no more specific meaning. Unavailability
/// (no leader, offline, 503) is transient; so is an account at its limit of streams or consumers.
pub(crate) fn api_error(e: async_nats::jetstream::Error) -> TransportError {
    if e.error_code() == ErrorCode::JETSTREAM_NOT_ENABLED_FOR_ACCOUNT {
        return TransportError::JetStreamDisabled {
            detail: "for this connection's account".into(),
        };
    }
    limit(&e, "JetStream request")
        .or_else(|| unavailable(&e))
        .unwrap_or_else(|| TransportError::Other(format!("JetStream: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: usize, err_code: u64, description: &str) -> async_nats::jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": code, "err_code": err_code, "description": description
        }))
        .expect("an API error document")
    }

    #[test]
    fn placement_and_leader_trouble_is_transient_and_configuration_errors_are_not() {
        // The answers seen from a three-node cluster while a node is down or has just rejoined.
        for (code, err, text) in [
            (500, 10005, "no suitable peers for placement, peer offline"),
            (503, 10008, "JetStream system temporarily unavailable"),
            (500, 10023, "insufficient resources"),
            (500, 10118, "stream is offline"),
            (500, 10119, "consumer is offline"),
        ] {
            let e = api(code, err, text);
            assert!(
                matches!(api_error(e.clone()), TransportError::Unavailable(_)),
                "{e} must be transient"
            );
        }
        // No room for a write: unavailable for a publish or a key-value put; for a management
        // request (creating a stream over the account's quota) an error reported at once.
        for (code, err, text) in [
            (503, 10077, "maximum messages exceeded"),
            (400, 10002, "resource limits exceeded for account"),
            (500, 10047, "insufficient storage resources available"),
            (500, 10028, "insufficient memory resources available"),
        ] {
            let e = api(code, err, text);
            assert!(
                matches!(write_unavailable(&e), Some(TransportError::Unavailable(_))),
                "{e} must be transient for a write"
            );
        }
        assert!(!api_error(api(400, 10002, "resource limits exceeded for account")).is_transient());
        // Replicas > 1 on a single server, a bad name: permanent, reported, never retried.
        for (code, err, text) in [
            (500, 10074, "replicas > 1 not supported in non-clustered mode"),
            (400, 10058, "stream name already in use with a different configuration"),
        ] {
            let e = api(code, err, text);
            let t = api_error(e.clone());
            assert!(!t.is_transient(), "{e} must not be transient: {t:?}");
        }
    }

    #[test]
    fn an_account_at_its_limit_of_streams_or_consumers_needs_an_operator() {
        for (err, text) in [
            (10027, "maximum number of streams reached"),
            (10026, "maximum consumers limit reached"),
        ] {
            let e = api(400, err, text);
            let limit = limit(&e, "stream `X`").expect("a limit");
            assert!(limit.is_transient() && limit.needs_operator(), "{limit:?}");
            assert!(
                limit.to_string().contains(text) && limit.to_string().contains("stream `X`"),
                "{limit}"
            );
            assert!(matches!(api_error(e), TransportError::LimitReached { .. }));
        }
        assert!(limit(&api(400, 10002, "resource limits exceeded for account"), "x").is_none());
    }

    #[test]
    fn headers_round_trip_and_odd_input_does_not_panic() {
        let mut h = Headers::new();
        h.insert("Nats-Msg-Id", "abc").unwrap();
        h.append("X-Multi", "1").unwrap();
        h.append("X-Multi", "2").unwrap();
        let map = header_map(&h).unwrap();
        let texts = &mut Texts::default();
        let back = headers_from(Some(&map), texts);
        assert_eq!(back.get("Nats-Msg-Id"), Some("abc"));
        assert_eq!(back.get_all("X-Multi").collect::<Vec<_>>(), ["1", "2"]);
        assert!(headers_from(None, texts).is_empty());

        let mut odd = HeaderMap::new();
        odd.insert(
            "weird-ÿ-name"
                .parse::<HeaderName>()
                .unwrap_or(HeaderName::from_static("X")),
            "v",
        );
        odd.insert("Empty", "");
        let got = headers_from(Some(&odd), texts);
        assert_eq!(got.get("Empty"), Some(""));
    }

    /// What an envelope writes comes back as values, reading exactly as the text sent; text
    /// that is not exactly ours (upper-case ids, another time format, a repeated header) stays
    /// text, as received.
    #[test]
    fn identity_headers_come_back_as_values_only_when_exact() {
        let env = crate::Envelope::root(crate::Subject::new("a.b").unwrap(), bytes::Bytes::new())
            .typed("Created", "1.0")
            .header("X-Tenant", "acme")
            .unwrap();
        let sent = env.to_headers();
        let map = header_map(&sent).unwrap();
        let texts = &mut Texts::default();
        let got = headers_from(Some(&map), texts);
        assert!(got.stamp().is_some());
        for name in headers::IDENTITY_HEADERS.iter().chain(&["X-Tenant"]) {
            assert_eq!(got.get(name), sent.get(name), "{name}");
        }
        let odd = |name: &str, value: String| {
            let mut m = map.clone();
            m.insert(name, value.as_str());
            headers_from(Some(&m), &mut Texts::default())
        };
        let id = env.message_id().to_string();
        for (name, value) in [
            (headers::MESSAGE_ID, id.to_uppercase()),
            (headers::OCCURRED_AT, "2024-01-01T00:00:00+00:00".to_owned()),
            (headers::EVENT_TYPE, " Created".to_owned()),
            (headers::EVENT_TYPE, "Created\u{a0}".to_owned()),
            (headers::CORRELATION_ID, id.to_uppercase()),
            (headers::CAUSATION_ID, id.to_uppercase()),
        ] {
            let h = odd(name, value.clone());
            assert!(h.stamp().is_none(), "{name}: {value}");
            assert_eq!(h.get(name), Some(value.as_str()));
        }
        // A follow-up: its correlation and causation differ from its id, each read as itself.
        let next = crate::Envelope::caused_by(env.identity(), crate::Subject::new("a.c").unwrap(), bytes::Bytes::new());
        let next = crate::Envelope::caused_by(
            next.identity(),
            crate::Subject::new("a.d").unwrap(),
            bytes::Bytes::new(),
        );
        let got = headers_from(Some(&header_map(&next.to_headers()).unwrap()), texts);
        let stamp = got.stamp().expect("exact headers");
        assert_eq!(stamp.identity, *next.identity());
        assert_ne!(
            stamp.identity.causation_id.as_uuid(),
            stamp.identity.correlation_id.as_uuid()
        );
        let mut twice = map.clone();
        twice.append(headers::CORRELATION_ID, "00000000-0000-7000-8000-000000000001");
        let h = headers_from(Some(&twice), &mut Texts::default());
        assert!(h.stamp().is_none());
        assert_eq!(h.get_all(headers::CORRELATION_ID).count(), 2);
    }
}
