//! Dead letters from an operator's seat, against a private nats-server: three kinds produced,
//! listed and grouped; one group redriven after the handler is fixed (each handled once, its
//! identity kept); a redrive interrupted half way and repeated (nothing handled twice); a
//! redrive of a letter already redriven (as after a crash between publish and delete, beyond the
//! stream's duplicate window): the handler recognises it; the rest purged.

use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::monitor::DeadLetterReason;
use cim_integrate::ops::{DeadLetterFilter, Ops};
use cim_integrate::prelude::*;
use cim_integrate::service::Service;
use cim_integrate::testing::NatsServer;
use cim_integrate::transport::nats::NatsTransport;
use cim_integrate::{domain_event, handlers};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[domain_event(subject = "billing.invoiced", version = "1.0")]
#[derive(Debug, Clone)]
pub struct Invoiced {
    pub n: u32,
    pub amount: u64,
}

/// What the handler did, by message id: how often, with which identity and subject.
#[derive(Default)]
struct Seen {
    handled: Mutex<HashMap<MessageId, (u32, Identity, String)>>,
    /// The bug: invoices above this amount are refused as permanently invalid until fixed.
    fixed: AtomicBool,
}

struct Ledger {
    seen: Arc<Seen>,
}

#[handlers(domain = "ledger")]
impl Ledger {
    #[subscribe("billing.invoiced", max_attempts = 2, backoff = "10ms")]
    async fn book(&self, ctx: &Context, event: Invoiced) -> Result<(), HandlerError> {
        if !self.seen.fixed.load(Ordering::SeqCst) {
            if event.amount > 1_000 {
                return Err(HandlerError::permanent(format!(
                    "amount {} of invoice {} exceeds the limit",
                    event.amount, event.n
                )));
            }
            if event.amount == 13 {
                return Err(HandlerError::transient("ledger locked"));
            }
        }
        let mut h = self.seen.handled.lock().unwrap();
        let e = h
            .entry(ctx.identity().message_id)
            .or_insert((0, *ctx.identity(), ctx.subject().to_string()));
        e.0 += 1;
        Ok(())
    }
}

async fn publish_raw(client: &async_nats::Client, subject: &str, payload: &str) {
    let js = async_nats::jetstream::new(client.clone());
    js.publish(subject.to_owned(), payload.to_owned().into())
        .await
        .expect("publish")
        .await
        .expect("ack");
}

async fn until<F: Fn() -> bool>(what: &str, within: Duration, f: F) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn letters_until(ops: &Ops, n: usize) -> Vec<cim_integrate::ops::DeadLetter> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let l = ops.dead_letters(&DeadLetterFilter::all()).await.expect("list");
        if l.len() >= n || Instant::now() > deadline {
            return l;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A private server, the ledger host on it, and `Ops` over it.
async fn ledger_host() -> (NatsServer, NatsTransport, Arc<Seen>, Service, Ops) {
    let server = NatsServer::start().await.expect("server");
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
    let seen = Arc::new(Seen::default());
    let service = Service::builder(t.clone(), "ledger")
        .register(Ledger { seen: seen.clone() })
        .start()
        .await
        .expect("start");
    let ops = Ops::new(t.clone());
    (server, t, seen, service, ops)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_grouped_redriven_once_and_purged() {
    let (_server, t, seen, service, ops) = ledger_host().await;

    // Nothing yet.
    assert!(ops.dead_letters(&DeadLetterFilter::all()).await.unwrap().is_empty());

    // Permanent: six invoices above the limit; exhausted: one locked ledger; undecodable: two.
    let mut published = Vec::new();
    for n in 0..6u32 {
        let e = Invoiced {
            n,
            amount: 5_000 + u64::from(n),
        };
        published.push(ctx_publish(&t, &e).await);
    }
    ctx_publish(&t, &Invoiced { n: 6, amount: 13 }).await;
    publish_raw(t.client(), "billing.invoiced", "{\"n\":\"seven\"}").await;
    publish_raw(t.client(), "billing.invoiced", "not json").await;
    ctx_publish(&t, &Invoiced { n: 9, amount: 10 }).await;

    let letters = letters_until(&ops, 9).await;
    assert_eq!(letters.len(), 9, "{letters:#?}");
    let kinds = |k| letters.iter().filter(|l| l.kind == Some(k)).count();
    assert_eq!(kinds(DeadLetterReason::Permanent), 6);
    assert_eq!(kinds(DeadLetterReason::Exhausted), 1);
    assert_eq!(kinds(DeadLetterReason::Undecodable), 2);
    for l in &letters {
        assert_eq!(l.handler, "ledger-book");
        assert_eq!(l.subject, "billing.invoiced");
        assert_eq!(l.stream, "BILLING_EVENTS");
        assert!(l.stream_sequence > 0 && l.at.is_some() && l.redrives == 0, "{l:?}");
    }
    // The identity a letter shows is the one the publisher gave.
    for (id, _) in &published {
        assert!(
            letters.iter().any(|l| l.identity.message_id == *id),
            "{id} not among the letters"
        );
    }
    // Filters: by kind, by handler (either name), by time.
    let permanent = DeadLetterFilter::all().kind(DeadLetterReason::Permanent);
    assert_eq!(ops.dead_letters(&permanent).await.unwrap().len(), 6);
    assert_eq!(
        ops.dead_letters(&DeadLetterFilter::all().handler("book"))
            .await
            .unwrap()
            .len(),
        9
    );
    assert!(
        ops.dead_letters(&DeadLetterFilter::all().handler("other"))
            .await
            .unwrap()
            .is_empty()
    );
    let future = Timestamp::from_unix_nanos((i128::from(Timestamp::now().unix_millis()) + 60_000) * 1_000_000).unwrap();
    assert!(
        ops.dead_letters(&DeadLetterFilter::all().between(Some(future), None))
            .await
            .unwrap()
            .is_empty()
    );
    // Show one.
    let one = ops.dead_letter(letters[0].sequence).await.expect("show");
    assert_eq!(one.sequence, letters[0].sequence);
    assert!(matches!(
        ops.dead_letter(999_999).await,
        Err(cim_integrate::ops::OpsError::NotFound(_))
    ));

    // Grouped: the six permanent failures differ only in numbers: one group.
    let groups = ops.dead_letter_groups(&DeadLetterFilter::all()).await.expect("groups");
    assert_eq!(groups[0].count, 6, "{groups:#?}");
    assert_eq!(groups[0].kind, "permanent");
    assert!(
        groups[0].reason.contains("amount # of invoice # exceeds"),
        "{}",
        groups[0].reason
    );
    let fingerprint = groups[0].fingerprint.clone();

    // The handler is fixed. The redrive of the group is interrupted after its third letter.
    seen.fixed.store(true, Ordering::SeqCst);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let group = DeadLetterFilter::group(fingerprint.clone());
    tokio::select! {
        r = ops.redrive(&group, |p| { let _ = tx.send(p.done); }) => panic!("not interrupted: {r:?}"),
        _ = async { while rx.recv().await != Some(3) {} } => {}
    }
    let left = ops.dead_letters(&group).await.unwrap();
    assert!(left.len() <= 3, "three redriven before the interruption: {left:?}");
    // Repeated: the rest go too.
    let report = ops.redrive(&group, |_| {}).await.expect("redrive");
    assert!(report.skipped.is_empty(), "{report:?}");
    assert!(ops.dead_letters(&group).await.unwrap().is_empty());
    until("the six redriven invoices", Duration::from_secs(20), || {
        published
            .iter()
            .all(|(id, _)| seen.handled.lock().unwrap().contains_key(id))
    })
    .await;

    // Each handled once, with the identity and subject it had the first time.
    {
        let h = seen.handled.lock().unwrap();
        for (id, identity) in &published {
            let (count, got, subject) = &h[id];
            assert_eq!(*count, 1, "{id} handled {count} times");
            assert_eq!(got, identity);
            assert_eq!(subject, "billing.invoiced");
        }
    }

    // A redrive message stored again (as after a crash between the publish and the letter's
    // delete, once the stream's duplicate window has passed): the handler finds its mark.
    let first = &published[0];
    let again = redrive_copy(&t, first.1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let stats = service.handler_stats("ledger-book").expect("stats");
    assert!(stats.duplicates >= 1, "{again}: the copy was not recognised: {stats:?}");
    assert_eq!(seen.handled.lock().unwrap()[&first.0].0, 1);

    // The rest (exhausted, undecodable) are purged; nothing is left.
    let purged = ops.purge_dead_letters(&DeadLetterFilter::all()).await.expect("purge");
    assert_eq!(purged.purged.len(), 3);
    assert!(ops.dead_letters(&DeadLetterFilter::all()).await.unwrap().is_empty());
    service.shutdown(Duration::from_secs(5)).await;

    // The durable created again: every original comes back as a first delivery, read by its
    // block of marks only. The six handled as redriven copies are recognised (the copy's mark
    // names its original, `X-Redrive-Stored`), as is the one handled the first time; the
    // exhausted one runs (the ledger is fixed), the two undecodable ones are dead-lettered again.
    t.delete_consumer("BILLING_EVENTS", "ledger-book")
        .await
        .expect("delete the durable");
    let service = Service::builder(t.clone(), "ledger")
        .register(Ledger { seen: seen.clone() })
        .start()
        .await
        .expect("restart");
    until("the originals delivered again", Duration::from_secs(20), || {
        service
            .handler_stats("ledger-book")
            .is_some_and(|s| s.duplicates + s.succeeded + s.dead_lettered >= 10)
    })
    .await;
    let stats = service.handler_stats("ledger-book").expect("stats");
    assert_eq!(
        (stats.duplicates, stats.succeeded, stats.dead_lettered),
        (7, 1, 2),
        "{stats:?}"
    );
    for (id, _) in &published {
        assert_eq!(seen.handled.lock().unwrap()[id].0, 1, "{id} handled again");
    }
    service.shutdown(Duration::from_secs(5)).await;
}

/// Publishes `event` as a root message the way a host does; returns its id and identity.
async fn ctx_publish(t: &NatsTransport, event: &Invoiced) -> (MessageId, Identity) {
    let env = event.to_envelope().expect("envelope");
    let identity = *env.identity();
    let _ack = t
        .publish(cim_integrate::transport::OutboundMessage::from(&env))
        .await
        .expect("publish");
    (identity.message_id, identity)
}

/// Stores once more, under a new `Nats-Msg-Id`, the redrive of the message with `identity`
/// (what a repeat publishes when the stream no longer remembers the first one).
async fn redrive_copy(t: &NatsTransport, identity: Identity) -> String {
    let js = t.jetstream();
    let stream = js.get_stream("DEAD_LETTERS").await.expect("stream");
    let last = stream.direct_get_last_for_subject("dlq.ledger.book.redrive").await;
    let m = match last {
        Ok(m) => m,
        Err(_) => stream
            .get_last_raw_message_by_subject("dlq.ledger.book.redrive")
            .await
            .expect("a redrive"),
    };
    let mut headers = m.headers.clone();
    headers.insert("Nats-Msg-Id", MessageId::new().to_string().as_str());
    headers.insert("X-Message-ID", identity.message_id.to_string().as_str());
    headers.insert("X-Correlation-ID", identity.correlation_id.to_string().as_str());
    headers.insert("X-Causation-ID", identity.causation_id.to_string().as_str());
    let subject = m.subject.to_string();
    js.publish_with_headers(subject.clone(), headers, m.payload)
        .await
        .expect("publish")
        .await
        .expect("ack");
    subject
}

/// Under a deployment prefix (`prod`): the host's dead letters are in `PROD_DEAD_LETTERS` on
/// `prod.dlq.>`; `ops` with the same prefix lists them under the host's names and redrives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_under_a_deployment_prefix() {
    use cim_integrate::transport::Prefixed;
    let server = NatsServer::start().await.expect("server");
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
    let prod = Some(Subject::new("prod").expect("prefix"));
    let seen = Arc::new(Seen::default());
    let service = Service::builder(Prefixed::new(t.clone(), prod.clone()), "ledger")
        .register(Ledger { seen: seen.clone() })
        .start()
        .await
        .expect("start");
    let env = Invoiced { n: 1, amount: 9_999 }.to_envelope().expect("envelope");
    let id = env.identity().message_id;
    let prefixed = Prefixed::new(t.clone(), prod.clone());
    let _ack = prefixed
        .publish(cim_integrate::transport::OutboundMessage::from(&env))
        .await
        .expect("publish");
    // Without the prefix: nothing (no unprefixed DEAD_LETTERS stream).
    assert!(
        Ops::new(t.clone())
            .dead_letters(&DeadLetterFilter::all())
            .await
            .unwrap()
            .is_empty()
    );
    let ops = Ops::new(t.clone()).with_prefix(prod);
    let letters = letters_until(&ops, 1).await;
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].subject, "billing.invoiced");
    // The host's names: without the prefix.
    assert_eq!(letters[0].stream, "BILLING_EVENTS");
    assert_eq!(letters[0].identity.message_id, id);
    seen.fixed.store(true, Ordering::SeqCst);
    let report = ops.redrive(&DeadLetterFilter::all(), |_| {}).await.expect("redrive");
    assert_eq!(report.redriven.len(), 1);
    until("the redriven invoice", Duration::from_secs(20), || {
        seen.handled.lock().unwrap().contains_key(&id)
    })
    .await;
    assert_eq!(seen.handled.lock().unwrap()[&id].2, "billing.invoiced");
    service.shutdown(Duration::from_secs(5)).await;
}

/// A letter that could not carry the original's payload is redriven from the original in its
/// stream; one whose original is gone is skipped with the reason, and stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_letter_without_its_payload_is_redriven_from_the_original() {
    let (_server, t, seen, service, ops) = ledger_host().await;
    let (id, _) = ctx_publish(&t, &Invoiced { n: 1, amount: 7_777 }).await;
    let real = letters_until(&ops, 1).await.remove(0);
    // The same letter as the host writes it when the copy would be too large: no payload.
    let js = t.jetstream();
    let stored = js
        .get_stream("DEAD_LETTERS")
        .await
        .expect("stream")
        .get_raw_message(real.sequence)
        .await
        .expect("letter");
    let copy = |seq: Option<u64>| {
        let mut h = stored.headers.clone();
        h.insert("Nats-Msg-Id", MessageId::new().to_string().as_str());
        h.insert(
            "X-Dead-Letter-Payload-Omitted",
            stored.payload.len().to_string().as_str(),
        );
        if let Some(seq) = seq {
            h.insert("X-Dead-Letter-Sequence", seq.to_string().as_str());
        }
        h
    };
    for headers in [copy(None), copy(Some(999))] {
        js.publish_with_headers("dlq.ledger.book", headers, Vec::<u8>::new().into())
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
    ops.purge_dead_letters(&DeadLetterFilter::sequence(real.sequence))
        .await
        .expect("purge the real one");
    let letters = ops.dead_letters(&DeadLetterFilter::all()).await.expect("list");
    assert_eq!(letters.len(), 2);
    assert!(
        letters
            .iter()
            .all(|l| l.payload.is_empty() && l.payload_omitted.is_some())
    );

    seen.fixed.store(true, Ordering::SeqCst);
    let report = ops.redrive(&DeadLetterFilter::all(), |_| {}).await.expect("redrive");
    assert_eq!(report.redriven.len(), 1, "{report:?}");
    assert_eq!(report.skipped.len(), 1, "{report:?}");
    assert!(report.skipped[0].1.contains("#999 is gone"), "{report:?}");
    until("the invoice redriven from its stream", Duration::from_secs(20), || {
        seen.handled.lock().unwrap().contains_key(&id)
    })
    .await;
    let left = ops.dead_letters(&DeadLetterFilter::all()).await.expect("list");
    assert_eq!(left.len(), 1, "the skipped letter stays");
    service.shutdown(Duration::from_secs(5)).await;
}
