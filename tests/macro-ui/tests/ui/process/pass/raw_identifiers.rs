//! Raw identifiers as process handler names: `r#type` is the handler `type`.

use cim_integrate::handler::HandlerError;
use cim_integrate::process::{ProcessContext, ProcessManager};
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
    async fn r#type(&mut self, _ctx: &mut ProcessContext, _e: PersonCreated) -> Result<(), HandlerError> {
        self.steps += 1;
        Ok(())
    }
}

fn main() {
    let names: Vec<&str> = Onboarding::handlers().iter().map(|h| h.name()).collect();
    assert_eq!(names, ["type"]);
}
