// One mistake, one error: a command handler is not `async`; code that needs the
// `CommandHandlerSet` reports nothing more.
use cim_integrate::command;
use cim_integrate::command::{CommandHandlerSet, CommandResult};
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

fn register<C: CommandHandlerSet>(_: C) {}

fn main() {
    register(DocumentCommands);
}
