//! A step's publishing context is made when the step first asks for it: a step that emits
//! through it has its events published and acknowledged before the step counts as done, and
//! carries the saga's correlation id; a step that never asks runs without one. Both see the
//! saga's identity.

use bytes::Bytes;
use cim_integrate_runtime::event::{EncodeError, Publishable};
use cim_integrate_runtime::handler::HandlerError;
use cim_integrate_runtime::id::Identity;
use cim_integrate_runtime::saga::{Saga, SagaOutcome, SagaRunner, Step, StepContext, StepFuture};
use cim_integrate_runtime::subject::Subject;
use cim_integrate_runtime::transport::memory::MemoryTransport;
use cim_integrate_runtime::transport::{StreamSpec, Transport};
use serde::{Deserialize, Serialize};

/// An event the first step emits.
struct Noted {
    n: u32,
}

impl Publishable for Noted {
    fn published_subject(&self) -> Subject {
        Subject::new("notes.noted").expect("subject")
    }
    fn published_type(&self) -> &'static str {
        "Noted"
    }
    fn published_version(&self) -> &'static str {
        "1.0"
    }
    fn encode_published(&self) -> Result<Bytes, EncodeError> {
        Ok(Bytes::from(self.n.to_string()))
    }
}

/// What each step saw of the saga's identity (the correlation id), in order.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Seen {
    correlations: Vec<String>,
}

struct Notes;

impl Notes {
    async fn write(&self, ctx: &mut StepContext<Seen>) -> Result<(), HandlerError> {
        let correlation = ctx.correlation_id().to_string();
        assert_eq!(ctx.identity().correlation_id.to_string(), correlation);
        ctx.data_mut().correlations.push(correlation);
        for n in [1, 2] {
            ctx.context()
                .emit(&Noted { n })
                .await
                .map_err(HandlerError::transient)?;
        }
        Ok(())
    }

    async fn quiet(&self, ctx: &mut StepContext<Seen>) -> Result<(), HandlerError> {
        let correlation = ctx.correlation_id().to_string();
        ctx.data_mut().correlations.push(correlation);
        Ok(())
    }
}

fn write<'a>(s: &'a Notes, c: &'a mut StepContext<Seen>) -> StepFuture<'a> {
    Box::pin(s.write(c))
}

fn quiet<'a>(s: &'a Notes, c: &'a mut StepContext<Seen>) -> StepFuture<'a> {
    Box::pin(s.quiet(c))
}

impl Saga for Notes {
    type Data = Seen;
    const NAME: &'static str = "notes";
    fn steps() -> Vec<Step<Self>> {
        vec![
            Step::new("write", write).no_compensation("notes stay"),
            Step::new("quiet", quiet).no_compensation("nothing to undo"),
        ]
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_step_has_its_context_when_it_asks_for_it() {
    let t = MemoryTransport::new();
    t.ensure_stream(&StreamSpec::for_domain("notes", None).expect("spec"))
        .await
        .expect("stream");
    let runner = SagaRunner::builder(t.clone(), Notes)
        .lifecycle_events(cim_integrate_runtime::saga::LifecycleEvents::None)
        .build()
        .await
        .expect("runner");
    let identity = Identity::root();
    let outcome = runner
        .start_with_identity("n1", Seen::default(), identity)
        .await
        .expect("start");
    assert!(matches!(outcome, SagaOutcome::Completed), "{outcome:?}");

    let record = runner.status("n1").await.expect("status").expect("the record");
    let correlation = identity.correlation_id.to_string();
    assert_eq!(record.data.correlations, [correlation.clone(), correlation.clone()]);
    // Both emitted events were stored before the step completed, with the saga's correlation id
    // and ids derived from the step's key (a re-run would re-publish the same ones).
    let stored = t.stored("NOTES_EVENTS");
    let notes: Vec<_> = stored
        .iter()
        .filter(|m| m.envelope.subject().as_str() == "notes.noted")
        .collect();
    assert_eq!(notes.len(), 2, "{stored:?}");
    for m in &notes {
        assert_eq!(m.envelope.correlation_id().to_string(), correlation);
    }
    assert_ne!(notes[0].envelope.message_id(), notes[1].envelope.message_id());
}
