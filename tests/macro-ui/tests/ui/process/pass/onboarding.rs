//! A process manager with two domains, a per-handler key, and a deadline handler.

use cim_integrate::handler::HandlerError;
use cim_integrate::process::{Deadline, ProcessContext, ProcessManager};
use cim_integrate::{domain_event, process};
use std::time::Duration;

#[domain_event(subject = "person.created", version = "1.0")]
pub struct PersonCreated {
    pub person_id: String,
}

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub owner_id: String,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Onboarding {
    documents: u32,
}

#[process(name = "onboarding", key = person_id)]
impl Onboarding {
    async fn person_created(&mut self, ctx: &mut ProcessContext, _e: PersonCreated) -> Result<(), HandlerError> {
        ctx.schedule("complete_by", Duration::from_secs(3600));
        Ok(())
    }

    #[key(owner_id)]
    async fn document_created(&mut self, ctx: &mut ProcessContext, _e: DocumentCreated) -> Result<(), HandlerError> {
        self.documents += 1;
        if self.documents == 2 {
            ctx.end();
        }
        Ok(())
    }

    #[deadline]
    async fn overdue(&mut self, ctx: &mut ProcessContext, _d: Deadline) -> Result<(), HandlerError> {
        ctx.end();
        Ok(())
    }
}

fn main() {
    let handlers = Onboarding::handlers();
    assert_eq!(Onboarding::NAME, "onboarding");
    assert_eq!(handlers.len(), 2);
    assert_eq!(handlers[1].event_type(), "DocumentCreated");
}
