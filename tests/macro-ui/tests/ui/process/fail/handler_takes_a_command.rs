use cim_integrate::handler::HandlerError;
use cim_integrate::process::ProcessContext;
use cim_integrate::{command, process};

#[command(subject = "person.create", version = "1.0")]
pub struct CreatePerson {
    pub person_id: String,
}

#[derive(Default, serde::Serialize, serde::Deserialize)]
pub struct Onboarding {
    steps: u32,
}

#[process(name = "onboarding", key = person_id)]
impl Onboarding {
    async fn person_created(&mut self, _ctx: &mut ProcessContext, _e: CreatePerson) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
