use cim_integrate::command;
use cim_integrate::command::CommandResult;
use cim_integrate::handler::Context;

#[command(subject = "document.create", version = "1.0")]
pub struct CreateDocument {
    pub title: String,
}

pub struct DocumentCommands;

#[command]
impl DocumentCommands {
    async fn create(&self, _ctx: &Context, _command: CreateDocument) -> CommandResult {
        Ok(())
    }
}

fn main() {}
