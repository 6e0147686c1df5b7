//! Raw identifiers as step and compensation names: `r#type` is the step `type`, and
//! `compensate = "undo"` (or `"r#undo"`) names `fn r#undo`.

use cim_integrate::handler::HandlerError;
use cim_integrate::saga;
use cim_integrate::saga::{Saga, StepContext};

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Data {
    pub done: bool,
}

pub struct Keywords;

#[saga(data = Data)]
impl Keywords {
    #[step(compensate = "undo")]
    async fn r#type(&self, ctx: &mut StepContext<Data>) -> Result<(), HandlerError> {
        ctx.data_mut().done = true;
        Ok(())
    }

    #[step(compensate = "r#loop")]
    async fn r#match(&self, _ctx: &mut StepContext<Data>) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn r#undo(&self, _ctx: &mut StepContext<Data>) -> Result<(), HandlerError> {
        Ok(())
    }

    async fn r#loop(&self, _ctx: &mut StepContext<Data>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {
    let names: Vec<&str> = Keywords::steps().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["type", "match"]);
}
