//! Publishing into any domain: the stream of a domain first seen at publish time is provisioned
//! (under the transport's [`Deployment`](super::Deployment)) before the message is sent.
//!
//! A handler, a saga step or a process manager that publishes into a domain no handler of its
//! host subscribes to would otherwise fail on every attempt with
//! [`NoStream`](super::TransportError::NoStream); in a saga that turned into a compensation of
//! work that had succeeded. Everything the runtime publishes goes through a [`Provisioner`].
//!
//! A domain's stream is ensured once; if a publish then finds no stream (a server that lost its
//! JetStream state, a memory-storage stream after a restart, a stream deleted by hand), the
//! domain is forgotten, so that the next publish into it (the handler's retry) provisions the
//! stream again.

use super::{OutboundMessage, PublishAck, StreamSpec, Transport, TransportError};
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// Publishes with a domain's stream ensured once per domain and process. Cheap to clone: clones
/// share what they know.
#[derive(Debug, Clone)]
pub struct Provisioner<T> {
    transport: T,
    known: Arc<RwLock<HashSet<Box<str>>>>,
}

impl<T: Transport> Provisioner<T> {
    /// A provisioner publishing on `transport`.
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            known: Arc::default(),
        }
    }

    /// The transport.
    pub fn transport(&self) -> &T {
        &self.transport
    }

    fn is_known(&self, domain: &str) -> bool {
        self.known.read().map(|k| k.contains(domain)).unwrap_or(false)
    }

    fn remember(&self, domain: &str) {
        if let Ok(mut k) = self.known.write() {
            k.insert(Box::from(domain));
        }
    }

    /// After `result` of a publish: a stream that is gone makes its domain unknown again.
    fn forget_if_gone<R>(known: &RwLock<HashSet<Box<str>>>, result: &Result<R, TransportError>) {
        if let Err(TransportError::NoStream { subject }) = result {
            let domain = subject.split('.').next().unwrap_or_default();
            if let Ok(mut k) = known.write()
                && k.remove(domain)
            {
                tracing::warn!(
                    domain,
                    "no stream for a domain provisioned before (gone?); provisioning it again at the next publish"
                );
            }
        }
    }

    /// Ensures the stream of `domain` (`DOCUMENT_EVENTS` on `document.>`; `dlq`: the dead-letter
    /// stream). A stream already capturing the domain, even with other settings or under another
    /// name, is fine. Transient trouble is returned (nothing is remembered).
    pub async fn domain(&self, domain: &str) -> Result<(), TransportError> {
        if self.is_known(domain) {
            return Ok(());
        }
        let spec = if domain == crate::service::DEAD_LETTER_TOKEN {
            crate::service::dead_letter_stream().map_err(|e| TransportError::Invalid(e.to_string()))?
        } else {
            StreamSpec::for_domain(domain, None)?
        };
        match self.transport.ensure_stream(&spec).await {
            Ok(()) => {}
            // Someone else's stream captures it: publishing will reach that one.
            Err(TransportError::StreamConflict { .. } | TransportError::StreamOverlap { .. }) => {}
            // Not a domain we can provision (a foreign subject): let the publish tell.
            Err(TransportError::Invalid(reason)) => {
                tracing::debug!(domain, %reason, "not provisioning a stream for this subject");
            }
            Err(e) => return Err(e),
        }
        self.remember(domain);
        Ok(())
    }

    /// Publishes without waiting, provisioning the subject's domain first if this provisioner
    /// has not seen it yet; the returned future resolves to the acknowledgement.
    pub async fn publish(
        &self,
        message: OutboundMessage,
    ) -> Result<impl Future<Output = Result<PublishAck, TransportError>> + Send + 'static, TransportError> {
        use futures::FutureExt as _;
        let domain = message.subject.first_token();
        if !self.is_known(domain) {
            self.domain(domain).await?;
        }
        let sent = self.transport.publish(message).await;
        Self::forget_if_gone(&self.known, &sent);
        let known = self.known.clone();
        Ok(sent?.inspect(move |acked| Self::forget_if_gone(&known, acked)))
    }

    /// Publishes and waits for the acknowledgement, provisioning the subject's domain first if
    /// this provisioner has not seen it yet.
    pub async fn publish_and_wait(&self, message: OutboundMessage) -> Result<PublishAck, TransportError> {
        self.publish(message).await?.await
    }
}

/// How long provisioning on NATS (streams, consumers, buckets) keeps retrying through transient trouble (a leader election,
/// a node restarting, a reconnect) before it reports the error.
pub const PROVISION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// An error that may or may not go away by itself.
pub(crate) trait Retryable: std::fmt::Display {
    fn is_transient(&self) -> bool;
}

/// Provisioning waits out an election, not a misconfiguration (a refused permission, JetStream
/// not enabled): that stays until an operator changes it, so it is reported at once.
impl Retryable for TransportError {
    fn is_transient(&self) -> bool {
        TransportError::is_transient(self) && !self.needs_operator()
    }
}

impl Retryable for super::KvError {
    fn is_transient(&self) -> bool {
        match self {
            super::KvError::Transport(t) => Retryable::is_transient(t),
            other => other.is_transient(),
        }
    }
}

/// Runs `op` until it succeeds, fails for good, or fails transiently for longer than
/// [`PROVISION_PATIENCE`]; transient failures are logged and retried with back-off (100 ms
/// doubling to 2 s).
pub(crate) async fn patiently<F, Fut, R, E>(what: &str, mut op: F) -> Result<R, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, E>>,
    E: Retryable,
{
    let give_up = tokio::time::Instant::now() + PROVISION_PATIENCE;
    let mut backoff =
        crate::backoff::Backoff::new(std::time::Duration::from_millis(100), std::time::Duration::from_secs(2));
    loop {
        match op().await {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                tracing::warn!(what, error = %e, retry_in = ?backoff.pause(), "provisioning: transient failure; retrying");
                backoff.wait().await;
            }
            other => return other,
        }
    }
}
