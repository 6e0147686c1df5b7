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
use crate::fast_hash::FastState;
use std::collections::HashSet;
use std::sync::{Arc, RwLock};

/// The domains whose streams a provisioner has ensured: a few names chosen by the program, looked
/// up on every publish, so hashed with the in-process hasher, not SipHash.
type Known = HashSet<Box<str>, FastState>;

/// Publishes with a domain's stream ensured once per domain and process. Cheap to clone: clones
/// share what they know.
#[derive(Debug, Clone)]
pub struct Provisioner<T> {
    transport: T,
    known: Arc<RwLock<Known>>,
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
    fn forget_if_gone<R>(known: &RwLock<Known>, result: &Result<R, TransportError>) {
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
    /// `true` for a request nobody answered in time.
    fn is_timeout(&self) -> bool;
    /// The error of an attempt [`patiently`] stopped waiting for after `after`.
    fn cut_short(what: &str, after: std::time::Duration) -> Self;
}

/// Provisioning waits out an election, not a misconfiguration (a refused permission, JetStream
/// not enabled): that stays until an operator changes it, so it is reported at once.
impl Retryable for TransportError {
    fn is_transient(&self) -> bool {
        TransportError::is_transient(self) && !self.needs_operator()
    }

    fn is_timeout(&self) -> bool {
        matches!(self, TransportError::Timeout(_))
    }

    fn cut_short(what: &str, after: std::time::Duration) -> Self {
        TransportError::Timeout(format!("{what}: no answer within {after:?} (a leader being elected?)"))
    }
}

impl Retryable for super::KvError {
    fn is_transient(&self) -> bool {
        match self {
            super::KvError::Transport(t) => Retryable::is_transient(t),
            other => other.is_transient(),
        }
    }

    fn is_timeout(&self) -> bool {
        matches!(self, super::KvError::Transport(t) if t.is_timeout())
    }

    fn cut_short(what: &str, after: std::time::Duration) -> Self {
        super::KvError::Transport(TransportError::cut_short(what, after))
    }
}

/// After an attempt went unanswered, how long [`patiently`] waits for each of the next ones.
///
/// A request about a stream or a consumer whose leader is being elected (its node just died) is
/// answered by nobody: it times out after the whole request timeout (5 s by default), and the
/// election ends during the wait (nats-server elects within 4 to 9 s). Asked again every second
/// after the first silence, provisioning goes on within about a second of the election instead
/// of up to a request timeout after it. The first attempt always has the whole request timeout:
/// on a healthy cluster nothing is cut.
pub(crate) const AFTER_SILENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// At most this many attempts in a row are cut to [`AFTER_SILENCE`]; the next one has the whole
/// request timeout again, so that a server that is merely slow to answer (over a second) is
/// still heard.
const CUT_IN_A_ROW: u32 = 8;

/// How [`patiently`] times its attempts after one went unanswered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attempts {
    /// Cut to [`AFTER_SILENCE`] (see there): for provisioning requests, which are idempotent
    /// (an attempt cut short that the server still carries out is found done by the next).
    CutAfterSilence,
    /// Every attempt given its whole time: for operations that may take long when all is well
    /// (a bucket's key listing).
    Whole,
}

/// Runs `op` until it succeeds, fails for good, or fails transiently for longer than
/// [`PROVISION_PATIENCE`]. Transient failures are logged and retried: after an answered failure
/// (no responders, no leader yet) with back-off (100 ms doubling to 1 s); after an unanswered
/// one (a timeout) at once, timed as `attempts` says.
pub(crate) async fn patiently<F, Fut, R, E>(what: &str, attempts: Attempts, mut op: F) -> Result<R, E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<R, E>>,
    E: Retryable,
{
    use std::time::Duration;
    let give_up = tokio::time::Instant::now() + PROVISION_PATIENCE;
    let mut backoff = crate::backoff::Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    let mut cut_in_a_row = 0;
    let mut after_silence = false;
    loop {
        let cut = attempts == Attempts::CutAfterSilence && after_silence && cut_in_a_row < CUT_IN_A_ROW;
        let result = if cut {
            cut_in_a_row += 1;
            match tokio::time::timeout(AFTER_SILENCE, op()).await {
                Ok(result) => result,
                Err(_) => Err(E::cut_short(what, AFTER_SILENCE)),
            }
        } else {
            cut_in_a_row = 0;
            op().await
        };
        match result {
            Err(e) if e.is_transient() && tokio::time::Instant::now() < give_up => {
                after_silence = e.is_timeout();
                if after_silence {
                    tracing::warn!(what, error = %e, "provisioning: no answer; asking again");
                    // Not a back-off: the silence was the wait. A breath, in case an error
                    // reads as a timeout at once.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                } else {
                    tracing::warn!(what, error = %e, retry_in = ?backoff.pause(), "provisioning: transient failure; retrying");
                    backoff.wait().await;
                }
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{AFTER_SILENCE, Attempts, CUT_IN_A_ROW, patiently};
    use crate::transport::TransportError;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;
    use tokio::time::Instant;

    /// The request timeout of the operations below: a request nobody answers fails after it.
    const TIMEOUT: Duration = Duration::from_secs(5);

    /// An operation on a stream whose leader is elected `elected` after `start`: before, a
    /// request is answered by nobody (it fails after [`TIMEOUT`], or when cut); after, at once.
    async fn ask(start: Instant, elected: Duration, attempts: &AtomicU32) -> Result<(), TransportError> {
        attempts.fetch_add(1, Ordering::SeqCst);
        let asked = Instant::now();
        if asked >= start + elected {
            return Ok(());
        }
        tokio::time::sleep(TIMEOUT).await;
        Err(TransportError::Timeout("no answer".into()))
    }

    /// After the first silence every attempt is cut to a second: the operation goes on within
    /// about a second of the election, where whole attempts would wait for the next timeout.
    #[tokio::test(start_paused = true)]
    async fn after_a_silence_attempts_are_cut_and_the_election_is_seen_within_a_second() {
        for elected_ms in [4_000, 6_500, 9_000] {
            let elected = Duration::from_millis(elected_ms);
            let start = Instant::now();
            let attempts = AtomicU32::new(0);
            patiently("stream", Attempts::CutAfterSilence, || ask(start, elected, &attempts))
                .await
                .expect("provisioned");
            let late = start.elapsed() - elected;
            assert!(
                late <= AFTER_SILENCE + Duration::from_millis(50),
                "{elected:?}: {late:?} late"
            );

            let start = Instant::now();
            let whole = AtomicU32::new(0);
            patiently("listing", Attempts::Whole, || ask(start, elected, &whole))
                .await
                .expect("listed");
            let whole_late = start.elapsed() - elected;
            assert!(
                whole_late >= late,
                "{elected:?}: whole attempts {whole_late:?} late, cut {late:?}"
            );
            assert_eq!(whole.load(Ordering::SeqCst), 1 + elected_ms.div_ceil(5_020) as u32);
        }
    }

    /// A server that answers, but slower than a cut attempt waits: after [`CUT_IN_A_ROW`] cut
    /// attempts the next one has the whole time, and is heard.
    #[tokio::test(start_paused = true)]
    async fn a_slow_answer_is_heard_after_the_cut_attempts() {
        let attempts = AtomicU32::new(0);
        let start = Instant::now();
        let slow = || async {
            let n = attempts.fetch_add(1, Ordering::SeqCst);
            if n == 0 {
                tokio::time::sleep(TIMEOUT).await;
                return Err(TransportError::Timeout("no answer".into()));
            }
            tokio::time::sleep(Duration::from_millis(1_500)).await;
            Ok(n)
        };
        let n = patiently("stream", Attempts::CutAfterSilence, slow)
            .await
            .expect("answered");
        assert_eq!(n, 1 + CUT_IN_A_ROW, "the attempt after the cut ones");
        assert!(start.elapsed() < TIMEOUT + AFTER_SILENCE * (CUT_IN_A_ROW + 2));
    }

    /// An answered failure is not a silence: it is retried after a back-off, never cut.
    #[tokio::test(start_paused = true)]
    async fn answered_failures_back_off_up_to_a_second() {
        let attempts = AtomicU32::new(0);
        let start = Instant::now();
        let op = || async {
            if attempts.fetch_add(1, Ordering::SeqCst) < 7 {
                Err(TransportError::Unavailable("no leader".into()))
            } else {
                Ok(())
            }
        };
        patiently("stream", Attempts::CutAfterSilence, op)
            .await
            .expect("provisioned");
        // 100 + 200 + 400 + 800 + 1000 + 1000 + 1000 ms.
        assert_eq!(start.elapsed(), Duration::from_millis(4_500));
    }

    /// What is not transient is reported at once; a transient failure for longer than the
    /// patience is reported when it runs out.
    #[tokio::test(start_paused = true)]
    async fn lasting_failures_are_reported() {
        let attempts = AtomicU32::new(0);
        let refused = patiently("stream", Attempts::CutAfterSilence, || async {
            attempts.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(TransportError::Invalid("bad name".into()))
        })
        .await;
        assert!(matches!(refused, Err(TransportError::Invalid(_))));
        assert_eq!(attempts.load(Ordering::SeqCst), 1);

        let start = Instant::now();
        let silent = patiently("stream", Attempts::CutAfterSilence, || async {
            tokio::time::sleep(TIMEOUT).await;
            Err::<(), _>(TransportError::Timeout("no answer".into()))
        })
        .await;
        assert!(matches!(silent, Err(TransportError::Timeout(_))), "{silent:?}");
        let took = start.elapsed();
        assert!(
            took >= super::PROVISION_PATIENCE && took < super::PROVISION_PATIENCE + TIMEOUT,
            "{took:?}"
        );
    }
}
