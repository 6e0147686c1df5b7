//! Request/reply over core messaging (not stored in any stream): what commands travel on.
//!
//! [`Transport::request`](super::Transport::request) sends one message and waits for the first
//! reply; [`Transport::serve`](super::Transport::serve) joins a queue group on a subject pattern
//! and yields each request with a handle to answer it. As in NATS, a request reaches exactly one
//! member of every queue group subscribed to its subject, so several instances of a service share
//! the load and each request is handled once.
//!
//! Request subjects must lie outside every event stream: a core request to a subject a stream
//! captures is answered by the stream's PubAck (NATS) instead of by a responder. Commands use
//! `commands.{domain}.{name}` for that reason.

use crate::envelope::{Envelope, EnvelopeError, ReceivedFrom};
use crate::headers::Headers;
use crate::subject::Subject;
use crate::transport::TransportError;
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::stream::{BoxStream, StreamExt};

/// A request to send: subject, headers, payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Where to send it (a concrete subject outside every stream).
    pub subject: Subject,
    /// Headers, including identity headers.
    pub headers: Headers,
    /// Payload bytes.
    pub payload: Bytes,
}

impl From<&Envelope> for Request {
    fn from(env: &Envelope) -> Self {
        Self {
            subject: env.subject().clone(),
            headers: super::traced(env.to_headers()),
            payload: env.payload().clone(),
        }
    }
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reply {
    /// Headers of the reply.
    pub headers: Headers,
    /// Payload of the reply.
    pub payload: Bytes,
}

/// Sends the reply of one request. Implemented by each transport.
pub(crate) trait ReplySink: Send + Sync + 'static {
    /// Sends `reply` to the requester.
    fn send(self: Box<Self>, reply: Reply) -> BoxFuture<'static, Result<(), TransportError>>;
}

/// The way back to a requester. Dropping it without answering makes the requester time out.
pub struct ReplyHandle(Box<dyn ReplySink>);

impl std::fmt::Debug for ReplyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplyHandle")
    }
}

impl ReplyHandle {
    pub(crate) fn new(sink: impl ReplySink) -> Self {
        Self(Box::new(sink))
    }

    /// Sends the reply. Fails only if the transport cannot send; a requester that gave up
    /// already is not an error (nobody is listening, as in NATS).
    pub async fn send(self, reply: Reply) -> Result<(), TransportError> {
        self.0.send(reply).await
    }
}

/// One request received by a [`Responder`], with its reply handle.
#[derive(Debug)]
pub struct IncomingRequest {
    subject: String,
    headers: Headers,
    payload: Bytes,
    reply: ReplyHandle,
}

impl IncomingRequest {
    pub(crate) fn new(subject: String, headers: Headers, payload: Bytes, reply: ReplyHandle) -> Self {
        Self {
            subject,
            headers,
            payload,
            reply,
        }
    }

    /// The subject as received (not validated: a foreign requester may use any NATS subject).
    pub fn subject(&self) -> &str {
        &self.subject
    }
    /// The headers as received.
    pub fn headers(&self) -> &Headers {
        &self.headers
    }
    /// The payload as received.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The envelope, with identity read from the headers or derived (stably) from subject and
    /// payload; see [`Envelope::from_received`].
    pub fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        Envelope::from_received(
            &self.subject,
            &self.headers,
            self.payload.clone(),
            &ReceivedFrom::default(),
        )
    }

    /// Answers the request.
    pub async fn respond(self, reply: Reply) -> Result<(), TransportError> {
        self.reply.send(reply).await
    }

    /// Splits into subject, headers, payload and the reply handle.
    pub fn into_parts(self) -> (String, Headers, Bytes, ReplyHandle) {
        (self.subject, self.headers, self.payload, self.reply)
    }
}

/// A queue-group member serving requests on a subject pattern. Dropping it leaves the group.
pub struct Responder {
    pattern: String,
    group: String,
    requests: BoxStream<'static, IncomingRequest>,
}

impl std::fmt::Debug for Responder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responder")
            .field("pattern", &self.pattern)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl Responder {
    pub(crate) fn new(pattern: String, group: String, requests: BoxStream<'static, IncomingRequest>) -> Self {
        Self {
            pattern,
            group,
            requests,
        }
    }

    /// The served pattern.
    pub fn pattern(&self) -> &str {
        &self.pattern
    }
    /// The queue group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The next request; `None` once the subscription is closed (the connection was closed).
    /// Cancel-safe.
    pub async fn next(&mut self) -> Option<IncomingRequest> {
        self.requests.next().await
    }

    /// The stream of requests (for transport decorators that rewrite them).
    pub(crate) fn into_requests(self) -> BoxStream<'static, IncomingRequest> {
        self.requests
    }
}

/// Checks a queue group name: `[A-Za-z0-9_-]+`, as stream and durable names.
pub fn check_queue_group(group: &str) -> Result<(), TransportError> {
    super::check_name("queue group", group)
}
