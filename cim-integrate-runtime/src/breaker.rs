//! Circuit breakers: stop calling a failing integration until it had time to recover.
//!
//! A [`CircuitBreaker`] is **closed** while calls succeed. When
//! [`failure_threshold`](BreakerSettings::failure_threshold) calls fail within
//! [`window`](BreakerSettings::window) with no success in between, it **opens**: every call is
//! refused at once with [`BreakerOpen`], which says how long the cool-down still lasts. Once
//! [`cool_down`](BreakerSettings::cool_down) has passed it is **half-open**: up to
//! [`probes`](BreakerSettings::probes) calls go through as probes, other calls are still refused;
//! when that many probes succeeded it closes, and a failed probe opens it again for another
//! cool-down.
//!
//! Wrap any outgoing call with [`CircuitBreaker::call`]:
//!
//! ```
//! use cim_integrate_runtime::breaker::{BreakerError, BreakerSettings, BreakerState, CircuitBreaker};
//! use std::time::Duration;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().unwrap().block_on(async {
//! let settings = BreakerSettings::new(2, Duration::from_secs(60), Duration::from_secs(5));
//! let search = CircuitBreaker::new("search-index", settings);
//! for _ in 0..2 {
//!     let r: Result<(), _> = search.call(|| async { Err::<(), _>("index unavailable") }).await;
//!     assert!(matches!(r, Err(BreakerError::Inner("index unavailable"))));
//! }
//! assert_eq!(search.state(), BreakerState::Open);
//! // Refused without calling, saying when to come back.
//! match search.call(|| async { Ok::<_, &str>(()) }).await {
//!     Err(BreakerError::Open(open)) => assert_eq!(open.retry_after, Duration::from_secs(5)),
//!     other => panic!("{other:?}"),
//! }
//! tokio::time::sleep(Duration::from_secs(5)).await;
//! assert_eq!(search.state(), BreakerState::HalfOpen);
//! search.call(|| async { Ok::<_, &str>(()) }).await?; // the probe succeeds
//! assert_eq!(search.state(), BreakerState::Closed);
//! # Ok::<(), BreakerError<&str>>(())
//! # }).unwrap();
//! ```
//!
//! Inside a handler, `?` turns a [`BreakerError`] into a [`HandlerError`]; when the breaker was
//! open, the [`Service`](crate::service::Service) recognises the [`BreakerOpen`] in it and naks the
//! message with the remaining cool-down as delay, without counting an attempt. A handler can also
//! get a breaker of its own through [`HandlerOptions::breaker`](crate::handler::HandlerOptions):
//! its transient failures and panics count as failures, and while it is open, messages are not run
//! at all.
//!
//! Every state change is logged (`tracing`, target `cim_integrate_runtime::breaker`) and counted
//! (`cim_breaker_transitions_total`, gauge `cim_breaker_state`, refusals
//! `cim_breaker_rejected_total`; see [`crate::monitor`]). All timing uses `tokio::time`, so tests
//! run under paused time.

use crate::handler::{BoxError, HandlerError};
use crate::monitor;
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::time::Instant;

/// How a [`CircuitBreaker`] decides to open and to close again.
///
/// This is also the value of [`HandlerOptions::breaker`](crate::handler::HandlerOptions): the
/// `#[subscribe(breaker_threshold = .., breaker_window = "..", breaker_cool_down = "..",
/// breaker_probes = ..)]` options map onto these fields one to one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerSettings {
    /// Failures, each within [`window`](Self::window) of the last and with no success in
    /// between, that open the breaker (at least 1). Default 5.
    pub failure_threshold: u32,
    /// How far back failures count: a failure older than this is forgotten. Default 60 s.
    pub window: Duration,
    /// How long the breaker stays open before it lets probes through. Default 30 s.
    pub cool_down: Duration,
    /// Calls let through at once while half-open; that many successes close the breaker, one
    /// failure opens it again (at least 1). Default 1.
    pub probes: u32,
}

impl Default for BreakerSettings {
    /// 5 failures within 60 s open it for 30 s; 1 probe.
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            window: Duration::from_secs(60),
            cool_down: Duration::from_secs(30),
            probes: 1,
        }
    }
}

impl BreakerSettings {
    /// `failure_threshold` failures within `window` open the breaker for `cool_down`; one probe.
    pub fn new(failure_threshold: u32, window: Duration, cool_down: Duration) -> Self {
        Self {
            failure_threshold: failure_threshold.max(1),
            window,
            cool_down,
            probes: 1,
        }
    }

    /// Sets the number of probes admitted while half-open (at least 1).
    pub fn probes(mut self, probes: u32) -> Self {
        self.probes = probes.max(1);
        self
    }
}

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls are refused until the cool-down has passed.
    Open,
    /// The cool-down has passed: a few probe calls go through, the rest are refused.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`: the label value used in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }

    /// The value of the `cim_breaker_state` gauge: 0 closed, 1 open, 2 half-open.
    pub fn gauge_value(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::Open => 1.0,
            Self::HalfOpen => 2.0,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A call refused because the breaker is open (or half-open with every probe slot taken).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker `{breaker}` is {state}; retry in {retry_after:?}")]
pub struct BreakerOpen {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// Its state when the call was refused.
    pub state: BreakerState,
    /// How long until a call may be admitted: the rest of the cool-down, or, while half-open,
    /// [`HALF_OPEN_RETRY`] bounded by the cool-down.
    pub retry_after: Duration,
}

/// How long a call refused while half-open (every probe slot taken) should wait before trying
/// again, at most [`BreakerSettings::cool_down`].
pub const HALF_OPEN_RETRY: Duration = Duration::from_secs(1);

/// The result of [`CircuitBreaker::call`] when it did not succeed: refused, or the call's own
/// error. Exhaustive on purpose.
#[derive(Debug, thiserror::Error)]
pub enum BreakerError<E> {
    /// The breaker refused the call; the wrapped function did not run.
    #[error("call refused")]
    Open(#[source] BreakerOpen),
    /// The call ran and failed with this error (counted as a failure).
    #[error("{0}")]
    Inner(E),
}

impl<E> BreakerError<E> {
    /// The refusal, if the breaker refused the call.
    pub fn as_open(&self) -> Option<&BreakerOpen> {
        match self {
            Self::Open(o) => Some(o),
            Self::Inner(_) => None,
        }
    }
}

impl<E: Into<BoxError>> From<BreakerError<E>> for HandlerError {
    /// Both are transient. A refusal keeps its [`BreakerOpen`] as the error, so the service defers
    /// the message by the remaining cool-down instead of counting a failed attempt.
    fn from(e: BreakerError<E>) -> Self {
        match e {
            BreakerError::Open(open) => HandlerError::Transient(Box::new(open)),
            BreakerError::Inner(e) => HandlerError::Transient(e.into()),
        }
    }
}

/// Finds a [`BreakerOpen`] in an error or its chain of sources.
pub fn find_open<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a BreakerOpen> {
    let mut cur = Some(e);
    while let Some(err) = cur {
        if let Some(open) = err.downcast_ref::<BreakerOpen>() {
            return Some(open);
        }
        cur = err.source();
    }
    None
}

enum Phase {
    /// Times of the failures since the last success, oldest first, at most `failure_threshold`.
    Closed {
        failures: VecDeque<Instant>,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        in_flight: u32,
        successes: u32,
    },
}

impl Phase {
    fn state(&self) -> BreakerState {
        match self {
            Self::Closed { .. } => BreakerState::Closed,
            Self::Open { .. } => BreakerState::Open,
            Self::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

struct Core {
    phase: Phase,
    /// Bumped at every transition: outcomes of calls admitted before it are ignored.
    generation: u64,
}

struct Inner {
    name: Arc<str>,
    settings: BreakerSettings,
    labels: Vec<(String, String)>,
    core: Mutex<Core>,
}

/// A circuit breaker around an integration point; cheap to clone (clones share the state).
#[derive(Clone)]
pub struct CircuitBreaker {
    inner: Arc<Inner>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.inner.name)
            .field("settings", &self.inner.settings)
            .field("state", &self.state())
            .finish()
    }
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the `breaker` label of its metrics and logs).
    pub fn new(name: impl Into<String>, settings: BreakerSettings) -> Self {
        Self::with_labels(name, settings, Vec::new())
    }

    /// A closed breaker whose metrics carry `labels` besides `breaker = name` (the service adds
    /// `source_domain`, `target_domain` and `handler` to the breakers of handlers).
    pub fn with_labels(name: impl Into<String>, settings: BreakerSettings, labels: Vec<(String, String)>) -> Self {
        let settings = BreakerSettings {
            failure_threshold: settings.failure_threshold.max(1),
            probes: settings.probes.max(1),
            ..settings
        };
        let b = Self {
            inner: Arc::new(Inner {
                name: Arc::from(name.into()),
                settings,
                labels,
                core: Mutex::new(Core {
                    phase: Phase::Closed {
                        failures: VecDeque::new(),
                    },
                    generation: 0,
                }),
            }),
        };
        monitor::breaker_state(&b.inner.name, &b.inner.labels, BreakerState::Closed);
        b
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its settings.
    pub fn settings(&self) -> &BreakerSettings {
        &self.inner.settings
    }

    /// Its state now (an open breaker whose cool-down has passed is half-open).
    pub fn state(&self) -> BreakerState {
        let mut core = self.lock();
        self.advance(&mut core, Instant::now());
        core.phase.state()
    }

    /// How long until a call may be admitted: zero when closed, the rest of the cool-down when
    /// open, as in [`BreakerOpen::retry_after`] when half-open with every probe slot taken.
    pub fn retry_after(&self) -> Duration {
        let mut core = self.lock();
        let now = Instant::now();
        self.advance(&mut core, now);
        match core.phase {
            Phase::Closed { .. } => Duration::ZERO,
            Phase::Open { until } => until.saturating_duration_since(now),
            Phase::HalfOpen { in_flight, .. } if in_flight < self.inner.settings.probes => Duration::ZERO,
            Phase::HalfOpen { .. } => self.half_open_retry(),
        }
    }

    /// Asks to make one call. The [`BreakerPermit`] records its outcome; dropping it without one
    /// (the call was cancelled, or failed for a reason that says nothing about the integration)
    /// records nothing.
    pub fn try_acquire(&self) -> Result<BreakerPermit, BreakerOpen> {
        let mut core = self.lock();
        let now = Instant::now();
        self.advance(&mut core, now);
        let generation = core.generation;
        let probes = self.inner.settings.probes;
        match &mut core.phase {
            Phase::Closed { .. } => Ok(self.permit(generation, false)),
            Phase::HalfOpen { in_flight, .. } if *in_flight < probes => {
                *in_flight += 1;
                Ok(self.permit(generation, true))
            }
            Phase::HalfOpen { .. } => Err(self.refusal(BreakerState::HalfOpen, self.half_open_retry())),
            Phase::Open { until } => {
                let retry_after = until.saturating_duration_since(now);
                Err(self.refusal(BreakerState::Open, retry_after))
            }
        }
    }

    /// Runs `f` if the breaker admits a call; an `Err` from it counts as a failure, an `Ok` as a
    /// success.
    pub async fn call<F, Fut, T, E>(&self, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        self.call_with(|_| true, f).await
    }

    /// Runs `f` if the breaker admits a call; an `Err` for which `is_failure` is `true` counts as
    /// a failure (a "not found" from a healthy service need not), anything else as a success.
    pub async fn call_with<F, Fut, T, E>(&self, is_failure: impl FnOnce(&E) -> bool, f: F) -> Result<T, BreakerError<E>>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let permit = self.try_acquire().map_err(BreakerError::Open)?;
        match f().await {
            Ok(v) => {
                permit.success();
                Ok(v)
            }
            Err(e) => {
                if is_failure(&e) {
                    permit.failure();
                } else {
                    permit.success();
                }
                Err(BreakerError::Inner(e))
            }
        }
    }

    fn permit(&self, generation: u64, probe: bool) -> BreakerPermit {
        BreakerPermit {
            breaker: self.clone(),
            generation,
            probe,
            settled: false,
        }
    }

    fn refusal(&self, state: BreakerState, retry_after: Duration) -> BreakerOpen {
        monitor::breaker_rejected(&self.inner.name, &self.inner.labels);
        BreakerOpen {
            breaker: self.inner.name.clone(),
            state,
            retry_after,
        }
    }

    fn half_open_retry(&self) -> Duration {
        HALF_OPEN_RETRY.min(self.inner.settings.cool_down)
    }

    fn lock(&self) -> MutexGuard<'_, Core> {
        // The state is a few integers; a panic elsewhere cannot leave it inconsistent.
        self.inner.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Open -> half-open once the cool-down has passed.
    fn advance(&self, core: &mut Core, now: Instant) {
        if let Phase::Open { until } = core.phase
            && now >= until
        {
            self.transition(
                core,
                Phase::HalfOpen {
                    in_flight: 0,
                    successes: 0,
                },
                "cool-down over; letting probes through",
            );
        }
    }

    fn transition(&self, core: &mut Core, to: Phase, why: &str) {
        let from = core.phase.state();
        let to_state = to.state();
        core.phase = to;
        core.generation += 1;
        let s = &self.inner.settings;
        match to_state {
            BreakerState::Open => tracing::warn!(
                breaker = %self.inner.name, from = %from, to = %to_state, cool_down = ?s.cool_down,
                "circuit breaker opened: {why}"
            ),
            BreakerState::HalfOpen => {
                tracing::info!(breaker = %self.inner.name, from = %from, to = %to_state, "circuit breaker half-open: {why}")
            }
            BreakerState::Closed => {
                tracing::info!(breaker = %self.inner.name, from = %from, to = %to_state, "circuit breaker closed: {why}")
            }
        }
        monitor::breaker_transition(&self.inner.name, &self.inner.labels, from, to_state);
    }

    fn record(&self, generation: u64, probe: bool, outcome: Option<bool>) {
        let mut core = self.lock();
        let now = Instant::now();
        self.advance(&mut core, now);
        if core.generation != generation {
            // Admitted before the last transition: says nothing about the state since.
            return;
        }
        let s = &self.inner.settings;
        match (&mut core.phase, outcome) {
            (Phase::Closed { failures }, Some(true)) => failures.clear(),
            (Phase::Closed { failures }, Some(false)) => {
                while failures
                    .front()
                    .is_some_and(|t| now.saturating_duration_since(*t) >= s.window)
                {
                    failures.pop_front();
                }
                failures.push_back(now);
                if failures.len() >= s.failure_threshold as usize {
                    let why = format!("{} failures within {:?}", failures.len(), s.window);
                    self.transition(
                        &mut core,
                        Phase::Open {
                            until: crate::clock::later(now, s.cool_down),
                        },
                        &why,
                    );
                }
            }
            (Phase::HalfOpen { in_flight, successes }, outcome) if probe => {
                *in_flight = in_flight.saturating_sub(1);
                match outcome {
                    Some(true) => {
                        *successes += 1;
                        if *successes >= s.probes {
                            let why = format!("{} probe(s) succeeded", s.probes);
                            self.transition(
                                &mut core,
                                Phase::Closed {
                                    failures: VecDeque::new(),
                                },
                                &why,
                            );
                        }
                    }
                    Some(false) => self.transition(
                        &mut core,
                        Phase::Open {
                            until: crate::clock::later(now, s.cool_down),
                        },
                        "a probe failed",
                    ),
                    None => {}
                }
            }
            _ => {}
        }
    }
}

/// Leave to make one call through a [`CircuitBreaker`]; record how it went with
/// [`success`](Self::success) or [`failure`](Self::failure). Dropped unrecorded, it records
/// nothing (and frees its probe slot).
#[derive(Debug)]
#[must_use = "record the outcome with `success()` or `failure()`"]
pub struct BreakerPermit {
    breaker: CircuitBreaker,
    generation: u64,
    probe: bool,
    settled: bool,
}

impl BreakerPermit {
    /// The call succeeded.
    pub fn success(mut self) {
        self.settled = true;
        self.breaker.record(self.generation, self.probe, Some(true));
    }

    /// The call failed in a way that counts against the integration.
    pub fn failure(mut self) {
        self.settled = true;
        self.breaker.record(self.generation, self.probe, Some(false));
    }

    /// `true` if this call is a half-open probe.
    pub fn is_probe(&self) -> bool {
        self.probe
    }
}

impl Drop for BreakerPermit {
    fn drop(&mut self) {
        if !self.settled {
            self.breaker.record(self.generation, self.probe, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(threshold: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            "t",
            BreakerSettings::new(threshold, Duration::from_secs(10), Duration::from_secs(5)),
        )
    }

    fn fail(b: &CircuitBreaker) {
        b.try_acquire().expect("admitted").failure();
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_are_forgotten() {
        let b = breaker(3);
        fail(&b);
        fail(&b);
        tokio::time::advance(Duration::from_secs(11)).await;
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
        fail(&b);
        fail(&b);
        assert_eq!(b.state(), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let b = breaker(2);
        fail(&b);
        b.try_acquire().expect("admitted").success();
        fail(&b);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_admits_only_the_probes_and_a_failed_probe_reopens() {
        let b = CircuitBreaker::new(
            "t",
            BreakerSettings::new(1, Duration::from_secs(10), Duration::from_secs(5)).probes(2),
        );
        fail(&b);
        let refused = b.try_acquire().expect_err("open");
        assert_eq!(refused.retry_after, Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.retry_after(), Duration::from_secs(3));
        tokio::time::advance(Duration::from_secs(3)).await;
        let p1 = b.try_acquire().expect("probe 1");
        let p2 = b.try_acquire().expect("probe 2");
        assert!(p1.is_probe() && p2.is_probe());
        let refused = b.try_acquire().expect_err("slots taken");
        assert_eq!(refused.state, BreakerState::HalfOpen);
        assert_eq!(refused.retry_after, HALF_OPEN_RETRY);
        p1.success();
        assert_eq!(b.state(), BreakerState::HalfOpen);
        p2.failure();
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(b.retry_after(), Duration::from_secs(5));
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_probe_frees_its_slot_and_late_outcomes_are_ignored() {
        let b = breaker(1);
        let early = b.try_acquire().expect("closed");
        fail(&b);
        // Admitted while closed, finishing after the breaker opened: ignored.
        early.success();
        assert_eq!(b.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(5)).await;
        drop(b.try_acquire().expect("probe"));
        let probe = b.try_acquire().expect("slot free again");
        probe.success();
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn call_with_ignores_what_is_not_a_failure() {
        let b = breaker(1);
        let r = b
            .call_with(|e: &&str| *e != "not found", || async { Err::<(), _>("not found") })
            .await;
        assert!(matches!(r, Err(BreakerError::Inner("not found"))));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn open_is_found_in_a_handler_error() {
        let open = BreakerOpen {
            breaker: Arc::from("x"),
            state: BreakerState::Open,
            retry_after: Duration::from_secs(3),
        };
        let e: HandlerError = BreakerError::<std::io::Error>::Open(open.clone()).into();
        let HandlerError::Transient(inner) = &e else {
            panic!("transient expected")
        };
        assert_eq!(find_open(inner.as_ref()), Some(&open));
        let wrapped = BreakerError::<std::io::Error>::Open(open.clone());
        assert_eq!(find_open(&wrapped), Some(&open));
        assert_eq!(find_open(&std::io::Error::other("no")), None);
    }
}
