//! [`Message`]: what travels down the stack.

use crate::envelope::{Envelope, EnvelopeError};
use crate::headers::{self, HeaderError, Headers};
use crate::transport::{Acker, Delivery, DeliveryInfo, IncomingRequest, TransportError};
use bytes::Bytes;
use futures::future::BoxFuture;

/// A received message as it came off the wire: a stream delivery or a command request.
/// Object-safe, so that layers are not generic over the transport.
pub trait Received: Send + Sync {
    /// The subject as received (not validated).
    fn subject(&self) -> &str;
    /// The headers as received.
    fn headers(&self) -> &Headers;
    /// The payload as received.
    fn payload(&self) -> &Bytes;
    /// Stream position and delivery count; `None` for a request (not stored in a stream).
    fn info(&self) -> Option<&DeliveryInfo>;
    /// Tells the server the message is still being worked on (restarts its ack wait). A no-op for
    /// requests.
    fn in_progress(&self) -> BoxFuture<'_, Result<(), TransportError>>;
    /// The envelope, with identity read from the headers or derived (stably); see
    /// [`Envelope::from_received`].
    fn envelope(&self) -> Result<Envelope, EnvelopeError>;
    /// When an in-process transport handed the message over, by tokio's clock (a handler's run
    /// is timed from it, without reading the clock again); `None` (the default) where it may
    /// have waited in a buffer since.
    fn taken(&self) -> Option<tokio::time::Instant> {
        None
    }
}

impl<A: Acker> Received for Delivery<A> {
    fn subject(&self) -> &str {
        Delivery::subject(self)
    }
    fn headers(&self) -> &Headers {
        Delivery::headers(self)
    }
    fn payload(&self) -> &Bytes {
        Delivery::payload(self)
    }
    fn info(&self) -> Option<&DeliveryInfo> {
        Some(Delivery::info(self))
    }
    fn in_progress(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(Delivery::in_progress(self))
    }
    fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        Delivery::envelope(self)
    }
    fn taken(&self) -> Option<tokio::time::Instant> {
        Delivery::taken(self)
    }
}

impl Received for IncomingRequest {
    fn subject(&self) -> &str {
        IncomingRequest::subject(self)
    }
    fn headers(&self) -> &Headers {
        IncomingRequest::headers(self)
    }
    fn payload(&self) -> &Bytes {
        IncomingRequest::payload(self)
    }
    fn info(&self) -> Option<&DeliveryInfo> {
        None
    }
    fn in_progress(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        IncomingRequest::envelope(self)
    }
}

/// One message on its way down a stack: the received message, its envelope (identity read or
/// derived), and what the layers learn about it on the way.
pub struct Message<'a> {
    raw: &'a dyn Received,
    envelope: Result<Envelope, EnvelopeError>,
    delivered: u64,
    pub(crate) attempt: u64,
    pub(crate) retried_in_place: u32,
    pub(crate) deferred_in_place: u32,
    pub(crate) panicked: bool,
    pub(crate) ran: bool,
    pub(crate) reply: Option<Bytes>,
    propagate: Vec<(String, String)>,
    /// This message's place among the handler runs of its loop (see [`Message::handler_done`]).
    pub(crate) running: Option<super::run::RunningGuard<'a>>,
    /// The attempt and deferrals the attempts layer counted for this delivery (once: a retry in
    /// place adds to it).
    pub(crate) counted: Option<(u64, u64)>,
    /// The record of this attempt's start, written just before the handler runs
    /// ([`Budget::counted`](super::attempts::Budget::counted)).
    pub(crate) record_start: Option<BoxFuture<'static, Result<(), crate::dedup::DedupError>>>,
}

impl std::fmt::Debug for Message<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("subject", &self.raw.subject())
            .field("delivered", &self.delivered)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

/// The delivery count of `raw`: 1 for a first delivery, and for a request (not stored).
pub(crate) fn delivered(raw: &dyn Received) -> u64 {
    raw.info().map_or(1, |i| i.delivered.max(1))
}

impl<'a> Message<'a> {
    /// A message for `raw`, with its envelope rebuilt from what was received.
    pub fn new(raw: &'a dyn Received, envelope: Result<Envelope, EnvelopeError>) -> Self {
        let delivered = delivered(raw);
        Self {
            raw,
            envelope,
            delivered,
            attempt: delivered,
            retried_in_place: 0,
            deferred_in_place: 0,
            panicked: false,
            ran: false,
            reply: None,
            propagate: Vec::new(),
            running: None,
            counted: None,
            record_start: None,
        }
    }

    /// The envelope; `None` if the received message has no valid envelope (an invalid subject),
    /// which the pipeline dead-letters.
    pub fn envelope(&self) -> Option<&Envelope> {
        self.envelope.as_ref().ok()
    }

    /// Why there is no envelope, if there is none.
    pub fn envelope_error(&self) -> Option<&EnvelopeError> {
        self.envelope.as_ref().err()
    }

    /// The message as received.
    pub fn received(&self) -> &'a dyn Received {
        self.raw
    }

    /// A received header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw.headers().get(name)
    }

    /// How many times it has been delivered (1 for the first delivery and for requests).
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// The handler attempt this run is (deliveries deferred by a breaker or an outage excluded,
    /// retries in place included); set by the attempts layer.
    pub fn attempt(&self) -> u64 {
        self.attempt
    }

    /// The stream sequence (0 for requests).
    pub fn sequence(&self) -> u64 {
        self.raw.info().map_or(0, |i| i.stream_sequence)
    }

    /// Adds a header to every message the handler publishes or sends while handling this one.
    /// Identity headers are refused (the envelope owns them).
    pub fn propagate(&mut self, name: &str, value: impl Into<String>) -> Result<(), HeaderError> {
        if headers::IDENTITY_HEADERS.contains(&name) {
            return Err(HeaderError::InvalidName(format!(
                "{name} (an identity header, set by the envelope itself)"
            )));
        }
        let value = value.into();
        // Validates name and value with the same rules as any header.
        Headers::new().insert(name, value.clone())?;
        self.propagate.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        self.propagate.push((name.to_owned(), value));
        Ok(())
    }

    /// The handler has finished with this message; what remains (its dedup mark, its
    /// acknowledgement) need not hold one of the handler's `concurrency` places, so the loop may
    /// start the next message. Only for handlers without an order to keep.
    pub(crate) fn handler_done(&mut self) {
        self.running = None;
    }

    /// Gives up this message's place among the handler runs while it waits for something
    /// before its handler (the dedup layer's read of a mark), so that the loop may start the
    /// next message meanwhile; [`Message::take_place`] waits for a place again. `None` if it
    /// holds no place, or keeps it (a [`spawn`](crate::handler::HandlerOptions::spawn)ed run;
    /// see [`RunningGuard::release`](super::run::RunningGuard::release)). Only for handlers
    /// without an order to keep.
    pub(crate) fn leave_place(&mut self) -> Option<super::run::Released<'a>> {
        self.running.as_mut()?.release()
    }

    /// Waits for a place among the handler runs again, after [`Message::leave_place`];
    /// `false` if the loop stopped meanwhile (the handler must not start).
    pub(crate) async fn take_place(&mut self, place: super::run::Released<'a>) -> bool {
        self.running = place.readmit().await;
        self.running.is_some()
    }

    /// The headers to propagate.
    pub fn propagated(&self) -> &[(String, String)] {
        &self.propagate
    }
}
