//! Sagas: their names, their instances by state, one instance with its steps, retry of one that
//! needs attention or is stuck, forgetting a settled one.
//!
//! A saga's records are JSON in two key-value buckets (see [`saga`](crate::saga)'s runner):
//! `cim_saga_{NAME}` holds the *active* ones (running, compensating, needing attention) and
//! `{bucket}_settled` the completed and compensated ones until they expire. The operator does not
//! have the saga's Rust type: records are read as [`SagaRecord`]`<serde_json::Value>`, typed for
//! status, steps and lease, the saga's data as JSON.
//!
//! **Stuck.** A saga is [`SagaState::Stuck`] when it is running or compensating in the active
//! bucket, no settled copy of it exists, and its lease (`lease_until_ms`) has run out. Every
//! write of a runner (a step's or compensation's intent and its outcome) moves the lease past
//! the end it expects for its next attempt (the lease plus the step's timeout and back-off), so
//! a lease that ran out means no runner has written the record since: its runner died or gave
//! up, and no hosting runner has taken it over (a hosting [`Service`](crate::service::Service)
//! rescans every [`SagaRunnerBuilder::rescan_interval`](crate::saga::SagaRunnerBuilder::rescan_interval)
//! and takes over sagas whose lease ran out, so a saga stays stuck only while no host of it
//! runs, or while every host fails to drive it).
//!
//! **Retry.** [`Ops::retry_saga`] writes the stored record, with a compare-and-set on its
//! revision (a host's concurrent write makes it fail with [`OpsError::Conflict`], never lost),
//! so that a host's runner drives it on at its next rescan:
//! - a saga that needs attention is reset as
//!   [`SagaRunner::retry_compensation`](crate::saga::SagaRunner::retry_compensation) resets it:
//!   the failed compensations' state `compensating` with their attempts from zero, status
//!   `compensating`, `round` + 1, a `compensating` lifecycle event put into the record's outbox
//!   (the runner publishes it with its first write);
//! - a stuck saga is left as it is;
//! - a saga released already ([`SagaState::Released`]) is refused: a host takes it, or none runs;
//!
//! and in both cases the record's owner becomes [`OPS_OWNER`] and its lease is made to have run
//! out, which is what a rescan looks for.

use super::{Ops, OpsError};
use crate::id::Identity;
use crate::saga::{SagaEvent, SagaEventKind, SagaRecord, SagaStatus, StepRecord, StepState};
use crate::timestamp::Timestamp;
use crate::transport::KeyValue;
use crate::transport::nats::NatsKeyValue;
use bytes::Bytes;
use serde::Serialize;

/// The owner written into a record that [`Ops::retry_saga`] released.
pub const OPS_OWNER: &str = "ops";

/// The bucket-name family of sagas: `cim_saga_{NAME}`.
const FAMILY: &str = "cim_saga_";
/// The suffix of a saga's settled bucket.
const SETTLED: &str = "_settled";

/// Where a saga instance stands, as an operator sees it: its stored status, or
/// [`Stuck`](Self::Stuck) (see the [module](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SagaState {
    /// Running its steps, under a live lease.
    Running,
    /// Compensating, under a live lease.
    Compensating,
    /// Every step completed. Final.
    Completed,
    /// Compensated. Final.
    Compensated,
    /// A compensation failed for good: [`Ops::retry_saga`] once its cause is fixed.
    NeedsAttention,
    /// Running or compensating with its lease run out: no runner drives it.
    Stuck,
    /// Released by [`Ops::retry_saga`] (owner [`OPS_OWNER`], lease run out), waiting for a
    /// host's runner to take it at its next rescan. A saga that stays released has no live host.
    Released,
}

impl SagaState {
    /// `running`, `compensating`, `completed`, `compensated`, `needs_attention` or `stuck`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Compensating => "compensating",
            Self::Completed => "completed",
            Self::Compensated => "compensated",
            Self::NeedsAttention => "needs_attention",
            Self::Stuck => "stuck",
            Self::Released => "released",
        }
    }

    /// Parses [`as_str`](Self::as_str)'s labels (`needs-attention` too); `None` for anything else.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s.trim() {
            "running" => Self::Running,
            "compensating" => Self::Compensating,
            "completed" => Self::Completed,
            "compensated" => Self::Compensated,
            "needs_attention" | "needs-attention" => Self::NeedsAttention,
            "stuck" => Self::Stuck,
            "released" => Self::Released,
            _ => return None,
        })
    }

    /// The state of `rec`, settled (read from the settled bucket) or not, at `now_ms`.
    fn of(rec: &SagaRecord<serde_json::Value>, settled: bool, now_ms: i64) -> Self {
        match rec.status {
            SagaStatus::Completed => Self::Completed,
            SagaStatus::Compensated => Self::Compensated,
            SagaStatus::NeedsAttention => Self::NeedsAttention,
            SagaStatus::Running | SagaStatus::Compensating if !settled && rec.lease_until_ms <= now_ms => {
                if rec.owner == OPS_OWNER {
                    Self::Released
                } else {
                    Self::Stuck
                }
            }
            SagaStatus::Running => Self::Running,
            SagaStatus::Compensating => Self::Compensating,
        }
    }
}

/// Which sagas [`Ops::sagas`] lists. The default lists every one, active and settled.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SagaFilter {
    /// Only these states (`None`: all).
    pub states: Option<Vec<SagaState>>,
    /// Leave out the settled bucket (completed and compensated sagas moved there): cheaper for
    /// a bucket with much history.
    pub active_only: bool,
}

impl SagaFilter {
    /// Every saga.
    pub fn all() -> Self {
        Self::default()
    }

    /// Only sagas in `state`.
    pub fn state(state: SagaState) -> Self {
        Self {
            states: Some(vec![state]),
            active_only: matches!(
                state,
                SagaState::Running
                    | SagaState::Compensating
                    | SagaState::NeedsAttention
                    | SagaState::Stuck
                    | SagaState::Released
            ),
        }
    }

    fn matches(&self, state: SagaState) -> bool {
        self.states.as_ref().is_none_or(|s| s.contains(&state))
    }
}

/// One saga instance in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct SagaSummary {
    /// The saga type's name.
    pub saga: String,
    /// The instance's id.
    pub id: String,
    /// Where it stands.
    pub state: SagaState,
    /// Its stored status (which [`state`](Self::state) derives from).
    pub status: SagaStatus,
    /// When it started.
    pub started_at: Timestamp,
    /// Its correlation id.
    pub correlation_id: String,
    /// The runner that wrote it last ([`OPS_OWNER`] after a retry).
    pub owner: String,
    /// Until when (Unix milliseconds) its owner may be driving it.
    pub lease_until_ms: i64,
    /// The step running or compensating now, or the one that failed.
    pub current_step: Option<String>,
    /// The last error recorded by a step or compensation.
    pub error: Option<String>,
    /// Steps completed so far (compensated or not).
    pub steps_done: usize,
    /// Steps in its table.
    pub steps_total: usize,
    /// How often its compensation was retried.
    pub round: u32,
    /// Read from the settled bucket.
    pub settled: bool,
    /// The record's revision in its bucket.
    pub revision: u64,
}

/// One saga instance in full.
#[derive(Debug, Clone, Serialize)]
pub struct SagaView {
    /// What a listing shows.
    #[serde(flatten)]
    pub summary: SagaSummary,
    /// The identity of the message that started it.
    pub identity: Identity,
    /// The saga's data, as of its last completed step or compensation.
    pub data: serde_json::Value,
    /// Every step of its table, in order, with its state, attempts and last error. The record
    /// lists every step from the start, so steps not yet run are here too (`pending`).
    pub steps: Vec<StepRecord>,
    /// Steps whose forward work is done and stands (`completed`, or `not_compensated`).
    pub completed: Vec<String>,
    /// Steps whose work was undone (`compensated`).
    pub compensated: Vec<String>,
    /// What is left to do, in the order it will be done: while running, the steps not completed;
    /// while compensating or needing attention, the compensations not done yet (in reverse step
    /// order); nothing once settled.
    pub remaining: Vec<String>,
    /// Lifecycle events decided but not yet acknowledged (the runner publishes them again).
    pub outbox: Vec<SagaEvent>,
}

/// A record read from one of a saga's buckets.
struct Stored {
    rec: SagaRecord<serde_json::Value>,
    revision: u64,
    settled: bool,
}

impl Stored {
    fn summary(&self, now_ms: i64) -> SagaSummary {
        let rec = &self.rec;
        let current = rec.steps.iter().find(|s| {
            matches!(
                s.state,
                StepState::Running | StepState::Compensating | StepState::CompensationFailed | StepState::Failed
            )
        });
        SagaSummary {
            saga: rec.saga.clone(),
            id: rec.id.clone(),
            state: SagaState::of(rec, self.settled, now_ms),
            status: rec.status,
            started_at: rec.started_at,
            correlation_id: rec.identity.correlation_id.to_string(),
            owner: rec.owner.clone(),
            lease_until_ms: rec.lease_until_ms,
            current_step: current.map(|s| s.name.clone()),
            error: rec.steps.iter().rev().find_map(|s| s.error.clone()),
            steps_done: rec
                .steps
                .iter()
                .filter(|s| !matches!(s.state, StepState::Pending | StepState::Running | StepState::Failed))
                .count(),
            steps_total: rec.steps.len(),
            round: rec.round,
            settled: self.settled,
            revision: self.revision,
        }
    }

    fn view(self, now_ms: i64) -> SagaView {
        let summary = self.summary(now_ms);
        let rec = self.rec;
        let names = |f: &dyn Fn(StepState) -> bool| -> Vec<String> {
            rec.steps
                .iter()
                .filter(|s| f(s.state))
                .map(|s| s.name.clone())
                .collect()
        };
        let completed = names(&|s| matches!(s, StepState::Completed | StepState::NotCompensated));
        let compensated = names(&|s| s == StepState::Compensated);
        let remaining = match rec.status {
            SagaStatus::Running => names(&|s| matches!(s, StepState::Pending | StepState::Running)),
            SagaStatus::Compensating | SagaStatus::NeedsAttention => {
                let mut r = names(&|s| {
                    matches!(
                        s,
                        StepState::Completed | StepState::Compensating | StepState::CompensationFailed
                    )
                });
                r.reverse();
                r
            }
            SagaStatus::Completed | SagaStatus::Compensated => Vec::new(),
        };
        SagaView {
            summary,
            identity: rec.identity,
            data: rec.data,
            steps: rec.steps,
            completed,
            compensated,
            remaining,
            outbox: if self.settled { Vec::new() } else { rec.outbox },
        }
    }
}

/// A saga's two buckets (either may be missing).
struct Buckets {
    active: Option<NatsKeyValue>,
    settled: Option<NatsKeyValue>,
}

impl Ops {
    /// The names of the sagas that have records here (buckets `cim_saga_{NAME}` under the
    /// prefix, their `_settled` companions left out), sorted. A saga whose bucket was set with
    /// [`SagaRunnerBuilder::bucket`](crate::saga::SagaRunnerBuilder::bucket) is not found by its
    /// name.
    pub async fn saga_names(&self) -> Result<Vec<String>, OpsError> {
        self.bucket_family(FAMILY, &[SETTLED]).await
    }

    async fn saga_buckets(&self, name: &str) -> Result<Buckets, OpsError> {
        crate::subject::check_token(name).map_err(|e| OpsError::Invalid(format!("saga name `{name}`: {e}")))?;
        let base = format!("{FAMILY}{name}");
        let settled_base = format!("{base}{SETTLED}");
        let (active, settled) = futures::join!(self.bucket(&base), self.bucket(&settled_base));
        let b = Buckets {
            active: active?,
            settled: settled?,
        };
        if b.active.is_none() && b.settled.is_none() {
            return Err(OpsError::NotFound(format!("saga `{name}` (no bucket `{base}`)")));
        }
        Ok(b)
    }

    /// The instances of saga `name` selected by `filter`, active ones first, each by id. A saga
    /// in both buckets (a move to the settled bucket cut short) is listed once, as settled.
    /// Records that cannot be read are skipped with a warning.
    pub async fn sagas(&self, name: &str, filter: &SagaFilter) -> Result<Vec<SagaSummary>, OpsError> {
        let b = self.saga_buckets(name).await?;
        let now = crate::clock::now_millis();
        let mut out: Vec<SagaSummary> = Vec::new();
        let settled_ids = match (&b.settled, filter.active_only) {
            (Some(kv), false) => kv.keys().await?,
            _ => Vec::new(),
        };
        if let Some(kv) = &b.active {
            for id in kv.keys().await? {
                if settled_ids.binary_search(&id).is_ok() {
                    continue;
                }
                match read(kv, name, &id, false).await {
                    Ok(Some(s)) if filter.matches(SagaState::of(&s.rec, false, now)) => out.push(s.summary(now)),
                    Ok(_) => {}
                    Err(OpsError::Corrupt(why)) => tracing::warn!(saga = name, %id, %why, "unreadable saga record"),
                    Err(e) => return Err(e),
                }
            }
        }
        if let Some(kv) = &b.settled {
            for id in &settled_ids {
                match read(kv, name, id, true).await {
                    Ok(Some(s)) if filter.matches(SagaState::of(&s.rec, true, now)) => out.push(s.summary(now)),
                    Ok(_) => {}
                    Err(OpsError::Corrupt(why)) => tracing::warn!(saga = name, %id, %why, "unreadable saga record"),
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(out)
    }

    /// Saga `name`'s instance `id`, with its steps (the settled record if there is one, as
    /// [`SagaRunner::status`](crate::saga::SagaRunner::status) reports it).
    pub async fn saga(&self, name: &str, id: &str) -> Result<SagaView, OpsError> {
        let b = self.saga_buckets(name).await?;
        let stored = self.load(&b, name, id).await?;
        Ok(stored.view(crate::clock::now_millis()))
    }

    /// The settled record of `id` if there is one, else the active one.
    async fn load(&self, b: &Buckets, name: &str, id: &str) -> Result<Stored, OpsError> {
        crate::transport::check_key(id).map_err(|e| OpsError::Invalid(format!("saga id `{id}`: {e}")))?;
        if let Some(kv) = &b.settled
            && let Some(s) = read(kv, name, id, true).await?
        {
            return Ok(s);
        }
        if let Some(kv) = &b.active
            && let Some(s) = read(kv, name, id, false).await?
        {
            return Ok(s);
        }
        Err(OpsError::NotFound(format!("saga `{name}` id `{id}`")))
    }

    /// Releases saga `name`'s instance `id` for a host's runner to drive on (see the
    /// [module](self)): one that needs attention (its compensation is retried from zero
    /// attempts) or is stuck. Anything else is [`OpsError::Invalid`]; a record written by a
    /// host meanwhile is [`OpsError::Conflict`] (nothing written). Returns the record as
    /// written.
    pub async fn retry_saga(&self, name: &str, id: &str) -> Result<SagaSummary, OpsError> {
        let b = self.saga_buckets(name).await?;
        let mut stored = self.load(&b, name, id).await?;
        let now = crate::clock::now_millis();
        let state = SagaState::of(&stored.rec, stored.settled, now);
        let rec = &mut stored.rec;
        match state {
            SagaState::NeedsAttention => {
                for s in &mut rec.steps {
                    if s.state == StepState::CompensationFailed {
                        s.state = StepState::Compensating;
                        s.compensation_attempts = 0;
                    }
                }
                rec.status = SagaStatus::Compensating;
                rec.round = rec.round.saturating_add(1);
                crate::saga::emit_event(rec, SagaEventKind::Compensating, None, None, None);
            }
            SagaState::Stuck => {}
            SagaState::Released => {
                return Err(OpsError::Invalid(format!(
                    "saga `{name}` id `{id}` is released already: a host's runner takes it at its next rescan"
                )));
            }
            SagaState::Running | SagaState::Compensating => {
                return Err(OpsError::Invalid(format!(
                    "saga `{name}` id `{id}` is {} under the lease of `{}` for {} ms more; it is not stuck",
                    state.as_str(),
                    rec.owner,
                    rec.lease_until_ms.saturating_sub(now)
                )));
            }
            SagaState::Completed | SagaState::Compensated => {
                return Err(OpsError::Invalid(format!(
                    "saga `{name}` id `{id}` is {}: nothing to retry",
                    state.as_str()
                )));
            }
        }
        rec.owner = OPS_OWNER.to_owned();
        rec.lease_until_ms = 0;
        let bytes =
            serde_json::to_vec(&*rec).map_err(|e| OpsError::Corrupt(format!("saga `{name}` id `{id}`: {e}")))?;
        let kv = b
            .active
            .as_ref()
            .ok_or_else(|| OpsError::NotFound(format!("saga `{name}` id `{id}`")))?;
        stored.revision = kv.update(id, Bytes::from(bytes), stored.revision).await?;
        tracing::info!(
            saga = name,
            id,
            from = state.as_str(),
            round = stored.rec.round,
            "saga released for a retry"
        );
        Ok(stored.summary(now))
    }

    /// Deletes the record of saga `name`'s settled (completed or compensated) instance `id`
    /// before its retention ends; a saga in any other state is [`OpsError::Invalid`]. Deletes
    /// are conditional on the revisions read ([`OpsError::Conflict`] if a host wrote meanwhile).
    pub async fn forget_saga(&self, name: &str, id: &str) -> Result<(), OpsError> {
        let b = self.saga_buckets(name).await?;
        let stored = self.load(&b, name, id).await?;
        let state = SagaState::of(&stored.rec, stored.settled, crate::clock::now_millis());
        let active = match &b.active {
            Some(kv) => read(kv, name, id, false).await?,
            None => None,
        };
        if !matches!(state, SagaState::Completed | SagaState::Compensated)
            || (!stored.settled && !stored.rec.outbox.is_empty())
        {
            return Err(OpsError::Invalid(format!(
                "saga `{name}` id `{id}` is {}: only a completed or compensated saga is forgotten",
                state.as_str()
            )));
        }
        if stored.settled
            && let Some(a) = &active
            && matches!(a.rec.status, SagaStatus::Running | SagaStatus::Compensating)
        {
            return Err(OpsError::Invalid(format!(
                "saga `{name}` id `{id}` is settled but its active record is still there (a move cut \
                 short): a runner's resume finishes it; forget it afterwards"
            )));
        }
        if let (Some(a), Some(kv)) = (&active, &b.active) {
            kv.delete(id, Some(a.revision)).await?;
        }
        if stored.settled
            && let Some(kv) = &b.settled
        {
            kv.delete(id, Some(stored.revision)).await?;
        }
        tracing::info!(saga = name, id, "saga forgotten");
        Ok(())
    }
}

/// The record `id` of saga `name` in `kv`, `None` if absent.
async fn read(kv: &NatsKeyValue, name: &str, id: &str, settled: bool) -> Result<Option<Stored>, OpsError> {
    let Some(entry) = kv.get(id).await? else {
        return Ok(None);
    };
    let rec: SagaRecord<serde_json::Value> = crate::saga::decode_record(&entry.value)
        .map_err(|why| OpsError::Corrupt(format!("saga `{name}` id `{id}`: {why}")))?;
    if rec.saga != name || rec.id != id {
        return Err(OpsError::Corrupt(format!(
            "saga `{name}` id `{id}`: it belongs to saga `{}` id `{}`",
            rec.saga, rec.id
        )));
    }
    Ok(Some(Stored {
        rec,
        revision: entry.revision,
        settled,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::saga::RECORD_FORMAT;

    fn record(status: SagaStatus, lease_until_ms: i64) -> SagaRecord<serde_json::Value> {
        SagaRecord {
            format: RECORD_FORMAT,
            saga: "s".into(),
            id: "a".into(),
            identity: Identity::root(),
            started_at: Timestamp::now(),
            trace: None,
            status,
            data: serde_json::json!({"x": 1}),
            steps: vec![],
            event_seq: 0,
            outbox: vec![],
            owner: "me".into(),
            lease_until_ms,
            round: 0,
        }
    }

    #[test]
    fn stuck_is_an_unsettled_saga_whose_lease_ran_out() {
        let now = 1_000;
        for (status, lease, settled, state) in [
            (SagaStatus::Running, 2_000, false, SagaState::Running),
            (SagaStatus::Running, 1_000, false, SagaState::Stuck),
            (SagaStatus::Compensating, 0, false, SagaState::Stuck),
            (SagaStatus::Compensating, 0, true, SagaState::Compensating),
            (SagaStatus::NeedsAttention, 0, false, SagaState::NeedsAttention),
            (SagaStatus::Completed, 0, false, SagaState::Completed),
            (SagaStatus::Compensated, 0, true, SagaState::Compensated),
        ] {
            assert_eq!(
                SagaState::of(&record(status, lease), settled, now),
                state,
                "{status:?} {lease}"
            );
        }
    }

    #[test]
    fn states_parse_their_labels() {
        for s in [
            SagaState::Running,
            SagaState::Compensating,
            SagaState::Completed,
            SagaState::Compensated,
            SagaState::NeedsAttention,
            SagaState::Stuck,
            SagaState::Released,
        ] {
            assert_eq!(SagaState::parse(s.as_str()), Some(s));
        }
        assert_eq!(SagaState::parse("bogus"), None);
    }
}
