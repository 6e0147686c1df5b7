use cim_integrate::handler::HandlerError;
use cim_integrate::saga;
use cim_integrate::saga::StepContext;

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Data;

pub struct Publishing;

#[saga(data = Data)]
impl Publishing {
    #[step(no_compensation = "read-only validation")]
    fn validate(&self, _ctx: &mut StepContext<Data>) -> Result<(), HandlerError> {
        Ok(())
    }
}

fn main() {}
