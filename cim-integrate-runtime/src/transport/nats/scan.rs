//! Reading a stream once, front to back, with an ephemeral pull consumer: a bucket's keys, the
//! dead letters an operator lists.

use super::kv::classify;
use crate::transport::TransportError;
use async_nats::jetstream::consumer::{AckPolicy, pull};
use async_nats::jetstream::{Message, message::Info, stream::Stream};
use futures::StreamExt;
use std::time::Duration;

/// How often a scan moves its end to take in messages written while it read.
const CATCH_UP: u32 = 3;
/// Empty pages in a row, with messages still reported pending, before a scan gives up.
const STALLS: u32 = 20;
/// How long a page may keep a scan waiting for its next message (or its end) before the scan
/// starts over. A page is asked without waiting (`no_wait`): the server answers at once.
const PAGE_WAIT: Duration = Duration::from_secs(2);
/// Scans started over after an unanswered page, before the scan gives up.
const RESTARTS: u32 = 3;
/// Pages in a row answered `503 No Responders` before the scan gives up (2 s in all).
const NO_RESPONDERS: u32 = 40;
/// The pause before a page answered `503 No Responders` is asked again.
const NO_RESPONDERS_PAUSE: Duration = Duration::from_millis(50);

/// Reads the messages `config` selects (its filter, deliver policy and `headers_only`; the
/// consumer is made ephemeral, unacknowledged, in memory, on one replica) in stream order, `page`
/// at a time, and hands each to `each` with its metadata and what it gathered so far (`A`,
/// fresh for every start of the scan), which it returns.
///
/// The end: as many messages as were pending when the scan began (every message then stored is
/// among them, unless it was removed before its delivery), then, at most three times, as many
/// as are pending when that count is reached (messages written meanwhile: in a bucket with a
/// history of one, a rewrite removes the entry before it). So a scan ends under any write rate,
/// and holds every message stored before it began and not removed while it ran.
///
/// A page that leaves the scan waiting [`PAGE_WAIT`] for its next message or its end starts the
/// scan over on a new consumer, with a new `A` (a message delivered late to the abandoned page
/// would be lost to that consumer). nats-server 2.9.10 does leave pages unanswered: with a key
/// deleted as a listing begins, it ends a page early with `408 Request Timeout` while reporting
/// a message still pending, then never answers the next `no_wait` pull of that consumer
/// (2.15 answers it; conformance case `kv_keys_while_entries_are_deleted`). Until the
/// twenty-fifth session such a page held the scan, and the listing or rescan waiting on it, for
/// good.
///
/// A page answered `503 No Responders` is asked again after [`NO_RESPONDERS_PAUSE`], up to
/// [`NO_RESPONDERS`] times in a row, then the scan is [`TransportError::Unavailable`]: across a
/// gateway, nats-server 2.15 answers so while the scan's consumer, just created in another
/// cluster, is not known yet on the client's server (`tests/nats_supercluster.rs`).
///
/// Infrastructure failures are classified as `what` ([`classify`]); a scan that gets nothing
/// while the server keeps reporting messages pending, or whose pages go unanswered
/// [`RESTARTS`] times more, is a [`TransportError::Timeout`].
pub(crate) async fn scan<A: Default, E: From<TransportError>>(
    stream: &Stream,
    config: pull::Config,
    page: usize,
    what: &str,
    mut each: impl FnMut(&mut A, &Message, &Info) -> Result<(), E>,
) -> Result<A, E> {
    for restart in 0..=RESTARTS {
        let mut gathered = A::default();
        match scan_once(stream, config.clone(), page, what, &mut gathered, &mut each).await? {
            Scanned::Whole => return Ok(gathered),
            Scanned::Unanswered => {
                tracing::debug!(what, restart, "a page went unanswered; the scan starts over");
            }
        }
    }
    Err(E::from(TransportError::Timeout(format!(
        "{what}: pages went unanswered for {PAGE_WAIT:?}, {} times",
        RESTARTS + 1
    ))))
}

/// How one start of a [`scan`] ended.
enum Scanned {
    /// Every message to the end was read.
    Whole,
    /// A page left the scan waiting [`PAGE_WAIT`]: start over.
    Unanswered,
}

async fn scan_once<A, E: From<TransportError>>(
    stream: &Stream,
    config: pull::Config,
    page: usize,
    what: &str,
    gathered: &mut A,
    each: &mut impl FnMut(&mut A, &Message, &Info) -> Result<(), E>,
) -> Result<Scanned, E> {
    let fail = |e: &(dyn std::error::Error + 'static)| E::from(classify(what, e));
    let mut consumer = stream
        .create_consumer(pull::Config {
            ack_policy: AckPolicy::None,
            memory_storage: true,
            num_replicas: 1,
            // Removed by the server soon after the scan; nothing to delete by hand.
            inactive_threshold: Duration::from_secs(5),
            ..config
        })
        .await
        .map_err(|e| fail(&e))?;
    let mut pending = consumer.cached_info().num_pending;
    // Messages left to read before the end, and how often the end was moved.
    let (mut budget, mut moved) = (pending, 0);
    let (mut stalls, mut unanswered) = (0, 0);
    'pages: while pending > 0 {
        let mut messages = consumer
            .fetch()
            .max_messages(page)
            .messages()
            .await
            .map_err(|e| fail(&e))?;
        let mut got = false;
        loop {
            let Ok(next) = tokio::time::timeout(PAGE_WAIT, messages.next()).await else {
                return Ok(Scanned::Unanswered);
            };
            let Some(m) = next else { break };
            let m = match m {
                Ok(m) => m,
                // Nobody took the page's pull request: across a gateway, the server this client
                // is on may not know yet of a consumer just created in another cluster
                // (nats-server 2.15 in a super-cluster). Asked again, as an empty page is.
                Err(e) if no_responders(&*e) => {
                    unanswered += 1;
                    if unanswered > NO_RESPONDERS {
                        return Err(E::from(TransportError::Unavailable(format!(
                            "{what}: no responders to {NO_RESPONDERS} pages in a row"
                        ))));
                    }
                    tokio::time::sleep(NO_RESPONDERS_PAUSE).await;
                    continue 'pages;
                }
                Err(e) => return Err(fail(&*e)),
            };
            unanswered = 0;
            // The reply subject a server sets on every delivery; unreadable is not unavailability.
            let info = m
                .info()
                .map_err(|e| E::from(TransportError::Other(format!("{what}: delivery metadata: {e}"))))?;
            got = true;
            pending = info.pending;
            each(gathered, &m, &info)?;
            budget = budget.saturating_sub(1);
            if budget == 0 {
                if pending == 0 || moved == CATCH_UP {
                    return Ok(Scanned::Whole);
                }
                moved += 1;
                budget = pending;
            }
        }
        if got {
            stalls = 0;
            continue;
        }
        // Counted, then removed before it was delivered (rewritten, expired, purged): ask again.
        stalls += 1;
        if stalls > STALLS {
            return Err(E::from(TransportError::Timeout(format!(
                "{what}: {pending} messages reported pending, none delivered"
            ))));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        pending = consumer.info().await.map_err(|e| fail(&e))?.num_pending;
    }
    Ok(Scanned::Whole)
}

/// `true` if `e` is the `503 No Responders` status that ended a page (async-nats reports a page's
/// statuses as text only: "error while processing messages from the stream: 503, None").
fn no_responders(e: &(dyn std::error::Error + 'static)) -> bool {
    e.to_string().contains("stream: 503")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_page_ended_by_no_responders_is_told_from_other_statuses() {
        let page =
            |text: &str| std::io::Error::other(format!("error while processing messages from the stream: {text}"));
        assert!(super::no_responders(&page("503, None")));
        assert!(!super::no_responders(&page("409, Some(\"Consumer Deleted\")")));
        assert!(!super::no_responders(&page("408, Some(\"Request Timeout\")")));
    }
}
