//! The host status heartbeat: what a running [`Service`](super::Service) tells operators about
//! itself, so that tools in another process ([`Ops::hosts`](crate::ops::Ops::hosts)) see its
//! handlers' counters, its breakers and its declared topology.
//!
//! Every [`ServiceBuilder::status_interval`](super::ServiceBuilder::status_interval) (default
//! [`DEFAULT_STATUS_INTERVAL`]) the service puts one JSON [`HostStatus`] into the key-value
//! bucket [`HOSTS_BUCKET`] (under the deployment prefix, like every bucket), key
//! `{service}.{instance}` with a fresh instance id per start. The bucket's max age is
//! [`HOSTS_MAX_AGE`]: the document of a host that died disappears by itself. One put per
//! interval; a failing put changes nothing for message handling (logged, tried again at the next
//! interval). [`Service::shutdown`](super::Service::shutdown) stops the heartbeat, which then
//! deletes the document (after a put in flight), so that a host stopped cleanly is gone from
//! [`Ops::hosts`](crate::ops::Ops::hosts) at once, not [`HOSTS_MAX_AGE`] later.

use super::HandlerEntry;
use crate::pipeline::record::HandlerStats;
use crate::timestamp::Timestamp;
use crate::topology::{PublishLog, Topology};
use crate::transport::{KeyValue, KvSpec, Transport};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// The bucket of host status documents.
pub const HOSTS_BUCKET: &str = "cim_hosts";

/// How long a host's document stays after its last put: 30 s.
pub const HOSTS_MAX_AGE: Duration = Duration::from_secs(30);

/// How often a service writes its status by default: 5 s.
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(5);

/// The longest status interval a service accepts: a third of [`HOSTS_MAX_AGE`], so that a
/// running host's document outlives one missed put, with an interval to spare for the next.
pub const MAX_STATUS_INTERVAL: Duration = Duration::from_secs(HOSTS_MAX_AGE.as_secs() / 3);

/// The status document of one running service instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostStatus {
    /// The service's name.
    pub service: String,
    /// This instance's id (fresh at every start).
    pub instance: String,
    /// When it started.
    pub started_at: Timestamp,
    /// When this document was written.
    pub updated_at: Timestamp,
    /// How often it writes (milliseconds): a document older than about twice this is stale.
    pub interval_ms: u64,
    /// Every handler (event handlers, command handlers, saga steps, deadline transitions), with
    /// its counters and its breaker's state.
    pub handlers: Vec<HostHandler>,
    /// The service's topology ([`Topology::to_json`]): declared, plus what it has published.
    pub topology: serde_json::Value,
}

/// One handler of a [`HostStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostHandler {
    /// Its counters (`handler`: the durable name of event handlers, `{set}-{name}` of command
    /// handlers).
    #[serde(flatten)]
    pub stats: HandlerStats,
    /// Its breaker's state (`closed`, `open`, `half_open`), if it has one.
    pub breaker: Option<String>,
}

impl HostHandler {
    fn new(stats: HandlerStats, breaker: Option<String>) -> Self {
        Self { stats, breaker }
    }
}

/// What the heartbeat reads from the running service.
pub(super) struct Source {
    pub(super) service: String,
    pub(super) handlers: Vec<(
        String,
        Arc<crate::pipeline::record::HandlerCounters>,
        Option<crate::breaker::CircuitBreaker>,
    )>,
    pub(super) topology: Topology,
    pub(super) log: Arc<PublishLog>,
}

impl Source {
    pub(super) fn of(service: &str, handlers: &[HandlerEntry], topology: &Topology, log: &Arc<PublishLog>) -> Self {
        Self {
            service: service.to_owned(),
            handlers: handlers
                .iter()
                .map(|h| (h.name.clone(), h.counters.clone(), h.breaker.clone()))
                .collect(),
            topology: topology.clone(),
            log: log.clone(),
        }
    }

    fn document(&self, instance: &str, started_at: Timestamp, interval: Duration) -> HostStatus {
        let mut topology = self.topology.clone();
        self.log.apply(&mut topology);
        HostStatus {
            service: self.service.clone(),
            instance: instance.to_owned(),
            started_at,
            updated_at: Timestamp::now(),
            interval_ms: u64::try_from(interval.as_millis()).unwrap_or(u64::MAX),
            handlers: self
                .handlers
                .iter()
                .map(|(name, counters, breaker)| {
                    HostHandler::new(
                        counters.snapshot(name),
                        breaker.as_ref().map(|b| b.state().as_str().to_owned()),
                    )
                })
                .collect(),
            topology: topology.to_json(),
        }
    }
}

/// Writes the status every `interval` until `stop` (then deletes it) or until aborted; never
/// fails.
pub(super) async fn heartbeat<T: Transport>(
    transport: T,
    source: Source,
    interval: Duration,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let instance = uuid::Uuid::now_v7().to_string();
    let key = format!("{}.{instance}", source.service);
    let started_at = Timestamp::now();
    let spec = KvSpec::new(HOSTS_BUCKET).max_age(HOSTS_MAX_AGE);
    let mut bucket: Option<T::KeyValue> = None;
    let mut failing = false;
    loop {
        let result = async {
            let kv = match &bucket {
                Some(kv) => kv,
                None => bucket.insert(transport.key_value(&spec).await?),
            };
            let doc = source.document(&instance, started_at, interval);
            let bytes = serde_json::to_vec(&doc).map_err(|e| crate::transport::KvError::Invalid(e.to_string()))?;
            kv.put(&key, bytes.into()).await
        }
        .await;
        match result {
            Ok(_) if failing => {
                failing = false;
                tracing::info!(service = %source.service, "host status written again");
            }
            Ok(_) => {}
            Err(e) if !failing => {
                failing = true;
                tracing::warn!(service = %source.service, error = %e, "cannot write the host status; trying again every interval");
            }
            Err(e) => tracing::debug!(service = %source.service, error = %e, "cannot write the host status"),
        }
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = &mut stop => break,
        }
    }
    // Nothing to delete if the bucket was never opened (it is opened by the first put).
    if let Some(kv) = bucket
        && let Err(e) = kv.delete(&key, None).await
    {
        tracing::warn!(service = %source.service, error = %e, "cannot delete the host status; it expires by itself");
    }
}
