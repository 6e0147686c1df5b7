//! The one outbox of the runtime's persisted records: process managers, aggregations and
//! correlators ([`crate::process`]) and sagas ([`crate::saga`]).
//!
//! A step decides its messages and stores them in the record's outbox with the same
//! compare-and-set write as its state, so a step that lost a conflict never sent anything. After
//! the write, [`deliver`] sends each queued message with its derived id (see
//! [`crate::id::derived_uuid`]), and the sent ones are removed from the record by the next write
//! ([`Delivery::clear_sent`]). A crash in between sends them again on the next drain: the derived
//! ids make the re-send a duplicate that JetStream (and the command result cache) drop.
//!
//! The stored forms differ (a process record queues commands and events of any type, a saga
//! record its lifecycle events, numbered), and stay as they were persisted; what is shared is
//! this send-then-clear protocol.

use crate::id::MessageId;
use std::future::Future;

/// A message waiting in an outbox.
pub(crate) trait Queued {
    /// Its derived message id: the same on every re-send.
    fn message_id(&self) -> MessageId;
}

impl Queued for crate::envelope::Envelope {
    fn message_id(&self) -> MessageId {
        self.identity().message_id
    }
}

/// What one round of [`deliver`] achieved.
#[derive(Debug)]
pub(crate) struct Delivery<E> {
    sent: Vec<MessageId>,
    failed: Vec<MessageId>,
    last_error: Option<E>,
}

impl<E> Delivery<E> {
    /// `true` if `message` was tried and failed in this round.
    pub(crate) fn failed(&self, message: &impl Queued) -> bool {
        self.failed.contains(&message.message_id())
    }

    /// Removes the sent messages from `outbox` (read again after the round: it may have grown).
    pub(crate) fn clear_sent<M: Queued>(&self, outbox: &mut Vec<M>) {
        outbox.retain(|m| !self.sent.contains(&m.message_id()));
    }

    /// `Ok` if every message was sent, else the last error.
    pub(crate) fn into_result(self) -> Result<(), E> {
        self.last_error.map_or(Ok(()), Err)
    }
}

/// Sends each queued message on its own, in order, with `send`: one that cannot be sent does
/// not hold back the others.
pub(crate) async fn deliver<'a, M, R, E, Fut>(queued: &'a [M], mut send: impl FnMut(&'a M) -> Fut) -> Delivery<E>
where
    M: Queued,
    Fut: Future<Output = Result<R, E>>,
{
    let mut delivery = Delivery {
        sent: Vec::with_capacity(queued.len()),
        failed: Vec::new(),
        last_error: None,
    };
    for message in queued {
        match send(message).await {
            Ok(_) => delivery.sent.push(message.message_id()),
            Err(e) => {
                delivery.failed.push(message.message_id());
                delivery.last_error = Some(e);
            }
        }
    }
    delivery
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Q(MessageId);
    impl Queued for Q {
        fn message_id(&self) -> MessageId {
            self.0
        }
    }

    #[tokio::test]
    async fn sends_each_and_clears_only_the_sent() {
        let (a, b, c) = (Q(MessageId::new()), Q(MessageId::new()), Q(MessageId::new()));
        let queued = vec![a.clone(), b.clone()];
        let bad = b.0;
        let delivery = deliver(&queued, |m: &Q| {
            let fail = m.0 == bad;
            async move { if fail { Err("down") } else { Ok(()) } }
        })
        .await;
        assert!(delivery.failed(&b) && !delivery.failed(&a));
        let mut fresh = vec![a, b.clone(), c.clone()];
        delivery.clear_sent(&mut fresh);
        assert_eq!(fresh, [b, c]);
        assert_eq!(delivery.into_result(), Err("down"));
    }
}
