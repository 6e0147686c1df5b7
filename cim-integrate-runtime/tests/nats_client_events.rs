//! What the NATS connection reports on its own, as an operator reads it in the logs: messages
//! the client dropped for a subscription that did not keep up (a slow consumer).

use bytes::Bytes;
use cim_integrate_runtime::testing::NatsServer;
use cim_integrate_runtime::transport::nats::{NatsOptions, NatsTransport};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Logged {
    fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut text = Text(format!("{}", event.metadata().level()));
        event.record(&mut text);
        self.0.lock().expect("lock").push(text.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_dropped_for_a_slow_consumer_are_a_warning() {
    let logged = Logged::default();
    tracing::subscriber::set_global_default(tracing_subscriber::registry().with(logged.clone())).expect("subscriber");
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
        .expect("a slow-consumer warning");
    assert!(warning.starts_with("WARN"), "{warning}");
    assert!(warning.contains("dropped="), "{warning}");
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
