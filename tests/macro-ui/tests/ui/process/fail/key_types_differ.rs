use cim_integrate::handler::HandlerError;
use cim_integrate::process::ProcessContext;
use cim_integrate::{domain_event, process};

#[domain_event(subject = "person.created", version = "1.0")]
pub struct PersonCreated {
    pub person_id: String,
}

#[domain_event(subject = "organization.member_added", version = "1.0")]
pub struct MemberAdded {
    pub person_id: u64,
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

    async fn member_added(&mut self, _ctx: &mut ProcessContext, _e: MemberAdded) -> Result<(), HandlerError> {
        self.steps += 1;
        Ok(())
    }
}

fn main() {}
