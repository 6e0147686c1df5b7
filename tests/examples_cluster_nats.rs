//! Every example, run on a three-node JetStream cluster with replicas from the deployment policy
//! (`NATS_REPLICAS=3`), completes; and, run again after the node that leads most of its streams
//! and buckets is killed, completes again, with no change to the example's code.
//!
//! How an example runs: as its own compiled binary, a child process, exactly as
//! `cargo run --example <name>` would run it, with `NATS_URL` (every node of the cluster) and
//! `NATS_REPLICAS=3` set for the child only. Its stdout and stderr are captured and shown when it
//! fails or overruns its time limit ([`RUN_TIMEOUT`], after which it is killed).
//!
//! How the binaries are built: `cargo test` does not build them — the examples have `test = true`,
//! so `cargo test` builds each as a test harness, whose `main` is the harness, not the example's.
//! So the test runs `cargo build --workspace --examples --message-format=json` itself (with
//! `$CARGO`, the cargo that runs the test, into the target directory the test binary lives in, with
//! the same profile) and takes the executables' paths from cargo's `compiler-artifact` messages.
//! `--workspace` resolves features as `cargo test --workspace` does, so the libraries that run
//! built are fresh and only the examples' binaries are linked (building the facade alone resolved
//! fewer features and rebuilt the runtime and its dependents: minutes of CPU and gigabytes of
//! target directory, the likely cause of a CI failure whose output was lost in cargo's JSON; a
//! failure now shows cargo's stderr and the compiler's rendered errors). This does not wait on cargo's build lock: `cargo test`
//! releases it once compiling is done, before running tests. Including each example as a module
//! (`#[path]`) and calling its `main` was rejected: the variables would have to be set for the
//! whole test process, the examples' own `#[cfg(test)]` modules would come along, and
//! `monitoring` installs a global subscriber and recorder.
//!
//! Two clusters run at once, each taking every other example in turn (most of a run is waiting
//! for leader elections, not CPU). Before each example its cluster's streams (and so its buckets)
//! are deleted, so every example provisions everything itself, as on a fresh deployment, and the
//! streams present after its first run are exactly its own. After the first run every stream must
//! have three replicas; then the node leading most of them is killed, the example runs again, and
//! the node is restarted and the cluster waited for before the next example.
//!
//! To diagnose: `EXAMPLES_CLUSTER_ONLY=onboarding,quickstart` runs only those examples, and
//! `EXAMPLES_CLUSTER_SHOW=1` prints the output of every run after a kill, not only of failures.

#![cfg(feature = "nats")]

use cim_integrate::testing::NatsCluster;
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The examples, in the order they run.
const EXAMPLES: &[&str] = &[
    "quickstart",
    "document_approval",
    "document_publishing",
    "knowledge_graph",
    "location_search",
    "monitoring",
    "onboarding",
    "order_fulfilment",
];

/// How long one run of an example may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// How long building the examples may take (they are usually built already by then).
const BUILD_TIMEOUT: Duration = Duration::from_secs(900);

/// The environment variables `NatsOptions::from_env` reads, removed from the child's environment
/// so that only the ones set here apply.
const NATS_VARS: &[&str] = &[
    "NATS_URL",
    "NATS_USER",
    "NATS_PASSWORD",
    "NATS_TOKEN",
    "NATS_NKEY_SEED",
    "NATS_NKEY_FILE",
    "NATS_CREDS",
    "NATS_CA",
    "NATS_CERT",
    "NATS_KEY",
    "NATS_TLS_REQUIRED",
    "NATS_TLS_FIRST",
    "NATS_CONNECTION_NAME",
    "NATS_JS_DOMAIN",
    "NATS_REPLICAS",
    "NATS_PLACEMENT_CLUSTER",
    "NATS_PLACEMENT_TAGS",
    "NATS_STORAGE",
    "NATS_MAX_ACK_PENDING",
];

/// What a finished child process left behind.
struct Output {
    status: Option<std::process::ExitStatus>,
    stdout: String,
    stderr: String,
    elapsed: Duration,
}

impl Output {
    fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    fn describe(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed after the time limit".to_owned(),
        };
        format!(
            "status: {status} after {:?}\n--- stdout:\n{}\n--- stderr:\n{}",
            self.elapsed, self.stdout, self.stderr
        )
    }
}

impl Output {
    /// [`Output::describe`] for a `--message-format=json` cargo run: the status, cargo's stderr,
    /// and the compiler's rendered errors from stdout, leaving out the artifact messages (whose
    /// volume hid the cause of a failure in CI).
    fn describe_build(&self) -> String {
        let status = match self.status {
            Some(s) => s.to_string(),
            None => "killed after the time limit".to_owned(),
        };
        let mut rendered = String::new();
        for line in self.stdout.lines() {
            let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
                rendered.push_str(line);
                rendered.push('\n');
                continue;
            };
            if msg["reason"] == "compiler-message" && msg["message"]["level"] == "error" {
                rendered.push_str(msg["message"]["rendered"].as_str().unwrap_or("?"));
            }
        }
        format!(
            "status: {status} after {:?}\n--- stderr:\n{}\n--- compiler errors and non-JSON stdout:\n{rendered}",
            self.elapsed, self.stderr
        )
    }
}

/// Runs `cmd` to completion or until `timeout` (then kills it), capturing its output.
fn run_captured(mut cmd: Command, timeout: Duration) -> Output {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    let drain = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let _ = r.read_to_end(&mut buf);
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let err = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = loop {
        match child.try_wait().expect("waiting for the child") {
            Some(s) => break Some(s),
            None if start.elapsed() > timeout => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            None => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        elapsed: start.elapsed(),
    }
}

/// The target directory this test binary was built in: the nearest ancestor holding cargo's
/// `CACHEDIR.TAG`, and the profile directory (`<target>/[<triple>/]<profile>`) it is in.
fn target_and_profile() -> (PathBuf, PathBuf) {
    let exe = std::env::current_exe().expect("current_exe");
    // <profile dir>/deps/<test binary>
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test binary lies in <profile>/deps")
        .to_path_buf();
    let target_dir = profile_dir
        .ancestors()
        .find(|d| d.join("CACHEDIR.TAG").is_file())
        .unwrap_or_else(|| profile_dir.parent().expect("profile dir has a parent"))
        .to_path_buf();
    (target_dir, profile_dir)
}

/// Builds the examples as plain binaries and returns their executables by name.
fn build_examples() -> BTreeMap<String, PathBuf> {
    let (target_dir, profile_dir) = target_and_profile();
    let profile = profile_dir
        .file_name()
        .and_then(|n| n.to_str())
        .expect("profile dir name")
        .to_owned();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let mut cmd = Command::new(cargo);
    // Cargo sets `CARGO_MANIFEST_DIR`, `CARGO_PKG_*`, `OUT_DIR`, ... for the test process. Build
    // scripts rerun when such variables change (ring's does), so the nested cargo must not see
    // them, or it rebuilds half the dependency tree (and the next `cargo test` does it again).
    // Variables that configure cargo itself are kept.
    const CARGO_CONFIG: &[&str] = &[
        "CARGO_HOME",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_",
        "CARGO_PROFILE_",
        "CARGO_INCREMENTAL",
        "CARGO_NET_",
        "CARGO_HTTP_",
        "CARGO_REGISTRIES_",
        "CARGO_REGISTRY_",
        "CARGO_TERM_",
        "CARGO_UNSTABLE_",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_CACHE_",
    ];
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let set_by_cargo_for_tests =
            key.starts_with("CARGO_") && !CARGO_CONFIG.iter().any(|c| key.starts_with(c)) || key == "OUT_DIR";
        if set_by_cargo_for_tests {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(["build", "--workspace", "--examples", "--message-format=json"])
        .arg("--target-dir")
        .arg(&target_dir);
    // `debug` is the dev profile's directory; other profiles are named after themselves.
    if profile != "debug" {
        cmd.args(["--profile", &profile]);
    }
    if cfg!(feature = "testing") {
        cmd.args(["--features", "cim-integrate/testing"]);
    }
    let out = run_captured(cmd, BUILD_TIMEOUT);
    assert!(
        out.success(),
        "cargo build --examples failed:\n{}",
        out.describe_build()
    );
    let compiled: Vec<&str> = out.stderr.lines().filter(|l| l.contains("Compiling")).collect();
    eprintln!("cargo build --examples: {:?}, compiled {compiled:?}", out.elapsed);
    let mut found = BTreeMap::new();
    for line in out.stdout.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let is_example = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "example"));
        if let (true, Some(name), Some(exe)) = (is_example, msg["target"]["name"].as_str(), msg["executable"].as_str())
        {
            found.insert(name.to_owned(), PathBuf::from(exe));
        }
    }
    for name in EXAMPLES {
        assert!(found.contains_key(*name), "cargo built no example `{name}`: {found:?}");
    }
    found
}

/// Runs example `exe` with the given NATS variables (none: the embedded transport).
async fn run_example(exe: &Path, vars: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(exe);
    cmd.current_dir(env!("CARGO_MANIFEST_DIR"));
    for v in NATS_VARS {
        cmd.env_remove(v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    tokio::task::spawn_blocking(move || run_captured(cmd, RUN_TIMEOUT))
        .await
        .expect("runner thread")
}

/// One JetStream API request through the cluster's client, answered as JSON (an error answer
/// is a panic).
async fn api(cluster: &NatsCluster, subject: String, body: &str) -> serde_json::Value {
    api_or(cluster, subject, body, |_| false).await
}

/// [`api`], taking an error answer for which `fine` holds as the answer.
async fn api_or(
    cluster: &NatsCluster,
    subject: String,
    body: &str,
    fine: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut last = String::new();
    for _ in 0..20 {
        match tokio::time::timeout(
            Duration::from_secs(3),
            cluster.client().request(subject.clone(), body.to_owned().into()),
        )
        .await
        {
            Ok(Ok(reply)) => {
                let v: serde_json::Value = serde_json::from_slice(&reply.payload).expect("JSON answer");
                match v.get("error") {
                    None => return v,
                    Some(e) if fine(e) => return v,
                    Some(e) => last = e.to_string(),
                }
            }
            Ok(Err(e)) => last = e.to_string(),
            Err(_) => last = "timed out".to_owned(),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("`{subject}`: {last}");
}

/// Every stream on the cluster (key-value buckets are the streams `KV_<bucket>`), with its
/// configured replicas.
async fn streams(cluster: &NatsCluster) -> BTreeMap<String, u64> {
    let mut all = BTreeMap::new();
    loop {
        let body = format!(r#"{{"offset":{}}}"#, all.len());
        let v = api(cluster, "$JS.API.STREAM.LIST".to_owned(), &body).await;
        let page = v["streams"].as_array().cloned().unwrap_or_default();
        for s in &page {
            let name = s["config"]["name"].as_str().expect("stream name").to_owned();
            all.insert(name, s["config"]["num_replicas"].as_u64().unwrap_or(1));
        }
        let total = v["total"].as_u64().unwrap_or(0) as usize;
        if page.is_empty() || all.len() >= total {
            return all;
        }
    }
}

/// Deletes every stream (and so every bucket) on the cluster. A delete the API acknowledged can
/// still be listed for a moment after a node restarted (seen on nats-server 2.15: a stream listed
/// with its replicas right after its delete succeeded), so the listing is read again, and what
/// is left deleted again, until it is empty or 30 s have passed.
async fn wipe(cluster: &NatsCluster) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = streams(cluster).await;
        if left.is_empty() {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams left after deleting them all for 30 s: {left:?}"
        );
        for name in left.keys() {
            delete_stream(cluster, name).await;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Deletes the stream `name`; one already gone (JetStream's "stream not found", 10059) counts
/// as deleted.
async fn delete_stream(cluster: &NatsCluster, name: &str) {
    let gone = |e: &serde_json::Value| e["err_code"].as_u64() == Some(10059);
    api_or(cluster, format!("$JS.API.STREAM.DELETE.{name}"), "", gone).await;
}

/// The node leading the most of `names`, with its count; leaders are waited for (a stream just
/// created may not have elected one yet).
async fn busiest_leader(cluster: &NatsCluster, names: &[String]) -> (usize, BTreeMap<String, usize>) {
    let mut led = BTreeMap::new();
    for name in names {
        let leader = cluster
            .wait_for_stream_leader(name, Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("leader of `{name}`: {e}"));
        led.insert(name.clone(), leader);
    }
    let mut counts = [0usize; cim_integrate::testing::CLUSTER_SIZE];
    for &l in led.values() {
        counts[l] += 1;
    }
    let node = (0..counts.len()).max_by_key(|&i| counts[i]).expect("three nodes");
    (node, led)
}

/// Runs `names` one after another on `cluster`: each on a wiped cluster, then again after the
/// node leading most of what it provisioned is killed; the node is restarted after each.
async fn exercise(cluster: &mut NatsCluster, binaries: &BTreeMap<String, PathBuf>, names: &[&str]) {
    let urls = cluster.urls();
    let vars = [("NATS_URL", urls.as_str()), ("NATS_REPLICAS", "3")];
    for &name in names {
        let exe = &binaries[name];
        wipe(cluster).await;

        let first = run_example(exe, &vars).await;
        assert!(
            first.success(),
            "`{name}` failed on the healthy cluster:\n{}",
            first.describe()
        );
        let provisioned = streams(cluster).await;
        assert!(!provisioned.is_empty(), "`{name}` provisioned no stream");
        let not_r3: Vec<_> = provisioned.iter().filter(|(_, r)| **r != 3).collect();
        assert!(
            not_r3.is_empty(),
            "`{name}`: streams not replicated three times under NATS_REPLICAS=3: {not_r3:?}"
        );
        let names: Vec<String> = provisioned.keys().cloned().collect();
        let (victim, led) = busiest_leader(cluster, &names).await;
        let count = led.values().filter(|&&l| l == victim).count();
        eprintln!(
            "{name}: first run {:?}; killing {} (leads {count} of {}: {:?})",
            first.elapsed,
            cluster.server_name(victim),
            led.len(),
            led.iter()
                .filter(|(_, l)| **l == victim)
                .map(|(s, _)| s)
                .collect::<Vec<_>>()
        );

        cluster.kill(victim).expect("kill the leader");
        let second = run_example(exe, &vars).await;
        assert!(
            second.success(),
            "`{name}` failed after {} (leading {count} of its {} streams and buckets) was killed:\n{}",
            cluster.server_name(victim),
            led.len(),
            second.describe()
        );
        eprintln!("{name}: run after the kill {:?}", second.elapsed);
        if std::env::var_os("EXAMPLES_CLUSTER_SHOW").is_some() {
            eprintln!("{}", second.describe());
        }

        cluster.restart(victim).await.expect("restart the killed node");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_completes_on_a_cluster_after_its_leader_is_killed() {
    let started = Instant::now();
    let binaries = tokio::task::spawn_blocking(build_examples).await.expect("build thread");
    eprintln!("examples built in {:?}", started.elapsed());

    // `EXAMPLES_CLUSTER_ONLY=a,b` runs only those examples (to diagnose one).
    let only = std::env::var("EXAMPLES_CLUSTER_ONLY").unwrap_or_default();
    let only: Vec<&str> = only.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let chosen: Vec<&str> = EXAMPLES
        .iter()
        .copied()
        .filter(|n| only.is_empty() || only.contains(n))
        .collect();
    // Two clusters, each running half of the examples: most of a run is waiting for leader
    // elections, not CPU, and the test took over three minutes per server version with one.
    let halves: [Vec<&str>; 2] = [0, 1].map(|half| chosen.iter().copied().skip(half).step_by(2).collect());
    let runs = halves.iter().filter(|h| !h.is_empty()).map(|names| {
        let binaries = &binaries;
        async move {
            let mut cluster = NatsCluster::start().await.expect("three-node cluster");
            exercise(&mut cluster, binaries, names).await;
        }
    });
    futures::future::join_all(runs).await;
    eprintln!("all examples in {:?}", started.elapsed());
}
