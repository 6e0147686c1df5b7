//! Lifecycle events of sagas: `saga.{name}.{kind}` on the `SAGA_EVENTS` stream.

use serde::{Deserialize, Serialize};

/// The domain (first subject token) of lifecycle events: `saga.{name}.{kind}`, captured by the
/// stream `SAGA_EVENTS` on `saga.>`.
pub const SAGA_EVENTS_DOMAIN: &str = "saga";
/// `X-Event-Type` of lifecycle events.
pub const SAGA_EVENT_TYPE: &str = "SagaEvent";
/// The payload version of lifecycle events.
pub const SAGA_EVENT_VERSION: &str = "1.0";

/// What happened to a saga instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaEventKind {
    /// The instance was created.
    Started,
    /// A step completed.
    StepCompleted,
    /// A step failed for good (after its retries).
    StepFailed,
    /// Compensation began.
    Compensating,
    /// One step was compensated.
    StepCompensated,
    /// Every step completed.
    Completed,
    /// Every completed step was compensated.
    Compensated,
    /// A compensation failed for good: the saga needs attention.
    CompensationFailed,
}

impl SagaEventKind {
    /// The subject token: `started`, `step_completed`, ...
    pub fn token(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::StepCompleted => "step_completed",
            Self::StepFailed => "step_failed",
            Self::Compensating => "compensating",
            Self::StepCompensated => "step_compensated",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::CompensationFailed => "compensation_failed",
        }
    }
}

/// Which lifecycle events a [`SagaRunner`](super::SagaRunner) publishes
/// ([`SagaRunnerBuilder::lifecycle_events`](super::SagaRunnerBuilder::lifecycle_events)).
///
/// Each event is one more stored message per transition. On a 3-step saga that completes,
/// [`All`](Self::All) adds 5 messages to the 6 key-value requests of the persisted log;
/// [`Outcomes`](Self::Outcomes) adds 1 (`completed`) and [`None`](Self::None) none. Whatever
/// is chosen, the persisted record ([`SagaRunner::status`](super::SagaRunner::status), the
/// operator tools) holds the whole state: every step's state, attempts and last error. Events
/// that are published keep their contract: correlation and causation ids, and a message id
/// derived from (saga, id, the event's number), the number counting only the events published.
///
/// The setting is the runner's, not the record's: an operator's release of a saga that needs
/// attention (`Ops::retry_saga` with the `nats` feature, the console, which do not know
/// it) queues a `compensating` event whatever it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum LifecycleEvents {
    /// Every kind: `started`, `step_completed` for each step, failures, compensation and the
    /// outcome. The default.
    #[default]
    All,
    /// How the saga ended or stalled, and what failed: `completed`, `compensated`,
    /// `compensation_failed` and `step_failed` (one event for a saga that completes).
    Outcomes,
    /// None: the record is the only history.
    None,
}

impl LifecycleEvents {
    /// `true` if events of `kind` are published.
    pub fn publishes(self, kind: SagaEventKind) -> bool {
        match self {
            Self::All => true,
            Self::Outcomes => matches!(
                kind,
                SagaEventKind::StepFailed
                    | SagaEventKind::Completed
                    | SagaEventKind::Compensated
                    | SagaEventKind::CompensationFailed
            ),
            Self::None => false,
        }
    }
}

/// The payload of a lifecycle event: `{"version":"1.0","kind":"step_completed",...}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SagaEvent {
    /// Always [`SAGA_EVENT_VERSION`].
    pub version: String,
    /// What happened.
    pub kind: SagaEventKind,
    /// The saga type's name.
    pub saga: String,
    /// The instance's id.
    pub saga_id: String,
    /// The step concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    /// The error, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Attempts made, for failures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The event's number within the instance (0 for `started`); its message id derives from it.
    pub seq: u32,
}

impl SagaEvent {
    /// `true` for an event the runner keeps in a record it drives without the fields it shares
    /// with the record (empty `version`, `saga` and `saga_id`: nothing allocated for them); the
    /// record's encoder writes them (`1.0`, the record's saga and id). No runtime writes an
    /// empty version: a stored record whose outbox held one (edited by hand) would have that
    /// event written again complete, with the record's saga and id.
    pub(crate) fn is_lean(&self) -> bool {
        self.version.is_empty()
    }

    /// Decodes a payload, refusing other versions. Never panics.
    pub fn decode(payload: &[u8]) -> Result<Self, String> {
        let e: Self = crate::json::from_slice(payload).map_err(|e| format!("invalid saga event: {e}"))?;
        if e.version != SAGA_EVENT_VERSION {
            return Err(format!(
                "saga event version `{}`, expected `{SAGA_EVENT_VERSION}`",
                e.version
            ));
        }
        Ok(e)
    }
}
