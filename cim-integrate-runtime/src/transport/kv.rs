//! The key-value contract: a bucket of keys with revisions and compare-and-set writes.

use crate::timestamp::Timestamp;
use bytes::Bytes;
use std::future::Future;
use std::time::Duration;

/// A key-value bucket to open or create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvSpec {
    /// Bucket name: `[A-Za-z0-9_-]+`.
    pub bucket: String,
    /// Revisions kept per key (1-64).
    pub history: u8,
    /// Entries older than this expire (the TTL of dedup marks); `None` keeps them.
    pub max_age: Option<Duration>,
    /// Replicas, placement and storage; what is left open comes from the transport's
    /// [`Deployment`](super::Deployment).
    pub settings: super::AssetSettings,
}

impl KvSpec {
    /// A bucket keeping one revision per key, no TTL.
    pub fn new(bucket: impl Into<String>) -> Self {
        Self {
            bucket: bucket.into(),
            history: 1,
            max_age: None,
            settings: super::AssetSettings::default(),
        }
    }
    /// Sets the replicas (instead of the deployment's).
    pub fn replicas(mut self, n: u8) -> Self {
        self.settings.replicas = Some(n);
        self
    }
    /// Sets the placement (instead of the deployment's).
    pub fn placement(mut self, placement: super::Placement) -> Self {
        self.settings.placement = Some(placement);
        self
    }
    /// Sets the storage (instead of the deployment's).
    pub fn storage(mut self, storage: super::Storage) -> Self {
        self.settings.storage = Some(storage);
        self
    }
    /// This spec with what it leaves open taken from `deployment`.
    pub fn deployed(&self, deployment: &super::Deployment) -> Self {
        let mut settings = self.settings.or(&deployment.bucket_settings(&self.bucket));
        // A bucket's max age is its entries' TTL, never the policy's stream retention.
        settings.max_age = None;
        Self {
            settings,
            ..self.clone()
        }
    }
    /// Differences in meaning (history, max age) from an existing bucket, or `None`.
    /// Deployment settings are compared by [`AssetSettings::drift`](super::AssetSettings::drift).
    pub fn differences(&self, existing: &KvSpec) -> Option<String> {
        let mut d = Vec::new();
        if existing.history != self.history {
            d.push(format!("history {}, wanted {}", existing.history, self.history));
        }
        if existing.max_age != self.max_age {
            d.push(format!("max age {:?}, wanted {:?}", existing.max_age, self.max_age));
        }
        (!d.is_empty()).then(|| d.join("; "))
    }
    /// Sets the TTL of entries.
    pub fn max_age(mut self, ttl: Duration) -> Self {
        self.max_age = Some(ttl);
        self
    }
    /// Sets the number of revisions kept per key.
    pub fn history(mut self, history: u8) -> Self {
        self.history = history;
        self
    }
    /// Checks the name and settings.
    pub fn validate(&self) -> Result<(), KvError> {
        check_bucket_name(&self.bucket)?;
        self.settings.validate(&self.bucket)?;
        if !(1..=64).contains(&self.history) {
            return Err(KvError::Invalid(format!(
                "bucket `{}`: history must be 1-64",
                self.bucket
            )));
        }
        super::check_durations(&self.bucket, [("max_age", self.max_age)]).map_err(KvError::Invalid)?;
        if self.max_age.is_some_and(|d| d < Duration::from_millis(100)) {
            return Err(KvError::Invalid(format!(
                "bucket `{}`: max_age must be at least 100ms",
                self.bucket
            )));
        }
        Ok(())
    }
}

/// One entry: the latest value of a key and its revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvEntry {
    /// The key.
    pub key: String,
    /// The value.
    pub value: Bytes,
    /// The revision (bucket-wide, increasing with every write to the bucket).
    pub revision: u64,
    /// When it was written: on NATS the server's time of the write; on the embedded transport the
    /// wall-clock time at the bucket's creation advanced by tokio's clock (as the runtime's
    /// [`Clock`](crate::clock::Clock) tells times, so under `tokio::time::pause` it follows the
    /// paused clock).
    pub created: Timestamp,
}

/// What went wrong in a key-value operation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KvError {
    /// The key is not valid.
    #[error("invalid key `{0}`: keys are `[-/_=.A-Za-z0-9]+`, not starting or ending with `.`")]
    InvalidKey(String),
    /// A bucket name or setting is not valid.
    #[error("invalid key-value argument: {0}")]
    Invalid(String),
    /// `create` on a key that exists.
    #[error("key `{key}` already exists")]
    AlreadyExists {
        /// The key.
        key: String,
    },
    /// `update` or `delete` expected another revision: someone else wrote first. Read and retry.
    #[error("key `{key}` is not at revision {expected} (someone else wrote it); read it again and retry")]
    Conflict {
        /// The key.
        key: String,
        /// The revision the caller expected.
        expected: u64,
    },
    /// A bucket exists with other settings. It is never modified.
    #[error("bucket `{bucket}` exists with different settings ({detail}); it was left unchanged")]
    BucketConflict {
        /// The bucket.
        bucket: String,
        /// What differs.
        detail: String,
    },
    /// The underlying transport failed.
    #[error(transparent)]
    Transport(#[from] super::TransportError),
}

impl KvError {
    /// `true` if retrying the same operation later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transport(t) if t.is_transient())
    }
}

/// Checks a bucket name: `[A-Za-z0-9_-]+`.
pub fn check_bucket_name(bucket: &str) -> Result<(), KvError> {
    super::check_name("bucket", bucket).map_err(|e| KvError::Invalid(e.to_string()))
}

/// Checks a key as NATS does: `[-/_=.A-Za-z0-9]+`, not starting or ending with `.`.
pub fn check_key(key: &str) -> Result<(), KvError> {
    // Refused bytes looked up in a table, and two dots in a row (each byte beside the next), in
    // branch-free passes; then no dot first or last.
    const REFUSED: [bool; 256] = {
        let mut t = [true; 256];
        let mut b = 0;
        while b < 256 {
            let c = b as u8;
            t[b] = !(c.is_ascii_alphanumeric() || matches!(c, b'-' | b'/' | b'_' | b'=' | b'.'));
            b += 1;
        }
        t
    };
    let bytes = key.as_bytes();
    let next = bytes.get(1..).unwrap_or_default();
    let ok = !bytes.is_empty()
        && bytes.len() <= 1024
        && !bytes.iter().fold(false, |any, &b| any | REFUSED[usize::from(b)])
        && !bytes
            .iter()
            .zip(next)
            .fold(false, |any, (&a, &b)| any | ((a == b'.') & (b == b'.')))
        && bytes.first() != Some(&b'.')
        && bytes.last() != Some(&b'.');
    if ok {
        Ok(())
    } else {
        Err(KvError::InvalidKey(key.chars().take(64).collect()))
    }
}

/// How long the runtime's own buckets of records that come and go (a saga runner's active
/// records, a process manager's instances and deadlines) keep a deleted key's tombstone before
/// their periodic sweeps remove it ([`KeyValue::purge_tombstones`]): one minute.
pub const TOMBSTONE_AGE: Duration = Duration::from_secs(60);

/// A key-value bucket with optimistic concurrency.
pub trait KeyValue: std::fmt::Debug + Clone + Send + Sync + 'static {
    /// The latest live value of `key`, or `None` if absent, deleted or expired.
    fn get(&self, key: &str) -> impl Future<Output = Result<Option<KvEntry>, KvError>> + Send;
    /// Writes `value` only if `key` has no live value; returns the new revision.
    fn create(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>> + Send;
    /// Writes `value` only if the latest revision of `key` is `expected`; returns the new
    /// revision, or [`KvError::Conflict`].
    fn update(&self, key: &str, value: Bytes, expected: u64) -> impl Future<Output = Result<u64, KvError>> + Send;
    /// Writes `value` unconditionally; returns the new revision.
    fn put(&self, key: &str, value: Bytes) -> impl Future<Output = Result<u64, KvError>> + Send;
    /// Deletes `key` (a tombstone); with `expected`, only if the latest revision is that one.
    fn delete(&self, key: &str, expected: Option<u64>) -> impl Future<Output = Result<(), KvError>> + Send;
    /// The keys with live values, sorted. Every key that holds a value and is not written while
    /// the listing runs is in it; a key written meanwhile may be missed on NATS (the embedded
    /// bucket answers from one snapshot). The listing ends whatever the write rate.
    fn keys(&self) -> impl Future<Output = Result<Vec<String>, KvError>> + Send;
    /// Removes the tombstones of keys deleted at least `older_than` ago and not written since;
    /// returns how many it removed.
    ///
    /// A key whose value comes and goes (a saga's active record, a process instance, a
    /// deadline) leaves a tombstone behind when deleted, on NATS as a delete marker the bucket
    /// keeps for good: without this, the bucket would hold one entry per key it ever had, and
    /// every [`keys`](Self::keys) would read them all. Nothing else changes: a removed tombstone
    /// reads as absent, as the tombstone did; [`create`](Self::create) of the key succeeds; an
    /// [`update`](Self::update) or [`delete`](Self::delete) expecting a revision from before the
    /// delete is a [`KvError::Conflict`]. A key written after its tombstone was found keeps that
    /// write (on NATS the purge is bounded by the tombstone's sequence).
    fn purge_tombstones(&self, older_than: Duration) -> impl Future<Output = Result<usize, KvError>> + Send;

    /// `Some` if this bucket answers at once, without waiting on anything (the embedded
    /// transport's): its synchronous operations, so that a hot path (the key-value
    /// de-duplication store) can skip a future per call. `None` (the default) for a bucket that
    /// waits (NATS).
    fn at_once(&self) -> Option<&dyn KeyValueNow> {
        None
    }
}

/// The synchronous operations of a bucket that never waits ([`KeyValue::at_once`]). Same
/// checks and meaning as the asynchronous ones.
pub trait KeyValueNow: Send + Sync {
    /// `true` if `key` has a live value (what [`KeyValue::get`] reads as `Some`).
    fn contains_now(&self, key: &str) -> Result<bool, KvError>;
    /// [`KeyValue::put`], keeping `key` as given (no copy of it).
    fn put_now(&self, key: String, value: Bytes) -> Result<u64, KvError>;
    /// The live value of `key` ([`KeyValue::get`]'s value).
    fn get_now(&self, key: &str) -> Result<Option<Bytes>, KvError>;
    /// Writes `update(live value)` to `key` in one step: nothing writes the key between the read
    /// and the write (what a read, then an [`update`](KeyValue::update) at its revision retried
    /// on conflict, does on a bucket that waits).
    fn update_now(&self, key: &str, update: &mut dyn FnMut(Option<&Bytes>) -> Bytes) -> Result<u64, KvError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_nats_rules() {
        for ok in ["a", "saga.doc-1", "h/1=2", "A_b.c"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for ok in ["a.b.c", "a.b.c.d.e", "x.y-z.0123456789abcdef0123456789abcdef"] {
            assert!(check_key(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".a",
            "a.",
            "a..b",
            "a b",
            "a*",
            "a>",
            "é",
            "a.b..c",
            "a.b.c..",
            "..",
            "a.b.c.d..e.f",
        ] {
            assert!(check_key(bad).is_err(), "{bad}");
        }
    }
}
