// One mistake, one error, worded for a command: the subject has a wildcard; its handler
// reports nothing more.
use cim_integrate::command;
use cim_integrate::command::CommandResult;
use cim_integrate::handler::Context;

#[command(subject = "document.>", version = "1.0")]
pub struct CreateDocument {
    pub title: String,
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn create(&self, _ctx: &Context, _command: CreateDocument) -> CommandResult {
        Ok(())
    }
}

fn main() {}
