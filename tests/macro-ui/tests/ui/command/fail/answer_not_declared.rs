// A command naming an answer type that is not declared `#[command(answer, ...)]`: one error, on
// the type in `answer = ...`; its handler and a sender report nothing more.
use cim_integrate::command;
use cim_integrate::command::{CommandBus, CommandResult};
use cim_integrate::handler::Context;

#[command(subject = "inventory.reserve", version = "1.0", answer = Reserved)]
pub struct ReserveStock {
    pub quantity: u32,
}

pub struct Reserved {
    pub reserved: u32,
}

pub struct Inventory;

#[command(name = "inventory")]
impl Inventory {
    async fn reserve(&self, _ctx: &Context, command: ReserveStock) -> CommandResult<Reserved> {
        Ok(Reserved {
            reserved: command.quantity,
        })
    }
}

pub async fn send(bus: &CommandBus) {
    let _ = bus.send(&ReserveStock { quantity: 1 }).await;
}

fn main() {}
