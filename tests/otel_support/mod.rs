//! Shared by the trace-context tests: an in-memory span exporter behind the global `tracing`
//! subscriber (one test per binary installs it), and reading spans' attributes.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// Installs the global subscriber with a `tracing-opentelemetry` layer exporting to memory.
pub fn install() -> InMemorySpanExporter {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber =
        tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("cim-test")));
    tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
    exporter
}

/// A span's attribute as text.
pub fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}
