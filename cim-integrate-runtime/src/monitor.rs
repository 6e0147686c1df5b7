//! Monitoring of integration points: metric names and labels, and the span convention.
//!
//! **Metrics** go through the [`metrics`] facade: install any recorder (a Prometheus exporter, a
//! statsd one, ...) before starting a [`Service`](crate::service::Service), and the runtime reports
//! to it; with none installed they cost next to nothing. Handler metrics are registered once per
//! handler when the service starts, so the hot path touches pre-resolved handles only.
//!
//! | metric | kind | labels | what |
//! | --- | --- | --- | --- |
//! | `cim_handler_messages_total` | counter | `source_domain`, `target_domain`, `handler`, `event_type`, `outcome` | deliveries by outcome: `succeeded`, `duplicate` (a de-duplication hit), `retried`, `deferred` (a breaker was open), `dead_lettered` |
//! | `cim_handler_duration_seconds` | histogram | `source_domain`, `target_domain`, `handler`, `event_type` | time of each handler run |
//! | `cim_handler_redeliveries_total` | counter | as above | deliveries after the first |
//! | `cim_handler_panics_total` | counter | as above | runs that panicked |
//! | `cim_dead_letters_total` | counter | as above, and `reason` (`permanent`, `undecodable`, `exhausted`, `invalid_envelope`) | messages dead-lettered |
//! | `cim_published_total` | counter | `source_domain`, `publisher`, `outcome` (`ok`, `duplicate`, `error`) | publishes through a handler's [`Context`](crate::handler::Context) |
//! | `cim_publish_duration_seconds` | histogram | `source_domain`, `publisher` | time until the stream acknowledged |
//! | `cim_breaker_state` | gauge | `breaker` (and the handler labels for handler breakers) | 0 closed, 1 open, 2 half-open |
//! | `cim_breaker_transitions_total` | counter | `breaker`, `from`, `to` | state changes |
//! | `cim_breaker_rejected_total` | counter | `breaker` | calls refused while open or half-open |
//! | `cim_integration_calls_total` | counter | `kind`, `name`, `source_domain`, `target_domain`, `outcome` | other integration points ([`IntegrationPoint`]: saga steps, commands) |
//! | `cim_integration_duration_seconds` | histogram | `kind`, `name`, `source_domain`, `target_domain` | their latency |
//!
//! `source_domain` is the domain a message comes from: the first token of its subject after the
//! deployment prefix (`document.created` -> `document`). `target_domain` is the domain that
//! reacts: the name of the handler set (as in the guide's `IntegrationMonitor`, which records every
//! event flow by source and target domain).
//!
//! **Spans** (`tracing`): the service opens `handle` around every delivery, [`Context`] publishes
//! open `publish`, and [`IntegrationPoint::span`] opens `integration` for other modules. Each
//! carries `subject`, `message_id`, `correlation_id` and `causation_id`, and `handler` or the
//! point's `kind` and `name`, so one correlation id finds every step of a conversation in the logs.
//!
//! [`Context`]: crate::handler::Context

use crate::breaker::BreakerState;
use crate::id::Identity;
use crate::subject::Subject;
use metrics::{Counter, Histogram, Label};
use std::future::Future;
use std::time::Duration;

/// `cim_handler_messages_total`.
pub const HANDLER_MESSAGES: &str = "cim_handler_messages_total";
/// `cim_handler_duration_seconds`.
pub const HANDLER_DURATION: &str = "cim_handler_duration_seconds";
/// `cim_handler_redeliveries_total`.
pub const HANDLER_REDELIVERIES: &str = "cim_handler_redeliveries_total";
/// `cim_handler_panics_total`.
pub const HANDLER_PANICS: &str = "cim_handler_panics_total";
/// `cim_dead_letters_total`.
pub const DEAD_LETTERS: &str = "cim_dead_letters_total";
/// `cim_published_total`.
pub const PUBLISHED: &str = "cim_published_total";
/// `cim_publish_duration_seconds`.
pub const PUBLISH_DURATION: &str = "cim_publish_duration_seconds";
/// `cim_breaker_state`.
pub const BREAKER_STATE: &str = "cim_breaker_state";
/// `cim_breaker_transitions_total`.
pub const BREAKER_TRANSITIONS: &str = "cim_breaker_transitions_total";
/// `cim_breaker_rejected_total`.
pub const BREAKER_REJECTED: &str = "cim_breaker_rejected_total";
/// `cim_integration_calls_total`.
pub const INTEGRATION_CALLS: &str = "cim_integration_calls_total";
/// `cim_integration_duration_seconds`.
pub const INTEGRATION_DURATION: &str = "cim_integration_duration_seconds";

/// Describes every metric above to the installed recorder (help texts and units). The service
/// calls it at start; calling it again is harmless.
pub fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(HANDLER_MESSAGES, "Deliveries to a handler, by outcome");
    describe_histogram!(HANDLER_DURATION, Unit::Seconds, "Time of one handler run");
    describe_counter!(HANDLER_REDELIVERIES, "Deliveries to a handler after the first");
    describe_counter!(HANDLER_PANICS, "Handler runs that panicked");
    describe_counter!(DEAD_LETTERS, "Messages dead-lettered, by reason");
    describe_counter!(PUBLISHED, "Messages published from handlers, by outcome");
    describe_histogram!(PUBLISH_DURATION, Unit::Seconds, "Time until a publish was acknowledged");
    describe_gauge!(BREAKER_STATE, "Circuit breaker state: 0 closed, 1 open, 2 half-open");
    describe_counter!(BREAKER_TRANSITIONS, "Circuit breaker state changes");
    describe_counter!(
        BREAKER_REJECTED,
        "Calls refused by an open or half-open circuit breaker"
    );
    describe_counter!(
        INTEGRATION_CALLS,
        "Calls of other integration points (saga steps, commands)"
    );
    describe_histogram!(
        INTEGRATION_DURATION,
        Unit::Seconds,
        "Latency of other integration points"
    );
}

/// The domain a subject belongs to: its first token after `prefix` (`prod.document.created` with
/// prefix `prod` -> `document`). A subject outside the prefix gives its own first token.
pub fn source_domain<'a>(subject: &'a str, prefix: Option<&Subject>) -> &'a str {
    let rest = prefix
        .and_then(|p| subject.strip_prefix(p.as_str()))
        .and_then(|r| r.strip_prefix('.'))
        .unwrap_or(subject);
    rest.split('.').next().unwrap_or(rest)
}

/// What happened to one delivery, as the `outcome` label of `cim_handler_messages_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The handler succeeded; the message was acknowledged.
    Succeeded,
    /// The handler had already handled it (de-duplication hit); acknowledged without running.
    Duplicate,
    /// The handler failed (or panicked) and will be retried.
    Retried,
    /// Not run or not counted: a circuit breaker was open; redelivered after the cool-down.
    Deferred,
    /// Not this handler's event type (a wide pattern matched another event); acknowledged
    /// without running.
    Skipped,
    /// Dead-lettered (commands: answered `failed` for good).
    DeadLettered,
    /// A command handler rejected the command.
    Rejected,
}

impl Outcome {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::Duplicate => "duplicate",
            Self::Retried => "retried",
            Self::Deferred => "deferred",
            Self::Skipped => "skipped",
            Self::DeadLettered => "dead_lettered",
            Self::Rejected => "rejected",
        }
    }
}

/// Why a message was dead-lettered, as the `reason` label of `cim_dead_letters_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeadLetterReason {
    /// The handler failed permanently.
    Permanent,
    /// The payload could not be decoded.
    Undecodable,
    /// The retries are spent.
    Exhausted,
    /// The subject or headers could not form an envelope.
    InvalidEnvelope,
}

impl DeadLetterReason {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Permanent => "permanent",
            Self::Undecodable => "undecodable",
            Self::Exhausted => "exhausted",
            Self::InvalidEnvelope => "invalid_envelope",
        }
    }

    /// Every kind.
    pub const ALL: [Self; 4] = [
        Self::Permanent,
        Self::Undecodable,
        Self::Exhausted,
        Self::InvalidEnvelope,
    ];

    /// The kind whose label is `label` (as [`as_str`](Self::as_str) writes it).
    pub fn parse(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == label.trim())
    }
}

/// Pre-registered metric handles of one handler.
pub(crate) struct HandlerMetrics {
    succeeded: Counter,
    duplicate: Counter,
    retried: Counter,
    deferred: Counter,
    skipped: Counter,
    dead_lettered: Counter,
    rejected: Counter,
    dead_letter_reasons: [Counter; 4],
    redeliveries: Counter,
    panics: Counter,
    duration: Histogram,
}

impl HandlerMetrics {
    pub(crate) fn new(source_domain: &str, target_domain: &str, handler: &str, event_type: &str) -> Self {
        let base = handler_labels(source_domain, target_domain, handler, event_type);
        let with = |k: &'static str, v: &'static str| {
            let mut l = base.clone();
            l.push(Label::new(k, v));
            l
        };
        let outcome = |o: Outcome| metrics::counter!(HANDLER_MESSAGES, with("outcome", o.as_str()));
        let reason = |r: DeadLetterReason| metrics::counter!(DEAD_LETTERS, with("reason", r.as_str()));
        Self {
            succeeded: outcome(Outcome::Succeeded),
            duplicate: outcome(Outcome::Duplicate),
            retried: outcome(Outcome::Retried),
            deferred: outcome(Outcome::Deferred),
            skipped: outcome(Outcome::Skipped),
            dead_lettered: outcome(Outcome::DeadLettered),
            rejected: outcome(Outcome::Rejected),
            dead_letter_reasons: [
                reason(DeadLetterReason::Permanent),
                reason(DeadLetterReason::Undecodable),
                reason(DeadLetterReason::Exhausted),
                reason(DeadLetterReason::InvalidEnvelope),
            ],
            redeliveries: metrics::counter!(HANDLER_REDELIVERIES, base.clone()),
            panics: metrics::counter!(HANDLER_PANICS, base.clone()),
            duration: metrics::histogram!(HANDLER_DURATION, base),
        }
    }

    pub(crate) fn outcome(&self, o: Outcome) {
        match o {
            Outcome::Succeeded => &self.succeeded,
            Outcome::Duplicate => &self.duplicate,
            Outcome::Retried => &self.retried,
            Outcome::Deferred => &self.deferred,
            Outcome::Skipped => &self.skipped,
            Outcome::DeadLettered => &self.dead_lettered,
            Outcome::Rejected => &self.rejected,
        }
        .increment(1);
    }

    pub(crate) fn dead_letter(&self, reason: DeadLetterReason) {
        self.dead_letter_reasons[reason as usize].increment(1);
    }

    pub(crate) fn delivered(&self, delivered: u64) {
        if delivered > 1 {
            self.redeliveries.increment(1);
        }
    }

    pub(crate) fn panicked(&self) {
        self.panics.increment(1);
    }

    pub(crate) fn ran(&self, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
    }
}

/// The labels of a handler's metrics (and of its breaker's).
pub(crate) fn handler_labels(source_domain: &str, target_domain: &str, handler: &str, event_type: &str) -> Vec<Label> {
    vec![
        Label::new("source_domain", source_domain.to_owned()),
        Label::new("target_domain", target_domain.to_owned()),
        Label::new("handler", handler.to_owned()),
        Label::new("event_type", event_type.to_owned()),
    ]
}

fn breaker_labels(name: &str, extra: &[(String, String)]) -> Vec<Label> {
    let mut labels = Vec::with_capacity(extra.len() + 1);
    labels.push(Label::new("breaker", name.to_owned()));
    labels.extend(extra.iter().map(|(k, v)| Label::new(k.clone(), v.clone())));
    labels
}

pub(crate) fn breaker_state(name: &str, extra: &[(String, String)], state: BreakerState) {
    metrics::gauge!(BREAKER_STATE, breaker_labels(name, extra)).set(state.gauge_value());
}

pub(crate) fn breaker_transition(name: &str, extra: &[(String, String)], from: BreakerState, to: BreakerState) {
    breaker_state(name, extra, to);
    let mut labels = breaker_labels(name, extra);
    labels.push(Label::new("from", from.as_str()));
    labels.push(Label::new("to", to.as_str()));
    metrics::counter!(BREAKER_TRANSITIONS, labels).increment(1);
}

pub(crate) fn breaker_rejected(name: &str, extra: &[(String, String)]) {
    metrics::counter!(BREAKER_REJECTED, breaker_labels(name, extra)).increment(1);
}

/// The publish metrics of one publisher into one domain (`cim_publish_duration_seconds`,
/// `cim_published_total` by outcome): registered once, so that a publish records into handles
/// instead of building and looking up its labels. Like [`HandlerMetrics`], the handles belong to
/// the recorder installed when they were registered.
#[derive(Debug)]
pub(crate) struct PublishMetrics {
    duration: Histogram,
    /// `cim_published_total`, indexed by [`PublishOutcome`].
    published: [Counter; PublishOutcome::ALL.len()],
}

impl PublishMetrics {
    pub(crate) fn new(domain: &str, publisher: &str) -> Self {
        let labels = vec![
            Label::new("source_domain", domain.to_owned()),
            Label::new("publisher", publisher.to_owned()),
        ];
        let published = PublishOutcome::ALL.map(|o| {
            let mut l = labels.clone();
            l.push(Label::new("outcome", o.as_str()));
            metrics::counter!(PUBLISHED, l)
        });
        Self {
            published,
            duration: metrics::histogram!(PUBLISH_DURATION, labels),
        }
    }

    /// How a publish ended, after `elapsed`.
    pub(crate) fn record(&self, outcome: PublishOutcome, elapsed: Duration) {
        self.duration.record(elapsed.as_secs_f64());
        self.published[outcome as usize].increment(1);
    }
}

/// The `outcome` label of `cim_published_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PublishOutcome {
    /// Stored.
    Ok,
    /// Dropped by the stream's duplicate window (published before).
    Duplicate,
    /// Not acknowledged.
    Error,
}

impl PublishOutcome {
    /// Every outcome, in the order of their discriminants.
    const ALL: [Self; 3] = [Self::Ok, Self::Duplicate, Self::Error];

    /// The label's value: `ok`, `duplicate`, `error`.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Duplicate => "duplicate",
            Self::Error => "error",
        }
    }
}

/// The target of every `handle` span (one per message a handler, command handler or saga step
/// runs): a stable name for a subscriber's filter, whatever module opens the span. With
/// `tracing_subscriber`'s formatter at `INFO`, a `handle` span costs 0.5-0.75 us per message;
/// `cim_integrate::handle=warn` in a filter leaves them out, and the handler's own log lines
/// then carry no message ids (see `docs/monitoring.md`, "Spans").
pub const HANDLE_TARGET: &str = "cim_integrate::handle";

/// The target of every `publish` span (a publish through a handler's [`Context`](crate::handler::Context)),
/// as [`HANDLE_TARGET`] is of the `handle` spans.
pub const PUBLISH_TARGET: &str = "cim_integrate::publish";

/// The span a publish runs in: `publish` with the new message's identity.
pub(crate) fn publish_span(subject: &Subject, identity: &Identity, publisher: &str) -> tracing::Span {
    tracing::info_span!(
        target: PUBLISH_TARGET,
        "publish",
        subject = %subject,
        handler = publisher,
        message_id = %identity.message_id,
        correlation_id = %identity.correlation_id,
        causation_id = %identity.causation_id,
    )
}

/// An integration point other than a handler or a publish (a saga step, a command, an outgoing
/// call), with the monitoring convention of the runtime: an `integration` span carrying the
/// message identity, and `cim_integration_calls_total` / `cim_integration_duration_seconds`.
///
/// ```
/// use cim_integrate_runtime::monitor::IntegrationPoint;
/// use cim_integrate_runtime::{Identity, Subject};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let point = IntegrationPoint::new("saga_step", "document_publishing.index").source("document").target("search");
/// let subject = Subject::new("document.published")?;
/// let identity = Identity::root();
/// let r: Result<u32, &str> = point.observe(&subject, &identity, async { Ok(7) }).await;
/// assert_eq!(r, Ok(7));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntegrationPoint {
    kind: &'static str,
    name: String,
    source_domain: String,
    target_domain: String,
}

impl IntegrationPoint {
    /// A point of `kind` (`saga_step`, `compensation`, `command`, `command_handler`, `call`, ...)
    /// named `name`; both domains empty until set.
    pub fn new(kind: &'static str, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
            source_domain: String::new(),
            target_domain: String::new(),
        }
    }

    /// The domain the triggering message comes from.
    pub fn source(mut self, domain: impl Into<String>) -> Self {
        self.source_domain = domain.into();
        self
    }

    /// The domain that acts.
    pub fn target(mut self, domain: impl Into<String>) -> Self {
        self.target_domain = domain.into();
        self
    }

    /// The kind.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// An `integration` span: `kind`, `name`, `subject`, `message_id`, `correlation_id`,
    /// `causation_id`, `source_domain`, `target_domain`.
    pub fn span(&self, subject: &Subject, identity: &Identity) -> tracing::Span {
        tracing::info_span!(
            "integration",
            kind = self.kind,
            name = %self.name,
            subject = %subject,
            message_id = %identity.message_id,
            correlation_id = %identity.correlation_id,
            causation_id = %identity.causation_id,
            source_domain = %self.source_domain,
            target_domain = %self.target_domain,
        )
    }

    /// Counts one call with `outcome` (`ok`, `error`, `timeout`, ...) and records its latency.
    pub fn record(&self, outcome: &'static str, elapsed: Duration) {
        let labels = vec![
            Label::new("kind", self.kind),
            Label::new("name", self.name.clone()),
            Label::new("source_domain", self.source_domain.clone()),
            Label::new("target_domain", self.target_domain.clone()),
        ];
        metrics::histogram!(INTEGRATION_DURATION, labels.clone()).record(elapsed.as_secs_f64());
        let mut labels = labels;
        labels.push(Label::new("outcome", outcome));
        metrics::counter!(INTEGRATION_CALLS, labels).increment(1);
    }

    /// Runs `fut` inside [`span`](Self::span), then [`record`](Self::record)s `ok` or `error`.
    pub async fn observe<T, E, F>(&self, subject: &Subject, identity: &Identity, fut: F) -> Result<T, E>
    where
        F: Future<Output = Result<T, E>>,
    {
        use tracing::Instrument;
        let start = tokio::time::Instant::now();
        let r = fut.instrument(self.span(subject, identity)).await;
        self.record(if r.is_ok() { "ok" } else { "error" }, start.elapsed());
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_domain_skips_the_prefix() {
        let prod = Subject::new("prod").expect("subject");
        assert_eq!(source_domain("document.created", None), "document");
        assert_eq!(source_domain("prod.document.created", Some(&prod)), "document");
        assert_eq!(source_domain("document.created", Some(&prod)), "document");
        assert_eq!(source_domain("production.x", Some(&prod)), "production");
    }

    /// `PublishMetrics` indexes its counters by discriminant, in the order of `ALL`.
    #[test]
    fn publish_outcomes_index_their_counters() {
        for (i, o) in PublishOutcome::ALL.into_iter().enumerate() {
            assert_eq!(o as usize, i, "{o:?}");
        }
        let labels: Vec<&str> = PublishOutcome::ALL.map(PublishOutcome::as_str).into();
        assert_eq!(labels, ["ok", "duplicate", "error"]);
    }
}
