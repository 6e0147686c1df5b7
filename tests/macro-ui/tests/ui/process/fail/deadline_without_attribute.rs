// A method taking `Deadline` without `#[deadline]`: one error naming the attribute, not "not an event".
use cim_integrate::handler::HandlerError;
use cim_integrate::process::{Deadline, ProcessContext};
use cim_integrate::{domain_event, process};

#[domain_event(subject = "person.created", version = "1.0")]
pub struct PersonCreated {
    pub person_id: String,
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

    async fn timed_out(&mut self, _ctx: &mut ProcessContext, _d: Deadline) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
