//! Handlers' lag, as the server counts it, with the breaker states live hosts report; and the
//! live hosts' status documents.
//!
//! Every event handler reads its stream through a durable consumer; the server knows how far
//! behind each one is. Breaker states live in the hosts' memory: a [`Service`](crate::service::Service)
//! writes them, with its counters and topology, to the bucket
//! [`crate::service::HOSTS_BUCKET`] every few seconds (see
//! [`service::status`](crate::service::status)); [`Ops::hosts`] reads those documents.

use super::{Ops, OpsError, transport};
use crate::service::{DEAD_LETTER_STREAM_NAME, HOSTS_BUCKET, HostStatus};
use crate::transport::KeyValue;
use async_nats::jetstream::consumer;
use futures::TryStreamExt;
use serde::Serialize;

/// The suffix of the event streams (`{DOMAIN}_EVENTS`).
pub(crate) const EVENTS_SUFFIX: &str = "_EVENTS";

/// One durable consumer's lag.
#[derive(Debug, Clone, Serialize)]
pub struct HandlerLag {
    /// The stream it reads (its real name).
    pub stream: String,
    /// The durable's name (`{set}-{handler}` for event handlers, `{durable}-redrive` for their
    /// redrive consumers on the dead-letter stream).
    pub durable: String,
    /// Its filter subjects.
    pub filters: Vec<String>,
    /// Messages stored and not yet delivered to it: its lag.
    pub num_pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub num_ack_pending: usize,
    /// Messages delivered more than once and not yet acknowledged.
    pub num_redelivered: usize,
    /// Pull requests waiting (0 while no host pulls).
    pub num_waiting: usize,
    /// The breaker state (`closed`, `open`, `half_open`) each live host running the handler
    /// reports, as `(service.instance, state)`; empty when no live host reports one (no
    /// breaker, or no host writes its status).
    pub breakers: Vec<(String, String)>,
}

impl Ops {
    /// The names of the streams of the CIM runtime under the prefix: the event streams
    /// (`*_EVENTS`) and the dead-letter stream.
    pub(crate) async fn cim_streams(&self) -> Result<Vec<String>, OpsError> {
        let dead_letters = self.stream_name(DEAD_LETTER_STREAM_NAME);
        let head = self.stream_name("");
        Ok(self
            .stream_names()
            .await?
            .into_iter()
            .filter(|s| *s == dead_letters || (s.starts_with(&head) && s.ends_with(EVENTS_SUFFIX)))
            .collect())
    }

    /// The durable consumers of `stream` as the server reports them; `None` if the stream is
    /// gone.
    pub(crate) async fn consumers_of(&self, stream: &str) -> Result<Option<Vec<consumer::Info>>, OpsError> {
        let s = match self.js().get_stream(stream).await {
            Ok(s) => s,
            Err(e) if super::not_found(&e) => {
                return Ok(None);
            }
            Err(e) => return Err(transport("reading a stream", &e)),
        };
        let mut infos: Vec<consumer::Info> = match s.consumers().try_collect().await {
            Ok(i) => i,
            Err(e) => return Err(transport("listing consumers", &e)),
        };
        infos.retain(|i| i.config.durable_name.is_some());
        infos.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Some(infos))
    }

    /// Every durable consumer on the CIM streams (see [`HandlerLag`]), by stream then durable,
    /// with the breaker states of [`hosts`](Self::hosts).
    pub async fn handlers(&self) -> Result<Vec<HandlerLag>, OpsError> {
        let hosts = self.hosts().await?;
        let mut out = Vec::new();
        for stream in self.cim_streams().await? {
            let Some(infos) = self.consumers_of(&stream).await? else {
                continue;
            };
            for i in infos {
                let durable = i.config.durable_name.clone().unwrap_or_else(|| i.name.clone());
                let handler = durable.strip_suffix("-redrive").unwrap_or(&durable);
                let breakers = hosts
                    .iter()
                    .flat_map(|h| {
                        h.handlers
                            .iter()
                            .filter(|x| x.stats.handler == handler)
                            .filter_map(|x| x.breaker.clone())
                            .map(|b| (format!("{}.{}", h.service, h.instance), b))
                    })
                    .collect();
                out.push(HandlerLag {
                    stream: stream.clone(),
                    filters: filters(&i.config),
                    durable,
                    num_pending: i.num_pending,
                    num_ack_pending: i.num_ack_pending,
                    num_redelivered: i.num_redelivered,
                    num_waiting: i.num_waiting,
                    breakers,
                });
            }
        }
        Ok(out)
    }

    /// The status documents of the live hosts (those that wrote within the bucket's max age),
    /// by service then instance, each with its host's clock offset from the server's
    /// ([`HostStatus::clock_offset_ms`]: the host's own measure, or what the write tells); empty
    /// if no host ever wrote one. Documents that cannot be read
    /// are skipped with a warning. The documents are read 16 at a time (the console asks every 2
    /// seconds, and a deployment may run many hosts).
    pub async fn hosts(&self) -> Result<Vec<HostStatus>, OpsError> {
        use futures::StreamExt as _;
        let Some(kv) = self.bucket(HOSTS_BUCKET).await? else {
            return Ok(Vec::new());
        };
        let kv = &kv;
        let reads = futures::stream::iter(kv.keys().await?)
            .map(|key| async move {
                let entry = kv.get(&key).await;
                (key, entry)
            })
            .buffered(HOST_READS);
        futures::pin_mut!(reads);
        let mut out = Vec::new();
        while let Some((key, entry)) = reads.next().await {
            let Some(entry) = entry? else {
                continue;
            };
            match serde_json::from_slice::<HostStatus>(&entry.value) {
                Ok(mut doc) => {
                    // The host's own measure if it has made one, else what the write tells.
                    doc.clock_offset_ms = doc.clock_offset_ms.or(Some(doc.clock_offset_ms(entry.created)));
                    out.push(doc);
                }
                Err(e) => tracing::warn!(%key, error = %e, "unreadable host status"),
            }
        }
        out.sort_by(|a, b| a.service.cmp(&b.service).then_with(|| a.instance.cmp(&b.instance)));
        Ok(out)
    }
}

/// Host status documents [`Ops::hosts`] reads at once.
const HOST_READS: usize = 16;

pub(crate) fn filters(c: &consumer::Config) -> Vec<String> {
    (!c.filter_subject.is_empty())
        .then(|| c.filter_subject.clone())
        .into_iter()
        .collect()
}
