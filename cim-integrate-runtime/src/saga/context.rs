//! [`StepContext`]: what a step or compensation sees.

use crate::handler::Context;
use crate::id::{CorrelationId, Identity};

/// A step's (or compensation's) view of its saga: a working copy of the data, the ids, and a
/// [`Context`] to publish with.
///
/// Changes to the data are kept only if the attempt succeeds: they are persisted together with
/// the step's completion. A failed or timed-out attempt leaves the saga's data as it was.
#[derive(Debug)]
pub struct StepContext<D> {
    pub(crate) data: D,
    pub(crate) saga: &'static str,
    pub(crate) saga_id: std::sync::Arc<str>,
    pub(crate) step: &'static str,
    pub(crate) key: std::sync::Arc<str>,
    pub(crate) attempt: u32,
    pub(crate) compensating: bool,
    pub(crate) context: Context,
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
        &self.key
    }
    /// This attempt's number, 1 for the first (attempts interrupted by a crash count).
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    /// The identity of the message that started the saga (for a saga started directly, a fresh
    /// root identity, persisted with the saga).
    pub fn identity(&self) -> &Identity {
        self.context.identity()
    }
    /// The saga's correlation id: the starting message's.
    pub fn correlation_id(&self) -> CorrelationId {
        self.context.correlation_id()
    }
    /// A handler context for publishing: messages keep the saga's correlation id, and their ids
    /// are derived from the idempotency key and the publish's position, so a re-run re-publishes
    /// the same ids and the stream's duplicate window drops them.
    pub fn context(&self) -> &Context {
        &self.context
    }
    /// The data, consumed.
    pub fn into_data(self) -> D {
        self.data
    }
}
