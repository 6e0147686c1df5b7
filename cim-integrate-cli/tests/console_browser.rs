//! The web console in a real browser (headless Chromium through chromedriver): the page loads,
//! shows a dead-letter group, its Redrive button is clicked, and the handler's handled count
//! rises as the letters are handled; a foreign client's message that is not UTF-8 and carries escape
//! sequences is inspected, shown escaped; a saga needing attention is shown with its remaining steps,
//! retried from the page, and compensated by its host. Also: a non-loopback address without a token is refused,
//! and with a token every request must carry it.
//!
//! Needs `chromedriver` and `chromium` (Debian's `chromium-driver` and `chromium`; `.ci/run`
//! installs them). Without them the browser test says so and passes, except under `CI=true`.

use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::prelude::*;
use cim_integrate::service::Service;
use cim_integrate::testing::{NatsServer, free_ports, hub_and_leaf};
use cim_integrate::transport::OutboundMessage;
use cim_integrate::transport::nats::{NatsOptions, NatsTransport};
use cim_integrate::{domain_event, handlers};
use cim_integrate_runtime::saga::conformance::{LEASE, Order, Shop};
use cim_integrate_runtime::saga::{SagaOutcome, SagaRunner};
use fantoccini::{ClientBuilder, Locator};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

#[path = "fixtures/skewed_host.rs"]
mod skewed_host;

#[domain_event(subject = "shipping.requested", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ShipmentRequested {
    pub n: u32,
}

struct Carrier(Arc<AtomicBool>);

#[handlers(domain = "carrier")]
impl Carrier {
    #[subscribe("shipping.requested")]
    async fn book(&self, _ctx: &Context, event: ShipmentRequested) -> Result<(), HandlerError> {
        if !self.0.load(Ordering::SeqCst) {
            return Err(HandlerError::permanent(format!("parcel {} has no address", event.n)));
        }
        Ok(())
    }
}

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

/// Starts `cim-integrate console` on a free loopback port; returns the process and its URL.
fn console(nats_url: &str, extra: &[&str]) -> (Killed, String) {
    console_with(nats_url, &[], extra)
}

/// [`console`] with more environment variables.
fn console_with(nats_url: &str, env: &[(&str, &str)], extra: &[&str]) -> (Killed, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_cim-integrate"))
        .env_clear()
        .env("NATS_URL", nats_url)
        .envs(env.iter().copied())
        .args(["console", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the console");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("the console's address");
    let url = line
        .trim()
        .strip_prefix("console listening on ")
        .unwrap_or_else(|| panic!("unexpected first line: {line}"))
        .to_owned();
    (Killed(child), url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_group_is_redriven_from_the_browser() {
    let Some(driver) = browser_installed() else {
        return;
    };
    let server = NatsServer::start().await.expect("server");
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
    let fixed = Arc::new(AtomicBool::new(false));
    let service = Service::builder(t.clone(), "carrier")
        .register(Carrier(fixed.clone()))
        .status_interval(Some(Duration::from_millis(300)))
        .start()
        .await
        .expect("start");
    for n in 0..3 {
        let env = ShipmentRequested { n }.to_envelope().expect("envelope");
        t.publish(OutboundMessage::from(&env))
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    // A foreign client's message that is not UTF-8 and carries escape sequences: a group of its
    // own, shown escaped when inspected.
    let mut headers = cim_integrate_runtime::headers::Headers::new();
    headers.insert("X-Note", "\u{1b}]0;owned\u{7}").expect("header");
    let poison = OutboundMessage {
        subject: cim_integrate_runtime::Subject::new("shipping.requested").expect("subject"),
        headers,
        payload: b"\xff{\x1b[2J}".to_vec().into(),
    };
    t.publish(poison).await.expect("publish").await.expect("ack");
    // A saga whose compensation fails for good: it needs attention.
    let shop = Shop::default();
    shop.script.broken.lock().expect("lock").insert("charge");
    let runner = || {
        SagaRunner::builder(t.clone(), shop.clone())
            .lease(LEASE)
            .rescan_interval(Some(Duration::from_millis(200)))
            .build()
    };
    let outcome = runner()
        .await
        .expect("runner")
        .start("o-1", Order::failing_at("publish"))
        .await
        .expect("start");
    assert!(matches!(outcome, SagaOutcome::NeedsAttention { .. }), "{outcome:?}");
    let shop_host = Service::builder(t.clone(), "shop-host")
        .status_interval(None)
        .saga(runner().await.expect("runner"))
        .start()
        .await
        .expect("shop host");
    let (_console, url) = console(&server.url(), &[]);

    let (_driver, browser) = open_browser(&driver).await;
    let started = Instant::now();
    browser.goto(&url).await.expect("open the console");
    let wait = || browser.wait().at_most(Duration::from_secs(20));
    // A server without a JetStream domain: the page names none.
    text_when(&browser, Locator::Id("status"), |t| t.starts_with("updated")).await;
    assert_eq!(
        browser
            .find(Locator::Id("domain"))
            .await
            .expect("domain")
            .text()
            .await
            .expect("text"),
        ""
    );
    // The group of three, and the handler with nothing handled yet.
    let permanent = Locator::Css("tr.dlq-group[data-handler='carrier-book'][data-kind='permanent']");
    let group = match wait().for_element(permanent).await {
        Ok(group) => group,
        Err(e) => {
            let status = page_status(&browser).await;
            panic!("no dead-letter group on the page ({e}); the page's status: {status}")
        }
    };
    eprintln!("{:?}: the group is shown", started.elapsed());
    let count = group
        .find(Locator::Css("td.count"))
        .await
        .expect("count")
        .text()
        .await
        .expect("text");
    assert_eq!(count, "3");
    let handled = Locator::Css("tr.handler[data-handler='carrier-book'] td.handled");
    let before = text_when(&browser, handled, |t| t == "0").await;
    assert_eq!(before, "0");
    let topology = browser.source().await.expect("source");
    assert!(topology.contains("SHIPPING_EVENTS") && topology.contains("DEAD_LETTERS"));

    // The hosts: the carrier's clock is the server's; a host whose clock runs 5 s ahead (its
    // status written as it would write it) is flagged, with what to do.
    let carrier = text_when(
        &browser,
        Locator::Css("tr.host[data-service='carrier'] td.clock"),
        |t| t.ends_with(" s"),
    )
    .await;
    assert_eq!(carrier, "0.0 s");
    skewed_host::write(&t, 5_000).await;
    let flagged = text_when(
        &browser,
        Locator::Css("tr.host[data-service='skewed'] td.clock.skewed"),
        |t| !t.is_empty(),
    )
    .await;
    assert!(flagged == "+5.0 s" || flagged == "+4.9 s", "{flagged}");
    let note = text_when(&browser, Locator::Id("clocks"), |t| t.contains("NTP")).await;
    assert!(note.starts_with("1 host(s) with a clock more than 1 s"), "{note}");

    // The foreign message, inspected: its bytes and its header escaped, nothing raw.
    wait()
        .for_element(Locator::Css("tr.dlq-group[data-kind='undecodable'] button.inspect"))
        .await
        .expect("the undecodable group")
        .click()
        .await
        .expect("click Inspect");
    let shown = text_when(&browser, Locator::Css("#inspect pre"), |t| t.contains("not UTF-8")).await;
    assert!(!shown.contains('\u{1b}'), "{shown:?}");
    assert!(
        shown.contains(r"X-Note: \u{1b}]0;owned\u{7}")
            && shown.contains(r"(7 bytes, not UTF-8)")
            && shown.contains(r"\xff{\x1b[2J}"),
        "{shown:?}"
    );

    // Fixed, then redriven from the page: the count rises to three, the group goes.
    fixed.store(true, Ordering::SeqCst);
    // Found again: the page redraws its rows every refresh, and the row found first may be gone.
    browser
        .find(permanent)
        .await
        .expect("the group")
        .find(Locator::Css("button.redrive"))
        .await
        .expect("Redrive button")
        .click()
        .await
        .expect("click");
    let after = text_when(&browser, handled, |t| t == "3").await;
    assert_eq!(after, "3");
    eprintln!("{:?}: redriven and handled", started.elapsed());
    let deadline = Instant::now() + Duration::from_secs(20);
    while !browser.find_all(permanent).await.expect("rows").is_empty() {
        assert!(Instant::now() < deadline, "the group is still shown");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // `CONSOLE_SCREENSHOT=file.png` keeps a picture of the page (to look at the layout).
    if let Some(path) = std::env::var_os("CONSOLE_SCREENSHOT") {
        browser.set_window_size(1200, 1400).await.expect("window size");
        browser.execute("window.scrollTo(0, 0)", vec![]).await.expect("scroll");
        let png = browser.screenshot().await.expect("screenshot");
        std::fs::write(path, png).expect("write the screenshot");
    }
    // The saga, by status, with its remaining steps; mended, retried from the page, it
    // compensates and leaves the list of unsettled sagas.
    let saga = Locator::Css("tr.saga[data-state='needs_attention']");
    let row = text_when(&browser, saga, |t| t.contains("o-1")).await;
    assert!(row.contains("to compensate: charge"), "{row}");
    eprintln!("{:?}: the saga is shown", started.elapsed());
    shop.script.broken.lock().expect("lock").clear();
    browser
        .find(saga)
        .await
        .expect("saga row")
        .find(Locator::Css("button"))
        .await
        .expect("Retry button")
        .click()
        .await
        .expect("click");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !browser
        .find_all(Locator::Css("tr.saga"))
        .await
        .expect("rows")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the saga is still unsettled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("{:?}: the saga is compensated", started.elapsed());
    assert!(
        shop.script
            .calls_of("o-1")
            .ends_with(&["-charge".to_owned(), "-reserve".to_owned()])
    );
    browser.close().await.expect("close");
    eprintln!("{:?}: the browser is closed", started.elapsed());
    shop_host.shutdown(Duration::from_secs(5)).await;
    service.shutdown(Duration::from_secs(5)).await;
    eprintln!("{:?}: the hosts are stopped", started.elapsed());
}

/// Starts chromedriver (`driver`) on a free port and a headless Chromium session through it.
async fn open_browser(driver: &std::path::Path) -> (Killed, fantoccini::Client) {
    let port = free_ports(1).expect("a free port")[0];
    let driver = Killed(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
    );
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": which("chromium").expect("chromium"),
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        }),
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    let browser = loop {
        // Plain HTTP to a local chromedriver: no TLS stack.
        match ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps.clone())
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
        {
            Ok(c) => break c,
            Err(e) if Instant::now() < deadline => {
                eprintln!("waiting for chromedriver: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("chromedriver: {e}"),
        }
    };
    (driver, browser)
}

/// chromedriver, if it and chromium are installed; `None` skips a test outside CI (in CI their
/// absence fails it: `.ci/run` installs them).
fn browser_installed() -> Option<std::path::PathBuf> {
    let (Some(driver), true) = (which("chromedriver"), which("chromium").is_some()) else {
        assert!(
            std::env::var("CI").is_err(),
            "CI: chromium and chromedriver must be installed (.ci/run installs them)"
        );
        eprintln!("SKIPPED: chromium or chromedriver not installed (apt-get install chromium chromium-driver)");
        return None;
    };
    Some(driver)
}

/// The page's status line ("updated ...", or why the last refresh failed).
async fn page_status(browser: &fantoccini::Client) -> String {
    match browser.find(Locator::Id("status")).await {
        Ok(e) => e.text().await.unwrap_or_else(|e| format!("unreadable: {e}")),
        Err(e) => format!("no status line: {e}"),
    }
}

/// The text of the element at `at` once `ok` holds for it (the page refreshes every 2 s).
async fn text_when(browser: &fantoccini::Client, at: Locator<'_>, ok: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = String::new();
    while Instant::now() < deadline {
        if let Ok(e) = browser.find(at).await
            && let Ok(t) = e.text().await
        {
            if ok(&t) {
                return t;
            }
            last = t;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = page_status(browser).await;
    panic!("timed out; last text: `{last}`; the page's status: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_guards_the_console() {
    let server = NatsServer::start().await.expect("server");
    // Not loopback, no token: refused (usage error).
    let out = Command::new(env!("CARGO_BIN_EXE_cim-integrate"))
        .env_clear()
        .env("NATS_URL", server.url())
        .args(["console", "--listen", "0.0.0.0:0"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("token"));
    // With a token, requests without it are refused.
    let (_console, url) = console(&server.url(), &["--token", "s3cret"]);
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    let get = |path: &str, auth: Option<&str>| {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let auth = auth
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
        )
        .expect("write");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("read");
        r.lines().next().unwrap_or_default().to_owned()
    };
    assert!(get("/", None).contains("401"));
    assert!(get("/api/overview", Some("wrong")).contains("401"));
    assert!(get("/?token=s3cret", None).contains("200"));
    assert!(get("/api/overview", Some("s3cret")).contains("200"));
}

/// At an edge site the console names the JetStream domain it reads: the leaf node's own when
/// `NATS_JS_DOMAIN` is unset (an operator who forgot it sees why the tables are empty), the hub's
/// when it names it (and the hub's dead letters are shown).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_names_the_jetstream_domain_it_reads() {
    let Some(driver) = browser_installed() else {
        return;
    };
    let (_hub, leaf) = hub_and_leaf().await.expect("hub and leaf");
    let mut options = NatsOptions::new(leaf.url());
    options.js_domain = Some("hub".to_owned());
    let t = NatsTransport::connect(options).await.expect("connect to the leaf");
    let service = Service::builder(t.clone(), "carrier")
        .register(Carrier(Arc::new(AtomicBool::new(false))))
        .start()
        .await
        .expect("start");
    let env = ShipmentRequested { n: 1 }.to_envelope().expect("envelope");
    t.publish_and_wait(OutboundMessage::from(&env)).await.expect("publish");
    let (_driver, browser) = open_browser(&driver).await;

    let (_own, url) = console(&leaf.url(), &[]);
    browser.goto(&url).await.expect("open the console");
    let domain = text_when(&browser, Locator::Id("domain"), |t| !t.is_empty()).await;
    assert_eq!(
        domain,
        "JetStream domain `leaf`, the server's own (NATS_JS_DOMAIN names another, e.g. a hub's)"
    );

    let (_hubs, url) = console_with(&leaf.url(), &[("NATS_JS_DOMAIN", "hub")], &[]);
    browser.goto(&url).await.expect("open the console");
    let domain = text_when(&browser, Locator::Id("domain"), |t| !t.is_empty()).await;
    assert_eq!(domain, "JetStream domain `hub`");
    let group = Locator::Css("tr.dlq-group[data-handler='carrier-book'][data-kind='permanent']");
    browser
        .wait()
        .at_most(Duration::from_secs(20))
        .for_element(group)
        .await
        .expect("the hub's dead letters, through the leaf");
    browser.close().await.expect("close");
    service.shutdown(Duration::from_secs(5)).await;
}
