//! Raw identifiers as command handler names compile (the handler is registered as `type`).
use cim_integrate::command;
use cim_integrate::command::{CommandHandlerSet, CommandResult};
use cim_integrate::handler::Context;

#[command(subject = "document.create", version = "1.0")]
pub struct CreateDocument {
    pub r#type: String,
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn r#type(&self, _ctx: &Context, command: CreateDocument) -> CommandResult {
        let _ = command.r#type;
        Ok(())
    }
}

fn main() {
    let set = std::sync::Arc::new(DocumentCommands);
    assert_eq!(set.set_name(), "document");
    assert_eq!(set.command_registrations().len(), 1);
}
