// One mistake, one error: the command's version is malformed; its handler reports nothing more.
use cim_integrate::command;
use cim_integrate::command::CommandResult;
use cim_integrate::handler::Context;

#[command(subject = "document.create", version = "v1")]
pub struct CreateDocument {
    pub title: String,
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn create(&self, _ctx: &Context, command: CreateDocument) -> CommandResult {
        let _ = command.title;
        Ok(())
    }
}

fn main() {}
