//! [`AnyTransport`]: the transport chosen at run time, by configuration rather than by code.
//!
//! [`AnyTransport::from_env`] connects to NATS when `NATS_URL` is set (with the credentials and
//! TLS variables listed on [`NatsOptions::from_env`](super::nats::NatsOptions::from_env)), and
//! otherwise starts a fresh in-memory transport. Code written against [`Transport`] runs on
//! either unchanged.

use super::memory::{MemoryAcker, MemoryConsumer, MemoryKeyValue, MemoryTransport};
#[cfg(feature = "nats")]
use super::nats::{NatsAckFuture, NatsAcker, NatsConsumer, NatsKeyValue, NatsTransport};
use super::{
    Acker, Consumer, ConsumerSpec, Delivery, KeyValue, KvEntry, KvError, KvSpec, OutboundMessage, PublishAck, Reply,
    Request, Responder, StreamSpec, Transport, TransportError,
};
use crate::subject::SubjectPattern;
use bytes::Bytes;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// The in-memory transport or the NATS one, chosen at run time.
#[derive(Clone, Debug)]
pub enum AnyTransport {
    /// In process, no server.
    Memory(MemoryTransport),
    /// NATS JetStream.
    #[cfg(feature = "nats")]
    Nats(NatsTransport),
}

impl AnyTransport {
    /// NATS if `NATS_URL` is set, else a fresh in-memory transport.
    ///
    /// Errors: the NATS variables are inconsistent, the server cannot be reached, or `NATS_URL`
    /// is set in a build without the `nats` feature (rather than silently running in memory).
    pub async fn from_env() -> Result<Self, TransportError> {
        #[cfg(feature = "nats")]
        {
            if let Some(t) = NatsTransport::from_env().await? {
                return Ok(Self::Nats(t));
            }
        }
        #[cfg(not(feature = "nats"))]
        {
            if std::env::var_os("NATS_URL").is_some_and(|v| !v.is_empty()) {
                return Err(TransportError::Invalid(
                    "NATS_URL is set but this build has no NATS support (enable the `nats` feature)".into(),
                ));
            }
        }
        tracing::info!("NATS_URL is not set: using the in-memory transport");
        Ok(Self::Memory(MemoryTransport::new()))
    }

    /// `"memory"` or `"nats"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            #[cfg(feature = "nats")]
            Self::Nats(_) => "nats",
        }
    }
}

impl From<MemoryTransport> for AnyTransport {
    fn from(t: MemoryTransport) -> Self {
        Self::Memory(t)
    }
}

#[cfg(feature = "nats")]
impl From<NatsTransport> for AnyTransport {
    fn from(t: NatsTransport) -> Self {
        Self::Nats(t)
    }
}

/// A consumer of an [`AnyTransport`].
#[derive(Debug)]
pub enum AnyConsumer {
    /// In memory.
    Memory(MemoryConsumer),
    /// On NATS.
    #[cfg(feature = "nats")]
    Nats(NatsConsumer),
}

/// The acknowledgement handle of an [`AnyConsumer`] delivery.
#[derive(Debug)]
pub enum AnyAcker {
    /// In memory.
    Memory(MemoryAcker),
    /// On NATS.
    #[cfg(feature = "nats")]
    Nats(NatsAcker),
}

/// A key-value bucket of an [`AnyTransport`].
#[derive(Clone, Debug)]
pub enum AnyKeyValue {
    /// In memory.
    Memory(MemoryKeyValue),
    /// On NATS.
    #[cfg(feature = "nats")]
    Nats(NatsKeyValue),
}

/// The publish acknowledgement of an [`AnyTransport`].
#[must_use = "a publish is confirmed only when its acknowledgement resolves"]
#[derive(Debug)]
pub enum AnyAckFuture {
    /// In memory (already resolved).
    Memory(Option<Result<PublishAck, TransportError>>),
    /// On NATS.
    #[cfg(feature = "nats")]
    Nats(NatsAckFuture),
}

impl Future for AnyAckFuture {
    type Output = Result<PublishAck, TransportError>;
    #[cfg_attr(not(feature = "nats"), allow(unused_variables))]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Both variants are Unpin.
        match self.get_mut() {
            Self::Memory(r) => Poll::Ready(
                r.take()
                    .unwrap_or_else(|| Err(TransportError::Other("ack polled after completion".into()))),
            ),
            #[cfg(feature = "nats")]
            Self::Nats(f) => Pin::new(f).poll(cx),
        }
    }
}

impl Consumer for AnyConsumer {
    type Acker = AnyAcker;
    async fn next(&mut self) -> Result<Delivery<AnyAcker>, TransportError> {
        match self {
            Self::Memory(c) => c.next().await.map(|d| d.map_acker(AnyAcker::Memory)),
            #[cfg(feature = "nats")]
            Self::Nats(c) => c.next().await.map(|d| d.map_acker(AnyAcker::Nats)),
        }
    }
    fn created(&self) -> Option<crate::timestamp::Timestamp> {
        match self {
            Self::Memory(c) => c.created(),
            #[cfg(feature = "nats")]
            Self::Nats(c) => c.created(),
        }
    }
    fn in_process(&self) -> bool {
        match self {
            Self::Memory(c) => c.in_process(),
            #[cfg(feature = "nats")]
            Self::Nats(c) => c.in_process(),
        }
    }
    fn try_next(&mut self) -> Option<Result<Delivery<AnyAcker>, TransportError>> {
        match self {
            Self::Memory(c) => c.try_next().map(|r| r.map(|d| d.map_acker(AnyAcker::Memory))),
            #[cfg(feature = "nats")]
            Self::Nats(c) => c.try_next().map(|r| r.map(|d| d.map_acker(AnyAcker::Nats))),
        }
    }
}

macro_rules! delegate {
    ($self:ident, $v:ident => $e:expr) => {
        match $self {
            Self::Memory($v) => $e,
            #[cfg(feature = "nats")]
            Self::Nats($v) => $e,
        }
    };
}

impl Acker for AnyAcker {
    async fn ack(&self) -> Result<(), TransportError> {
        delegate!(self, a => a.ack().await)
    }
    async fn nak(&self, delay: Option<Duration>) -> Result<(), TransportError> {
        delegate!(self, a => a.nak(delay).await)
    }
    async fn term(&self) -> Result<(), TransportError> {
        delegate!(self, a => a.term().await)
    }
    async fn in_progress(&self) -> Result<(), TransportError> {
        delegate!(self, a => a.in_progress().await)
    }
}

impl KeyValue for AnyKeyValue {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        delegate!(self, kv => kv.get(key).await)
    }
    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        delegate!(self, kv => kv.create(key, value).await)
    }
    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        delegate!(self, kv => kv.update(key, value, expected).await)
    }
    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        delegate!(self, kv => kv.put(key, value).await)
    }
    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), KvError> {
        delegate!(self, kv => kv.delete(key, expected).await)
    }
    async fn keys(&self) -> Result<Vec<String>, KvError> {
        delegate!(self, kv => kv.keys().await)
    }
    async fn purge_tombstones(&self, older_than: std::time::Duration) -> Result<usize, KvError> {
        delegate!(self, kv => kv.purge_tombstones(older_than).await)
    }
    fn at_once(&self) -> Option<&dyn super::KeyValueNow> {
        delegate!(self, kv => kv.at_once())
    }
}

impl Transport for AnyTransport {
    type Consumer = AnyConsumer;
    type KeyValue = AnyKeyValue;
    type AckFuture = AnyAckFuture;

    fn deployment(&self) -> &super::Deployment {
        delegate!(self, t => t.deployment())
    }

    async fn ensure_stream(&self, spec: &StreamSpec) -> Result<(), TransportError> {
        delegate!(self, t => t.ensure_stream(spec).await)
    }

    async fn publish(&self, message: OutboundMessage) -> Result<AnyAckFuture, TransportError> {
        match self {
            Self::Memory(t) => Ok(AnyAckFuture::Memory(Some(t.publish(message).await?.await))),
            #[cfg(feature = "nats")]
            Self::Nats(t) => Ok(AnyAckFuture::Nats(t.publish(message).await?)),
        }
    }

    async fn consumer(&self, spec: &ConsumerSpec) -> Result<AnyConsumer, TransportError> {
        match self {
            Self::Memory(t) => t.consumer(spec).await.map(AnyConsumer::Memory),
            #[cfg(feature = "nats")]
            Self::Nats(t) => t.consumer(spec).await.map(AnyConsumer::Nats),
        }
    }

    async fn delete_consumer(&self, stream: &str, durable: &str) -> Result<(), TransportError> {
        delegate!(self, t => t.delete_consumer(stream, durable).await)
    }

    async fn key_value(&self, spec: &KvSpec) -> Result<AnyKeyValue, KvError> {
        match self {
            Self::Memory(t) => t.key_value(spec).await.map(AnyKeyValue::Memory),
            #[cfg(feature = "nats")]
            Self::Nats(t) => t.key_value(spec).await.map(AnyKeyValue::Nats),
        }
    }

    async fn flush(&self) -> Result<(), TransportError> {
        delegate!(self, t => t.flush().await)
    }

    async fn request(&self, request: Request, timeout: Duration) -> Result<Reply, TransportError> {
        delegate!(self, t => t.request(request, timeout).await)
    }

    async fn serve(&self, pattern: &SubjectPattern, queue_group: &str) -> Result<Responder, TransportError> {
        delegate!(self, t => t.serve(pattern, queue_group).await)
    }
}
