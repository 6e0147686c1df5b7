//! [`StepContext`]: what a step or compensation sees.

use crate::handler::Context;
use crate::handler::context::Runs;
use crate::id::{CorrelationId, Identity};
use crate::subject::Subject;
use crate::timestamp::Timestamp;
use std::sync::{Arc, OnceLock};

/// A step's (or compensation's) view of its saga: a working copy of the data, the ids, and a
/// [`Context`] to publish with.
///
/// Changes to the data are kept only if the attempt succeeds: they are persisted together with
/// the step's completion. A failed or timed-out attempt leaves the saga's data as it was.
pub struct StepContext<D> {
    pub(crate) data: D,
    pub(crate) saga: &'static str,
    pub(crate) saga_id: Arc<str>,
    pub(crate) step: &'static str,
    /// The idempotency key, made on first use (by the step, or for its context's message ids).
    pub(crate) key: OnceLock<Arc<str>>,
    pub(crate) attempt: u32,
    pub(crate) compensating: bool,
    /// The identity of the message that started the saga.
    pub(crate) identity: Identity,
    /// What the publishing context is made of, when the step first asks for it: most steps
    /// never publish, and then no context is made.
    pub(crate) publishing: Publishing,
    pub(crate) context: OnceLock<Context>,
}

/// What a step's [`Context`] is made of: the step's shared publisher and observer, the subject
/// and time the context reports (the saga's lifecycle subject, its start).
pub(crate) struct Publishing {
    pub(crate) runs: Arc<Runs>,
    pub(crate) subject: Subject,
    pub(crate) occurred: Timestamp,
}

impl<D: std::fmt::Debug> std::fmt::Debug for StepContext<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepContext")
            .field("data", &self.data)
            .field("saga", &self.saga)
            .field("saga_id", &self.saga_id)
            .field("step", &self.step)
            .field("key", &self.key.get())
            .field("attempt", &self.attempt)
            .field("compensating", &self.compensating)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

impl<D> StepContext<D> {
    /// The saga's data.
    pub fn data(&self) -> &D {
        &self.data
    }
    /// The saga's data, to change; kept if the attempt succeeds.
    pub fn data_mut(&mut self) -> &mut D {
        &mut self.data
    }
    /// The saga type's name.
    pub fn saga(&self) -> &'static str {
        self.saga
    }
    /// This instance's id.
    pub fn saga_id(&self) -> &str {
        &self.saga_id
    }
    /// The step's name (for a compensation: the name of the step it undoes).
    pub fn step(&self) -> &'static str {
        self.step
    }
    /// `true` when running a compensation.
    pub fn is_compensation(&self) -> bool {
        self.compensating
    }
    /// A key that is the same for every attempt and every run of this step (or compensation) of
    /// this saga instance: `{saga}/{id}/{step}` (`.../{step}/compensate` for the compensation).
    /// Give it to the system the step changes (an idempotency key, a unique constraint) so that a
    /// re-run after a crash does not repeat a side effect that already happened.
    pub fn idempotency_key(&self) -> &str {
        self.key()
    }

    /// [`idempotency_key`](Self::idempotency_key), shared with the context's message-id scope.
    fn key(&self) -> &Arc<str> {
        self.key
            .get_or_init(|| idempotency_key(self.saga, &self.saga_id, self.step, self.compensating))
    }
    /// This attempt's number, 1 for the first (attempts interrupted by a crash count).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The identity of the message that started the saga (for a saga started directly, a fresh
    /// root identity, persisted with the saga).
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
    /// The saga's correlation id: the starting message's.
    pub fn correlation_id(&self) -> CorrelationId {
        self.identity.correlation_id
    }
    /// A handler context for publishing: messages keep the saga's correlation id, and their ids
    /// are derived from the idempotency key and the publish's position, so a re-run re-publishes
    /// the same ids and the stream's duplicate window drops them. Made on the first call.
    pub fn context(&self) -> &Context {
        self.context.get_or_init(|| {
            let p = &self.publishing;
            Context::scoped(
                self.identity,
                p.subject.clone(),
                p.occurred,
                p.runs.clone(),
                self.key().clone(),
            )
        })
    }
    /// The publishing context, if the step made it.
    pub(crate) fn made_context(&self) -> Option<&Context> {
        self.context.get()
    }
    /// The data, consumed.
    pub fn into_data(self) -> D {
        self.data
    }
}

/// `{saga}/{id}/{step}` (`/compensate` appended for a compensation), in one allocation.
fn idempotency_key(saga: &str, id: &str, step: &str, compensating: bool) -> Arc<str> {
    let compensate = if compensating { "/compensate" } else { "" };
    crate::dedup::joined(&[saga, "/", id, "/", step, compensate], |key| Arc::from(key))
}

#[cfg(test)]
mod tests {
    use super::idempotency_key;

    #[test]
    fn idempotency_keys_are_the_parts_joined() {
        assert_eq!(&*idempotency_key("order", "o-1", "charge", false), "order/o-1/charge");
        assert_eq!(
            &*idempotency_key("order", "o-1", "charge", true),
            "order/o-1/charge/compensate"
        );
        // Longer than the stack buffer, and not ASCII.
        let id = "é".repeat(200);
        assert_eq!(
            &*idempotency_key("order", &id, "charge", false),
            format!("order/{id}/charge").as_str()
        );
    }
}
