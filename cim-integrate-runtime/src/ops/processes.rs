//! Process managers (and the aggregations and correlators that share their engine): their
//! names, their instances, one instance's state and pending deadlines.
//!
//! A process's records are JSON in the bucket `cim_pm_{name}`, one per process key (stored under
//! [`storage_key`](crate::process::storage_key)), each with the state, its queued messages and
//! its deadlines (name to due time in Unix milliseconds); the bucket `cim_pm_{name}_timers`
//! indexes the earliest due time of each key for the deadline scanner. The operator does not
//! have the state's Rust type: it is shown as JSON.

use super::{Ops, OpsError};
use crate::timestamp::Timestamp;
use crate::transport::KeyValue;
use crate::transport::nats::NatsKeyValue;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The bucket-name family of process managers: `cim_pm_{name}`.
const FAMILY: &str = "cim_pm_";
/// The suffix of a process's deadline index.
const TIMERS: &str = "_timers";

/// A stored process record, read without the state's type.
#[derive(Debug, Deserialize)]
struct Stored {
    state: serde_json::Value,
    #[serde(default)]
    key: String,
    #[serde(default)]
    correlation: Option<serde_json::Value>,
    #[serde(default)]
    applied: Vec<String>,
    #[serde(default)]
    outbox: Vec<serde_json::Value>,
    #[serde(default)]
    deadlines: BTreeMap<String, i64>,
    #[serde(default)]
    ended: bool,
}

/// One process instance in a listing.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessSummary {
    /// The process manager's name.
    pub process: String,
    /// The process key as its handlers gave it (the storage key for records that do not say).
    pub key: String,
    /// The key in the bucket.
    pub storage_key: String,
    /// The correlation id of the conversation it belongs to, if recorded.
    pub correlation_id: Option<String>,
    /// Its earliest pending deadline, if any.
    pub next_deadline: Option<PendingDeadline>,
    /// How many deadlines are pending.
    pub deadlines: usize,
    /// Messages queued by a handler and not yet sent.
    pub queued: usize,
    /// Ended: the record goes once its queued messages are sent.
    pub ended: bool,
    /// The record's revision.
    pub revision: u64,
}

/// One process instance in full.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessView {
    /// What a listing shows.
    #[serde(flatten)]
    pub summary: ProcessSummary,
    /// The state, as JSON.
    pub state: serde_json::Value,
    /// Every pending deadline, earliest first.
    pub pending: Vec<PendingDeadline>,
    /// The due time the deadline index holds for this key (Unix milliseconds): the scanner fires
    /// deadlines by it. `None` while no deadline is pending (or before the index is repaired).
    pub indexed_due_ms: Option<i64>,
    /// Message ids applied recently (a redelivery of one is not applied again).
    pub applied: Vec<String>,
    /// The queued messages, as stored.
    pub queue: Vec<serde_json::Value>,
}

/// A deadline set with [`ProcessContext::schedule`](crate::process::ProcessContext::schedule)
/// that has not fired yet.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PendingDeadline {
    /// Its name.
    pub name: String,
    /// When it is due, in Unix milliseconds.
    pub due_ms: i64,
    /// When it is due.
    pub due: Option<Timestamp>,
}

fn pending(deadlines: &BTreeMap<String, i64>) -> Vec<PendingDeadline> {
    let mut out: Vec<PendingDeadline> = deadlines
        .iter()
        .map(|(name, &due_ms)| PendingDeadline {
            name: name.clone(),
            due_ms,
            due: Timestamp::from_unix_nanos(i128::from(due_ms) * 1_000_000),
        })
        .collect();
    out.sort_by(|a, b| a.due_ms.cmp(&b.due_ms).then_with(|| a.name.cmp(&b.name)));
    out
}

impl Ops {
    /// The names of the process managers, aggregations and correlators that have records here
    /// (buckets `cim_pm_{name}` under the prefix, their `_timers` indexes left out), sorted.
    pub async fn process_names(&self) -> Result<Vec<String>, OpsError> {
        self.bucket_family(FAMILY, &[TIMERS]).await
    }

    async fn process_bucket(&self, name: &str) -> Result<NatsKeyValue, OpsError> {
        crate::subject::check_token(name).map_err(|e| OpsError::Invalid(format!("process name `{name}`: {e}")))?;
        let base = format!("{FAMILY}{name}");
        self.bucket(&base)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("process manager `{name}` (no bucket `{base}`)")))
    }

    /// Every instance of process manager `name`, by storage key. Records that cannot be read are
    /// skipped with a warning.
    pub async fn processes(&self, name: &str) -> Result<Vec<ProcessSummary>, OpsError> {
        let kv = self.process_bucket(name).await?;
        let mut out = Vec::new();
        for skey in kv.keys().await? {
            match read(&kv, name, &skey).await {
                Ok(Some((stored, revision))) => out.push(summary(name, &skey, &stored, revision)),
                Ok(None) => {}
                Err(OpsError::Corrupt(why)) => {
                    tracing::warn!(process = name, key = %skey, %why, "unreadable process record")
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Process manager `name`'s instance `key` (the key as its handlers give it), with its state
    /// and pending deadlines.
    pub async fn process(&self, name: &str, key: &str) -> Result<ProcessView, OpsError> {
        let kv = self.process_bucket(name).await?;
        let skey = crate::process::storage_key(key);
        let (stored, revision) = read(&kv, name, &skey)
            .await?
            .ok_or_else(|| OpsError::NotFound(format!("process `{name}` key `{key}`")))?;
        let indexed_due_ms = match self.bucket(&format!("{FAMILY}{name}{TIMERS}")).await? {
            Some(timers) => match timers.get(&skey).await? {
                Some(e) => std::str::from_utf8(&e.value).ok().and_then(|v| v.trim().parse().ok()),
                None => None,
            },
            None => None,
        };
        let summary = summary(name, &skey, &stored, revision);
        Ok(ProcessView {
            summary,
            pending: pending(&stored.deadlines),
            state: stored.state,
            indexed_due_ms,
            applied: stored.applied,
            queue: stored.outbox,
        })
    }
}

fn summary(name: &str, skey: &str, s: &Stored, revision: u64) -> ProcessSummary {
    let pending = pending(&s.deadlines);
    ProcessSummary {
        process: name.to_owned(),
        key: if s.key.is_empty() {
            skey.to_owned()
        } else {
            s.key.clone()
        },
        storage_key: skey.to_owned(),
        correlation_id: s.correlation.as_ref().map(|c| match c {
            serde_json::Value::String(c) => c.clone(),
            other => other.to_string(),
        }),
        deadlines: pending.len(),
        next_deadline: pending.into_iter().next(),
        queued: s.outbox.len(),
        ended: s.ended,
        revision,
    }
}

async fn read(kv: &NatsKeyValue, name: &str, skey: &str) -> Result<Option<(Stored, u64)>, OpsError> {
    let Some(entry) = kv.get(skey).await? else {
        return Ok(None);
    };
    let stored: Stored = serde_json::from_slice(&entry.value)
        .map_err(|e| OpsError::Corrupt(format!("process `{name}` key `{skey}`: {e}")))?;
    Ok(Some((stored, entry.revision)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_read_without_the_state_type_and_bad_ones_are_errors() {
        let s: Stored = serde_json::from_str(r#"{"state":{"n":1},"deadlines":{"b":5,"a":5,"c":1}}"#).unwrap();
        let p = pending(&s.deadlines);
        assert_eq!(p.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["c", "a", "b"]);
        for bad in ["", "[]", "{}", r#"{"state":1,"deadlines":[]}"#] {
            assert!(serde_json::from_str::<Stored>(bad).is_err(), "{bad}");
        }
    }
}
