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
    /// How far the host's clock was from the NATS server's at its last check, in milliseconds
    /// (positive: ahead; zero within the time a write takes): the server's time of a status
    /// write against the host's times around it, checked at the first write and every 60th.
    /// `None` until the first check, and from hosts of earlier versions, for which
    /// [`Ops::hosts`](crate::ops::Ops::hosts) fills in [`clock_offset_ms`](Self::clock_offset_ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
}

/// How far a host's clock may be from the NATS server's before it is reported: 1 s. Hosts
/// compare wall clocks with each other and with the server: saga leases (a runner takes over a
/// saga whose lease has passed by its own clock), process-manager deadlines, and the dedup
/// layer's 5 s margin between a handle's resume and the server's storing time.
pub const CLOCK_TOLERANCE: Duration = Duration::from_secs(1);

/// The host's status heartbeats between two checks of its clock against the server's (after
/// the first put, then every 60th: every 5 minutes at the default interval).
const CLOCK_CHECK_EVERY: u64 = 60;

impl HostStatus {
    /// How far ahead of the server's clock the host's was when it wrote this document, in
    /// milliseconds, as a reader of the document can tell: `updated_at` minus `written`, the
    /// server's time of the write (a key-value entry's `created`). Negative: behind. A few
    /// milliseconds below zero are the write's transit; a write slowed by a reconnection reads
    /// as behind by as long.
    pub fn clock_offset_ms(&self, written: Timestamp) -> i64 {
        // A bracket of one instant: the write's time as the document says it.
        bracketed_offset_ms(self.updated_at, self.updated_at, written)
    }

    /// Whether [`clock_offset_ms`](Self::clock_offset_ms) is beyond [`CLOCK_TOLERANCE`].
    pub fn clock_differs(offset_ms: i64) -> bool {
        offset_ms.unsigned_abs() > CLOCK_TOLERANCE.as_millis() as u64
    }
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

    fn document(
        &self,
        instance: &str,
        started_at: Timestamp,
        interval: Duration,
        clock_offset_ms: Option<i64>,
    ) -> HostStatus {
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
            clock_offset_ms,
        }
    }
}

/// How far the host's clock is from the server's, judged from a write the server stored at
/// `stored` (its clock) that the host sent after `sent` and saw acknowledged at `acknowledged`
/// (its clock): zero if `stored` falls between them, else how far outside. A slow write (a
/// reconnection, a busy server) widens the bracket; it never reads as a difference of clocks.
fn bracketed_offset_ms(sent: Timestamp, acknowledged: Timestamp, stored: Timestamp) -> i64 {
    let (sent, acknowledged, stored) = (sent.unix_millis(), acknowledged.unix_millis(), stored.unix_millis());
    if stored < sent {
        sent.saturating_sub(stored)
    } else if stored > acknowledged {
        acknowledged.saturating_sub(stored)
    } else {
        0
    }
}

/// Reads back the document just written and compares the time the server stored it with the
/// host's times around the write (from the document's `updated_at` to `acknowledged`): the offset
/// ([`bracketed_offset_ms`]), and a warning (at most hourly) if it is beyond [`CLOCK_TOLERANCE`].
/// `None` if the document cannot be read back, and on a store in this process, whose clock is the
/// host's (and follows tokio's paused time in tests).
async fn check_clock<K: KeyValue>(
    kv: &K,
    key: &str,
    doc: &HostStatus,
    acknowledged: Timestamp,
    service: &str,
    warnings: &crate::throttle::Throttle,
) -> Option<i64> {
    if kv.at_once().is_some() {
        return None;
    }
    match kv.get(key).await {
        Ok(Some(entry)) => {
            let offset_ms = bracketed_offset_ms(doc.updated_at, acknowledged, entry.created);
            if HostStatus::clock_differs(offset_ms) && warnings.pass(3_600_000) {
                tracing::warn!(
                    service,
                    offset_ms,
                    "this host's clock is {:.1} s {} the NATS server's: saga leases, process-manager deadlines and the dedup layer's 5 s margin compare clocks across hosts; synchronize it (NTP)",
                    offset_ms.unsigned_abs() as f64 / 1000.0,
                    if offset_ms > 0 { "ahead of" } else { "behind" }
                );
            }
            Some(offset_ms)
        }
        Ok(None) => None,
        Err(e) => {
            tracing::debug!(service, error = %e, "cannot read the host status back to compare clocks");
            None
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
    let mut written = 0u64;
    let mut clock_offset_ms = None;
    let clock_warnings = crate::throttle::Throttle::default();
    loop {
        let result = async {
            let kv = match &bucket {
                Some(kv) => kv,
                None => bucket.insert(transport.key_value(&spec).await?),
            };
            let doc = source.document(&instance, started_at, interval, clock_offset_ms);
            let bytes = serde_json::to_vec(&doc).map_err(|e| crate::transport::KvError::Invalid(e.to_string()))?;
            kv.put(&key, bytes.into()).await?;
            Ok::<_, crate::transport::KvError>((doc, Timestamp::now()))
        }
        .await;
        if let (Ok((doc, acknowledged)), Some(kv)) = (&result, &bucket) {
            if written.is_multiple_of(CLOCK_CHECK_EVERY)
                && let Some(offset) = check_clock(kv, &key, doc, *acknowledged, &source.service, &clock_warnings).await
            {
                clock_offset_ms = Some(offset);
            }
            written += 1;
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A status document of host `svc` written at `updated_at`.
    fn doc(updated_at: Timestamp) -> HostStatus {
        HostStatus {
            service: "svc".into(),
            instance: "i".into(),
            started_at: updated_at,
            updated_at,
            interval_ms: 5000,
            handlers: vec![],
            topology: serde_json::Value::Null,
            clock_offset_ms: None,
        }
    }

    #[test]
    fn a_clock_differs_beyond_a_second_either_way() {
        let server = Timestamp::now();
        let at = |ms: i128| Timestamp::from_unix_nanos(server.unix_nanos() + ms * 1_000_000).expect("time");
        assert_eq!(doc(at(2_500)).clock_offset_ms(server), 2_500);
        assert_eq!(doc(at(-3)).clock_offset_ms(server), -3);
        for (ms, differs) in [
            (0, false),
            (-3, false),
            (1_000, false),
            (-1_000, false),
            (1_001, true),
            (-1_001, true),
        ] {
            assert_eq!(HostStatus::clock_differs(ms), differs, "{ms}");
        }
        assert!(HostStatus::clock_differs(i64::MIN));
    }

    #[test]
    fn a_slow_write_widens_the_bracket_and_never_reads_as_a_clock_difference() {
        let t0 = Timestamp::now();
        let at = |ms: i128| Timestamp::from_unix_nanos(t0.unix_nanos() + ms * 1_000_000).expect("time");
        // Sent at 0, acknowledged 3 s later (a reconnection): stored at 2.9 s is no difference.
        assert_eq!(bracketed_offset_ms(at(0), at(3_000), at(2_900)), 0);
        // The server's time before the send: the host is ahead; after the acknowledgement: behind.
        assert_eq!(bracketed_offset_ms(at(0), at(10), at(-5_000)), 5_000);
        assert_eq!(bracketed_offset_ms(at(0), at(10), at(5_010)), -5_000);
    }

    /// The heartbeat's check against a real server: the document a host whose clock runs 5 s
    /// ahead writes (its `updated_at` 5 s after the server's time) is read back and warned
    /// about, once per hour; a synchronized host's is not.
    #[cfg(all(feature = "testing", feature = "nats"))]
    #[tokio::test(flavor = "current_thread")]
    async fn a_host_whose_clock_differs_from_the_servers_warns() {
        use crate::transport::nats::NatsTransport;
        use std::sync::Mutex;
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("lock").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let _default = tracing::subscriber::set_default(subscriber);
        let warnings = || {
            String::from_utf8_lossy(&lines.0.lock().expect("lock"))
                .lines()
                .filter(|l| l.contains("clock is"))
                .map(str::to_owned)
                .collect::<Vec<_>>()
        };

        let server = crate::testing::NatsServer::start().await.expect("nats-server");
        let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
        let kv = t
            .key_value(&KvSpec::new(HOSTS_BUCKET).max_age(HOSTS_MAX_AGE))
            .await
            .expect("bucket");
        let throttle = crate::throttle::Throttle::default();
        let mut doc = doc(Timestamp::now());
        let write_and_check = async |doc: &mut HostStatus, ahead_ms: i128| {
            doc.updated_at =
                Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() + ahead_ms * 1_000_000).expect("time");
            kv.put("svc.i", serde_json::to_vec(doc).expect("json").into())
                .await
                .expect("put");
            // The acknowledgement as the host's clock reads it, shifted with its `updated_at`.
            let acknowledged =
                Timestamp::from_unix_nanos(Timestamp::now().unix_nanos() + ahead_ms * 1_000_000).expect("time");
            check_clock(&kv, "svc.i", doc, acknowledged, "svc", &throttle).await
        };
        assert_eq!(write_and_check(&mut doc, 0).await, Some(0));
        assert_eq!(warnings(), Vec::<String>::new(), "a synchronized host");
        let ahead = write_and_check(&mut doc, 5_000).await.expect("an offset");
        assert!((4_900..=5_000).contains(&ahead), "{ahead}");
        let warned = warnings();
        assert_eq!(warned.len(), 1, "{warned:?}");
        assert!(
            warned[0].contains("WARN") && warned[0].contains("ahead of the NATS server's") && warned[0].contains("NTP"),
            "{warned:?}"
        );
        write_and_check(&mut doc, -5_000).await;
        assert_eq!(warnings().len(), 1, "at most hourly");
        throttle.reopen();
        write_and_check(&mut doc, -5_000).await;
        let warned = warnings();
        assert!(
            warned.len() == 2 && warned[1].contains("5.0 s behind the NATS server's"),
            "{warned:?}"
        );
    }
}
