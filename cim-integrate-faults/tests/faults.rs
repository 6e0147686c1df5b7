//! The fault-tolerance suite. Each test starts its own private nats-server (`NATS_SERVER_BIN` or
//! `nats-server` on the `PATH`); none touches a shared server.
//!
//! - `consumer_killed_repeatedly`: 10k events; the consumer *process* (`fault-consumer`) is
//!   SIGKILLed five times while it works and restarted each time. Counts lost events, duplicate
//!   effects and raw handler re-runs.
//! - `server_restarted_mid_run`: the same consumer while events are still being published; the
//!   nats-server is stopped and restarted (SIGTERM), then killed and restarted (SIGKILL), mid-run.
//! - `bad_input_catalogue_{nats,memory}`: 20+ kinds of bad input, each ending in the dead-letter
//!   stream with its reason (or rejected at publish, or accepted by design), while valid messages
//!   published after them are all handled.
//! - `saga_killed_at_every_boundary`: the saga process (`fault-saga`) SIGKILLed at every persisted
//!   write of a happy run and of a run that compensates, then resumed by a new process.
//!
//! Only the embedded transport runs the catalogue as well: it lives inside one process, so killing
//! "the consumer process" would kill the transport with it (nothing to resume from), and there is
//! no server to restart.
//!
//! How duplicates are detected: see the crate documentation (`src/lib.rs`). In short, every
//! handler run appends `run KEY` to an append-only log *before* its effect; the effect is a
//! key-value `create` keyed by the message id (or the saga step's idempotency key), so a second
//! run finds it and logs `skip KEY`. Lost = published ids without an effect key; duplicate effects
//! = keys whose effect was applied twice (counted from the log, and from the `processed` stream,
//! where every handled event publishes one `ItemProcessed` with a derived message id). Raw re-runs
//! (the documented crash window between a handler's success and its dedup mark) are counted and
//! printed, not forbidden: the runtime documents them, and the idempotent effect absorbs them.

use bytes::Bytes;
use cim_integrate::envelope::Envelope;
use cim_integrate::event::{DomainEvent, Versioned};
use cim_integrate::handler::HandlerError;
use cim_integrate::service::{self, Service};
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::transport::{
    Consumer, ConsumerSpec, KeyValue, KvSpec, OutboundMessage, StreamSpec, Transport, TransportError,
};
use cim_integrate::{Headers, Subject, SubjectPattern, handlers};
use cim_integrate_faults::{
    CONSUMER_DURABLE, EFFECTS_BUCKET, ItemCreated, ItemProcessed, LogCounts, SAGA_EFFECTS_BUCKET, TransferData,
};
use cim_integrate_runtime::testing::NatsServer;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const EVENTS: u64 = 10_000;

fn consumer_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fault-consumer")
}

fn saga_bin() -> &'static str {
    env!("CARGO_BIN_EXE_fault-saga")
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cim-faults-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// The children's stderr (their warnings: reconnects, retries), appended to `children.stderr`
/// beside the run log, so that the test output stays readable.
fn child_stderr(log: &Path) -> Stdio {
    let path = log.with_file_name("children.stderr");
    match std::fs::OpenOptions::new().create(true).append(true).open(path) {
        Ok(f) => Stdio::from(f),
        Err(_) => Stdio::inherit(),
    }
}

/// Starts `fault-consumer` and waits for its `READY`.
fn spawn_consumer(url: &str, log: &Path) -> Child {
    let mut child = Command::new(consumer_bin())
        .arg(url)
        .arg(log)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(child_stderr(log))
        .spawn()
        .expect("spawn fault-consumer");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read READY");
    assert_eq!(line.trim(), "READY", "fault-consumer did not start");
    child
}

/// SIGKILL (std's `Child::kill`), then reap.
fn sigkill(child: &mut Child) {
    child.kill().expect("SIGKILL");
    child.wait().expect("reap");
}

/// Closes stdin (the child shuts down gracefully) and waits, killing it after 15 s.
fn stop(mut child: Child) {
    drop(child.stdin.take());
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    sigkill(&mut child);
}

async fn provision(t: &NatsTransport) {
    for domain in ["load", "processed"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None).unwrap())
            .await
            .unwrap();
    }
}

fn load(n: u64) -> Vec<(u64, Envelope)> {
    (0..n)
        .map(|i| {
            let event = ItemCreated {
                n: i,
                label: format!("item number {i} of the fault suite"),
            };
            (i, event.to_envelope().unwrap())
        })
        .collect()
}

/// Publishes `envelopes` in chunks of 500 pipelined publishes; a chunk with a failed publish (the
/// server is down) is sent again after a pause: same message ids, so JetStream drops repeats.
async fn publish_all(t: &NatsTransport, envelopes: &[(u64, Envelope)]) {
    for chunk in envelopes.chunks(500) {
        let mut tries = 0;
        loop {
            let mut acks = Vec::with_capacity(chunk.len());
            let mut failed = false;
            for (_, env) in chunk {
                match t.publish(env.into()).await {
                    Ok(ack) => acks.push(ack),
                    Err(_) => {
                        failed = true;
                        break;
                    }
                }
            }
            for r in futures::future::join_all(acks).await {
                failed |= r.is_err();
            }
            if !failed {
                break;
            }
            tries += 1;
            assert!(tries < 120, "publishing kept failing");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map(|i| i.state.messages).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Every message of `stream`, read with a fresh durable of this transport.
async fn read_stream(t: &NatsTransport, stream: &str, filter: &str, durable: &str, count: u64) -> Vec<Bytes> {
    let spec = ConsumerSpec::new(stream, durable, SubjectPattern::new(filter).unwrap()).max_ack_pending(10_000);
    let mut c = t.consumer(&spec).await.unwrap();
    let mut out = Vec::new();
    while (out.len() as u64) < count {
        let d = tokio::time::timeout(Duration::from_secs(10), c.next())
            .await
            .expect("stream read timed out")
            .unwrap();
        out.push(d.payload().clone());
        d.ack().await.unwrap();
    }
    out
}

/// What the consumer suite measured (printed through `Debug`).
#[derive(Debug)]
#[allow(dead_code)] // some fields are only printed
struct Counts {
    published: u64,
    stored: u64,
    lost: u64,
    duplicate_effects: u64,
    processed_messages: u64,
    processed_duplicates: u64,
    dead_letters: u64,
    raw_runs: u64,
    rerun_events: usize,
    reruns_absorbed: u64,
}

/// Waits until every event has its effect and the consumer has nothing pending, then counts.
async fn settle_and_count(t: &NatsTransport, url: &str, log: &Path, ids: &HashMap<String, u64>) -> Counts {
    let client = async_nats::connect(url).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let kv = t.key_value(&KvSpec::new(EFFECTS_BUCKET)).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let effects = stream_messages(&js, &format!("KV_{EFFECTS_BUCKET}")).await;
        let pending = match js.get_stream("LOAD_EVENTS").await {
            Ok(s) => match s.consumer_info(CONSUMER_DURABLE).await {
                Ok(i) => i.num_pending + i.num_ack_pending as u64,
                Err(_) => u64::MAX,
            },
            Err(_) => u64::MAX,
        };
        if effects >= EVENTS && pending == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not settled: {effects} effects, {pending} pending"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let keys = kv.keys().await.unwrap();
    let mut effect_ns = BTreeMap::<u64, u64>::new();
    for key in &keys {
        let id = key.strip_prefix("fx.").unwrap_or(key);
        if let Some(n) = ids.get(id) {
            *effect_ns.entry(*n).or_default() += 1;
        }
    }
    let lost = ids.len() as u64 - effect_ns.len() as u64;
    let processed_count = stream_messages(&js, "PROCESSED_EVENTS").await;
    let processed = read_stream(t, "PROCESSED_EVENTS", "processed.>", "audit", processed_count).await;
    let mut processed_ns = BTreeMap::<u64, u64>::new();
    for p in &processed {
        *processed_ns.entry(ItemProcessed::decode(p).unwrap().n).or_default() += 1;
    }
    let log_counts = LogCounts::read(log);
    let kv_effect_dups = effect_ns.values().filter(|c| **c > 1).count() as u64;
    Counts {
        published: ids.len() as u64,
        stored: stream_messages(&js, "LOAD_EVENTS").await,
        lost,
        duplicate_effects: kv_effect_dups + log_counts.double_effects() as u64,
        processed_messages: processed_count,
        processed_duplicates: processed_ns.values().filter(|c| **c > 1).count() as u64,
        dead_letters: stream_messages(&js, service::DEAD_LETTER_STREAM_NAME).await,
        raw_runs: log_counts.runs(),
        rerun_events: log_counts.rerun_keys(),
        reruns_absorbed: log_counts.skips(),
    }
}

fn check(counts: &Counts, what: &str) {
    println!("{what}: {counts:#?}");
    assert_eq!(counts.stored, EVENTS, "{what}: stream holds each event once");
    assert_eq!(counts.lost, 0, "{what}: lost events");
    assert_eq!(counts.duplicate_effects, 0, "{what}: duplicate effects");
    assert_eq!(counts.processed_messages, EVENTS, "{what}: one ItemProcessed per event");
    assert_eq!(counts.processed_duplicates, 0, "{what}: duplicate ItemProcessed");
    assert_eq!(counts.dead_letters, 0, "{what}: dead letters");
    assert!(counts.raw_runs >= EVENTS, "{what}: every event ran");
}

/// (a) The consumer process SIGKILLed five times while it works through 10k events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_killed_repeatedly() {
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let dir = temp_dir("kill");
    let log = dir.join("runs.log");
    let t = NatsTransport::connect_url(&url).await.unwrap();
    provision(&t).await;
    let envelopes = load(EVENTS);
    let ids: HashMap<String, u64> = envelopes
        .iter()
        .map(|(n, e)| (e.message_id().to_string(), *n))
        .collect();
    publish_all(&t, &envelopes).await;

    const KILLS: usize = 5;
    for k in 0..KILLS {
        let mut child = spawn_consumer(&url, &log);
        // Kill at progress points spread over the run, so that every kill lands mid-work.
        let target = (k + 1) * (EVENTS as usize) / (KILLS + 2);
        let deadline = Instant::now() + Duration::from_secs(60);
        while LogCounts::count_runs(&log) < target {
            assert!(Instant::now() < deadline, "no progress before kill {k}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        sigkill(&mut child);
        println!("kill {}: SIGKILL after {} runs", k + 1, LogCounts::count_runs(&log));
    }
    let child = spawn_consumer(&url, &log);
    let counts = settle_and_count(&t, &url, &log, &ids).await;
    stop(child);
    check(&counts, "consumer SIGKILLed 5 times");
}

/// (b) nats-server stopped and restarted, then killed and restarted, while events are published
/// and consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarted_mid_run() {
    let mut server = NatsServer::start().await.unwrap();
    let url = server.url();
    let dir = temp_dir("restart");
    let log = dir.join("runs.log");
    let t = NatsTransport::connect_url(&url).await.unwrap();
    provision(&t).await;
    let envelopes = load(EVENTS);
    let ids: HashMap<String, u64> = envelopes
        .iter()
        .map(|(n, e)| (e.message_id().to_string(), *n))
        .collect();
    let child = spawn_consumer(&url, &log);
    let publisher = {
        let t = t.clone();
        tokio::spawn(async move { publish_all(&t, &envelopes).await })
    };
    for (i, (fraction, crash)) in [(0.25, false), (0.6, true)].into_iter().enumerate() {
        let target = (EVENTS as f64 * fraction) as usize;
        let deadline = Instant::now() + Duration::from_secs(90);
        while LogCounts::count_runs(&log) < target {
            assert!(Instant::now() < deadline, "no progress before restart {i}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if crash {
            server.kill().unwrap();
        }
        server.restart().await.unwrap();
        println!(
            "restart {} ({}): after {} runs",
            i + 1,
            if crash { "SIGKILL" } else { "SIGTERM" },
            LogCounts::count_runs(&log)
        );
    }
    publisher.await.unwrap();
    let counts = settle_and_count(&t, &url, &log, &ids).await;
    stop(child);
    check(&counts, "nats-server restarted twice");
}

// ---------------------------------------------------------------------------------------------
// (c) the bad-input catalogue

/// What must become of a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Dead-lettered, with a reason containing this text.
    DeadLetter(&'static str),
    /// Handled: accepted by design (a foreign message without our headers has derived ids).
    Handled(u64),
    /// Refused by `publish` with `TransportError::PayloadTooLarge`.
    RejectedAtPublish,
    /// Another event type on a subject the handler's pattern matches: acknowledged without
    /// running (the handler is typed), neither handled nor dead-lettered.
    Skipped,
}

struct Case {
    name: &'static str,
    subject: String,
    headers: Vec<(&'static str, String)>,
    payload: Vec<u8>,
    expect: Expect,
    /// Cannot be produced on the embedded transport (its API only takes valid subjects).
    nats_only: bool,
}

const PERMANENT_N: u64 = 999_999_001;
const PANIC_N: u64 = 999_999_002;

fn valid(n: u64) -> Vec<u8> {
    ItemCreated {
        n,
        label: "fine".into(),
    }
    .encode()
    .unwrap()
    .to_vec()
}

fn typed_headers() -> Vec<(&'static str, String)> {
    let env = ItemCreated {
        n: 0,
        label: String::new(),
    }
    .to_envelope()
    .unwrap();
    env.to_headers().iter().map(|(n, v)| (leak(n), v.to_owned())).collect()
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

fn catalogue() -> Vec<Case> {
    let ok = "load.item".to_owned();
    let case = |name, payload: &[u8], expect| Case {
        name,
        subject: ok.clone(),
        headers: typed_headers(),
        payload: payload.to_vec(),
        expect,
        nats_only: false,
    };
    let depth = 100_000;
    let mut bomb = br#"{"x":"#.to_vec();
    bomb.extend(std::iter::repeat_n(b'[', depth));
    bomb.extend(std::iter::repeat_n(b']', depth));
    bomb.extend_from_slice(br#","version":"1.0","n":400001,"label":"x"}"#);
    let mut bare_bomb = Vec::new();
    bare_bomb.extend(std::iter::repeat_n(b'[', depth));
    bare_bomb.extend(std::iter::repeat_n(b']', depth));
    let mut field_bomb = br#"{"version":"1.0","n":1,"label":"#.to_vec();
    field_bomb.extend(std::iter::repeat_n(br#"{"a":"#.as_slice(), depth / 2).flatten());
    field_bomb.extend_from_slice(b"1");
    field_bomb.extend(std::iter::repeat_n(b'}', depth / 2));
    field_bomb.push(b'}');
    let mut deep_tail = br#"{"version":"1.0","n":1,"label":"x","x":"#.to_vec();
    deep_tail.extend(std::iter::repeat_n(br#"{"a":"#.as_slice(), depth / 2).flatten());
    let garbage_headers = vec![
        ("X-Message-ID", "not-a-uuid".to_owned()),
        ("X-Correlation-ID", "\u{1F4A5}".to_owned()),
        ("X-Causation-ID", "12345".to_owned()),
        ("X-Occurred-At", "yesterday".to_owned()),
        ("X-Event-Type", "".to_owned()),
        ("X-Event-Version", "banana".to_owned()),
        ("X-Padding", "z".repeat(8 * 1024)),
    ];
    let mut cases = vec![
        case(
            "invalid JSON",
            br#"{"version":"1.0","n":1,"#,
            Expect::DeadLetter("invalid JSON"),
        ),
        case(
            "unknown version",
            br#"{"version":"9.0","n":1,"label":"x"}"#,
            Expect::DeadLetter("unknown version"),
        ),
        case(
            "missing version",
            br#"{"n":1,"label":"x"}"#,
            Expect::DeadLetter("no `\"version\"` tag"),
        ),
        case(
            "non-string version",
            br#"{"version":1.0,"n":1,"label":"x"}"#,
            Expect::DeadLetter("not a string"),
        ),
        case(
            "wrong field type",
            br#"{"version":"1.0","n":"one","label":"x"}"#,
            Expect::DeadLetter("invalid type"),
        ),
        case(
            "missing field",
            br#"{"version":"1.0","label":"x"}"#,
            Expect::DeadLetter("missing field"),
        ),
        case("not an object", b"[1,2,3]", Expect::DeadLetter("undecodable")),
        case("JSON null", b"null", Expect::DeadLetter("undecodable")),
        case("empty payload", b"", Expect::DeadLetter("undecodable")),
        case(
            "invalid UTF-8",
            b"{\"version\":\"1.0\",\"n\":1,\"label\":\"\xff\xfe\"}",
            Expect::DeadLetter("undecodable"),
        ),
        // Well-formed: an unknown field is skipped without recursion, so this is handled.
        case(
            "100k-deep arrays in an unknown field before the tag",
            &bomb,
            Expect::Handled(400_001),
        ),
        case(
            "100k-deep arrays as the whole payload",
            &bare_bomb,
            Expect::DeadLetter("undecodable"),
        ),
        case(
            "50k-deep objects in a known field",
            &field_bomb,
            Expect::DeadLetter("undecodable"),
        ),
        case(
            "unterminated nesting after the fields",
            &deep_tail,
            Expect::DeadLetter("undecodable"),
        ),
        case(
            "trailing garbage",
            br#"{"version":"1.0","n":1,"label":"x"} trailing"#,
            Expect::DeadLetter("undecodable"),
        ),
        case(
            "integer overflow",
            br#"{"version":"1.0","n":18446744073709551616,"label":"x"}"#,
            Expect::DeadLetter("undecodable"),
        ),
        case(
            "duplicate version tag",
            br#"{"version":"1.0","version":"9.0","n":1,"label":"x"}"#,
            Expect::DeadLetter("undecodable"),
        ),
        case(
            "byte order mark",
            b"\xef\xbb\xbf{\"version\":\"1.0\",\"n\":1,\"label\":\"x\"}",
            Expect::DeadLetter("undecodable"),
        ),
        case(
            "handler says permanent",
            &valid(PERMANENT_N),
            Expect::DeadLetter("handler failed permanently"),
        ),
        case(
            "handler panics every time",
            &valid(PANIC_N),
            Expect::DeadLetter("retries exhausted"),
        ),
        Case {
            name: "another event type on a subject the wildcard matches",
            subject: "load.removed".to_owned(),
            headers: vec![
                ("X-Event-Type", "ItemRemoved".to_owned()),
                ("X-Event-Version", "1.0".to_owned()),
            ],
            payload: br#"{"version":"1.0","sku":"A-1"}"#.to_vec(),
            expect: Expect::Skipped,
            nats_only: false,
        },
        Case {
            name: "garbage identity headers, bad payload",
            subject: ok.clone(),
            headers: garbage_headers.clone(),
            payload: b"{oops".to_vec(),
            expect: Expect::DeadLetter("invalid JSON"),
            nats_only: false,
        },
        Case {
            name: "subject outside the token rules",
            subject: "load.bad$token".to_owned(),
            headers: typed_headers(),
            payload: valid(7),
            expect: Expect::DeadLetter("invalid envelope"),
            nats_only: true,
        },
        Case {
            name: "missing headers, valid payload (foreign client)",
            subject: ok.clone(),
            headers: Vec::new(),
            payload: valid(500_001),
            expect: Expect::Handled(500_001),
            nats_only: false,
        },
        Case {
            name: "garbage identity headers, valid payload",
            subject: ok.clone(),
            headers: garbage_headers,
            payload: valid(500_002),
            expect: Expect::Handled(500_002),
            nats_only: false,
        },
        Case {
            name: "oversized payload (2 MiB)",
            subject: ok,
            headers: typed_headers(),
            payload: {
                let mut p = br#"{"version":"1.0","n":1,"label":""#.to_vec();
                p.extend(std::iter::repeat_n(b'a', 2 * 1024 * 1024));
                p.extend_from_slice(br#""}"#);
                p
            },
            expect: Expect::RejectedAtPublish,
            nats_only: false,
        },
    ];
    // Each case gets its own message id, so that none is dropped as a duplicate of another.
    for c in &mut cases {
        for (name, value) in &mut c.headers {
            if *name == "Nats-Msg-Id" || *name == "X-Message-ID" {
                *value = cim_integrate::MessageId::new().to_string();
            }
        }
    }
    cases
}

#[derive(Default)]
struct Seen {
    handled: Mutex<Vec<u64>>,
}

struct CatalogueService {
    seen: Arc<Seen>,
}

#[handlers(domain = "catalogue")]
impl CatalogueService {
    #[subscribe("load.*", max_attempts = 2, backoff = "50ms", ack_wait = "5s")]
    async fn take(&self, event: ItemCreated) -> Result<(), HandlerError> {
        match event.n {
            PERMANENT_N => Err(HandlerError::permanent("item refused")),
            PANIC_N => panic!("handler bug"),
            n => {
                self.seen.handled.lock().unwrap().push(n);
                Ok(())
            }
        }
    }
}

/// Publishes one case as a raw message; `Ok(Some(seq))` stored, `Ok(None)` refused as too large.
type RawPublish = dyn Fn(&Case) -> futures::future::BoxFuture<'static, Result<Option<u64>, String>>;

async fn run_catalogue<T: Transport>(t: T, raw: &RawPublish, cases: &[Case], nats: bool) {
    let seen = Arc::new(Seen::default());
    for d in ["load"] {
        t.ensure_stream(&StreamSpec::for_domain(d, None).unwrap())
            .await
            .unwrap();
    }
    let service = Service::builder(t.clone(), "catalogue")
        .register(CatalogueService { seen: seen.clone() })
        .start()
        .await
        .unwrap();
    let mut by_seq = BTreeMap::new();
    let mut rejected = Vec::new();
    let mut skipped = Vec::new();
    for c in cases {
        if c.nats_only && !nats {
            skipped.push(c.name);
            continue;
        }
        match raw(c)
            .await
            .unwrap_or_else(|e| panic!("{}: publish failed: {e}", c.name))
        {
            Some(seq) => {
                assert_ne!(c.expect, Expect::RejectedAtPublish, "{}: was stored", c.name);
                by_seq.insert(seq, c);
            }
            None => {
                assert_eq!(c.expect, Expect::RejectedAtPublish, "{}: was refused", c.name);
                rejected.push(c.name);
            }
        }
    }
    // Valid messages published after all the bad ones must all be handled.
    const LATER: u64 = 200;
    for n in 0..LATER {
        t.publish_and_wait(OutboundMessage::from(
            &ItemCreated {
                n,
                label: "later".into(),
            }
            .to_envelope()
            .unwrap(),
        ))
        .await
        .unwrap();
    }
    let expected_dead = by_seq
        .values()
        .filter(|c| matches!(c.expect, Expect::DeadLetter(_)))
        .count();
    let dlq = ConsumerSpec::new(
        service::DEAD_LETTER_STREAM_NAME,
        "catalogue-audit",
        service::dead_letter_pattern().unwrap(),
    );
    let mut dlq = t.consumer(&dlq).await.unwrap();
    let mut dead: BTreeMap<u64, (String, Headers)> = BTreeMap::new();
    while dead.len() < expected_dead {
        let d = tokio::time::timeout(Duration::from_secs(30), dlq.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {expected_dead} dead letters arrived: {dead:#?}", dead.len()))
            .unwrap();
        let seq: u64 = d.headers().get(service::DEAD_LETTER_SEQUENCE).unwrap().parse().unwrap();
        let reason = d.headers().get(service::DEAD_LETTER_REASON).unwrap().to_owned();
        dead.insert(seq, (reason, d.headers().clone()));
        d.ack().await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let handled_cases: Vec<u64> = cases
        .iter()
        .filter_map(|c| match c.expect {
            Expect::Handled(n) => Some(n),
            _ => None,
        })
        .collect();
    loop {
        let handled: BTreeSet<u64> = seen.handled.lock().unwrap().iter().copied().collect();
        let later_done = (0..LATER).all(|n| handled.contains(&n));
        let cases_done = handled_cases.iter().all(|n| handled.contains(n));
        if later_done && cases_done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "valid messages after the bad ones were not all handled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let transport = if nats { "nats" } else { "memory" };
    println!("bad-input catalogue on {transport}:");
    for (seq, c) in &by_seq {
        match (c.expect, dead.get(seq)) {
            (Expect::DeadLetter(want), Some((reason, headers))) => {
                assert!(reason.contains(want), "{}: reason `{reason}` lacks `{want}`", c.name);
                assert_eq!(headers.get(service::DEAD_LETTER_HANDLER), Some("catalogue-take"));
                for (name, value) in &c.headers {
                    if *name != "Nats-Msg-Id" {
                        assert_eq!(
                            headers.get(name),
                            Some(value.as_str()),
                            "{}: header {name} kept",
                            c.name
                        );
                    }
                }
                let short: String = reason.chars().take(110).collect();
                println!("  dead letter     {:<55} {short}", c.name);
            }
            (Expect::DeadLetter(_), None) => panic!("{}: not dead-lettered", c.name),
            (Expect::Handled(_), None) => println!("  handled         {:<55} accepted by design, ids derived", c.name),
            (Expect::Handled(_), Some((reason, _))) => panic!("{}: dead-lettered: {reason}", c.name),
            (Expect::Skipped, None) => println!(
                "  skipped         {:<55} another event type: acked without running",
                c.name
            ),
            (Expect::Skipped, Some((reason, _))) => panic!("{}: dead-lettered: {reason}", c.name),
            (Expect::RejectedAtPublish, _) => unreachable!(),
        }
    }
    for name in &rejected {
        println!("  publish refused {name:<55} TransportError::PayloadTooLarge");
    }
    for name in &skipped {
        println!("  not applicable  {name:<55} the embedded transport only takes valid subjects");
    }
    println!(
        "  {} dead-lettered, {} handled by design, {} refused at publish, {} later valid messages all handled",
        dead.len(),
        handled_cases.len(),
        rejected.len(),
        LATER
    );
    assert_eq!(dead.len(), expected_dead, "no unexpected dead letters");
    // The counter moves just after the dead letter is stored: give it a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    while (service.handler_stats("catalogue-take").unwrap().dead_lettered as usize) < expected_dead {
        assert!(Instant::now() < deadline, "dead-letter counter");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        service.handler_stats("catalogue-take").unwrap().dead_lettered as usize,
        expected_dead
    );
    service.shutdown(Duration::from_secs(5)).await;
}

fn too_large(e: &TransportError) -> bool {
    matches!(e, TransportError::PayloadTooLarge { .. })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_catalogue_nats() {
    let server = NatsServer::start().await.unwrap();
    let t = NatsTransport::connect_url(&server.url()).await.unwrap();
    let cases = catalogue();
    assert!(
        cases
            .iter()
            .filter(|c| matches!(c.expect, Expect::DeadLetter(_)))
            .count()
            >= 12
    );
    let client = async_nats::connect(server.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let ours = t.clone();
    let raw = move |c: &Case| -> futures::future::BoxFuture<'static, Result<Option<u64>, String>> {
        let js = js.clone();
        let ours = ours.clone();
        let (subject, case_headers, payload, expect) =
            (c.subject.clone(), c.headers.clone(), c.payload.clone(), c.expect);
        Box::pin(async move {
            if expect == Expect::RejectedAtPublish {
                // Through the typed API: the transport refuses it before sending.
                let msg = OutboundMessage {
                    subject: Subject::new(&subject).unwrap(),
                    headers: Headers::new(),
                    payload: payload.into(),
                };
                return match ours.publish(msg).await {
                    Err(e) if too_large(&e) => Ok(None),
                    Err(e) => Err(e.to_string()),
                    Ok(_) => Err("oversized payload accepted".into()),
                };
            }
            // Through a plain NATS client, which sends whatever it is given.
            let mut headers = async_nats::HeaderMap::new();
            for (n, v) in &case_headers {
                headers.append(*n, v.as_str());
            }
            let ack = js
                .publish_with_headers(subject, headers, payload.into())
                .await
                .map_err(|e| e.to_string())?
                .await
                .map_err(|e| e.to_string())?;
            Ok(Some(ack.sequence))
        })
    };
    run_catalogue(t, &raw, &cases, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_catalogue_memory() {
    let t = MemoryTransport::new();
    let cases = catalogue();
    let ours = t.clone();
    let raw = move |c: &Case| -> futures::future::BoxFuture<'static, Result<Option<u64>, String>> {
        let ours = ours.clone();
        let (subject, case_headers, payload) = (c.subject.clone(), c.headers.clone(), c.payload.clone());
        Box::pin(async move {
            let mut headers = Headers::new();
            for (n, v) in &case_headers {
                headers.append(n, v.clone()).map_err(|e| e.to_string())?;
            }
            let msg = OutboundMessage {
                subject: Subject::new(&subject).map_err(|e| e.to_string())?,
                headers,
                payload: payload.into(),
            };
            match ours.publish(msg).await {
                Err(e) if too_large(&e) => Ok(None),
                Err(e) => Err(e.to_string()),
                Ok(ack) => ack.await.map(|a| Some(a.sequence)).map_err(|e| e.to_string()),
            }
        })
    };
    run_catalogue(t, &raw, &cases, false).await;
}

// ---------------------------------------------------------------------------------------------
// (d) the saga process killed at every step boundary

/// Runs `fault-saga` with `args` (the second is the run log); returns its stdout's first line and
/// the child (still running if it printed `CRASH`).
fn run_saga(args: &[&str]) -> (String, Child) {
    let mut child = Command::new(saga_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(child_stderr(Path::new(args[1])))
        .spawn()
        .expect("spawn fault-saga");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("read");
    (line.trim().to_owned(), child)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saga_killed_at_every_boundary() {
    use cim_integrate::saga::{SagaRecord, SagaStatus};
    let server = NatsServer::start().await.unwrap();
    let url = server.url();
    let dir = temp_dir("saga");
    let log = dir.join("runs.log");
    let log_s = log.to_str().unwrap();
    let t = NatsTransport::connect_url(&url).await.unwrap();
    let mut summary = Vec::new();
    for kind in ["happy", "fail"] {
        let mut points = 0;
        let mut reruns = 0u64;
        let mut absorbed = 0u64;
        for k in 0.. {
            let id = format!("{kind}-{k}");
            let (line, mut child) = run_saga(&[&url, log_s, "start", &id, kind, &k.to_string()]);
            if line.starts_with("DONE") {
                // Past the last crash point: the whole run is enumerated.
                child.wait().unwrap();
                break;
            }
            assert!(line.starts_with("CRASH"), "{id}: unexpected output `{line}`");
            sigkill(&mut child);
            let (resumed, mut child) = run_saga(&[&url, log_s, "resume", kind]);
            assert!(resumed.starts_with("RESUMED"), "{id}: resume said `{resumed}`");
            child.wait().unwrap();
            points += 1;

            let bucket = t.key_value(&KvSpec::new("cim_saga_transfer")).await.unwrap();
            let expected = if kind == "happy" {
                vec!["reserve", "charge", "ship", "confirm"]
            } else {
                vec!["reserve", "charge", "ship", "-ship", "-charge", "-reserve"]
            };
            // A settled saga's record moves to the settled bucket (expiring after the retention).
            let settled = t
                .key_value(
                    &KvSpec::new("cim_saga_transfer_settled").max_age(cim_integrate::saga::DEFAULT_SETTLED_RETENTION),
                )
                .await
                .unwrap();
            let entry = match bucket.get(&id).await.unwrap() {
                Some(e) => Some(e),
                None => settled.get(&id).await.unwrap(),
            };
            let status = match entry {
                Some(entry) => {
                    let record: SagaRecord<TransferData> = serde_json::from_slice(&entry.value).unwrap();
                    assert_eq!(record.data.done, expected, "{id} ({line}): each step once, in order");
                    record.status
                }
                // A crash before the record was created: nothing exists, the caller's start
                // failed (documented); nothing ran.
                None => {
                    assert!(line.contains("Before Create"), "{id}: no record after `{line}`");
                    continue;
                }
            };
            let want = if kind == "happy" {
                SagaStatus::Completed
            } else {
                SagaStatus::Compensated
            };
            assert_eq!(status, want, "{id} ({line})");
            // Effects: exactly one per step (and per compensation), never two.
            let counts = LogCounts::read(&log);
            let prefix = format!("transfer/{id}/");
            for (key, (runs, effects, skips)) in counts.per_key.range(prefix.clone()..) {
                if !key.starts_with(&prefix) {
                    break;
                }
                assert!(*effects <= 1, "{id}: effect of {key} applied {effects} times");
                if *runs > 1 {
                    reruns += runs - 1;
                    absorbed += skips;
                    println!("  {id}: {key} ran {runs} times ({line}); effect once, {skips} re-run absorbed");
                }
            }
            let fx = t.key_value(&KvSpec::new(SAGA_EFFECTS_BUCKET)).await.unwrap();
            let keys: Vec<String> = fx
                .keys()
                .await
                .unwrap()
                .into_iter()
                .filter(|k| k.starts_with(&prefix))
                .collect();
            let effect_steps = if kind == "happy" { 4 } else { 6 };
            assert_eq!(
                keys.len(),
                effect_steps,
                "{id}: one effect per step and compensation: {keys:?}"
            );
        }
        summary.push(format!(
            "{kind}: SIGKILLed at {points} crash points (every write of the saga log, before and after), each resumed by a new process to {}; raw step re-runs {reruns}, of which {absorbed} found their effect already applied (idempotency key) and skipped it; duplicate effects 0",
            if kind == "happy" { "completed" } else { "compensated" }
        ));
    }
    for s in &summary {
        println!("{s}");
    }
}
