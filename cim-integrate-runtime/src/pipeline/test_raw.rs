//! A received stream message built by hand, for the layers' unit tests.

use super::Received;
use crate::envelope::{Envelope, EnvelopeError};
use crate::headers::Headers;
use crate::transport::{DeliveryInfo, TransportError};
use futures::future::BoxFuture;

/// A delivery on `document.created` with these headers, payload and facts.
pub(crate) struct Raw {
    pub(crate) headers: Headers,
    pub(crate) payload: bytes::Bytes,
    pub(crate) info: DeliveryInfo,
}

impl Raw {
    /// Delivery `delivered` of stream message 7 of `DOCUMENT_EVENTS` to durable `h`, stored at
    /// `published`, with no headers and an empty object as payload.
    pub(crate) fn seventh(
        delivered: u64,
        published: crate::timestamp::Timestamp,
        resumed: Option<crate::timestamp::Timestamp>,
    ) -> Self {
        Self {
            headers: Headers::default(),
            payload: bytes::Bytes::from_static(b"{}"),
            info: DeliveryInfo {
                stream: "DOCUMENT_EVENTS".into(),
                consumer: "h".into(),
                stream_sequence: 7,
                consumer_sequence: delivered,
                delivered,
                published,
                resumed,
            },
        }
    }
}

impl Received for Raw {
    fn subject(&self) -> &str {
        "document.created"
    }
    fn headers(&self) -> &Headers {
        &self.headers
    }
    fn payload(&self) -> &bytes::Bytes {
        &self.payload
    }
    fn info(&self) -> Option<&DeliveryInfo> {
        Some(&self.info)
    }
    fn in_progress(&self) -> BoxFuture<'_, Result<(), TransportError>> {
        Box::pin(std::future::ready(Ok(())))
    }
    fn envelope(&self) -> Result<Envelope, EnvelopeError> {
        Envelope::from_received(
            "document.created",
            &self.headers,
            self.payload.clone(),
            &Default::default(),
        )
    }
}
