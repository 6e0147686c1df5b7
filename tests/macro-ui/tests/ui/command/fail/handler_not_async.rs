use cim_integrate::command;
use cim_integrate::command::CommandResult;
use cim_integrate::handler::Context;

#[command(subject = "document.create", version = "1.0")]
pub struct CreateDocument {
    pub title: String,
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    fn create(&self, _ctx: &Context, _command: CreateDocument) -> CommandResult {
        Ok(())
    }
}

fn main() {}
