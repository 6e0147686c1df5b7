//! Shared by the examples: the transport chosen by `NATS_URL`, an audit handler set that prints
//! a readable trace of every event of the scenario, and (for the tests inside each example) a
//! run on a private nats-server with a plain subscriber on `>` that checks every message of the
//! scenario carries the CIM identity headers and shares one correlation id.
#![allow(dead_code)]

use cim_integrate::handler::{Context, HandlerError, HandlerSet, Registration};
use cim_integrate::prelude::*;
use cim_integrate::transport::DeliverPolicy;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One line of the trace.
#[derive(Debug, Clone)]
pub struct Seen {
    pub subject: String,
    pub identity: Identity,
}

/// Prints and records every event of the given domains, as one audit handler per domain.
#[derive(Clone, Default)]
pub struct Audit {
    pub domains: Vec<&'static str>,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl Audit {
    pub fn new(domains: &[&'static str]) -> Self {
        Self {
            domains: domains.to_vec(),
            seen: Arc::default(),
        }
    }

    /// Events seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until an event with `subject` has been seen.
    pub async fn wait_for(&self, subject: &str, timeout: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.seen().iter().any(|s| s.subject == subject) {
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no `{subject}` within {timeout:?}"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }
}

impl HandlerSet for Audit {
    fn set_name(&self) -> &str {
        "audit"
    }

    fn registrations(self: Arc<Self>) -> Vec<Registration> {
        self.domains
            .iter()
            .map(|domain| {
                let seen = self.seen.clone();
                let pattern = SubjectPattern::new(format!("{domain}.>")).expect("valid domain");
                Registration::new(
                    domain.to_string(),
                    pattern,
                    "any",
                    |_: &[u8]| Ok::<(), std::convert::Infallible>(()),
                    move |ctx: Context, ()| {
                        let seen = seen.clone();
                        async move {
                            let id = ctx.identity();
                            println!(
                                "  {:<42} message {}  correlation {}  caused by {}",
                                ctx.subject().as_str(),
                                short(id.message_id),
                                short(id.correlation_id),
                                short(id.causation_id),
                            );
                            seen.lock().unwrap().push(Seen {
                                subject: ctx.subject().to_string(),
                                identity: *id,
                            });
                            Ok::<(), HandlerError>(())
                        }
                    },
                )
                .with_options(cim_integrate::handler::HandlerOptions {
                    concurrency: 1,
                    deliver: DeliverPolicy::New,
                    ..Default::default()
                })
            })
            .collect()
    }
}

/// The last 8 hex digits of an id, enough to tell ids apart in a trace.
pub fn short(id: impl std::fmt::Display) -> String {
    let s = id.to_string();
    s[s.len().saturating_sub(8)..].to_owned()
}

pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Runs `scenario` against a private nats-server while a plain NATS client subscribed to `>`
/// records every message; then checks that each message on the scenario's domains carries the
/// CIM identity headers and that they all share one correlation id. Returns how many it checked.
#[cfg(test)]
pub async fn run_on_nats_checking_headers<F, Fut>(domains: &[&str], scenario: F) -> usize
where
    F: FnOnce(cim_integrate::transport::nats::NatsTransport) -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    use futures::StreamExt;
    let server = cim_integrate::testing::NatsServer::start().await.expect("nats-server");
    let t = cim_integrate::transport::nats::NatsTransport::connect_url(&server.url())
        .await
        .expect("connect");
    let mut sniffer = t.client().subscribe(">").await.expect("subscribe >");
    scenario(t.clone()).await.expect("scenario");
    t.flush().await.expect("flush");
    let mut messages = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sniffer.next()).await {
        let first = m.subject.split('.').next().unwrap_or_default().to_owned();
        if domains.contains(&first.as_str()) {
            messages.push(m);
        }
    }
    assert!(!messages.is_empty(), "the sniffer saw no scenario message");
    let mut correlation = None;
    for m in &messages {
        let h = m
            .headers
            .as_ref()
            .unwrap_or_else(|| panic!("{} has no headers", m.subject));
        for name in [
            "Nats-Msg-Id",
            "X-Message-ID",
            "X-Correlation-ID",
            "X-Causation-ID",
            "X-Event-Type",
            "X-Event-Version",
            "X-Occurred-At",
        ] {
            assert!(h.get(name).is_some(), "{} lacks {name}", m.subject);
        }
        let c = h.get("X-Correlation-ID").map(|v| v.as_str().to_owned());
        match &correlation {
            None => correlation = c,
            Some(first) => assert_eq!(Some(first), c.as_ref(), "{} has another correlation id", m.subject),
        }
    }
    messages.len()
}
