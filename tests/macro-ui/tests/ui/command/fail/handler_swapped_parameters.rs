// A command handler with the command and the context swapped: one error on the context.
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
    async fn create(&self, _command: CreateDocument, _ctx: &Context) -> CommandResult {
        Ok(())
    }
}

fn main() {}
