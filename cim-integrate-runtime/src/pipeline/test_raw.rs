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
