//! End-to-end handler behaviour through [`Service`], the same on every transport: cascade,
//! de-duplication, retries, dead letters, panics, identity propagation, shutdown.

use crate::envelope::Envelope;
use crate::handler::{Context, HandlerError, HandlerOptions, Registration, RetryPolicy};
use crate::id::{Identity, MessageId};
use crate::service::{self, Service};
use crate::subject::{Subject, SubjectPattern};
use crate::transport::{Consumer, ConsumerSpec, Delivery, Transport};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const SOON: Duration = Duration::from_secs(10);

/// The test event: `{"version":"1.0","n":..}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Numbered {
    version: String,
    n: u32,
}

fn decode(payload: &[u8]) -> Result<Numbered, serde_json::Error> {
    let e: Numbered = serde_json::from_slice(payload)?;
    if e.version != "1.0" {
        return Err(serde::de::Error::custom(format_args!(
            "unknown version `{}`",
            e.version
        )));
    }
    Ok(e)
}

fn numbered(subject: &str, n: u32) -> Envelope {
    let body = serde_json::to_vec(&Numbered {
        version: "1.0".into(),
        n,
    })
    .expect("encode");
    Envelope::root(Subject::new(subject).expect("subject"), body).typed("Numbered", "1.0")
}

fn pattern(p: &str) -> SubjectPattern {
    SubjectPattern::new(p).expect("pattern")
}

/// What handlers saw: (handler, n, identity, delivered).
type Seen = Arc<Mutex<Vec<(String, u32, Identity, u64)>>>;

fn recorder(seen: &Seen, name: &str, p: &str) -> Registration {
    let seen = seen.clone();
    let name_owned = name.to_owned();
    Registration::new(
        name,
        pattern(p),
        "Numbered",
        decode,
        move |ctx: Context, e: Numbered| {
            let seen = seen.clone();
            let name = name_owned.clone();
            async move {
                seen.lock()
                    .expect("lock")
                    .push((name, e.n, *ctx.identity(), ctx.delivered()));
                Ok(())
            }
        },
    )
}

fn fast_retry(attempts: u32) -> HandlerOptions {
    HandlerOptions {
        retry: RetryPolicy::attempts(attempts).backoff(Duration::from_millis(200), 2, Duration::from_secs(1)),
        ack_wait: Duration::from_secs(2),
        ..HandlerOptions::default()
    }
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + SOON;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn publish<T: Transport>(t: &T, env: &Envelope) {
    t.ensure_stream(&crate::transport::StreamSpec::for_domain(env.subject().first_token(), None).expect("spec"))
        .await
        .expect("stream");
    t.publish_and_wait(env.into()).await.expect("publish");
}

async fn dead_letters<T: Transport>(t: &T, count: usize) -> Vec<Delivery<<T::Consumer as Consumer>::Acker>> {
    let dlq = service::dead_letter_stream().expect("dlq spec");
    let spec = ConsumerSpec::new(dlq.name, "dlq-reader", service::dead_letter_pattern().expect("pattern"));
    let mut c = t.consumer(&spec).await.expect("dlq consumer");
    let mut out = Vec::new();
    for _ in 0..count {
        out.push(
            tokio::time::timeout(SOON, c.next())
                .await
                .expect("dead letter in time")
                .expect("dlq"),
        );
    }
    out
}

fn count(seen: &Seen, name: &str) -> usize {
    seen.lock().expect("lock").iter().filter(|s| s.0 == name).count()
}

/// One event, three domains reacting independently (the guide's cascade).
pub async fn cascade_three_domains<T: Transport>(t: T) {
    let seen = Seen::default();
    let mut svc = Service::builder(t.clone(), "cascade");
    for set in ["workflow", "search", "notification"] {
        svc = svc.handler(set, recorder(&seen, set, "document.created"));
    }
    let svc = svc.start().await.expect("start");
    for n in 0..3 {
        publish(&t, &numbered("document.created", n)).await;
    }
    publish(&t, &numbered("document.deleted", 99)).await;
    wait_until("three domains x three events", || seen.lock().expect("lock").len() == 9).await;
    // Handled, then marked, then counted: wait for the counts, which come last.
    wait_until("every run counted", || {
        ["workflow", "search", "notification"].iter().all(|set| {
            svc.handler_stats(&format!("{set}-{set}"))
                .is_some_and(|s| s.succeeded == 3)
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    for set in ["workflow", "search", "notification"] {
        let mut ns: Vec<u32> = seen
            .lock()
            .expect("lock")
            .iter()
            .filter(|s| s.0 == set)
            .map(|s| s.1)
            .collect();
        ns.sort_unstable();
        assert_eq!(ns, [0, 1, 2], "{set}");
        assert_eq!(svc.handler_stats(&format!("{set}-{set}")).expect("stats").succeeded, 3);
    }
    svc.shutdown(Duration::from_secs(5)).await;
}

/// A message id the handler already handled is acknowledged without running it again: both for a
/// second copy published under another `Nats-Msg-Id` and across service restarts.
pub async fn duplicate_delivery_is_skipped<T: Transport>(t: T) {
    let seen = Seen::default();
    let start = || {
        Service::builder(t.clone(), "dedup")
            .handler("workflow", recorder(&seen, "w", "document.created"))
            .start()
    };
    let svc = start().await.expect("start");
    let env = numbered("document.created", 1);
    publish(&t, &env).await;
    wait_until("first run", || count(&seen, "w") == 1).await;
    // The same message id again, under another JetStream dedup id (a publisher retrying after the
    // duplicate window, or a replay): the stream stores it, the handler must not run again.
    let mut copy: crate::transport::OutboundMessage = (&env).into();
    copy.headers
        .insert(crate::headers::NATS_MSG_ID, MessageId::new().to_string())
        .expect("header");
    t.publish_and_wait(copy.clone()).await.expect("publish copy");
    wait_until("duplicate skipped", || {
        svc.handler_stats("workflow-w").is_some_and(|s| s.duplicates == 1)
    })
    .await;
    svc.shutdown(Duration::from_secs(5)).await;
    // A new service instance on the same transport remembers (key-value marks).
    let svc = start().await.expect("restart");
    copy.headers
        .insert(crate::headers::NATS_MSG_ID, MessageId::new().to_string())
        .expect("header");
    t.publish_and_wait(copy).await.expect("publish copy again");
    wait_until("duplicate skipped after restart", || {
        svc.handler_stats("workflow-w").is_some_and(|s| s.duplicates == 1)
    })
    .await;
    assert_eq!(count(&seen, "w"), 1, "the handler ran once in all");
    svc.shutdown(Duration::from_secs(5)).await;
}

fn flaky(fails: u32, runs: Arc<AtomicU32>, delivered: Arc<Mutex<Vec<u64>>>, panic: bool) -> Registration {
    Registration::new(
        "flaky",
        pattern("document.created"),
        "Numbered",
        decode,
        move |ctx: Context, _e: Numbered| {
            let runs = runs.clone();
            let delivered = delivered.clone();
            async move {
                delivered.lock().expect("lock").push(ctx.delivered());
                let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
                if run <= fails {
                    if panic {
                        panic!("boom on run {run}");
                    }
                    return Err(HandlerError::transient(format!("unavailable on run {run}")));
                }
                Ok(())
            }
        },
    )
}

/// A transient failure is retried with back-off until the handler succeeds.
pub async fn retry_then_success<T: Transport>(t: T) {
    let runs = Arc::new(AtomicU32::new(0));
    let delivered = Arc::new(Mutex::new(Vec::new()));
    let reg = flaky(2, runs.clone(), delivered.clone(), false).with_options(fast_retry(5));
    let svc = Service::builder(t.clone(), "retry")
        .handler("workflow", reg)
        .start()
        .await
        .expect("start");
    publish(&t, &numbered("document.created", 1)).await;
    wait_until("success", || {
        svc.handler_stats("workflow-flaky").is_some_and(|s| s.succeeded == 1)
    })
    .await;
    let stats = svc.handler_stats("workflow-flaky").expect("stats");
    assert_eq!((stats.retried, stats.dead_lettered), (2, 0));
    assert_eq!(*delivered.lock().expect("lock"), [1, 2, 3]);
    svc.shutdown(Duration::from_secs(5)).await;
}

/// When the attempts are spent, the message goes to the dead-letter stream with its reason,
/// original payload and headers; later messages still flow.
pub async fn retries_exhausted_into_dead_letter<T: Transport>(t: T) {
    let runs = Arc::new(AtomicU32::new(0));
    let reg = flaky(u32::MAX, runs.clone(), Arc::default(), false).with_options(fast_retry(3));
    let svc = Service::builder(t.clone(), "exhaust")
        .handler("workflow", reg)
        .start()
        .await
        .expect("start");
    let env = numbered("document.created", 7);
    publish(&t, &env).await;
    let dl = dead_letters(&t, 1).await.pop().expect("one");
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert_eq!(dl.subject(), "dlq.workflow.flaky");
    assert_eq!(dl.payload(), env.payload());
    let h = dl.headers();
    assert!(
        h.get(service::DEAD_LETTER_REASON)
            .is_some_and(|r| r.contains("retries exhausted")),
        "{h:?}"
    );
    assert_eq!(h.get(service::DEAD_LETTER_HANDLER), Some("workflow-flaky"));
    assert_eq!(h.get(service::DEAD_LETTER_SUBJECT), Some("document.created"));
    assert_eq!(h.get(service::DEAD_LETTER_DELIVERIES), Some("3"));
    assert_eq!(
        h.get(crate::headers::CORRELATION_ID),
        Some(env.correlation_id().to_string().as_str())
    );
    assert_eq!(
        h.get(service::DEAD_LETTER_ORIGINAL_MSG_ID),
        Some(env.message_id().to_string().as_str())
    );
    wait_until("counted", || {
        svc.handler_stats("workflow-flaky")
            .is_some_and(|s| s.dead_lettered == 1)
    })
    .await;
    svc.shutdown(Duration::from_secs(5)).await;
}

/// A permanent error is dead-lettered on the first delivery, without retries.
pub async fn permanent_error_into_dead_letter_at_once<T: Transport>(t: T) {
    let runs = Arc::new(AtomicU32::new(0));
    let r = runs.clone();
    let reg = Registration::new(
        "strict",
        pattern("document.created"),
        "Numbered",
        decode,
        move |_ctx, _e: Numbered| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Err(HandlerError::permanent("title must not be empty"))
            }
        },
    );
    let svc = Service::builder(t.clone(), "perm")
        .handler("workflow", reg)
        .start()
        .await
        .expect("start");
    publish(&t, &numbered("document.created", 1)).await;
    let dl = dead_letters(&t, 1).await.pop().expect("one");
    let reason = dl
        .headers()
        .get(service::DEAD_LETTER_REASON)
        .unwrap_or_default()
        .to_owned();
    assert!(
        reason.contains("permanently") && reason.contains("title must not be empty"),
        "{reason}"
    );
    assert_eq!(dl.headers().get(service::DEAD_LETTER_DELIVERIES), Some("1"));
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    svc.shutdown(Duration::from_secs(5)).await;
}

/// Undecodable payloads (invalid JSON, unknown version) are dead-lettered with the decoder's
/// reason, without running the handler; valid messages after them are handled.
pub async fn undecodable_payload_into_dead_letter<T: Transport>(t: T) {
    let seen = Seen::default();
    let svc = Service::builder(t.clone(), "decode")
        .handler("workflow", recorder(&seen, "w", "document.created"))
        .start()
        .await
        .expect("start");
    for body in [&b"{not json"[..], br#"{"version":"9.0","n":1}"#, b"\xff\xfe"] {
        publish(
            &t,
            &Envelope::root(
                Subject::new("document.created").expect("s"),
                Bytes::copy_from_slice(body),
            ),
        )
        .await;
    }
    publish(&t, &numbered("document.created", 5)).await;
    let dls = dead_letters(&t, 3).await;
    let reasons: Vec<String> = dls
        .iter()
        .map(|d| {
            d.headers()
                .get(service::DEAD_LETTER_REASON)
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.starts_with("undecodable payload for Numbered")),
        "{reasons:?}"
    );
    // Concurrent handlers dead-letter in any order.
    assert!(
        reasons.iter().any(|r| r.contains("unknown version `9.0`")),
        "{reasons:?}"
    );
    wait_until("valid message handled", || count(&seen, "w") == 1).await;
    assert_eq!(seen.lock().expect("lock")[0].1, 5);
    svc.shutdown(Duration::from_secs(5)).await;
}

/// A panicking handler is caught, counted, and retried; the consumer keeps running.
pub async fn panic_is_retried<T: Transport>(t: T) {
    let runs = Arc::new(AtomicU32::new(0));
    let reg = flaky(1, runs.clone(), Arc::default(), true).with_options(fast_retry(3));
    let svc = Service::builder(t.clone(), "panics")
        .handler("workflow", reg)
        .start()
        .await
        .expect("start");
    publish(&t, &numbered("document.created", 1)).await;
    publish(&t, &numbered("document.created", 2)).await;
    wait_until("both handled", || {
        svc.handler_stats("workflow-flaky").is_some_and(|s| s.succeeded == 2)
    })
    .await;
    let s = svc.handler_stats("workflow-flaky").expect("stats");
    assert_eq!((s.panicked, s.retried, s.dead_lettered), (1, 1, 0));
    svc.shutdown(Duration::from_secs(5)).await;
}

/// document.created -> workflow.started -> person.notified: one correlation id, each message
/// caused by the previous one, ids propagated without the handlers touching them.
pub async fn correlation_chain_across_three_hops<T: Transport>(t: T) {
    let seen = Seen::default();
    let hop = |name: &str, from: &str, to: &'static str| {
        Registration::new(
            name,
            pattern(from),
            "Numbered",
            decode,
            move |ctx: Context, e: Numbered| async move {
                let body = serde_json::to_vec(&Numbered {
                    version: "1.0".into(),
                    n: e.n + 1,
                })
                .map_err(HandlerError::permanent)?;
                ctx.publish_bytes(
                    &Subject::new(to).map_err(HandlerError::permanent)?,
                    "Numbered",
                    "1.0",
                    body,
                )
                .await?;
                Ok(())
            },
        )
    };
    for d in ["workflow", "person"] {
        t.ensure_stream(&crate::transport::StreamSpec::for_domain(d, None).expect("spec"))
            .await
            .expect("stream");
    }
    let svc = Service::builder(t.clone(), "chain")
        .handler("workflow", hop("start", "document.created", "workflow.started"))
        .handler("person", hop("notify", "workflow.started", "person.notified"))
        .handler("audit", recorder(&seen, "doc", "document.created"))
        .handler("audit", recorder(&seen, "flow", "workflow.started"))
        .handler("audit", recorder(&seen, "person", "person.notified"))
        .start()
        .await
        .expect("start");
    let root = numbered("document.created", 0);
    publish(&t, &root).await;
    wait_until("three hops", || seen.lock().expect("lock").len() == 3).await;
    let mut s = seen.lock().expect("lock").clone();
    s.sort_by_key(|x| x.1);
    let ids: Vec<Identity> = s.iter().map(|x| x.2).collect();
    assert_eq!(s.iter().map(|x| x.1).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(ids[0], *root.identity());
    for i in 1..3 {
        assert_eq!(
            ids[i].correlation_id,
            root.correlation_id(),
            "hop {i} keeps the correlation id"
        );
        assert_eq!(
            ids[i].causation_id.into_uuid(),
            ids[i - 1].message_id.into_uuid(),
            "hop {i} is caused by hop {}",
            i - 1
        );
        assert_ne!(ids[i].message_id, ids[i - 1].message_id);
    }
    svc.shutdown(Duration::from_secs(5)).await;
}

fn slow(name: &str, delay: Duration, done: Arc<Mutex<Vec<u32>>>) -> Registration {
    Registration::new(
        name,
        pattern("document.created"),
        "Numbered",
        decode,
        move |_ctx, e: Numbered| {
            let done = done.clone();
            async move {
                tokio::time::sleep(delay).await;
                done.lock().expect("lock").push(e.n);
                Ok(())
            }
        },
    )
}

/// Shutdown lets in-flight handlers finish and acknowledges them: nothing runs twice after a
/// restart, nothing is lost.
pub async fn shutdown_finishes_in_flight_work<T: Transport>(t: T) {
    let done = Arc::new(Mutex::new(Vec::new()));
    let opts = HandlerOptions {
        concurrency: 4,
        ack_wait: Duration::from_secs(2),
        ..HandlerOptions::default()
    };
    let start = || {
        Service::builder(t.clone(), "graceful")
            .handler(
                "workflow",
                slow("slow", Duration::from_millis(500), done.clone()).with_options(opts.clone()),
            )
            .start()
    };
    let svc = start().await.expect("start");
    for n in 0..3 {
        publish(&t, &numbered("document.created", n)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await; // all three in flight
    svc.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        done.lock().expect("lock").len(),
        3,
        "in-flight work finished during shutdown"
    );
    let svc = start().await.expect("restart");
    tokio::time::sleep(Duration::from_secs(4)).await; // past the ack wait: nothing comes back
    assert_eq!(done.lock().expect("lock").len(), 3, "acknowledged work is not redone");
    svc.shutdown(Duration::from_secs(5)).await;
}

/// Work abandoned at shutdown (grace too short) is not acknowledged, so a restarted service
/// handles it: nothing lost.
pub async fn abandoned_work_is_redelivered_after_restart<T: Transport>(t: T) {
    let done = Arc::new(Mutex::new(Vec::new()));
    let opts = HandlerOptions {
        concurrency: 4,
        ack_wait: Duration::from_secs(1),
        ..HandlerOptions::default()
    };
    let svc = Service::builder(t.clone(), "abandon")
        .handler(
            "workflow",
            slow("slow", Duration::from_secs(3), done.clone()).with_options(opts.clone()),
        )
        .start()
        .await
        .expect("start");
    publish(&t, &numbered("document.created", 1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    svc.shutdown(Duration::from_millis(100)).await;
    assert!(done.lock().expect("lock").is_empty());
    let svc = Service::builder(t.clone(), "abandon")
        .handler(
            "workflow",
            slow("slow", Duration::from_millis(10), done.clone()).with_options(opts),
        )
        .start()
        .await
        .expect("restart");
    wait_until("redelivered and handled", || done.lock().expect("lock").len() == 1).await;
    svc.shutdown(Duration::from_secs(5)).await;
}

/// An ordered handler retries in place: a failing message holds back the ones after it.
pub async fn ordered_handler_keeps_order_through_retries<T: Transport>(t: T) {
    let order = Arc::new(Mutex::new(Vec::new()));
    let fails = Arc::new(AtomicU32::new(0));
    let (o, f) = (order.clone(), fails.clone());
    let reg = Registration::new(
        "ordered",
        pattern("document.created"),
        "Numbered",
        decode,
        move |_ctx, e: Numbered| {
            let (o, f) = (o.clone(), f.clone());
            async move {
                if e.n == 1 && f.fetch_add(1, Ordering::SeqCst) < 2 {
                    return Err(HandlerError::transient("not yet"));
                }
                o.lock().expect("lock").push(e.n);
                Ok(())
            }
        },
    )
    .with_options(HandlerOptions {
        ordered: true,
        ..fast_retry(5)
    });
    let svc = Service::builder(t.clone(), "ordered")
        .handler("workflow", reg)
        .start()
        .await
        .expect("start");
    for n in 0..4 {
        publish(&t, &numbered("document.created", n)).await;
    }
    wait_until("all handled", || order.lock().expect("lock").len() == 4).await;
    assert_eq!(*order.lock().expect("lock"), [0, 1, 2, 3]);
    svc.shutdown(Duration::from_secs(5)).await;
}

/// A typed handler on a wide pattern runs only for its own event: on the event's subject, or on
/// another subject whose `X-Event-Type` names it. Other event types the pattern matches are
/// acknowledged without running (counted as skipped), never dead-lettered.
pub async fn typed_handler_skips_other_event_types<T: Transport>(t: T) {
    let seen = Seen::default();
    let reg = recorder(&seen, "w", "document.*").only_event("document.created");
    let svc = Service::builder(t.clone(), "typed")
        .handler("workflow", reg)
        .start()
        .await
        .expect("start");
    let deleted = Envelope::root(
        Subject::new("document.deleted").expect("subject"),
        Bytes::from_static(br#"{"version":"1.0","reason":"obsolete"}"#),
    )
    .typed("DocumentDeleted", "1.0");
    publish(&t, &deleted).await;
    publish(&t, &numbered("document.archived", 1)).await; // another subject, but X-Event-Type says Numbered
    publish(&t, &numbered("document.created", 2)).await;
    wait_until("both of its own events handled", || count(&seen, "w") == 2).await;
    // Handled, then marked, then counted: wait for the counts, which come last.
    wait_until("the other type skipped and both counted", || {
        svc.handler_stats("workflow-w")
            .is_some_and(|s| s.skipped == 1 && s.succeeded == 2)
    })
    .await;
    let stats = svc.handler_stats("workflow-w").expect("stats");
    assert_eq!((stats.dead_lettered, stats.succeeded), (0, 2), "{stats:?}");
    svc.shutdown(Duration::from_secs(5)).await;
}
