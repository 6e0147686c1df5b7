//! Monitoring integration points: a circuit breaker around a failing downstream, the metrics of
//! every handler and publish exported as Prometheus text, spans with correlation ids in the logs,
//! and the topology of the service as a Mermaid diagram.
//!
//! The search domain indexes every new document into an external search index. The index is
//! down for its first calls: the breaker around it opens, the handler's messages are deferred
//! (naked with the rest of the cool-down, not retried, not dead-lettered), the index recovers, a
//! probe succeeds, the breaker closes and every document is indexed.
//!
//! ```text
//! cargo run --example monitoring                                  # embedded transport
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example monitoring   # NATS JetStream
//! ```
//!
//! In a real service, serve `handle.render()` on `/metrics` (or enable the exporter's
//! `http-listener` feature); this example prints it.

use cim_integrate::breaker::{BreakerSettings, CircuitBreaker};
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::prelude::*;
use cim_integrate::topology::EventRef;
use cim_integrate::transport::StreamSpec;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

type Error = Box<dyn std::error::Error + Send + Sync>;

typed_id! {
    /// A document.
    pub struct DocumentId;
}

#[domain_event(subject = "document.created", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentCreated {
    pub document_id: DocumentId,
    pub title: String,
}

#[domain_event(subject = "search.indexed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentIndexed {
    pub document_id: DocumentId,
}

/// The external search index: refuses its first `failures` calls.
#[derive(Default)]
struct SearchIndex {
    failures: u32,
    calls: AtomicU32,
    documents: Mutex<Vec<DocumentId>>,
}

impl SearchIndex {
    async fn put(&self, id: DocumentId) -> Result<(), std::io::Error> {
        if self.calls.fetch_add(1, Ordering::SeqCst) < self.failures {
            return Err(std::io::Error::other("search index unavailable"));
        }
        self.documents.lock().unwrap().push(id);
        Ok(())
    }
}

struct SearchService {
    index: Arc<SearchIndex>,
    breaker: CircuitBreaker,
}

#[handlers(domain = "search")]
impl SearchService {
    /// Indexes a new document. A failure of the index is transient (retried); while the breaker
    /// is open the call is refused at once, and `?` turns the refusal into a deferral.
    #[subscribe("document.created", max_attempts = 5, backoff = "100ms", concurrency = 4)]
    async fn index(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        self.breaker.call(|| self.index.put(event.document_id)).await?;
        ctx.publish(&DocumentIndexed {
            document_id: event.document_id,
        })
        .await?;
        Ok(())
    }
}

/// The exporter: latencies as histograms with buckets fit for message handling.
fn prometheus() -> PrometheusBuilder {
    let buckets = [0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0];
    PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &buckets)
        .expect("non-empty buckets")
}

/// Runs the scenario with `documents` new documents; returns the Prometheus text and the
/// topology as Mermaid.
async fn run<T: Transport>(t: T, metrics: &PrometheusHandle, documents: usize) -> Result<(String, String), Error> {
    let index = Arc::new(SearchIndex {
        failures: 3,
        ..SearchIndex::default()
    });
    let breaker = CircuitBreaker::new(
        "search-index",
        BreakerSettings::new(3, Duration::from_secs(30), Duration::from_secs(1)),
    );
    for domain in ["document", "search"] {
        t.ensure_stream(&StreamSpec::for_domain(domain, None)?).await?;
    }
    let builder = Service::builder(t.clone(), "monitoring")
        .declare_event::<DocumentCreated>()
        .describe(|topology| {
            topology.add_publication("document", None, EventRef::of::<DocumentCreated>());
            topology.add_publication("search", Some("index"), EventRef::of::<DocumentIndexed>());
        })
        .register(SearchService {
            index: index.clone(),
            breaker: breaker.clone(),
        });
    let service = builder.start().await?;

    for n in 0..documents {
        let created = DocumentCreated {
            document_id: DocumentId::new(),
            title: format!("report {n}"),
        };
        t.publish_and_wait(created.to_envelope()?.into()).await?;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let handled = |s: &Service| {
        s.handler_stats("search-index")
            .is_some_and(|s| s.succeeded == documents as u64)
    };
    while !handled(&service) {
        if tokio::time::Instant::now() > deadline {
            return Err("documents were not all indexed in time".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stats = service.handler_stats("search-index").ok_or("no stats")?;
    println!(
        "indexed {} documents: {} index calls, {} retried, {} deferred while the breaker was open, {} dead-lettered; breaker {}",
        documents,
        index.calls.load(Ordering::SeqCst),
        stats.retried,
        stats.deferred,
        stats.dead_lettered,
        breaker.state(),
    );
    let topology = service.topology();
    for w in topology.warnings() {
        println!("topology warning: {w}");
    }
    service.shutdown(Duration::from_secs(5)).await;
    Ok((metrics.render(), topology.to_mermaid()))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    // Logs with the span of each message: handler, subject, message and correlation ids.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .init();
    let metrics = prometheus().install_recorder()?;
    let transport = AnyTransport::from_env().await?;
    println!("monitoring on the {} transport", transport.kind());
    let (text, mermaid) = run(transport, &metrics, 6).await?;
    println!("\n# ---- Prometheus text ----\n{text}");
    println!("# ---- topology (Mermaid) ----\n{mermaid}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn exports_breaker_and_handler_metrics_as_prometheus_text() {
        // A recorder local to this thread (the current-thread runtime runs the service here).
        let recorder = prometheus().build_recorder();
        let handle = recorder.handle();
        let _guard = metrics::set_default_local_recorder(&recorder);
        let (text, mermaid) = run(MemoryTransport::new(), &handle, 6).await.expect("run");

        let line = |prefix: &str| {
            text.lines()
                .find(|l| l.starts_with(prefix))
                .unwrap_or_else(|| panic!("no line starting with {prefix:?} in\n{text}"))
                .to_owned()
        };
        let value = |l: String| l.rsplit(' ').next().unwrap_or_default().parse::<f64>().expect("value");
        let labels =
            r#"source_domain="document",target_domain="search",handler="search-index",event_type="DocumentCreated""#;
        assert!(text.contains("# TYPE cim_handler_messages_total counter"), "{text}");
        assert_eq!(
            value(line(&format!(
                r#"cim_handler_messages_total{{{labels},outcome="succeeded"}}"#
            ))),
            6.0
        );
        assert!(
            value(line(&format!(
                r#"cim_handler_messages_total{{{labels},outcome="deferred"}}"#
            ))) >= 1.0
        );
        assert_eq!(
            value(line(&format!(
                r#"cim_handler_messages_total{{{labels},outcome="dead_lettered"}}"#
            ))),
            0.0
        );
        // 3 failed calls, 6 successful ones, and the deferred runs in which the breaker refused.
        assert!(value(line(&format!(r#"cim_handler_duration_seconds_count{{{labels}}}"#))) >= 9.0);
        assert!(text.contains("cim_handler_duration_seconds_bucket{"), "{text}");
        assert_eq!(
            value(line(
                r#"cim_breaker_transitions_total{breaker="search-index",from="closed",to="open"}"#
            )),
            1.0
        );
        assert_eq!(
            value(line(
                r#"cim_breaker_transitions_total{breaker="search-index",from="half_open",to="closed"}"#
            )),
            1.0
        );
        assert_eq!(value(line(r#"cim_breaker_state{breaker="search-index"}"#)), 0.0);
        assert_eq!(
            value(line(
                r#"cim_published_total{source_domain="search",publisher="search-index",outcome="ok"}"#
            )),
            6.0
        );

        assert!(
            mermaid.contains(r#"m_document_created -->|"index"| p_search"#),
            "{mermaid}"
        );
        assert!(mermaid.contains("p_search --> m_search_indexed"), "{mermaid}");
    }
}
