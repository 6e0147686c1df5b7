//! The topology as the server sees it (streams and their consumers) beside the one the live
//! hosts declare (from their status documents, see [`Ops::hosts`]).

use super::handlers::filters;
use super::transport;
use super::{Ops, OpsError};
use crate::service::HostStatus;
use serde::Serialize;

/// The deployment as observed.
#[derive(Debug, Clone, Serialize)]
pub struct ObservedTopology {
    /// The streams under the prefix (key-value and object-store streams left out), by name.
    pub streams: Vec<ObservedStream>,
    /// The live hosts whose declarations are merged into [`declared`](Self::declared), as
    /// `service.instance`.
    pub hosts: Vec<String>,
    /// The union of the live hosts' topologies ([`Topology::to_json`](crate::topology::Topology::to_json)
    /// documents: `participants`, `messages`, `publications`, `subscriptions`, `warnings`, each
    /// list the union of the hosts' lists, without repeats). `null` when no host reports.
    pub declared: serde_json::Value,
}

/// One stream, as the server reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ObservedStream {
    /// Its real name.
    pub name: String,
    /// Its subjects.
    pub subjects: Vec<String>,
    /// Messages stored.
    pub messages: u64,
    /// Bytes stored.
    pub bytes: u64,
    /// Its replicas.
    pub replicas: usize,
    /// The server leading it (clustered deployments; a single server reports its own name).
    pub leader: Option<String>,
    /// Its durable consumers, by name.
    pub consumers: Vec<ObservedConsumer>,
}

/// One durable consumer, as the server reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ObservedConsumer {
    /// Its durable name.
    pub durable: String,
    /// Its filter subjects.
    pub filters: Vec<String>,
    /// Messages not yet delivered to it.
    pub pending: u64,
    /// Messages delivered and not yet acknowledged.
    pub ack_pending: usize,
}

impl Ops {
    /// The streams (with their consumers) under the prefix and the live hosts' declared
    /// topology merged.
    pub async fn topology(&self) -> Result<ObservedTopology, OpsError> {
        let head = self.stream_name("");
        let mut streams = Vec::new();
        for name in self.stream_names().await? {
            let Some(unprefixed) = name.strip_prefix(&head) else {
                continue;
            };
            if unprefixed.starts_with("KV_") || unprefixed.starts_with("OBJ_") {
                continue;
            }
            let mut stream = match self.js().get_stream(&name).await {
                Ok(s) => s,
                // Deleted since it was listed.
                Err(e) if super::not_found(&e) => {
                    continue;
                }
                Err(e) => return Err(transport("reading a stream", &e)),
            };
            let info = stream
                .info()
                .await
                .map_err(|e| transport("reading a stream", &e))?
                .clone();
            let consumers = self
                .consumers_of(&name)
                .await?
                .unwrap_or_default()
                .into_iter()
                .map(|c| ObservedConsumer {
                    durable: c.config.durable_name.clone().unwrap_or(c.name.clone()),
                    filters: filters(&c.config),
                    pending: c.num_pending,
                    ack_pending: c.num_ack_pending,
                })
                .collect();
            streams.push(ObservedStream {
                name,
                subjects: info.config.subjects.clone(),
                messages: info.state.messages,
                bytes: info.state.bytes,
                replicas: info.config.num_replicas,
                leader: info.cluster.as_ref().and_then(|c| c.leader.clone()),
                consumers,
            });
        }
        let hosts = self.hosts().await?;
        Ok(ObservedTopology {
            streams,
            hosts: hosts.iter().map(|h| format!("{}.{}", h.service, h.instance)).collect(),
            declared: merge(&hosts),
        })
    }
}

/// The union of the hosts' topology documents, list by list, without repeats.
fn merge(hosts: &[HostStatus]) -> serde_json::Value {
    use serde_json::{Map, Value};
    if hosts.is_empty() {
        return Value::Null;
    }
    let mut out: Map<String, Value> = Map::new();
    for h in hosts {
        let Value::Object(doc) = &h.topology else { continue };
        for (k, v) in doc {
            let Value::Array(items) = v else { continue };
            let Value::Array(into) = out.entry(k.clone()).or_insert_with(|| Value::Array(Vec::new())) else {
                continue;
            };
            for item in items {
                if !into.contains(item) {
                    into.push(item.clone());
                }
            }
        }
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;

    fn host(topology: serde_json::Value) -> HostStatus {
        HostStatus {
            service: "s".into(),
            instance: "i".into(),
            started_at: Timestamp::now(),
            updated_at: Timestamp::now(),
            interval_ms: 5000,
            handlers: vec![],
            topology,
            clock_offset_ms: None,
        }
    }

    #[test]
    fn declared_topologies_merge_without_repeats() {
        let a = host(serde_json::json!({"participants": [{"name": "a"}], "warnings": []}));
        let b = host(serde_json::json!({"participants": [{"name": "a"}, {"name": "b"}], "odd": 1}));
        let m = merge(&[a, b, host(serde_json::Value::Null)]);
        assert_eq!(m["participants"], serde_json::json!([{"name": "a"}, {"name": "b"}]));
        assert_eq!(m["warnings"], serde_json::json!([]));
        assert!(m.get("odd").is_none());
        assert_eq!(merge(&[]), serde_json::Value::Null);
    }
}
