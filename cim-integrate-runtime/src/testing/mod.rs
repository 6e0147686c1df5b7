//! Test support (feature `testing`): the test host, the saga fixture and a private nats-server
//! per test.
//!
//! [`TestHost`] hosts a whole application (handlers, commands, sagas, process managers) on the
//! embedded transport under paused time: publish, send, start a saga, [`settle`](TestHost::settle)
//! until everything they triggered has happened, [`advance`](TestHost::advance) the clock, then
//! assert on the events, commands, dead letters, saga and process states (see [`host`]).
//!
//! [`SagaFixture`] (given/when/then for sagas on the embedded transport, under paused time) is
//! re-exported here from [`saga::fixture`](crate::saga::fixture), so that users of the facade
//! find all test support at `cim_integrate::testing`.
//!
//! [`snapshot`] compares the wire contract of events and commands (a JSON Schema per version, a
//! golden payload per current version, the golden check that older payloads still decode and
//! upcast) and the topology to committed files, for the user's CI.
//!
//! [`NatsServer::start`] runs `nats-server -a 127.0.0.1 -p -1 -js` with a temporary store
//! directory, on a free port, from `NATS_SERVER_BIN` or else `nats-server` on the `PATH`. It can be
//! stopped and restarted on the same port with the same store (JetStream data survives), and is
//! killed and its directory removed when dropped. Tests never touch a shared server.
//!
//! [`NatsServer::start_with`] adds command-line options (authentication, TLS, ...) and
//! [`NatsServer::start_with_config`] a configuration file (for settings with no command-line
//! option, such as NKey users). Readiness is the ports file plus a TCP connect, not a NATS
//! handshake, so it works for servers that require credentials or TLS.
//!
//! [`NatsCluster::start`] (with the `nats` feature) runs three such servers as one JetStream
//! cluster on loopback, with leader look-ups, kill and restart of single nodes, for failover
//! tests. [`hub_and_leaf`] (with the `nats` feature) runs an edge site's two: a hub and a leaf
//! node, each with a JetStream domain of its own. [`free_ports`] gives the listen ports of other
//! topologies a test configures itself (gateways, routes).

#[cfg(feature = "nats")]
mod cluster;
pub mod host;
mod observe;
pub mod snapshot;

#[cfg(feature = "nats")]
pub use cluster::{CLUSTER_SIZE, NatsCluster};

pub use crate::saga::fixture::{SagaFixture, SagaThen, lifecycle_events};
pub use host::{
    Answer, Commands, DEFAULT_SETTLE_LIMIT, DeadLetter, DeadLetters, Events, NotSettled, Published, SentCommand,
    TestHost, TestHostError, Typed,
};
pub use observe::{Observed, Series, SpanRecord, observe};

/// Sets how often, at most, every NATS key-value bucket of this process chooses its read path
/// again from its stream's settings (a direct get for one replica, else through the leader; 30 s
/// by default): for tests that change a bucket's replicas and cannot wait that long.
#[cfg(feature = "nats")]
pub fn recheck_kv_read_paths_every(every: Duration) {
    crate::transport::nats::kv::RECHECK_MS.store(
        u64::try_from(every.as_millis()).unwrap_or(u64::MAX),
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// Counts the messages published on `subject` (wildcards allowed) from now on, as a plain
/// subscriber of `client` sees them: for tests of which requests a client sends (the subscriber
/// only listens; the server still answers them). The subscription is flushed before this returns.
#[cfg(feature = "nats")]
pub async fn count_messages(
    client: &async_nats::Client,
    subject: &str,
) -> Result<std::sync::Arc<std::sync::atomic::AtomicUsize>, async_nats::Error> {
    use futures::StreamExt;
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut sub = client.subscribe(subject.to_owned()).await?;
    client.flush().await?;
    let seen = count.clone();
    tokio::spawn(async move {
        while sub.next().await.is_some() {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
    });
    Ok(count)
}

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable naming the nats-server binary.
pub const SERVER_BIN_ENV: &str = "NATS_SERVER_BIN";

/// How long a server may take to start accepting connections.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The nats-server binary: `NATS_SERVER_BIN`, else `nats-server` (found on the `PATH`).
pub fn server_bin() -> PathBuf {
    std::env::var_os(SERVER_BIN_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from("nats-server"), PathBuf::from)
}

/// `n` distinct ports on 127.0.0.1 that nothing listens on now (bound together, then released):
/// for a server's cluster, gateway or leaf-node listeners. Another process may take one before
/// the server does; a test starting servers on them retries the start (as
/// `NatsCluster::start` does).
pub fn free_ports(n: usize) -> io::Result<Vec<u16>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)))
        .collect::<io::Result<Vec<_>>>()?;
    listeners.iter().map(|l| Ok(l.local_addr()?.port())).collect()
}

/// An edge site's servers: a hub (JetStream domain `hub`, accepting leaf nodes) and a leaf node
/// with a JetStream of its own (domain `leaf`) connected to it, returned `(hub, leaf)` once a
/// client of the leaf reaches the hub's JetStream (`$JS.hub.API.INFO`, at most 20 s). A host on
/// the leaf uses the hub's streams with `NatsOptions::js_domain = Some("hub")`
/// (`NATS_JS_DOMAIN=hub`). If the hub cannot listen on the leaf-node port it was given (another
/// process took it meanwhile, see [`free_ports`]), the pair is started again on another, a few
/// times.
#[cfg(feature = "nats")]
pub async fn hub_and_leaf() -> io::Result<(NatsServer, NatsServer)> {
    started_again("a hub and a leaf node", 3, try_hub_and_leaf).await
}

/// Runs `start` up to `attempts` times, until it succeeds: for servers started on [`free_ports`],
/// one of which another process may take before the server binds it. Returns the last error.
pub(crate) async fn started_again<R, F, Fut>(what: &str, attempts: usize, mut start: F) -> io::Result<R>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = io::Result<R>>,
{
    let mut last = None;
    for attempt in 1..=attempts {
        match start().await {
            Ok(started) => return Ok(started),
            Err(e) => {
                tracing::warn!(attempt, error = %e, "starting {what} failed; retrying");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other(format!("starting {what} failed"))))
}

#[cfg(feature = "nats")]
async fn try_hub_and_leaf() -> io::Result<(NatsServer, NatsServer)> {
    let leaf_port = free_ports(1)?[0];
    let hub = NatsServer::start_with_config(&format!(
        "jetstream {{ domain: hub }}\nleafnodes {{ listen: \"127.0.0.1:{leaf_port}\" }}\n"
    ))
    .await?;
    let leaf = NatsServer::start_with_config(&format!(
        "jetstream {{ domain: leaf }}\nleafnodes {{ remotes: [ {{ url: \"nats://127.0.0.1:{leaf_port}\" }} ] }}\n"
    ))
    .await?;
    let client = async_nats::connect(leaf.url())
        .await
        .map_err(|e| io::Error::other(format!("connecting to the leaf: {e}")))?;
    wait_for_jetstream(&client, "$JS.hub.API", Duration::from_secs(20))
        .await
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!(
                    "the leaf never reached the hub's JetStream: {e}\nhub: {}\nleaf: {}",
                    hub.log_tail(),
                    leaf.log_tail()
                ),
            )
        })?;
    Ok((hub, leaf))
}

/// Waits (up to `within`) until `client` has JetStream's account information from `api`
/// (`$JS.API`, or `$JS.<domain>.API`): a clustered JetStream has elected a meta leader, a leaf
/// node reaches its hub. The last answer (or request error) is in the `TimedOut` error.
#[cfg(feature = "nats")]
pub async fn wait_for_jetstream(client: &async_nats::Client, api: &str, within: Duration) -> io::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let answer = match client.request(format!("{api}.INFO"), "".into()).await {
            Ok(m) => String::from_utf8_lossy(&m.payload).into_owned(),
            Err(e) => e.to_string(),
        };
        if answer.contains("account_info_response") && !answer.contains("\"error\"") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no JetStream account information from {api} in {within:?}: {answer}"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The version of the nats-server binary as `(major, minor, patch)`, from `nats-server --version`.
pub fn server_version() -> io::Result<(u32, u32, u32)> {
    let out = Command::new(server_bin()).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "nats-server: v2.9.10"
    let v = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('v'))
        .ok_or_else(|| io::Error::other(format!("unexpected `nats-server --version` output: {text}")))?;
    Ok(crate::transport::version_numbers(v))
}

/// Sends `signal` (`-HUP`, `-TERM`, ...) to the server process with `kill`.
fn signal(child: &Child, signal: &str) -> io::Result<()> {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("kill {signal}: {status}")))
    }
}

/// Waits up to `timeout` for the server process to exit: `true` if it did, `false` if it was
/// killed then.
async fn exited_within(child: &mut Child, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return Ok(true);
        }
        if Instant::now() > deadline {
            child.kill()?;
            child.wait()?;
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private nats-server with JetStream, for one test.
#[derive(Debug)]
pub struct NatsServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    /// Started with `-js` (all but [`start_without_jetstream`](Self::start_without_jetstream)).
    jetstream: bool,
    extra_args: Vec<String>,
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store directory, and waits until it accepts
    /// connections.
    pub async fn start() -> io::Result<Self> {
        Self::start_with(&[]).await
    }

    /// As [`start`](Self::start), with `extra_args` appended to the command line (for example
    /// `["--user", "u", "--pass", "p"]` or `["--tls", "--tlscert", ..., "--tlskey", ...]`). They
    /// are kept for [`restart`](Self::restart).
    pub async fn start_with(extra_args: &[&str]) -> io::Result<Self> {
        let mut server = Self::unstarted(true)?;
        server.extra_args = extra_args.iter().map(|a| (*a).to_owned()).collect();
        server.spawn(None).await?;
        Ok(server)
    }

    /// A server without JetStream (no `-js`), as a new user may start one.
    pub async fn start_without_jetstream() -> io::Result<Self> {
        let mut server = Self::unstarted(false)?;
        server.spawn(None).await?;
        Ok(server)
    }

    /// As [`start`](Self::start), with `config` written to `server.conf` in the server's
    /// directory and passed with `-c`. Command-line options (address, port, JetStream, store)
    /// take precedence over the file's.
    pub async fn start_with_config(config: &str) -> io::Result<Self> {
        Self::start_with_args_and_config(&[], config).await
    }

    /// As [`start_with`](Self::start_with), with `config` written to `server.conf` in the
    /// server's directory and passed with `-c` before `extra_args` (which take precedence).
    pub async fn start_with_args_and_config(extra_args: &[&str], config: &str) -> io::Result<Self> {
        let mut server = Self::unstarted(true)?;
        let conf = server.dir.path().join("server.conf");
        std::fs::write(&conf, config)?;
        server.extra_args = ["-c".to_owned(), conf.to_string_lossy().into_owned()]
            .into_iter()
            .chain(extra_args.iter().map(|a| (*a).to_owned()))
            .collect();
        server.spawn(None).await?;
        Ok(server)
    }

    /// A server with a fresh directory, not spawned yet.
    fn unstarted(jetstream: bool) -> io::Result<Self> {
        Ok(Self {
            bin: server_bin(),
            dir: tempfile::Builder::new().prefix("cim-nats-").tempdir()?,
            port: 0,
            child: None,
            jetstream,
            extra_args: Vec::new(),
        })
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The store directory (JetStream data lives under it).
    pub fn store_dir(&self) -> &Path {
        self.dir.path()
    }

    /// `true` if the server was started and not stopped or killed since (it may have exited by
    /// itself; see [`is_running`](Self::is_running)).
    pub fn is_started(&self) -> bool {
        self.child.is_some()
    }

    /// `true` while the server process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    async fn spawn(&mut self, port: Option<u16>) -> io::Result<()> {
        let store = self.dir.path().join("store");
        let ports_dir = self.dir.path().join("ports");
        std::fs::create_dir_all(&ports_dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("server.log"))?;
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let mut child = Command::new(&self.bin)
            .args(["-a", "127.0.0.1", "-p", &port_arg])
            .args(self.jetstream.then_some("-js"))
            .arg("--store_dir")
            .arg(&store)
            .arg("--ports_file_dir")
            .arg(&ports_dir)
            .args(&self.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("starting {}: {e}", self.bin.display())))?;
        let ports_file = ports_dir.join(format!("nats-server_{}.ports", child.id()));
        let deadline = Instant::now() + START_TIMEOUT;
        let port = loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(io::Error::other(format!(
                    "nats-server exited with {status} at start; log: {}",
                    self.log_tail()
                )));
            }
            if let Some(p) = read_client_port(&ports_file) {
                break p;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nats-server wrote no ports file",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "nats-server does not accept connections",
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let _ = std::fs::remove_file(&ports_file);
        self.port = port;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM, so JetStream flushes its store), waiting for it to
    /// exit; kills it if it takes more than 10 seconds.
    pub async fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let _ = signal(&child, "-TERM");
        exited_within(&mut child, Duration::from_secs(10)).await.map(|_| ())
    }

    /// Replaces the configuration of a server started with
    /// [`start_with_config`](Self::start_with_config) and has it reload it (SIGHUP), as an
    /// operator changing permissions or limits on a running server does. Connections stay up.
    pub fn reload_config(&self, config: &str) -> io::Result<()> {
        let child = self
            .child
            .as_ref()
            .ok_or_else(|| io::Error::other("the server is not running"))?;
        std::fs::write(self.dir.path().join("server.conf"), config)?;
        signal(child, "-HUP")
    }

    /// Puts the server in lame duck mode (SIGUSR2, what `nats-server --signal ldm` sends), as
    /// an operator does before a restart or an upgrade, and waits for it to exit: it stops
    /// accepting connections, hands its JetStream leaderships over, waits its
    /// `lame_duck_grace_period` (10 s unless configured), closes its client connections (spread
    /// over its `lame_duck_duration`, at least 30 s, when it has many) and exits. Killed, and an
    /// error, if it has not exited after `timeout`.
    pub async fn lame_duck(&mut self, timeout: Duration) -> io::Result<()> {
        let Some(mut child) = self.child.take() else {
            return Err(io::Error::other("the server is not running"));
        };
        signal(&child, "-USR2")?;
        if exited_within(&mut child, timeout).await? {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("nats-server still running {timeout:?} after entering lame duck mode"),
            ))
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the server again on the same port with the same store directory (stopping it
    /// first if it runs).
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop().await?;
        self.respawn().await
    }

    /// Starts the server again on the same port with an empty store (stopping it first if it
    /// runs): a server that lost its JetStream state, as a container restarted without its
    /// volume does. Every stream, consumer and bucket is gone.
    pub async fn restart_empty(&mut self) -> io::Result<()> {
        self.stop().await?;
        match std::fs::remove_dir_all(self.dir.path().join("store")) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.respawn().await
    }

    /// Spawns the server again on its port.
    async fn respawn(&mut self) -> io::Result<()> {
        let port = self.port;
        // The port may linger for a moment after the old process exits.
        let mut last = None;
        for _ in 0..50 {
            match self.spawn(Some(port)).await {
                Ok(()) => return Ok(()),
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(last.unwrap_or_else(|| io::Error::other("restart failed")))
    }

    /// The end of the server's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.dir.path().join("server.log"))
    }
}

/// The last 20 lines of the log file `log` (empty if it cannot be read), for failure messages:
/// of a server a test runs itself, as [`NatsServer::log_tail`] is of the harness's.
pub fn log_tail(log: &Path) -> String {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The client port a nats-server wrote to `ports_file` (`--ports_file_dir`), if it wrote it yet;
/// for a server a test runs itself.
pub fn read_client_port(ports_file: &Path) -> Option<u16> {
    #[derive(serde::Deserialize)]
    struct Ports {
        #[serde(default)]
        nats: Vec<String>,
    }
    let text = std::fs::read_to_string(ports_file).ok()?;
    let ports: Ports = serde_json::from_str(&text).ok()?;
    ports
        .nats
        .iter()
        .find_map(|u| u.rsplit(':').next()?.trim_end_matches('/').parse().ok())
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
