//! What the NATS connection reports on its own, as an operator reads it in the logs: why
//! reconnecting fails, messages the client dropped for a subscription that did not keep up (a
//! slow consumer), and a first connection that waits for a server started later.

use bytes::Bytes;
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::nats::{NatsAuth, NatsOptions, NatsTransport};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing_subscriber::layer::SubscriberExt;

/// Every event's message and fields, as text, from a global subscriber.
#[derive(Default, Clone)]
struct Logged(Arc<Mutex<Vec<String>>>);

struct Text(String);

impl tracing::field::Visit for Text {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.push_str(&format!(" {}={value:?}", field.name()));
    }
}

/// Whether a callsite is recorded: everything of ours, and async-nats's lines from INFO up. Its
/// DEBUG and TRACE lines (several per message received) are not: recording the flood of
/// `messages_dropped_for_a_slow_consumer_are_a_warning`, tens of thousands of lines under one
/// lock scanned by the tests' waits, slowed the connections of the tests running beside it.
fn recorded(metadata: &tracing::Metadata<'_>) -> bool {
    !metadata.target().starts_with("async_nats") || *metadata.level() <= tracing::Level::INFO
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn register_callsite(&self, metadata: &'static tracing::Metadata<'static>) -> tracing::subscriber::Interest {
        if recorded(metadata) {
            tracing::subscriber::Interest::always()
        } else {
            tracing::subscriber::Interest::never()
        }
    }

    fn enabled(&self, metadata: &tracing::Metadata<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        recorded(metadata)
    }

    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Text(format!("{}", event.metadata().level()));
        event.record(&mut text);
        self.0.lock().expect("lock").push(text.0);
    }
}

impl Logged {
    /// The lines logged so far that contain `text`.
    fn lines(&self, text: &str) -> Vec<String> {
        self.0
            .lock()
            .expect("lock")
            .iter()
            .filter(|l| l.contains(text))
            .cloned()
            .collect()
    }

    /// Waits up to `within` for a line containing `text`.
    async fn wait_for(&self, text: &str, within: Duration) -> String {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(line) = self.lines(text).into_iter().next() {
                return line;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nothing logged with `{text}` within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// One capturing subscriber for the test binary, installed once (a global default can be set
/// only once per process).
fn logged() -> Logged {
    static GLOBAL: std::sync::OnceLock<Logged> = std::sync::OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let logged = Logged::default();
            tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logged.clone()))
                .expect("subscriber");
            logged
        })
        .clone()
}

/// A failed connection attempt of this test's connection. The tests of this binary run at once
/// and share the log: the other test's client, left without its server as that test ends, logs
/// failed attempts too, for another reason (`IO error`).
const REFUSED_ATTEMPT: &str = "connecting to NATS failed; trying again reason=authorization violation";

/// An operator changes the service user's password on the server (a reload): the server closes
/// the connection, and every reconnection is refused. The log says why, not only
/// "disconnected", and not once per attempt; once the password is put back, the client is
/// connected again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn why_reconnecting_fails_is_a_warning() {
    let logged = logged();
    let config = |password: &str| format!("authorization {{ users = [ {{ user: svc, password: {password} }} ] }}\n");
    let server = NatsServer::start_with_config(&config("first-pw"))
        .await
        .expect("start nats-server");
    let mut options = NatsOptions::new(server.url());
    options.auth = NatsAuth::UserPassword {
        user: "svc".into(),
        password: "first-pw".into(),
    };
    let t = NatsTransport::connect(options).await.expect("connect");
    server.reload_config(&config("second-pw")).expect("reload");
    let refused = logged
        .wait_for("refused this connection's credentials", Duration::from_secs(10))
        .await;
    assert!(refused.starts_with("WARN"), "{refused}");
    let failed = logged.wait_for(REFUSED_ATTEMPT, Duration::from_secs(20)).await;
    assert!(failed.starts_with("WARN"), "{failed}");
    // Refused for a while: one warning per 10 s, not one per attempt.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(logged.lines(REFUSED_ATTEMPT).len(), 1, "{:?}", logged.lines("NATS"));
    server.reload_config(&config("first-pw")).expect("reload");
    let reconnected = async {
        while t.client().connection_state() != async_nats::connection::State::Connected {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), reconnected)
        .await
        .expect("connected again once the password is back");
    // A second outage is reported at once, its attempts counted from one.
    server.reload_config(&config("third-pw")).expect("reload");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
    while logged.lines(REFUSED_ATTEMPT).len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", logged.lines("NATS"));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let second = &logged.lines(REFUSED_ATTEMPT)[1];
    assert!(second.contains("attempts=1"), "{second}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dropped_for_a_slow_consumer_are_a_warning() {
    let logged = logged();
    let server = NatsServer::start().await.expect("start nats-server");
    let t = NatsTransport::connect(NatsOptions::new(server.url()))
        .await
        .expect("connect");
    // A subscription on the transport's connection that nobody reads: async-nats buffers 65,536
    // messages for it, then drops.
    let _unread = t.client().subscribe("flood").await.expect("subscribe");
    t.client().flush().await.expect("flush");
    let publisher = async_nats::connect(server.url()).await.expect("publisher");
    for _ in 0..70_000 {
        publisher
            .publish("flood", Bytes::from_static(b"x"))
            .await
            .expect("publish");
    }
    publisher.flush().await.expect("flush");
    let warning = async {
        loop {
            if let Some(w) = logged
                .0
                .lock()
                .expect("lock")
                .iter()
                .find(|l| l.contains("buffer was full"))
            {
                return w.clone();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let warning = tokio::time::timeout(Duration::from_secs(10), warning)
        .await
        .unwrap_or_else(|_| {
            let lines = logged.0.lock().expect("lock").clone();
            let told: Vec<_> = lines
                .iter()
                .filter(|l| !l.starts_with("TRACE") && !l.contains("outage"))
                .collect();
            panic!("a slow-consumer warning: {told:#?}")
        });
    assert!(warning.starts_with("WARN"), "{warning}");
    assert!(warning.contains("dropped="), "{warning}");
    assert!(!warning.contains("connection="), "an unnamed connection: {warning}");
    // One warning, not one per dropped message.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let warnings = logged
        .0
        .lock()
        .expect("lock")
        .iter()
        .filter(|l| l.contains("buffer was full"))
        .count();
    assert_eq!(warnings, 1, "{:?}", logged.0.lock().expect("lock"));
}

/// A host started before its server (containers started together, a server restarting): with
/// `connect_wait` the first connection waits for it, says why every 10 s, and is made once the
/// server is up; without one it fails at once and says how to wait; a wait that runs out says how
/// long it tried; refused credentials are never waited out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_connection_waits_for_a_server_started_later() {
    const WAITING: &str = "NATS does not answer yet; trying again";
    let logged = logged();
    let mut server = NatsServer::start().await.expect("start nats-server");
    server.stop().await.expect("stop");
    let url = server.url();
    let waiting = |wait: Duration| {
        let mut options = NatsOptions::new(url.clone());
        options.connect_wait = wait;
        options.name = Some("orders-host".into());
        options
    };

    let began = Instant::now();
    let e = NatsTransport::connect(waiting(Duration::ZERO))
        .await
        .expect_err("nothing listens");
    assert!(began.elapsed() < Duration::from_secs(2), "{:?}", began.elapsed());
    assert!(e.is_transient(), "{e:?}");
    assert!(e.to_string().contains("NATS_CONNECT_WAIT"), "{e}");
    assert!(logged.lines(WAITING).is_empty(), "no wait, no warning");

    let connecting = tokio::spawn(NatsTransport::connect(waiting(Duration::from_secs(30))));
    let warning = logged.wait_for(WAITING, Duration::from_secs(5)).await;
    assert!(warning.starts_with("WARN"), "{warning}");
    assert!(warning.contains(&format!("127.0.0.1:{}", server.port())), "{warning}");
    assert!(warning.contains("attempts=1"), "{warning}");
    // A named connection says its name, so that a process with several tells them apart.
    assert!(warning.contains(r#"connection="orders-host""#), "{warning}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.restart().await.expect("the server starts");
    let t = tokio::time::timeout(Duration::from_secs(10), connecting)
        .await
        .expect("connected within 10 s of the server's start")
        .expect("join")
        .expect("connected");
    t.check_jetstream().await.expect("the connection is usable");
    let connected = logged
        .wait_for("NATS answered; connected", Duration::from_secs(1))
        .await;
    assert!(connected.starts_with("INFO"), "{connected}");
    // Several attempts in those 1.5 s (100, 200, 400, 800 ms apart), one warning.
    assert_eq!(logged.lines(WAITING).len(), 1, "{:?}", logged.lines(WAITING));

    server.stop().await.expect("stop");
    let began = Instant::now();
    let e = NatsTransport::connect(waiting(Duration::from_secs(1)))
        .await
        .expect_err("nothing listens");
    let took = began.elapsed();
    assert!(
        took >= Duration::from_secs(1) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert!(e.to_string().contains("attempts over"), "{e}");

    let guarded = NatsServer::start_with(&["--user", "svc", "--pass", "right"])
        .await
        .expect("start nats-server");
    let mut options = NatsOptions::new(guarded.url());
    options.connect_wait = Duration::from_secs(30);
    options.auth = NatsAuth::UserPassword {
        user: "svc".into(),
        password: "wrong".into(),
    };
    let began = Instant::now();
    let e = NatsTransport::connect(options).await.expect_err("refused");
    assert!(
        began.elapsed() < Duration::from_secs(5),
        "refused credentials are not waited out"
    );
    assert!(e.to_string().contains("authorization violation"), "{e}");
    assert!(!e.to_string().contains("attempts"), "{e}");
}

/// A server down for a few seconds under a consumer: the consumer says its pull was interrupted
/// once, and then at most every 10 s with a count, not once per attempt to pull again (every
/// second, per consumer); and it says when pulling works again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_interrupted_pull_is_reported_once_and_so_is_its_recovery() {
    use cim_integrate_runtime::transport::{Consumer, ConsumerSpec, StreamSpec, Transport};
    use cim_integrate_runtime::{Envelope, Subject, SubjectPattern};
    let logged = logged();
    let mut server = NatsServer::start().await.expect("start nats-server");
    let t = NatsTransport::connect(NatsOptions::new(server.url()))
        .await
        .expect("connect");
    let spec = StreamSpec::for_domain("outage", None).expect("spec");
    t.ensure_stream(&spec).await.expect("stream");
    let mut consumer = t
        .consumer(&ConsumerSpec::new(
            spec.name.clone(),
            "outage-watcher",
            SubjectPattern::new("outage.>").expect("pattern"),
        ))
        .await
        .expect("consumer");
    let next = tokio::spawn(async move { consumer.next().await.map(|d| d.subject().to_owned()) });
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.stop().await.expect("stop");
    tokio::time::sleep(Duration::from_secs(6)).await;
    server.restart().await.expect("restart");
    let event = Envelope::root(Subject::new("outage.over").expect("subject"), "{}");
    let published = async {
        while t.publish_and_wait(event.clone().into()).await.is_err() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), published)
        .await
        .expect("published once the server is back");
    let delivered = tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .unwrap_or_else(|_| {
            panic!(
                "delivered once the server is back: {:#?}",
                logged.lines("outage-watcher")
            )
        })
        .expect("join")
        .expect("delivery");
    assert_eq!(delivered, "outage.over");
    let mine = logged.lines("consumer=outage-watcher");
    let warnings: Vec<_> = mine.iter().filter(|l| l.starts_with("WARN")).collect();
    assert!(!warnings.is_empty(), "{mine:#?}");
    assert_eq!(warnings.len(), 1, "one warning for a 6 s outage: {mine:#?}");
    let resumed = mine
        .iter()
        .find(|l| l.contains("pulling again"))
        .unwrap_or_else(|| panic!("{mine:#?}"));
    assert!(resumed.starts_with("INFO"), "{resumed}");
}
