// A step without a return type: one error on the parentheses, where `-> Result<...>` goes.
use cim_integrate::saga;
use cim_integrate::saga::StepContext;

#[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Data {
    pub done: bool,
}

pub struct Publishing;

#[saga(data = Data)]
impl Publishing {
    #[step(no_compensation = "read-only")]
    async fn validate(&self, _ctx: &mut StepContext<Data>) {}
}

fn main() {}
