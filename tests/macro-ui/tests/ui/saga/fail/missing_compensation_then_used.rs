// One mistake, one error: a step names no compensation; code that needs the `Saga` reports
// nothing more.
use cim_integrate::handler::HandlerError;
use cim_integrate::saga;
use cim_integrate::saga::{Saga, StepContext};

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Data {
    pub done: bool,
}

pub struct Publishing;

#[saga(data = Data)]
impl Publishing {
    #[step(timeout = "5s")]
    async fn publish(&self, _ctx: &mut StepContext<Data>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn run<S: Saga>() -> usize {
    S::NAME.len()
}

fn main() {
    let _ = run::<Publishing>();
}
