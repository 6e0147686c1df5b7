//! Terminal: decode the payload and run the handler.

use super::breaker::MIN_DEFERRAL;
use super::{Deferral, Dispatch, Message, Outcome};
use crate::breaker;
use crate::handler::context::{DynPublish, Runs};
use crate::handler::{Context, HandlerError, Registration};
use crate::monitor::DeadLetterReason;
use crate::topology::PublishLog;
use std::sync::Arc;
use std::time::Duration;

/// What a handler's [`Context`] needs, shared by the terminals of one service.
#[derive(Clone)]
pub(crate) struct ContextParts {
    pub(crate) publisher: Arc<dyn DynPublish>,
    pub(crate) log: Arc<PublishLog>,
}

/// Who runs: the handler, by its full name (durable name, or `{set}-{name}` for commands),
/// publishing through the service's publisher, its publishes recorded as made by the handler
/// `name` of the set `set`: what every [`Context`] of the handler shares.
#[derive(Clone)]
pub(crate) struct Runner {
    runs: Arc<Runs>,
}

impl Runner {
    pub(crate) fn new(parts: &ContextParts, set: &str, name: &str, handler: Arc<str>) -> Self {
        let runs =
            Runs::new(handler, parts.publisher.clone()).observed_by(Arc::from(set), Arc::from(name), parts.log.clone());
        Self { runs: Arc::new(runs) }
    }

    /// The context for running the handler on `msg`; `None` without a valid envelope.
    pub(crate) fn context(&self, msg: &Message<'_>) -> Option<Context> {
        let envelope = msg.envelope()?;
        Some(Context::running(envelope, msg.attempt(), self.runs.clone()).propagating(msg.propagated()))
    }
}

/// Decodes the event and runs the handler: success, a transient failure ([`Outcome::Failed`]; a
/// refusal of a breaker around the handler's own call is a deferral), a permanent failure or an
/// undecodable payload (dead letters).
pub struct Invoke {
    pub(crate) registration: Registration,
    pub(crate) runner: Runner,
}

impl Dispatch for Invoke {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let Some(ctx) = self.runner.context(msg) else {
            return super::filter::invalid_envelope(msg);
        };
        let payload = msg.received().payload();
        let emitted = ctx.clone();
        let fut = match (self.registration.invoke)(ctx, payload) {
            Ok(fut) => fut,
            Err(reason) => {
                return Outcome::DeadLetter {
                    kind: DeadLetterReason::Undecodable,
                    reason: format!("undecodable payload for {}: {reason}", self.registration.event_type),
                };
            }
        };
        msg.ran = true;
        match fut.await {
            // What the handler emitted is acknowledged, together, before the message is.
            Ok(()) => match emitted.flush().await {
                Ok(()) => Outcome::Succeeded,
                Err(e) => handler_error(e.into()),
            },
            Err(e) => handler_error(e),
        }
    }
}

/// How long a message whose handler met unavailable infrastructure waits before it runs again.
pub(crate) const UNAVAILABLE_DEFERRAL: Duration = Duration::from_secs(1);

/// If a handler's error comes from infrastructure that is unavailable right now (a timeout, no
/// responders, no leader, a lost connection; a command nobody answered), what it was. Such a
/// failure defers the message without spending an attempt: an outage never dead-letters.
pub(crate) fn unavailable(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    use crate::command::CommandError;
    use crate::handler::context::PublishError;
    use crate::saga::SagaError;
    use crate::transport::{KvError, TransportError};
    let mut cur = Some(e);
    while let Some(err) = cur {
        let hit = if let Some(t) = err.downcast_ref::<TransportError>() {
            t.is_transient()
        } else if let Some(k) = err.downcast_ref::<KvError>() {
            k.is_transient()
        } else if let Some(p) = err.downcast_ref::<PublishError>() {
            matches!(p, PublishError::Transport(t) if t.is_transient())
        } else if let Some(s) = err.downcast_ref::<SagaError>() {
            matches!(s, SagaError::KeyValue(k) if k.is_transient())
                || matches!(s, SagaError::Transport(t) if t.is_transient())
        } else if let Some(c) = err.downcast_ref::<CommandError>() {
            match c {
                CommandError::NoHandler { .. } | CommandError::Timeout { .. } => true,
                CommandError::Transport(t) => t.is_transient(),
                _ => false,
            }
        } else {
            false
        };
        if hit {
            return Some(err.to_string());
        }
        cur = err.source();
    }
    None
}

/// The deferral a transient failure calls for, if any: a breaker around the handler's own call
/// refused (wait out its cool-down), or infrastructure is unavailable (retry in a second). Neither
/// spends an attempt.
pub(crate) fn deferral(e: &(dyn std::error::Error + 'static)) -> Option<Outcome> {
    if let Some(open) = breaker::find_open(e) {
        return Some(Outcome::Deferred {
            reason: open.to_string(),
            delay: open.retry_after.max(MIN_DEFERRAL),
            cause: Deferral::Breaker,
        });
    }
    unavailable(e).map(|what| Outcome::Deferred {
        // The error says what it is ("timed out: ..", "unavailable: ..", "permission denied: ..");
        // the cause says why it defers.
        reason: what,
        delay: UNAVAILABLE_DEFERRAL,
        cause: Deferral::Unavailable,
    })
}

/// The outcome of a handler error.
pub(crate) fn handler_error(e: HandlerError) -> Outcome {
    match e {
        HandlerError::Permanent(e) => Outcome::DeadLetter {
            kind: DeadLetterReason::Permanent,
            reason: format!("handler failed permanently: {e}"),
        },
        HandlerError::Transient(e) => deferral(e.as_ref()).unwrap_or_else(|| Outcome::Failed {
            reason: format!("handler failed: {e}"),
            retry_after: Duration::ZERO,
        }),
    }
}
