// A command with an answer whose handler returns `CommandResult` (no answer): one error, on the
// return type, naming `CommandResult<Reserved>`.
use cim_integrate::command;
use cim_integrate::command::CommandResult;
use cim_integrate::handler::Context;

#[command(subject = "inventory.reserve", version = "1.0", answer = Reserved)]
pub struct ReserveStock {
    pub quantity: u32,
}

#[command(answer, version = "1.0")]
pub struct Reserved {
    pub reserved: u32,
}

pub struct Inventory;

#[command(name = "inventory")]
impl Inventory {
    async fn reserve(&self, _ctx: &Context, _command: ReserveStock) -> CommandResult {
        Ok(())
    }
}

fn main() {}
