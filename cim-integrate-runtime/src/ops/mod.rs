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

pub use dead_letters::{DeadLetter, DeadLetterFilter, DeadLetterGroup, PurgeReport, RedriveProgress, RedriveReport};

use crate::subject::Subject;
use crate::transport::TransportError;
use crate::transport::nats::NatsTransport;
use crate::transport::prefixed::Prefixed;
use async_nats::jetstream;

/// The environment variable naming the deployment prefix (`prod`, `prod.eu`), as given to
/// [`Prefixed`](crate::transport::Prefixed) in the host's code.
pub const ENV_PREFIX: &str = "CIM_PREFIX";

/// A failed operation.
#[derive(Debug, thiserror::Error)]
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
}

impl OpsError {
    /// `true` if trying again later may succeed (infrastructure unavailability).
    pub fn is_transient(&self) -> bool {
        matches!(self, OpsError::Transport(t) if t.is_transient())
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
    /// [`ENV_PREFIX`] if set. `NATS_URL` unset is an [`OpsError::Invalid`].
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
        Ok(Self::new(transport).with_prefix(prefix))
    }

    /// Addresses the assets of the deployment under `prefix` (see
    /// [`Prefixed`](crate::transport::Prefixed)).
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
}
