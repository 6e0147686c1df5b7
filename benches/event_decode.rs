//! Decoding speed of `#[domain_event]` payloads: the current version against the oldest one
//! (which is decoded as its frozen struct and upcast twice), and both against serde's own
//! internally tagged enum (`#[serde(tag = "version")]`), which buffers the object first.
//!
//! `cargo bench --bench event_decode` prints events per second and the ratios.

#[path = "../tests/domain_event_examples/mod.rs"]
#[allow(dead_code)]
mod domain_event_examples;

use cim_integrate::event::{self, Versioned};
use domain_event_examples::*;
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The hand-written alternative that `#[domain_event]` replaces, for comparison.
#[derive(serde::Deserialize)]
#[serde(tag = "version")]
#[allow(dead_code)]
enum SerdeTagged {
    #[serde(rename = "1.0")]
    V1(DocumentCreatedV1),
    #[serde(rename = "2.0")]
    V2(DocumentCreatedV2),
    #[serde(rename = "3.0")]
    V3(DocumentCreated),
}

impl SerdeTagged {
    fn into_current(self) -> DocumentCreated {
        match self {
            Self::V1(v1) => DocumentCreated::from(DocumentCreatedV2::from(v1)),
            Self::V2(v2) => DocumentCreated::from(v2),
            Self::V3(v3) => v3,
        }
    }
}

/// Events per second of `decode` on `payload`, best of five one-second-ish rounds.
fn rate(payload: &[u8], decode: impl Fn(&[u8]) -> DocumentCreated) -> f64 {
    let mut best = 0f64;
    for _ in 0..5 {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < Duration::from_millis(400) {
            for _ in 0..1000 {
                black_box(decode(black_box(payload)));
            }
            n += 1000;
        }
        best = best.max(n as f64 / start.elapsed().as_secs_f64());
    }
    best
}

fn main() {
    let title = "Architecture decision record: use JetStream for every cross-domain event".to_owned();
    let v1 = DocumentCreatedV1 {
        document_id: DocumentId::new(),
        title: title.clone(),
    };
    let current = DocumentCreated {
        document_id: v1.document_id,
        title,
        author: Some(UserId::new()),
        tags: vec!["architecture".into(), "nats".into(), "adr".into()],
    };
    let oldest = event::encode_version(&v1).expect("encode 1.0");
    let latest = current.encode().expect("encode 3.0");
    assert_eq!(DocumentCreated::decode(&latest).unwrap(), current);
    assert_eq!(
        serde_json::from_slice::<SerdeTagged>(&oldest)
            .unwrap()
            .into_current()
            .title,
        current.title
    );

    let ours = |p: &[u8]| DocumentCreated::decode(p).expect("decodes");
    let serde = |p: &[u8]| {
        serde_json::from_slice::<SerdeTagged>(p)
            .expect("decodes")
            .into_current()
    };
    let ours_latest = rate(&latest, ours);
    let ours_oldest = rate(&oldest, ours);
    let serde_latest = rate(&latest, serde);
    let serde_oldest = rate(&oldest, serde);

    let mb = |rate: f64, len: usize| rate * len as f64 / 1e6;
    let (l, o) = (latest.len(), oldest.len());
    println!("event_decode: DocumentCreated, 3.0 payload {l} bytes, 1.0 payload {o} bytes");
    println!(
        "  #[domain_event], latest (3.0):           {ours_latest:>10.0} events/s {:>7.1} MB/s",
        mb(ours_latest, l)
    );
    println!(
        "  #[domain_event], oldest (1.0, 2 upcasts): {ours_oldest:>9.0} events/s {:>7.1} MB/s",
        mb(ours_oldest, o)
    );
    println!(
        "  oldest / latest:                         {:>10.2} (events/s)",
        ours_oldest / ours_latest
    );
    println!(
        "  serde tag = \"version\" enum, latest:     {serde_latest:>10.0} events/s {:>7.1} MB/s",
        mb(serde_latest, l)
    );
    println!(
        "  serde tag = \"version\" enum, oldest:     {serde_oldest:>10.0} events/s {:>7.1} MB/s",
        mb(serde_oldest, o)
    );
    println!(
        "  #[domain_event] / serde enum:            {:>10.2} latest, {:.2} oldest",
        ours_latest / serde_latest,
        ours_oldest / serde_oldest
    );
}
