//! What a test can see of spans and metrics: one capturing subscriber and one metrics recorder,
//! installed globally once per test binary by [`observe`].
//!
//! Global, because a scoped subscriber races with tracing's callsite-interest cache while other
//! tests run on other threads, and a span can then go unrecorded; so tests share one and find
//! their own spans and series by correlation id or by names no other test uses.

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_util::registry::{AtomicStorage, Registry};
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context as LayerContext, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// A span as the capturing subscriber saw it: its name and fields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpanRecord {
    /// The span's name (`handle`, `publish`, ...).
    pub name: &'static str,
    /// Its fields, as text.
    pub fields: BTreeMap<String, String>,
}

impl SpanRecord {
    /// A field's value, or `""`.
    pub fn field(&self, name: &str) -> &str {
        self.fields.get(name).map_or("", String::as_str)
    }
}

/// One metric series: name, labels and current value.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The metric's name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Counter total, gauge value, or the number of histogram samples.
    pub value: f64,
}

/// The spans and metrics of the whole test binary so far.
#[derive(Clone)]
pub struct Observed {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
    registry: Arc<Registry<Key, AtomicStorage>>,
}

impl std::fmt::Debug for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observed").finish_non_exhaustive()
    }
}

impl Observed {
    /// Every span created so far.
    pub fn spans(&self) -> Vec<SpanRecord> {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The spans named `name` whose `correlation_id` field is `correlation_id`.
    pub fn spans_of(&self, name: &str, correlation_id: &str) -> Vec<SpanRecord> {
        self.spans()
            .into_iter()
            .filter(|s| s.name == name && s.field("correlation_id") == correlation_id)
            .collect()
    }

    /// Every metric series recorded through the global recorder so far. Reading does not reset
    /// anything (a draining snapshot would let one test's read steal another's counts).
    pub fn series(&self) -> Vec<Series> {
        let series = |key: &Key, value: f64| Series {
            name: key.name().to_owned(),
            labels: key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect(),
            value,
        };
        let mut all = Vec::new();
        self.registry
            .visit_counters(|key, c| all.push(series(key, c.load(Ordering::Relaxed) as f64)));
        self.registry
            .visit_gauges(|key, g| all.push(series(key, f64::from_bits(g.load(Ordering::Relaxed)))));
        self.registry
            .visit_histograms(|key, h| all.push(series(key, h.data().len() as f64)));
        all
    }

    /// The series of metric `name` whose labels include every `(key, value)` of `labels`.
    pub fn series_with(&self, name: &str, labels: &[(&str, &str)]) -> Vec<Series> {
        self.series()
            .into_iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .collect()
    }

    /// The sum of counter `name` over the series with `labels`.
    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.series_with(name, labels).iter().map(|s| s.value as u64).sum()
    }
}

/// Installs (once) and returns the binary's capturing subscriber and metrics recorder. If another
/// global subscriber or recorder was installed first, spans or metrics are not captured.
pub fn observe() -> Observed {
    static GLOBAL: OnceLock<Observed> = OnceLock::new();
    GLOBAL
        .get_or_init(|| {
            let spans = Arc::new(Mutex::new(Vec::new()));
            let layer = Capture { spans: spans.clone() };
            if tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer)).is_err() {
                tracing::warn!("a global subscriber was installed before: spans are not captured");
            }
            let registry = Arc::new(Registry::atomic());
            if metrics::set_global_recorder(Capturing(registry.clone())).is_err() {
                tracing::warn!("a global metrics recorder was installed before: metrics are not captured");
            }
            Observed { spans, registry }
        })
        .clone()
}

/// The metrics recorder: every series in one registry of atomics, read without resetting.
struct Capturing(Arc<Registry<Key, AtomicStorage>>);

impl Recorder for Capturing {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        self.0.get_or_create_counter(key, |c| Counter::from_arc(c.clone()))
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.0.get_or_create_gauge(key, |g| Gauge::from_arc(g.clone()))
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.0.get_or_create_histogram(key, |h| Histogram::from_arc(h.clone()))
    }
}

struct Capture {
    spans: Arc<Mutex<Vec<SpanRecord>>>,
}

struct Fields<'a>(&'a mut BTreeMap<String, String>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Capture {
    fn on_new_span(&self, attrs: &Attributes<'_>, _id: &Id, _ctx: LayerContext<'_, S>) {
        let mut fields = BTreeMap::new();
        attrs.record(&mut Fields(&mut fields));
        let record = SpanRecord {
            name: attrs.metadata().name(),
            fields,
        };
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).push(record);
    }

    fn on_record(&self, _id: &Id, _values: &Record<'_>, _ctx: LayerContext<'_, S>) {}
}
