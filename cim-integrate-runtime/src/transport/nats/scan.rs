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

/// Reads the messages `config` selects (its filter, deliver policy and `headers_only`; the
/// consumer is made ephemeral, unacknowledged, in memory, on one replica) in stream order, `page`
/// at a time, and hands each to `each` with its metadata.
///
/// The end: as many messages as were pending when the scan began (every message then stored is
/// among them, unless it was removed before its delivery), then, at most three times, as many
/// as are pending when that count is reached (messages written meanwhile: in a bucket with a
/// history of one, a rewrite removes the entry before it). So a scan ends under any write rate,
/// and holds every message stored before it began and not removed while it ran.
///
/// Infrastructure failures are classified as `what` ([`classify`]); a scan that gets nothing
/// while the server keeps reporting messages pending is a [`TransportError::Timeout`].
pub(crate) async fn scan<E: From<TransportError>>(
    stream: &Stream,
    config: pull::Config,
    page: usize,
    what: &str,
    mut each: impl FnMut(&Message, &Info) -> Result<(), E>,
) -> Result<(), E> {
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
    let mut stalls = 0;
    while pending > 0 {
        let mut messages = consumer
            .fetch()
            .max_messages(page)
            .messages()
            .await
            .map_err(|e| fail(&e))?;
        let mut got = false;
        while let Some(m) = messages.next().await {
            let m = m.map_err(|e| fail(&*e))?;
            // The reply subject a server sets on every delivery; unreadable is not unavailability.
            let info = m
                .info()
                .map_err(|e| E::from(TransportError::Other(format!("{what}: delivery metadata: {e}"))))?;
            got = true;
            pending = info.pending;
            each(&m, &info)?;
            budget = budget.saturating_sub(1);
            if budget == 0 {
                if pending == 0 || moved == CATCH_UP {
                    return Ok(());
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
    Ok(())
}
