//! Key-value buckets on JetStream. The `KV_<bucket>` stream is created here rather than by
//! async-nats's `create_key_value`, whose request nats-server 2.9 refuses.

use super::NatsTransport;
use super::convert::api_error;
use crate::timestamp::Timestamp;
use crate::transport::{KeyValue, KvEntry, KvError, KvSpec, TransportError, check_key};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::kv::{CreateErrorKind, Operation, PutErrorKind, Store, UpdateErrorKind};
use async_nats::jetstream::{ErrorCode, stream as js_stream};
use bytes::Bytes;
use futures::TryStreamExt;
use std::sync::Arc;
use std::time::Duration;

/// A key-value bucket on NATS (`KV_<bucket>` stream, subjects `$KV.<bucket>.>`).
#[derive(Clone)]
pub struct NatsKeyValue {
    store: Arc<Store>,
    bucket: Arc<str>,
}

impl std::fmt::Debug for NatsKeyValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsKeyValue").field("bucket", &self.bucket).finish()
    }
}

fn bucket_config(spec: &KvSpec) -> js_stream::Config {
    let max_age = spec.max_age.unwrap_or(Duration::ZERO);
    let two_minutes = Duration::from_secs(120);
    js_stream::Config {
        name: format!("KV_{}", spec.bucket),
        subjects: vec![format!("$KV.{}.>", spec.bucket)],
        max_messages_per_subject: i64::from(spec.history),
        max_messages: -1,
        max_bytes: -1,
        max_consumers: -1,
        max_age,
        // The duplicate window may not exceed max_age.
        duplicate_window: if !max_age.is_zero() && max_age < two_minutes {
            max_age
        } else {
            two_minutes
        },
        storage: js_stream::StorageType::File,
        retention: js_stream::RetentionPolicy::Limits,
        discard: js_stream::DiscardPolicy::New,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: 1,
        ..Default::default()
    }
}

fn bucket_differences(spec: &KvSpec, existing: &js_stream::Config) -> Option<String> {
    let mut d = Vec::new();
    if existing.max_messages_per_subject != i64::from(spec.history) {
        d.push(format!(
            "history {}, wanted {}",
            existing.max_messages_per_subject, spec.history
        ));
    }
    let age = (!existing.max_age.is_zero()).then_some(existing.max_age);
    if age != spec.max_age {
        d.push(format!("max age {age:?}, wanted {:?}", spec.max_age));
    }
    if existing.subjects != [format!("$KV.{}.>", spec.bucket)] {
        d.push(format!("subjects {:?}", existing.subjects));
    }
    (!d.is_empty()).then(|| d.join("; "))
}

pub(super) async fn open(t: &NatsTransport, spec: &KvSpec) -> Result<NatsKeyValue, KvError> {
    spec.validate()?;
    let conflict = |detail| KvError::BucketConflict {
        bucket: spec.bucket.clone(),
        detail,
    };
    let stream = format!("KV_{}", spec.bucket);
    match t.stream_info(&stream).await? {
        Some(info) => {
            if let Some(d) = bucket_differences(spec, &info.config) {
                return Err(conflict(d));
            }
        }
        None => {
            let config = bucket_config(spec);
            match t.create_stream(&config).await? {
                Ok(_) => tracing::info!(bucket = %spec.bucket, "key-value bucket created"),
                Err(e) if e.error_code() == ErrorCode::STREAM_NAME_EXIST => {
                    if let Some(info) = t.stream_info(&stream).await?
                        && let Some(d) = bucket_differences(spec, &info.config)
                    {
                        return Err(conflict(d));
                    }
                }
                Err(e) => return Err(api_error(e).into()),
            }
        }
    }
    let store = t
        .jetstream()
        .get_key_value(spec.bucket.clone())
        .await
        .map_err(|e| TransportError::Other(format!("opening bucket `{}`: {e}", spec.bucket)))?;
    Ok(NatsKeyValue {
        store: Arc::new(store),
        bucket: Arc::from(spec.bucket.as_str()),
    })
}

/// The publish failure somewhere in an error's chain, if any.
fn publish_kind(e: &(dyn std::error::Error + 'static)) -> Option<PublishErrorKind> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(p) = err.downcast_ref::<PublishError>() {
            return Some(p.kind());
        }
        cur = err.source();
    }
    None
}

impl NatsKeyValue {
    /// The bucket's name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn transport(&self, what: &str, key: &str, e: &(dyn std::error::Error + 'static), timed_out: bool) -> KvError {
        let t = match publish_kind(e) {
            _ if timed_out => TransportError::Timeout(format!("{what} `{key}` in bucket `{}`", self.bucket)),
            Some(PublishErrorKind::TimedOut) => {
                TransportError::Timeout(format!("{what} `{key}` in bucket `{}`", self.bucket))
            }
            Some(PublishErrorKind::StreamNotFound) => TransportError::StreamNotFound {
                stream: format!("KV_{}", self.bucket),
            },
            Some(PublishErrorKind::BrokenPipe) => {
                TransportError::Connection(format!("{what} `{key}` in bucket `{}`: {e}", self.bucket))
            }
            _ => TransportError::Other(format!("{what} `{key}` in bucket `{}`: {e}", self.bucket)),
        };
        KvError::Transport(t)
    }
}

impl KeyValue for NatsKeyValue {
    async fn get(&self, key: &str) -> Result<Option<KvEntry>, KvError> {
        check_key(key)?;
        match self.store.entry(key).await {
            Ok(Some(e)) if e.operation == Operation::Put => Ok(Some(KvEntry {
                key: e.key,
                value: e.value,
                revision: e.revision,
                created: Timestamp::from_offset_date_time(e.created),
            })),
            Ok(_) => Ok(None),
            Err(e) => {
                let timed_out = e.kind() == async_nats::jetstream::kv::EntryErrorKind::TimedOut;
                Err(self.transport("reading", key, &e, timed_out))
            }
        }
    }

    async fn create(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        self.store.create(key, value).await.map_err(|e| match e.kind() {
            CreateErrorKind::AlreadyExists => KvError::AlreadyExists { key: key.to_owned() },
            CreateErrorKind::InvalidKey => KvError::InvalidKey(key.to_owned()),
            _ => self.transport("creating", key, &e, false),
        })
    }

    async fn update(&self, key: &str, value: Bytes, expected: u64) -> Result<u64, KvError> {
        check_key(key)?;
        self.store
            .update(key, value, expected)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    key: key.to_owned(),
                    expected,
                },
                UpdateErrorKind::InvalidKey => KvError::InvalidKey(key.to_owned()),
                UpdateErrorKind::TimedOut => self.transport("updating", key, &e, true),
                UpdateErrorKind::Other => self.transport("updating", key, &e, false),
            })
    }

    async fn put(&self, key: &str, value: Bytes) -> Result<u64, KvError> {
        check_key(key)?;
        self.store.put(key, value).await.map_err(|e| match e.kind() {
            PutErrorKind::InvalidKey => KvError::InvalidKey(key.to_owned()),
            _ => self.transport("writing", key, &e, false),
        })
    }

    async fn delete(&self, key: &str, expected: Option<u64>) -> Result<(), KvError> {
        check_key(key)?;
        self.store
            .delete_expect_revision(key, expected)
            .await
            .map_err(|e| match e.kind() {
                UpdateErrorKind::WrongLastRevision => KvError::Conflict {
                    key: key.to_owned(),
                    expected: expected.unwrap_or(0),
                },
                UpdateErrorKind::InvalidKey => KvError::InvalidKey(key.to_owned()),
                UpdateErrorKind::TimedOut => self.transport("deleting", key, &e, true),
                UpdateErrorKind::Other => self.transport("deleting", key, &e, false),
            })
    }

    async fn keys(&self) -> Result<Vec<String>, KvError> {
        let keys = self
            .store
            .keys()
            .await
            .map_err(|e| self.transport("listing", "*", &e, false))?;
        let mut keys: Vec<String> = keys
            .try_collect()
            .await
            .map_err(|e| self.transport("listing", "*", &e, false))?;
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }
}
