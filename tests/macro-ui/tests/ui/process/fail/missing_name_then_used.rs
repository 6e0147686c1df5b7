// One mistake, one error: the process has no `name`; code that needs the `ProcessManager`
// reports nothing more.
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

#[process(key = person_id)]
impl Onboarding {
    async fn person_created(&mut self, _ctx: &mut ProcessContext, _e: PersonCreated) -> Result<(), HandlerError> {
        self.steps += 1;
        Ok(())
    }
}

fn run<P: ProcessManager>() -> usize {
    P::NAME.len()
}

fn main() {
    let _ = run::<Onboarding>();
}
