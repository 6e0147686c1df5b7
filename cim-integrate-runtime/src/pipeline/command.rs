//! The command terminal, the result cache (the commands' dedup), and the reply (the commands'
//! settle).

use super::breaker::MIN_DEFERRAL;
use super::invoke::Runner;
use super::run::Settle;
use super::{Deferral, Dispatch, Message, Outcome};
use crate::breaker;
use crate::command::{CommandRegistration, CommandRejection, WireReply};
use crate::monitor::DeadLetterReason;
use crate::transport::{IncomingRequest, KeyValue};
use bytes::Bytes;
use std::sync::Arc;
use std::time::Duration;

/// Attempts to store a command's answer before replying without it.
const REMEMBER_ATTEMPTS: u32 = 3;

/// The outcome of a command without a usable envelope.
fn invalid_command(msg: &Message<'_>) -> Outcome {
    let reason = msg.envelope_error().map_or_else(
        || "invalid command envelope".to_owned(),
        |e| format!("invalid command envelope: {e}"),
    );
    Outcome::Rejected { reason }
}

/// Decodes the command and runs its handler: accepted, rejected (final), or failed (transient:
/// retried in place by the layers above, then answered `failed`).
pub struct CommandInvoke {
    pub(crate) registration: CommandRegistration,
    pub(crate) runner: Runner,
}

impl Dispatch for CommandInvoke {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let Some(ctx) = self.runner.context(msg) else {
            return invalid_command(msg);
        };
        let emitted = ctx.clone();
        let fut = match (self.registration.invoke)(ctx, msg.received().payload()) {
            Ok(fut) => fut,
            Err(reason) => {
                return Outcome::Rejected {
                    reason: format!("undecodable {}: {reason}", self.registration.command_type()),
                };
            }
        };
        msg.ran = true;
        match fut.await {
            Ok(answer) => match emitted.flush().await {
                Ok(()) => {
                    // The answer travels to the result cache and the reply as the reply's JSON
                    // (`None`: a plain `accepted`).
                    msg.reply =
                        answer.map(|answer| Bytes::from(WireReply::Accepted { answer: Some(answer) }.to_json()));
                    Outcome::Succeeded
                }
                Err(e) => super::invoke::handler_error(e.into()),
            },
            Err(CommandRejection::Rejected(reason)) => Outcome::Rejected { reason },
            Err(CommandRejection::Failed(e)) => match breaker::find_open(e.as_ref()) {
                Some(open) => Outcome::Deferred {
                    reason: open.to_string(),
                    delay: open.retry_after.max(MIN_DEFERRAL),
                    cause: Deferral::Breaker,
                },
                None => Outcome::Failed {
                    reason: format!("handler failed: {e}"),
                    retry_after: Duration::ZERO,
                },
            },
        }
    }
}

/// Remembers each command's final answer (accepted or rejected) under `{handler}.{message id}`,
/// so a repeated send is answered without running the handler again ([`Outcome::Duplicate`]
/// with the remembered reply). The cache unreachable: the command is answered `failed` (the
/// sender may retry), never run blind.
pub struct ResultCache<D, K> {
    pub(crate) inner: D,
    pub(crate) kv: Option<Arc<K>>,
    pub(crate) scope: Arc<str>,
}

impl<D: Dispatch, K: KeyValue> Dispatch for ResultCache<D, K> {
    async fn dispatch(&self, msg: &mut Message<'_>) -> Outcome {
        let Some(kv) = &self.kv else {
            return self.inner.dispatch(msg).await;
        };
        let Some(id) = msg.envelope().map(|e| e.message_id()) else {
            return invalid_command(msg);
        };
        let key = format!("{}.{id}", self.scope);
        match kv.get(&key).await {
            Ok(Some(entry)) if serde_json::from_slice::<WireReply>(&entry.value).is_ok() => {
                msg.reply = Some(entry.value);
                return Outcome::Duplicate;
            }
            Ok(_) => {}
            Err(e) => {
                return Outcome::Deferred {
                    reason: format!("result cache unavailable: {e}"),
                    delay: Duration::ZERO,
                    cause: Deferral::Unavailable,
                };
            }
        }
        let outcome = self.inner.dispatch(msg).await;
        let remembered = match &outcome {
            Outcome::Succeeded => Some(
                msg.reply
                    .clone()
                    .unwrap_or_else(|| Bytes::from(WireReply::Accepted { answer: None }.to_json())),
            ),
            Outcome::Rejected { reason } => Some(Bytes::from(WireReply::Rejected { reason: reason.clone() }.to_json())),
            _ => None,
        };
        if let Some(value) = remembered {
            let mut attempt = 1;
            while let Err(e) = kv.put(&key, value.clone()).await {
                if attempt >= REMEMBER_ATTEMPTS {
                    tracing::warn!(error = %e, "remembering the answer failed; a repeated send would run again");
                    break;
                }
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50 * u64::from(attempt))).await;
            }
        }
        outcome
    }
}

/// Settles a command: the reply.
pub(crate) struct Reply;

impl Settle<IncomingRequest> for Reply {
    async fn settle(&self, request: IncomingRequest, remembered: Option<Bytes>, outcome: Outcome) {
        let reply = match outcome {
            // With an answer, the handler left the reply's JSON: sent as it is.
            Outcome::Succeeded => match remembered {
                Some(json) => WireReply::reply_of("accepted", json),
                None => WireReply::Accepted { answer: None }.to_reply(),
            },
            Outcome::Duplicate => remembered
                .and_then(|v| serde_json::from_slice::<WireReply>(&v).ok())
                .unwrap_or(WireReply::Failed {
                    reason: "the remembered answer is unreadable".to_owned(),
                })
                .to_reply(),
            Outcome::Rejected { reason }
            | Outcome::DeadLetter {
                kind: DeadLetterReason::Undecodable | DeadLetterReason::InvalidEnvelope,
                reason,
            } => WireReply::Rejected { reason }.to_reply(),
            Outcome::Failed { reason, .. }
            | Outcome::Retry { reason, .. }
            | Outcome::Deferred { reason, .. }
            | Outcome::DeadLetter { reason, .. }
            | Outcome::DeadLettered { reason, .. } => WireReply::Failed { reason }.to_reply(),
            Outcome::Skipped => WireReply::Failed {
                reason: "not handled".to_owned(),
            }
            .to_reply(),
        };
        if let Err(e) = request.respond(reply).await {
            tracing::warn!(error = %e, "sending the command acknowledgement failed");
        }
    }

    async fn abandon(&self, request: IncomingRequest) {
        let reply = WireReply::Failed {
            reason: "the service is shutting down; send again".to_owned(),
        };
        if let Err(e) = request.respond(reply.to_reply()).await {
            tracing::debug!(error = %e, "answering a command at shutdown failed");
        }
    }
}
