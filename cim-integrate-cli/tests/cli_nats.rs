//! The command-line tool against a private nats-server: tables and `--json`, confirmations and
//! exit codes, a dead-letter group redriven after the handler is fixed.

use assert_cmd::Command;
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::prelude::*;
use cim_integrate::service::Service;
use cim_integrate::testing::{NatsServer, hub_and_leaf};
use cim_integrate::transport::OutboundMessage;
use cim_integrate::transport::nats::{NatsOptions, NatsTransport};
use cim_integrate::{domain_event, handlers};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "fixtures/skewed_host.rs"]
mod skewed_host;

#[domain_event(subject = "billing.invoiced", version = "1.0")]
#[derive(Debug, Clone)]
pub struct Invoiced {
    pub n: u32,
}

#[derive(Default)]
struct State {
    fixed: AtomicBool,
    handled: AtomicUsize,
}

struct Ledger(Arc<State>);

#[handlers(domain = "ledger")]
impl Ledger {
    #[subscribe("billing.invoiced")]
    async fn book(&self, _ctx: &Context, event: Invoiced) -> Result<(), HandlerError> {
        if !self.0.fixed.load(Ordering::SeqCst) {
            return Err(HandlerError::permanent(format!("invoice {} has no customer", event.n)));
        }
        self.0.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Runs the tool with `args` against `url`; returns (exit code, stdout, stderr).
async fn tool(url: &str, args: &[&str]) -> (i32, String, String) {
    tool_with(url, &[], args).await
}

/// [`tool`] with more environment variables.
async fn tool_with(url: &str, env: &[(&str, &str)], args: &[&str]) -> (i32, String, String) {
    let (url, args): (String, Vec<String>) = (url.to_owned(), args.iter().map(|s| (*s).to_owned()).collect());
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::cargo_bin("cim-integrate")
            .expect("binary")
            .env_clear()
            .env("NATS_URL", url)
            .envs(env)
            .args(&args)
            .timeout(Duration::from_secs(60))
            .output()
            .expect("run");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .expect("thread")
}

/// The ledger started on `t` (its handler refuses every invoice until fixed), and `n` invoices
/// published.
async fn ledger_with_invoices(t: &NatsTransport, n: u32) -> (Arc<State>, Service) {
    let state = Arc::new(State::default());
    let service = Service::builder(t.clone(), "ledger")
        .register(Ledger(state.clone()))
        .start()
        .await
        .expect("start");
    for n in 0..n {
        let env = Invoiced { n }.to_envelope().expect("envelope");
        t.publish_and_wait(OutboundMessage::from(&env)).await.expect("publish");
    }
    (state, service)
}

fn json(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_from_the_command_line() {
    let server = NatsServer::start().await.expect("server");
    let url = server.url();
    let t = NatsTransport::connect_url(&url).await.expect("connect");
    let (state, service) = ledger_with_invoices(&t, 3).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let letters = loop {
        let (code, out, err) = tool(&url, &["dlq", "list", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let v = json(&out);
        if v.as_array().is_some_and(|a| a.len() == 3) || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let letters = letters.as_array().expect("array");
    assert_eq!(letters.len(), 3, "{letters:?}");
    assert_eq!(letters[0]["handler"], "ledger-book");
    assert_eq!(letters[0]["kind"], "permanent");
    assert_eq!(letters[0]["subject"], "billing.invoiced");
    assert_eq!(letters[0]["payload_encoding"], "utf-8");
    assert_eq!(letters[0]["payload"], r#"{"version":"1.0","n":0}"#);
    let seq = letters[0]["sequence"].as_u64().expect("sequence");

    // A table for people.
    let (code, out, _) = tool(&url, &["dlq", "list", "--kind", "permanent"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("SEQ"), "{out}");
    assert_eq!(out.lines().filter(|l| l.contains("ledger-book")).count(), 3, "{out}");
    let (code, out, _) = tool(&url, &["dlq", "show", &seq.to_string()]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("has no customer") && out.contains("X-Event-Type: Invoiced"),
        "{out}"
    );

    // One group.
    let (code, out, _) = tool(&url, &["dlq", "groups", "--json"]).await;
    assert_eq!(code, 0);
    let groups = json(&out);
    assert_eq!(groups.as_array().map(Vec::len), Some(1), "{groups}");
    assert_eq!(groups[0]["count"], 3);
    let fingerprint = groups[0]["fingerprint"].as_str().expect("fingerprint").to_owned();

    // Exit codes: not found, usage, declined, bad kind.
    assert_eq!(tool(&url, &["dlq", "show", "999999"]).await.0, 3);
    let (code, _, err) = tool(&url, &["dlq", "redrive"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--all"), "{err}");
    let (code, _, err) = tool(&url, &["dlq", "redrive", "--group", &fingerprint]).await;
    assert_eq!(code, 5, "{err}");
    assert!(err.contains("--yes"), "{err}");
    assert_eq!(tool(&url, &["dlq", "list", "--kind", "bogus"]).await.0, 2);
    let (code, out, _) = tool(&url, &["dlq", "show", "999999", "--json"]).await;
    assert_eq!(code, 3);
    assert_eq!(json(&out)["exit_code"], 3);
    assert_eq!(state.handled.load(Ordering::SeqCst), 0, "nothing redriven yet");

    // Fixed, the group is redriven: each handled once.
    state.fixed.store(true, Ordering::SeqCst);
    let (code, out, err) = tool(&url, &["dlq", "redrive", "--group", &fingerprint, "--yes", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["redriven"].as_array().map(Vec::len), Some(3), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.handled.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state.handled.load(Ordering::SeqCst), 3);
    let (_, out, _) = tool(&url, &["dlq", "list", "--json"]).await;
    assert_eq!(json(&out).as_array().map(Vec::len), Some(0));
    // Handlers, topology, sagas and process managers.
    let (code, out, err) = tool(&url, &["handlers", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let handlers = json(&out);
    let book = handlers
        .as_array()
        .and_then(|a| a.iter().find(|h| h["durable"] == "ledger-book"))
        .unwrap_or_else(|| panic!("no ledger-book among {handlers}"));
    assert_eq!(book["stream"], "BILLING_EVENTS");
    assert_eq!(book["num_pending"], 0);
    let (code, out, _) = tool(&url, &["handlers"]).await;
    assert_eq!(code, 0);
    assert!(
        out.starts_with("STREAM") && out.contains("ledger-book-redrive"),
        "{out}"
    );
    let (code, out, _) = tool(&url, &["topology", "--json"]).await;
    assert_eq!(code, 0);
    let topology = json(&out);
    let names: Vec<&str> = topology["streams"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        names.contains(&"BILLING_EVENTS") && names.contains(&"DEAD_LETTERS"),
        "{names:?}"
    );
    let (code, out, _) = tool(&url, &["topology"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("ledger-book"), "{out}");
    let (code, out, _) = tool(&url, &["saga", "list", "--json"]).await;
    assert_eq!(code, 0);
    assert_eq!(json(&out), serde_json::json!([]));
    assert_eq!(tool(&url, &["saga", "show", "nosuch", "x"]).await.0, 3);
    assert_eq!(tool(&url, &["saga", "list", "x", "--status", "bogus"]).await.0, 2);
    let (code, out, _) = tool(&url, &["process", "list"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("no process managers"), "{out}");

    let (code, out, _) = tool(&url, &["dlq", "purge", "--all", "--yes"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("no dead letters selected"), "{out}");
    service.shutdown(Duration::from_secs(5)).await;
}

/// A foreign client's message that a terminal would act on: the letter's fields and payload are
/// shown escaped in tables and `dlq show`, and `--json` gives the payload's exact bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_foreign_client_wrote_cannot_drive_the_terminal() {
    let server = NatsServer::start().await.expect("server");
    let url = server.url();
    let t = NatsTransport::connect_url(&url).await.expect("connect");
    let service = Service::builder(t.clone(), "ledger")
        .register(Ledger(Arc::default()))
        .start()
        .await
        .expect("start");
    // Not UTF-8, with a NUL, a clear-screen and a clipboard write (OSC 52), CSI as a C1
    // control, and a right-to-left override; a header that retitles the window.
    let payload: &[u8] = b"\xff\xfe\0{\x1b[2J\x1b]52;c;ZWNobw==\x07\xc2\x9b31m\xe2\x80\xae}";
    let mut headers = cim_integrate_runtime::headers::Headers::new();
    headers.insert("X-Note", "\u{1b}]0;owned\u{7}").expect("header");
    let poison = OutboundMessage {
        subject: cim_integrate_runtime::Subject::new("billing.invoiced").expect("subject"),
        headers,
        payload: payload.to_vec().into(),
    };
    t.publish(poison).await.expect("publish").await.expect("ack");
    let deadline = Instant::now() + Duration::from_secs(20);
    let seq = loop {
        let (code, out, err) = tool(&url, &["dlq", "list", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        if let Some(seq) = json(&out)[0]["sequence"].as_u64() {
            break seq;
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let acts = |c: char| c.is_control() && c != '\n' || c == '\u{202e}';
    let (code, out, err) = tool(&url, &["dlq", "show", &seq.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    assert!(!out.chars().any(acts), "{out:?}");
    assert!(out.contains(r"X-Note: \u{1b}]0;owned\u{7}"), "{out}");
    assert!(out.contains(&format!("({} bytes, not UTF-8", payload.len())), "{out}");
    assert!(
        out.contains(r"\xff\xfe\0{\u{1b}[2J\u{1b}]52;c;ZWNobw==\u{7}\u{9b}31m\u{202e}}"),
        "{out}"
    );
    let (code, out, _) = tool(&url, &["dlq", "list"]).await;
    assert_eq!(code, 0);
    assert!(!out.chars().any(acts) && out.contains("undecodable"), "{out:?}");

    // The exact bytes, in base64, and the header as it was (JSON escapes it).
    let (code, out, _) = tool(&url, &["dlq", "show", &seq.to_string(), "--json"]).await;
    assert_eq!(code, 0);
    assert!(!out.chars().any(acts), "{out:?}");
    let letter = json(&out);
    assert_eq!(letter["payload_encoding"], "base64", "{letter}");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(letter["payload"].as_str().expect("payload"))
        .expect("base64");
    assert_eq!(bytes, payload);
    let note = letter["headers"]
        .as_array()
        .and_then(|h| h.iter().find(|h| h[0] == "X-Note"))
        .unwrap_or_else(|| panic!("no X-Note in {letter}"));
    assert_eq!(note[1], "\u{1b}]0;owned\u{7}");
    service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_and_unavailability_have_their_exit_codes() {
    // No NATS_URL: a failure saying so.
    let out = tokio::task::spawn_blocking(|| {
        Command::cargo_bin("cim-integrate")
            .expect("binary")
            .env_clear()
            .args(["dlq", "list"])
            .output()
            .expect("run")
    })
    .await
    .expect("thread");
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NATS_URL"));
    // A server that stopped: unavailable, try again.
    let mut server = NatsServer::start().await.expect("server");
    let url = server.url();
    server.stop().await.expect("stop");
    let (code, _, err) = tool(&url, &["dlq", "list"]).await;
    assert_eq!(code, 4, "{err}");
    // A server without JetStream: a failure naming the fix, not "try again".
    let no_js = NatsServer::start_without_jetstream().await.expect("server");
    let (code, _, err) = tool(&no_js.url(), &["dlq", "list"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("JetStream is not enabled") && err.contains("-js"), "{err}");
}

/// `hosts`: the live hosts with their clocks against the server's. A running service's clock is
/// the server's (same machine); a host whose clock runs 5 s ahead (its status document written
/// as it would write it) is flagged, with what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hosts_and_their_clocks_from_the_command_line() {
    let server = NatsServer::start().await.expect("server");
    let url = server.url();
    let (code, out, err) = tool(&url, &["hosts"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "no live hosts\n");

    let t = NatsTransport::connect_url(&url).await.expect("connect");
    let service = Service::builder(t.clone(), "ledger")
        .register(Ledger(Arc::new(State::default())))
        .start()
        .await
        .expect("start");
    skewed_host::write(&t, 5_000).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let hosts = loop {
        let (code, out, err) = tool(&url, &["hosts", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        let v = json(&out);
        if v.as_array().is_some_and(|a| a.len() == 2) || Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let offset = |service: &str| {
        hosts
            .as_array()
            .and_then(|a| a.iter().find(|h| h["service"] == service))
            .and_then(|h| h["clock_offset_ms"].as_i64())
            .unwrap_or_else(|| panic!("no clock offset of {service} in {hosts}"))
    };
    assert!(offset("ledger").abs() < 500, "{hosts}");
    assert!((4_500..5_500).contains(&offset("skewed")), "{hosts}");

    let (code, out, _) = tool(&url, &["hosts"]).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("SERVICE"), "{out}");
    let ledger = out
        .lines()
        .find(|l| l.starts_with("ledger"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(ledger.ends_with("0.0 s") && !ledger.contains("(!)"), "{out}");
    let skewed = out
        .lines()
        .find(|l| l.starts_with("skewed"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(skewed.contains("+5.0 s (!)") || skewed.contains("+4.9 s (!)"), "{out}");
    assert!(
        out.contains("1 host(s) with a clock more than 1 s") && out.contains("NTP"),
        "{out}"
    );
    service.shutdown(Duration::from_secs(5)).await;
}

/// The operator's tool at an edge site: on the leaf node, addressing the hub's JetStream domain
/// (`NATS_JS_DOMAIN=hub`), it lists, groups and redrives the dead letters of a host on the same
/// leaf, and shows its handlers and the host itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_command_line_at_an_edge_site() {
    let (_hub, leaf) = hub_and_leaf().await.expect("hub and leaf");
    let url = leaf.url();
    let mut options = NatsOptions::new(url.clone());
    options.js_domain = Some("hub".to_owned());
    let t = NatsTransport::connect(options).await.expect("connect to the leaf");
    let (state, service) = ledger_with_invoices(&t, 2).await;
    let hub = [("NATS_JS_DOMAIN", "hub")];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, out, err) = tool_with(&url, &hub, &["dlq", "list", "--json"]).await;
        assert_eq!(code, 0, "{err}");
        if json(&out).as_array().map(Vec::len) == Some(2) {
            break;
        }
        assert!(Instant::now() < deadline, "not dead-lettered: {out}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Without the domain, the leaf's own JetStream answers, and the tool says which it asked.
    for (args, what) in [
        (&["dlq", "list"][..], "dead letters"),
        (&["handlers"][..], "handlers"),
        (&["hosts"][..], "live hosts"),
    ] {
        let (code, out, err) = tool(&url, args).await;
        assert_eq!(code, 0, "{err}");
        assert_eq!(
            out,
            format!(
                "no {what} in JetStream domain `leaf`, the server's own (NATS_JS_DOMAIN names another, e.g. a hub's)\n"
            )
        );
    }
    let (code, out, err) = tool_with(&url, &hub, &["dlq", "groups", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let groups = json(&out);
    assert_eq!(groups[0]["count"], 2, "{groups}");
    let fingerprint = groups[0]["fingerprint"].as_str().expect("fingerprint").to_owned();

    state.fixed.store(true, Ordering::SeqCst);
    let (code, out, err) = tool_with(
        &url,
        &hub,
        &["dlq", "redrive", "--group", &fingerprint, "--yes", "--json"],
    )
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["redriven"].as_array().map(Vec::len), Some(2), "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while state.handled.load(Ordering::SeqCst) < 2 {
        assert!(Instant::now() < deadline, "not handled after the redrive");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, out, _) = tool_with(&url, &hub, &["dlq", "list", "--json"]).await;
    assert_eq!(json(&out).as_array().map(Vec::len), Some(0), "{out}");

    let (code, out, err) = tool_with(&url, &hub, &["handlers", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let handlers = json(&out);
    assert!(
        handlers.as_array().is_some_and(|a| a
            .iter()
            .any(|h| h["durable"] == "ledger-book" && h["stream"] == "BILLING_EVENTS")),
        "{handlers}"
    );
    let (code, out, err) = tool_with(&url, &hub, &["hosts", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let hosts = json(&out);
    assert!(
        hosts
            .as_array()
            .is_some_and(|a| a.iter().any(|h| h["service"] == "ledger")),
        "{hosts}"
    );
    service.shutdown(Duration::from_secs(5)).await;
}
