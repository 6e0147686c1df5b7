//! A private three-node JetStream cluster on loopback, for failover tests.
//!
//! Each node is a [`NatsServer`] started with
//! `--server_name nN --cluster_name C --cluster nats://127.0.0.1:P --routes <the other nodes> -m M`
//! on free ports, with a configuration file that shortens lame duck mode (see
//! [`NatsCluster::lame_duck`]). Leaders are read as a client sees them:
//!
//! - stream, bucket and consumer leaders from `$JS.API.STREAM.INFO.<stream>` and
//!   `$JS.API.CONSUMER.INFO.<stream>.<durable>` (their `cluster.leader` server name);
//! - the meta leader from the monitoring endpoint `/jsz` (`meta_cluster.leader`), which every
//!   node serves and which reads the same on nats-server 2.9 and 2.10+ (the `$JS.API` has no
//!   meta-leader request a plain client may send before 2.10, and `$SYS` needs a system account).
//!
//! The cluster is ready when every running node names the same meta leader, the leader sees every
//! other running node as a current peer, and `$JS.API.INFO` answers a client.

use super::NatsServer;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::Duration;
use tokio::time::Instant;

/// Every node's configuration file: lame duck mode as short as the server allows (it refuses a
/// `lame_duck_duration` under 30 s), with a short grace period before evictions begin.
const NODE_CONFIG: &str = "lame_duck_duration: \"30s\"\nlame_duck_grace_period: \"2s\"\n";

/// Nodes in a [`NatsCluster`].
pub const CLUSTER_SIZE: usize = 3;

/// How long a cluster may take to elect its meta leader (or a restarted node to rejoin).
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long one API request to the cluster may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// Whole-cluster starts tried before giving up (a free port may be taken by someone else
/// between picking it and the server binding it).
const START_ATTEMPTS: usize = 4;

/// Three nats-servers with JetStream, clustered on loopback. Killed and their directories removed
/// when dropped.
#[derive(Debug)]
pub struct NatsCluster {
    name: String,
    nodes: Vec<NatsServer>,
    monitor_ports: Vec<u16>,
    client: async_nats::Client,
}

fn other_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

/// `GET path` on the monitoring port, as JSON.
async fn http_json(port: u16, path: &str) -> io::Result<serde_json::Value> {
    let request = format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let body = tokio::task::spawn_blocking(move || -> io::Result<Vec<u8>> {
        use std::io::{Read, Write};
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(REQUEST_TIMEOUT))?;
        s.set_write_timeout(Some(REQUEST_TIMEOUT))?;
        s.write_all(request.as_bytes())?;
        let mut out = Vec::new();
        s.read_to_end(&mut out)?;
        Ok(out)
    })
    .await
    .map_err(other_err)??;
    let split = body
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| io::Error::other("monitoring endpoint sent no HTTP body"))?;
    serde_json::from_slice(&body[split + 4..]).map_err(other_err)
}

impl NatsCluster {
    /// Starts three nodes on free ports and waits until they elected a JetStream meta leader and
    /// all three are current members. If a node fails to start (a port was taken meanwhile), the
    /// whole cluster is started again on new ports, a few times.
    pub async fn start() -> io::Result<Self> {
        super::started_again("the nats cluster", START_ATTEMPTS, Self::try_start).await
    }

    async fn try_start() -> io::Result<Self> {
        // Another process may take one before the server does: the whole start is retried.
        let ports = super::free_ports(CLUSTER_SIZE * 2)?;
        let (cluster_ports, monitor_ports) = ports.split_at(CLUSTER_SIZE);
        let name = format!("cim-{}", uuid::Uuid::now_v7().simple());
        let mut nodes = Vec::with_capacity(CLUSTER_SIZE);
        for i in 0..CLUSTER_SIZE {
            let routes = cluster_ports
                .iter()
                .enumerate()
                .filter(|&(j, _)| j != i)
                .map(|(_, p)| format!("nats://127.0.0.1:{p}"))
                .collect::<Vec<_>>()
                .join(",");
            let server_name = format!("n{}", i + 1);
            let cluster_url = format!("nats://127.0.0.1:{}", cluster_ports[i]);
            let monitor = monitor_ports[i].to_string();
            let args = [
                "--server_name",
                server_name.as_str(),
                "--cluster_name",
                name.as_str(),
                "--cluster",
                cluster_url.as_str(),
                "--routes",
                routes.as_str(),
                "-m",
                monitor.as_str(),
            ];
            // A node that fails drops (kills) the ones already started.
            nodes.push(NatsServer::start_with_args_and_config(&args, NODE_CONFIG).await?);
        }
        let urls = nodes
            .iter()
            .map(|n| n.url().parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(other_err)?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(REQUEST_TIMEOUT)
            .connect(urls)
            .await
            .map_err(other_err)?;
        let cluster = Self {
            name,
            nodes,
            monitor_ports: monitor_ports.to_vec(),
            client,
        };
        cluster.wait_ready(READY_TIMEOUT).await?;
        Ok(cluster)
    }

    /// The cluster's name (`--cluster_name`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client URLs of all nodes, comma-separated (for `NatsOptions::new` or `NATS_URL`).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(NatsServer::url).collect::<Vec<_>>().join(",")
    }

    /// The client URL of node `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`CLUSTER_SIZE`].
    pub fn url(&self, i: usize) -> String {
        self.nodes[i].url()
    }

    /// Node `i`.
    ///
    /// # Panics
    ///
    /// If `i` is not below [`CLUSTER_SIZE`].
    pub fn node(&self, i: usize) -> &NatsServer {
        &self.nodes[i]
    }

    /// Node `i`, mutably (to stop it gracefully, for example).
    ///
    /// # Panics
    ///
    /// If `i` is not below [`CLUSTER_SIZE`].
    pub fn node_mut(&mut self, i: usize) -> &mut NatsServer {
        &mut self.nodes[i]
    }

    /// The server name of node `i` (`n1`, `n2`, `n3`).
    pub fn server_name(&self, i: usize) -> String {
        format!("n{}", i + 1)
    }

    /// The index of the node named `server_name`.
    pub fn index_of(&self, server_name: &str) -> Option<usize> {
        let n: usize = server_name.strip_prefix('n')?.parse().ok()?;
        (1..=self.nodes.len()).contains(&n).then(|| n - 1)
    }

    /// The client URLs of all nodes, parsed (for `async_nats::connect`, which reads a
    /// comma-separated string as one address).
    pub fn server_addrs(&self) -> Vec<async_nats::ServerAddr> {
        self.nodes.iter().filter_map(|n| n.url().parse().ok()).collect()
    }

    /// A client connected to all nodes (it follows failovers), used for the leader look-ups.
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// Node `i`, mutably; out-of-range indexes are an error.
    fn node_checked(&mut self, i: usize) -> io::Result<&mut NatsServer> {
        self.nodes
            .get_mut(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no node {i}")))
    }

    /// Kills node `i` at once (SIGKILL), as a crash would. Out-of-range indexes are an error.
    pub fn kill(&mut self, i: usize) -> io::Result<()> {
        self.node_checked(i)?.kill()
    }

    /// Puts node `i` in lame duck mode, as an operator does before restarting or upgrading it,
    /// and waits for it to exit (see [`NatsServer::lame_duck`]; 3-5 s with the nodes'
    /// configuration and a test's few clients: the 2 s grace period, then its connections
    /// closed). [`restart`](Self::restart) starts it again.
    pub async fn lame_duck(&mut self, i: usize) -> io::Result<()> {
        self.node_checked(i)?.lame_duck(Duration::from_secs(90)).await
    }

    /// Starts node `i` again (same ports, same store; stopping it first if it runs) and waits
    /// until it rejoined: every node names the same meta leader and it is a current peer.
    pub async fn restart(&mut self, i: usize) -> io::Result<()> {
        self.node_checked(i)?.restart().await?;
        self.wait_ready(READY_TIMEOUT).await
    }

    /// Sends a JetStream API request through the cluster client and returns the JSON answer; a
    /// JetStream error answer is an error.
    async fn api(&self, subject: String) -> io::Result<serde_json::Value> {
        let reply = tokio::time::timeout(REQUEST_TIMEOUT, self.client.request(subject.clone(), "".into()))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, format!("no answer to `{subject}`")))?
            .map_err(|e| io::Error::other(format!("`{subject}`: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).map_err(other_err)?;
        if let Some(err) = v.get("error") {
            return Err(io::Error::other(format!("`{subject}`: {err}")));
        }
        Ok(v)
    }

    fn leader_index(&self, v: &serde_json::Value, what: &str) -> io::Result<usize> {
        let leader = v
            .pointer("/cluster/leader")
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("{what} has no leader now")))?;
        self.index_of(leader)
            .ok_or_else(|| io::Error::other(format!("{what} is led by unknown server `{leader}`")))
    }

    /// The node leading `stream` (from `STREAM.INFO`'s `cluster.leader`).
    pub async fn stream_leader(&self, stream: &str) -> io::Result<usize> {
        let v = self.api(format!("$JS.API.STREAM.INFO.{stream}")).await?;
        self.leader_index(&v, &format!("stream `{stream}`"))
    }

    /// The node leading the key-value bucket `bucket` (its stream `KV_<bucket>`).
    pub async fn bucket_leader(&self, bucket: &str) -> io::Result<usize> {
        self.stream_leader(&format!("KV_{bucket}")).await
    }

    /// The node leading the consumer `durable` of `stream` (from `CONSUMER.INFO`). A consumer just
    /// created may have none yet (its create is answered before its group's election ends): an
    /// error of kind `NotFound`; [`wait_for_consumer_leader`](Self::wait_for_consumer_leader)
    /// waits for one.
    pub async fn consumer_leader(&self, stream: &str, durable: &str) -> io::Result<usize> {
        let v = self.api(format!("$JS.API.CONSUMER.INFO.{stream}.{durable}")).await?;
        self.leader_index(&v, &format!("consumer `{durable}` of `{stream}`"))
    }

    /// The JetStream meta leader, as the first running node's `/jsz` names it.
    pub async fn meta_leader(&self) -> io::Result<usize> {
        let mut last = io::Error::other("no node is running");
        for i in self.running() {
            match self.jsz(i).await {
                Ok(jsz) => match meta_leader_name(&jsz).and_then(|n| self.index_of(n)) {
                    Some(l) => return Ok(l),
                    None => last = io::Error::new(io::ErrorKind::NotFound, "no meta leader now"),
                },
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Waits up to `timeout` until `stream` has a leader on a running node, and returns it.
    pub async fn wait_for_stream_leader(&self, stream: &str, timeout: Duration) -> io::Result<usize> {
        self.wait_for_live_leader(&format!("stream `{stream}`"), timeout, || self.stream_leader(stream))
            .await
    }

    /// Waits up to `timeout` until the consumer `durable` of `stream` has a leader on a running
    /// node, and returns it.
    pub async fn wait_for_consumer_leader(&self, stream: &str, durable: &str, timeout: Duration) -> io::Result<usize> {
        self.wait_for_live_leader(&format!("consumer `{durable}` of `{stream}`"), timeout, || {
            self.consumer_leader(stream, durable)
        })
        .await
    }

    /// Asks `leader` every 100 ms until it names a running node.
    async fn wait_for_live_leader<F, Fut>(&self, what: &str, timeout: Duration, leader: F) -> io::Result<usize>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = io::Result<usize>>,
    {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match leader().await {
                Ok(i) if self.nodes[i].is_started() => return Ok(i),
                Ok(i) => format!("still names the stopped node {i}"),
                Err(e) => e.to_string(),
            };
            if Instant::now() > deadline {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{what} has no live leader after {timeout:?}: {last}"),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The indexes of the nodes whose process was started and not stopped or killed.
    pub fn running(&self) -> Vec<usize> {
        (0..self.nodes.len()).filter(|&i| self.nodes[i].is_started()).collect()
    }

    /// Node `i`'s `/jsz` monitoring document.
    pub async fn jsz(&self, i: usize) -> io::Result<serde_json::Value> {
        let port = *self
            .monitor_ports
            .get(i)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no node {i}")))?;
        http_json(port, "/jsz").await
    }

    /// Waits until every running node names the same meta leader, the leader sees every other
    /// running node as a current peer, and `$JS.API.INFO` answers.
    pub async fn wait_ready(&self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.ready().await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            if Instant::now() > deadline {
                let logs: Vec<String> = self
                    .running()
                    .into_iter()
                    .map(|i| format!("--- {}:\n{}", self.server_name(i), self.nodes[i].log_tail()))
                    .collect();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("cluster not ready after {timeout:?}: {why}\n{}", logs.join("\n")),
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self) -> io::Result<()> {
        let running = self.running();
        let mut leader = None;
        for &i in &running {
            let jsz = self.jsz(i).await?;
            let name = meta_leader_name(&jsz)
                .ok_or_else(|| io::Error::other(format!("{} knows no meta leader", self.server_name(i))))?;
            match leader {
                None => leader = Some(name.to_owned()),
                Some(ref l) if l == name => {}
                Some(ref l) => return Err(io::Error::other(format!("meta leaders differ: {l} and {name}"))),
            }
        }
        let leader = leader.ok_or_else(|| io::Error::other("no node is running"))?;
        let li = self
            .index_of(&leader)
            .ok_or_else(|| io::Error::other(format!("unknown meta leader `{leader}`")))?;
        let jsz = self.jsz(li).await?;
        let current: Vec<&str> = jsz
            .pointer("/meta_cluster/replicas")
            .and_then(serde_json::Value::as_array)
            .map(|peers| {
                peers
                    .iter()
                    .filter(|p| {
                        p.get("current").and_then(serde_json::Value::as_bool) == Some(true)
                            && p.get("offline").and_then(serde_json::Value::as_bool) != Some(true)
                    })
                    .filter_map(|p| p.get("name").and_then(serde_json::Value::as_str))
                    .collect()
            })
            .unwrap_or_default();
        for &i in running.iter().filter(|&&i| i != li) {
            let name = self.server_name(i);
            if !current.contains(&name.as_str()) {
                return Err(io::Error::other(format!("{name} is not a current peer of {leader}")));
            }
        }
        self.api("$JS.API.INFO".to_owned()).await.map(|_| ())
    }
}

fn meta_leader_name(jsz: &serde_json::Value) -> Option<&str> {
    jsz.pointer("/meta_cluster/leader")
        .and_then(serde_json::Value::as_str)
        .filter(|s| !s.is_empty())
}
