//! Awaiting a future event: "wait until `document.created` with this id arrives, or time out".
//!
//! [`Waiter::expect`] subscribes *before* returning (a consumer on the event's stream that
//! starts with the next message), so an event that arrives between the command and the wait is
//! not missed; [`Expectation::wait`] then reads until an event satisfies the predicate or the
//! timeout passes:
//!
//! ```ignore
//! let expectation = waiter.expect::<DocumentCreated>(move |e| e.document_id == id).await?;
//! bus.send(&CreateDocument { document_id: id, .. }).await?;
//! let created = expectation.wait(Duration::from_secs(5)).await?;
//! ```
//!
//! Each expectation uses its own short-lived durable consumer (`waiter-{uuid}`), deleted when
//! the wait ends or the expectation is dropped. A process that dies first cannot delete it, so
//! the consumer also carries an [inactive threshold](ConsumerSpec::inactive_threshold)
//! ([`DEFAULT_INACTIVE_THRESHOLD`], set with [`Waiter::inactive_threshold`]): the server removes
//! it once nobody has been waiting on it that long. While [`Expectation::wait`] runs, its pull
//! keeps the consumer alive however long the timeout; the threshold only bounds the time between
//! [`Waiter::expect`] and [`Expectation::wait`], and how long a crashed waiter's consumer lingers.

use crate::envelope::Envelope;
use crate::event::DomainEvent;
use crate::subject::{SubjectError, SubjectPattern};
use crate::transport::{Consumer, ConsumerSpec, DeliverPolicy, StreamSpec, Transport, TransportError};
use std::marker::PhantomData;
use std::time::Duration;

/// How long a waiter's consumer may sit with nobody waiting on it before the server removes it
/// (5 minutes): long enough for any sensible gap between [`Waiter::expect`] and
/// [`Expectation::wait`], short enough that consumers of crashed waiters do not pile up.
pub const DEFAULT_INACTIVE_THRESHOLD: Duration = Duration::from_secs(300);

/// Why a wait ended without the event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WaitError {
    /// No matching event within the timeout.
    #[error("no matching `{event_type}` within {timeout:?}")]
    Timeout {
        /// The awaited event type.
        event_type: &'static str,
        /// The timeout.
        timeout: Duration,
    },
    /// A subject is invalid.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
}

/// Creates [`Expectation`]s of future events.
#[derive(Debug, Clone)]
pub struct Waiter<T: Transport> {
    transport: T,
    inactive_threshold: Duration,
}

/// A matching event and its envelope (identity, subject, occurrence time).
#[derive(Debug, Clone)]
pub struct Received<E> {
    /// The decoded event.
    pub event: E,
    /// Its envelope.
    pub envelope: Envelope,
}

impl<T: Transport> Waiter<T> {
    /// A waiter on `transport`.
    pub fn new(transport: T) -> Self {
        Self {
            transport,
            inactive_threshold: DEFAULT_INACTIVE_THRESHOLD,
        }
    }

    /// Sets how long an expectation's consumer may be idle (nobody waiting on it) before the
    /// server removes it; default [`DEFAULT_INACTIVE_THRESHOLD`]. An expectation waited on after
    /// a longer gap fails with [`TransportError::ConsumerNotFound`]. A zero threshold makes
    /// [`expect`](Self::expect) fail with [`TransportError::Invalid`].
    pub fn inactive_threshold(mut self, threshold: Duration) -> Self {
        self.inactive_threshold = threshold;
        self
    }

    /// Starts listening for `E` events satisfying `predicate`. Events published after this
    /// returns are seen by [`Expectation::wait`], however late it is called.
    pub async fn expect<E, P>(&self, predicate: P) -> Result<Expectation<T, E, P>, WaitError>
    where
        E: DomainEvent,
        P: Fn(&E) -> bool + Send,
    {
        let subject = E::subject();
        let domain = subject.first_token().to_owned();
        let stream = StreamSpec::for_domain(&domain, None)?;
        match self.transport.ensure_stream(&stream).await {
            Err(TransportError::StreamConflict { .. }) | Ok(()) => {}
            Err(e) => return Err(e.into()),
        }
        let durable = format!("waiter-{}", uuid::Uuid::now_v7().simple());
        let spec = ConsumerSpec::new(stream.name.clone(), durable, SubjectPattern::new(subject.as_str())?)
            .deliver(DeliverPolicy::New)
            .ack_wait(Duration::from_secs(30))
            .inactive_threshold(self.inactive_threshold);
        let consumer = self.transport.consumer(&spec).await?;
        Ok(Expectation {
            transport: self.transport.clone(),
            spec,
            consumer: Some(consumer),
            predicate,
            _event: PhantomData,
        })
    }

    /// Listens and waits in one call: for events that may only arrive after this is called.
    pub async fn wait_for<E, P>(&self, predicate: P, timeout: Duration) -> Result<Received<E>, WaitError>
    where
        E: DomainEvent,
        P: Fn(&E) -> bool + Send,
    {
        self.expect::<E, P>(predicate).await?.wait(timeout).await
    }
}

/// A subscription to a future event, created by [`Waiter::expect`].
#[must_use = "an expectation does nothing until it is waited on"]
pub struct Expectation<T: Transport, E, P> {
    transport: T,
    spec: ConsumerSpec,
    consumer: Option<T::Consumer>,
    predicate: P,
    _event: PhantomData<fn() -> E>,
}

impl<T: Transport, E, P> std::fmt::Debug for Expectation<T, E, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Expectation")
            .field("consumer", &self.spec.durable)
            .field("filter", &self.spec.filter)
            .finish_non_exhaustive()
    }
}

impl<T: Transport, E, P> Expectation<T, E, P> {
    /// The stream the expectation's consumer reads.
    pub fn stream(&self) -> &str {
        &self.spec.stream
    }

    /// The durable name of the expectation's consumer (`waiter-{uuid}`).
    pub fn consumer_name(&self) -> &str {
        &self.spec.durable
    }
}

impl<T: Transport, E: DomainEvent, P: Fn(&E) -> bool + Send> Expectation<T, E, P> {
    /// Waits up to `timeout` for the first event satisfying the predicate. Events that do not
    /// decode or do not match are skipped.
    pub async fn wait(mut self, timeout: Duration) -> Result<Received<E>, WaitError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let result = match self.consumer.as_mut() {
            Some(consumer) => loop {
                let delivery = match tokio::time::timeout_at(deadline, consumer.next()).await {
                    Err(_) => {
                        break Err(WaitError::Timeout {
                            event_type: E::TYPE_NAME,
                            timeout,
                        });
                    }
                    Ok(Err(e)) => break Err(e.into()),
                    Ok(Ok(d)) => d,
                };
                let found = delivery
                    .envelope()
                    .ok()
                    .and_then(|envelope| match E::decode(envelope.payload()) {
                        Ok(event) if (self.predicate)(&event) => Some(Received { event, envelope }),
                        Ok(_) => None,
                        Err(e) => {
                            tracing::debug!(error = %e, "waiter skipped an undecodable event");
                            None
                        }
                    });
                let _ = delivery.ack().await;
                if let Some(found) = found {
                    break Ok(found);
                }
            },
            None => Err(WaitError::Transport(TransportError::Other(
                "expectation already used".into(),
            ))),
        };
        self.consumer = None;
        if let Err(e) = self
            .transport
            .delete_consumer(&self.spec.stream, &self.spec.durable)
            .await
        {
            tracing::debug!(error = %e, consumer = %self.spec.durable, "deleting the waiter's consumer failed");
        }
        result
    }
}

impl<T: Transport, E, P> Drop for Expectation<T, E, P> {
    fn drop(&mut self) {
        if self.consumer.take().is_none() {
            return;
        }
        // Dropped without waiting: delete the consumer in the background if a runtime runs.
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let t = self.transport.clone();
            let (stream, durable) = (self.spec.stream.clone(), self.spec.durable.clone());
            handle.spawn(async move {
                let _ = t.delete_consumer(&stream, &durable).await;
            });
        }
    }
}
