//! What an operator needs without writing code: dead letters listed, grouped, redriven and
//! purged; sagas and process managers inspected and unstuck; handlers' lag; the topology as the
//! server sees it.
//!
//! [`Ops`] talks to NATS JetStream directly (the assets a running host provisioned), so it works
//! from another process than the host: the `cim-integrate` command-line tool and its web console
//! are built on it. Names honour the deployment prefix ([`Ops::with_prefix`]): with prefix
//! `prod`, dead letters are in `PROD_DEAD_LETTERS` on `prod.dlq.>`.
//!
//! Errors are classified like the runtime's: infrastructure unavailability (timeouts, no
//! responders, no leader, a lost connection) is [`OpsError::Transport`] with a transient
//! [`TransportError`]; something that does not exist is [`OpsError::NotFound`], never the reading
//! of a timeout.

pub mod dead_letters;
pub mod handlers;
pub mod processes;
pub mod sagas;
pub mod topology;

pub use dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterGroup, PurgeReport, RedriveProgress, RedriveReport};
pub use handlers::HandlerLag;
pub use processes::{ProcessSummary, ProcessView};
pub use sagas::{SagaFilter, SagaState, SagaSummary, SagaView};
pub use topology::{ObservedConsumer, ObservedStream, ObservedTopology};

use crate::subject::Subject;
use crate::transport::nats::{NatsKeyValue, NatsTransport};
use crate::transport::prefixed::Prefixed;
use crate::transport::{KvError, TransportError};
use async_nats::jetstream::{self, ErrorCode};
use futures::TryStreamExt;

/// The environment variable naming the deployment prefix (`prod`, `prod.eu`), as given to
/// [`Prefixed`] in the host's code.
pub const ENV_PREFIX: &str = "CIM_PREFIX";

/// A failed operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// NATS could not be reached or answered with an error; [`TransportError::is_transient`]
    /// says whether trying again later may help.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// What was asked for does not exist (a dead letter, a saga, a stream).
    #[error("not found: {0}")]
    NotFound(String),
    /// The request cannot be carried out as asked (a bad selector, a record in a state that does
    /// not allow it).
    #[error("{0}")]
    Invalid(String),
    /// A stored record could not be read; the text says which and why.
    #[error("corrupt record: {0}")]
    Corrupt(String),
    /// The record changed between reading and writing it (a host wrote it meanwhile): nothing
    /// was written; look again and decide again.
    #[error("changed meanwhile: {0}")]
    Conflict(String),
}

impl From<KvError> for OpsError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Transport(t) => OpsError::Transport(t),
            KvError::Conflict { key, .. } => OpsError::Conflict(format!("`{key}` was written by someone else")),
            KvError::AlreadyExists { key } => OpsError::Conflict(format!("`{key}` exists already")),
            other => OpsError::Invalid(other.to_string()),
        }
    }
}

impl OpsError {
    /// `true` if trying again later may succeed (infrastructure unavailability). A
    /// misconfiguration is not ([`TransportError::needs_operator`]: a refused permission,
    /// JetStream not enabled): it stays until someone changes it.
    pub fn is_transient(&self) -> bool {
        matches!(self, OpsError::Transport(t) if t.is_transient() && !t.needs_operator())
    }
}

/// The operator's handle on one NATS deployment.
#[derive(Clone, Debug)]
pub struct Ops {
    /// The transport under the deployment prefix: its names are the ones the host uses.
    names: Prefixed<NatsTransport>,
}

impl Ops {
    /// Operates on what `transport` reaches, without a deployment prefix.
    pub fn new(transport: NatsTransport) -> Self {
        Self {
            names: Prefixed::new(transport, None),
        }
    }

    /// Connects as the library does from the environment (`NATS_URL` and the credential
    /// variables of [`NatsOptions`](crate::transport::nats::NatsOptions)), with the prefix from
    /// [`ENV_PREFIX`] if set. `NATS_URL` unset is an [`OpsError::Invalid`]; a connection without
    /// JetStream is [`TransportError::JetStreamDisabled`] (one request to the JetStream API).
    pub async fn from_env() -> Result<Self, OpsError> {
        let transport = NatsTransport::from_env()
            .await?
            .ok_or_else(|| OpsError::Invalid(format!("{} is not set", crate::transport::nats::ENV_URL)))?;
        let prefix = match std::env::var(ENV_PREFIX) {
            Ok(p) if !p.trim().is_empty() => {
                Some(Subject::new(p.trim()).map_err(|e| OpsError::Invalid(format!("{ENV_PREFIX} `{p}`: {e}")))?)
            }
            _ => None,
        };
        // Without JetStream every command would fail as "unavailable, try again"; say why once.
        // Other trouble is left to the command, which reports it as it meets it.
        if let Err(e @ TransportError::JetStreamDisabled { .. }) = transport.check_jetstream().await {
            return Err(e.into());
        }
        Ok(Self::new(transport).with_prefix(prefix))
    }

    /// Addresses the assets of the deployment under `prefix` (see
    /// [`Prefixed`]).
    pub fn with_prefix(self, prefix: Option<Subject>) -> Self {
        Self {
            names: Prefixed::new(self.names.into_inner(), prefix),
        }
    }

    /// The deployment prefix, if any.
    pub fn prefix(&self) -> Option<&Subject> {
        self.names.prefix()
    }

    /// The NATS transport (its client and JetStream context), which sees the real names.
    pub fn transport(&self) -> &NatsTransport {
        self.names.inner()
    }

    /// The transport under the deployment prefix, for the library's own readers (key-value
    /// buckets by their unprefixed names).
    pub fn prefixed(&self) -> &Prefixed<NatsTransport> {
        &self.names
    }

    pub(crate) fn js(&self) -> &jetstream::Context {
        self.transport().jetstream()
    }

    /// The real name of stream `base` under the prefix (`DEAD_LETTERS` -> `PROD_DEAD_LETTERS`).
    pub fn stream_name(&self, base: &str) -> String {
        self.names.stream_name(base)
    }

    /// The real name of bucket `base` under the prefix (`cim_dedup_x` -> `prod_cim_dedup_x`).
    pub fn bucket_name(&self, base: &str) -> String {
        self.names.bucket_name(base)
    }

    /// The real subject of `subject` under the prefix (`dlq.>` -> `prod.dlq.>`); `subject` may
    /// be a pattern.
    pub fn subject(&self, subject: &str) -> String {
        match self.prefix() {
            Some(p) => format!("{}.{subject}", p.as_str()),
            None => subject.to_owned(),
        }
    }

    /// `subject` without the prefix (as the host's code names it).
    pub fn unprefixed<'a>(&self, subject: &'a str) -> &'a str {
        match self.prefix() {
            Some(p) => subject
                .strip_prefix(p.as_str())
                .and_then(|s| s.strip_prefix('.'))
                .unwrap_or(subject),
            None => subject,
        }
    }

    /// The existing bucket `base` (its name without the prefix), opened without creating it or
    /// checking its settings; `None` if it does not exist.
    pub(crate) async fn bucket(&self, base: &str) -> Result<Option<NatsKeyValue>, OpsError> {
        Ok(crate::transport::nats::open_existing_bucket(self.transport(), &self.bucket_name(base)).await?)
    }

    /// The names of every stream, sorted.
    pub(crate) async fn stream_names(&self) -> Result<Vec<String>, OpsError> {
        let mut names: Vec<String> = self
            .js()
            .stream_names()
            .try_collect()
            .await
            .map_err(|e| OpsError::Transport(crate::transport::nats::classify_error("listing streams", &e)))?;
        names.sort_unstable();
        Ok(names)
    }

    /// The unprefixed names `n` of the buckets `{family}{n}` (from their `KV_` streams), minus
    /// those ending in one of `companions` (a family's second buckets), sorted.
    pub(crate) async fn bucket_family(&self, family: &str, companions: &[&str]) -> Result<Vec<String>, OpsError> {
        let head = format!("KV_{}", self.bucket_name(family));
        Ok(self
            .stream_names()
            .await?
            .into_iter()
            .filter_map(|s| s.strip_prefix(&head).map(str::to_owned))
            .filter(|n| !n.is_empty() && !companions.iter().any(|c| n.ends_with(c)))
            .collect())
    }
}

/// Whether a JetStream error says "no such stream / message" (never a timeout read as absence).
pub(crate) fn not_found(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(api) = err.downcast_ref::<jetstream::Error>() {
            return [
                ErrorCode::STREAM_NOT_FOUND,
                ErrorCode::NO_MESSAGE_FOUND,
                ErrorCode::SEQUENCE_NOT_FOUND,
            ]
            .contains(&api.error_code());
        }
        cur = err.source();
    }
    let text = e.to_string();
    text.contains("stream not found") || text.contains("no message found") || text.contains("message not found")
}

pub(crate) fn transport(what: &str, e: &(dyn std::error::Error + 'static)) -> OpsError {
    OpsError::Transport(crate::transport::nats::classify_error(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_permission_is_not_reported_as_unavailability() {
        let denied = OpsError::Transport(TransportError::PermissionDenied {
            subject: "dlq.search.indexer.redrive".into(),
        });
        assert!(!denied.is_transient(), "the operator must not be told to try again");
        assert!(OpsError::Transport(TransportError::Timeout("t".into())).is_transient());
    }
}
