use cim_integrate::command;
use cim_integrate::command::CommandResult;

#[command(subject = "document.create", version = "1.0")]
pub struct CreateDocument {
    pub title: String,
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn create(&self, _command: CreateDocument) -> CommandResult {
        Ok(())
    }
}

fn main() {}
