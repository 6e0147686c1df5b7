use cim_integrate::command::CommandResult;
use cim_integrate::handler::Context;
use cim_integrate::{command, domain_event};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn create(&self, _ctx: &Context, _command: DocumentCreated) -> CommandResult {
        Ok(())
    }
}

fn main() {}
