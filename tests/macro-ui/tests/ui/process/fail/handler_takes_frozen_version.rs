// A process handler takes a frozen older version: the note speaks of process handlers.
use cim_integrate::handler::HandlerError;
use cim_integrate::process::ProcessContext;
use cim_integrate::{domain_event, process};

#[domain_event(subject = "person.created", version = "2.0", previous = [PersonCreatedV1])]
pub struct PersonCreated {
    pub person_id: String,
}

#[domain_event(version = "1.0")]
pub struct PersonCreatedV1 {
    pub person_id: String,
}

impl From<PersonCreatedV1> for PersonCreated {
    fn from(v1: PersonCreatedV1) -> Self {
        Self { person_id: v1.person_id }
    }
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Onboarding {
    steps: u32,
}

#[process(name = "onboarding", key = person_id)]
impl Onboarding {
    async fn person_created(&mut self, _ctx: &mut ProcessContext, _e: PersonCreatedV1) -> Result<(), HandlerError> {
        self.steps += 1;
        Ok(())
    }
}

fn main() {}
