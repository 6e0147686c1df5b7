// The handler with its own `#[key(field)]` has a key of another type: reported on that key.
use cim_integrate::handler::HandlerError;
use cim_integrate::process::ProcessContext;
use cim_integrate::{domain_event, process};

#[domain_event(subject = "person.created", version = "1.0")]
pub struct PersonCreated {
    pub person_id: String,
}

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub owner_id: u64,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Onboarding {
    steps: u32,
}

#[process(name = "onboarding", key = person_id)]
impl Onboarding {
    async fn person_created(&mut self, _ctx: &mut ProcessContext, _e: PersonCreated) -> Result<(), HandlerError> {
        self.steps += 1;
        Ok(())
    }

    #[key(owner_id)]
    async fn document_created(&mut self, _ctx: &mut ProcessContext, _e: DocumentCreated) -> Result<(), HandlerError> {
        self.steps += 1;
        Ok(())
    }
}

fn main() {}
