//! The background half of settling a saga: after its final write (into the settled bucket) the
//! runner returns the outcome, and a task awaits the final events' acknowledgements, then deletes
//! the active record. [`Settling`] tracks those tasks so that the runner's listings (and tests)
//! can wait for the ones started before them.

use super::runner::SagaError;
use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// The settle tasks of a runner still running, and the errors of those that failed since the
/// last [`Settling::wait`].
#[derive(Debug, Default)]
pub(crate) struct Settling {
    state: Mutex<State>,
    /// Notified whenever a task ends.
    ended: Notify,
}

#[derive(Debug, Default)]
struct State {
    /// The number the next task gets.
    next: u64,
    /// The numbers of the tasks running.
    running: HashSet<u64>,
    /// Errors of finished tasks, for [`Settling::wait`] (at most [`KEPT_ERRORS`]).
    errors: Vec<SagaError>,
}

/// How many errors of settle tasks are kept for [`Settling::wait`]; later ones are only logged.
const KEPT_ERRORS: usize = 16;

/// Counts one settle task while it lives: dropped when it ends, panics, or is dropped with the
/// runtime.
pub(crate) struct Ticket {
    settling: Arc<Settling>,
    n: u64,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.settling.lock().running.remove(&self.n);
        self.settling.ended.notify_waiters();
    }
}

impl Settling {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent under a panic (plain inserts and removals).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts a task about to be spawned.
    pub(crate) fn ticket(self: &Arc<Self>) -> Ticket {
        let mut state = self.lock();
        let n = state.next;
        state.next += 1;
        state.running.insert(n);
        Ticket {
            settling: self.clone(),
            n,
        }
    }

    /// Keeps the error of a finished task for [`wait`](Self::wait).
    pub(crate) fn failed(&self, e: SagaError) {
        let mut state = self.lock();
        if state.errors.len() < KEPT_ERRORS {
            state.errors.push(e);
        }
    }

    /// Waits until every task started before the call has ended (tasks started meanwhile are
    /// not waited for, so a runner under constant load is not waited on forever); returns the
    /// first error kept since the last call (the others were logged).
    pub(crate) async fn wait(&self) -> Result<(), SagaError> {
        let before = self.lock().next;
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if !self.lock().running.iter().any(|n| *n < before) {
                break;
            }
            ended.await;
        }
        let errors = std::mem::take(&mut self.lock().errors);
        errors.into_iter().next().map_or(Ok(()), Err)
    }
}
