//! [`PipelinedPublisher`]: many publishes in flight, a bounded window, acks checked in order.

use super::{OutboundMessage, PublishAck, Transport, TransportError};
use std::collections::VecDeque;

/// Publishes with up to `window` acknowledgements outstanding, so throughput is not bound by one
/// round trip per message while memory stays flat.
///
/// Acks are awaited oldest first. [`publish`](Self::publish) waits for the oldest ack when the
/// window is full; [`finish`](Self::finish) waits for the rest. A failed ack is returned with the
/// message that failed, so the caller can publish it again: its `Nats-Msg-Id` makes a retry safe.
pub struct PipelinedPublisher<T: Transport> {
    transport: T,
    window: usize,
    in_flight: VecDeque<(OutboundMessage, T::AckFuture)>,
    acked: u64,
    duplicates: u64,
}

/// A publish whose acknowledgement failed.
#[derive(Debug)]
pub struct FailedPublish {
    /// The message, to publish again.
    pub message: OutboundMessage,
    /// Why it failed.
    pub error: TransportError,
}

impl<T: Transport> PipelinedPublisher<T> {
    /// A publisher with at most `window` (at least 1) unacknowledged messages. Keep the window
    /// below the NATS client's `max_ack_inflight` (5000 by default).
    pub fn new(transport: T, window: usize) -> Self {
        Self {
            transport,
            window: window.max(1),
            in_flight: VecDeque::new(),
            acked: 0,
            duplicates: 0,
        }
    }

    /// Sends `message`; if the window is full, first waits for the oldest acknowledgement.
    pub async fn publish(&mut self, message: OutboundMessage) -> Result<(), Box<FailedPublish>> {
        if self.in_flight.len() >= self.window {
            self.settle_oldest().await?;
        }
        match self.transport.publish(message.clone()).await {
            Ok(ack) => {
                self.in_flight.push_back((message, ack));
                Ok(())
            }
            Err(error) => Err(Box::new(FailedPublish { message, error })),
        }
    }

    async fn settle_oldest(&mut self) -> Result<Option<PublishAck>, Box<FailedPublish>> {
        let Some((message, ack)) = self.in_flight.pop_front() else {
            return Ok(None);
        };
        match ack.await {
            Ok(ack) => {
                self.acked += 1;
                self.duplicates += u64::from(ack.duplicate);
                Ok(Some(ack))
            }
            Err(error) => Err(Box::new(FailedPublish { message, error })),
        }
    }

    /// Waits for every outstanding acknowledgement. Returns the first failure, if any, after
    /// having waited for all of them; the other failures are logged.
    pub async fn finish(&mut self) -> Result<(), Box<FailedPublish>> {
        let mut first = None;
        while !self.in_flight.is_empty() {
            if let Err(e) = self.settle_oldest().await {
                if first.is_none() {
                    first = Some(e);
                } else {
                    tracing::warn!(subject = %e.message.subject, error = %e.error, "publish not acknowledged");
                }
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Messages acknowledged so far (duplicates included).
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Acknowledgements that reported a duplicate.
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Messages sent and not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }
}
