//! A versioned command with a frozen older version, its handlers, and a typed send.

use cim_integrate::command::{
    Command, CommandAck, CommandBus, CommandHandlerSet, CommandRejection, CommandResult, CommandService,
};
use cim_integrate::event::Versioned;
use cim_integrate::handler::Context;
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::{command, domain_event};
use std::time::Duration;

#[command(subject = "document.create", version = "2.0", previous = [CreateDocumentV1])]
#[derive(Debug, Clone, PartialEq)]
pub struct CreateDocument {
    pub title: String,
    pub pages: u32,
}

#[command(version = "1.0", frozen)]
pub struct CreateDocumentV1 {
    pub title: String,
}

impl From<CreateDocumentV1> for CreateDocument {
    fn from(v1: CreateDocumentV1) -> Self {
        Self { title: v1.title, pages: 0 }
    }
}

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn create(&self, ctx: &Context, command: CreateDocument) -> CommandResult {
        if command.title.is_empty() {
            return Err(CommandRejection::reject("a title is required"));
        }
        ctx.publish(&DocumentCreated { title: command.title }).await?;
        Ok(())
    }
}

fn assert_set<S: CommandHandlerSet>(_: &S) {}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    assert_eq!(CreateDocument::subject().as_str(), "commands.document.create");
    assert_eq!(CreateDocument::VERSIONS, ["1.0", "2.0"]);
    let upcast = CreateDocument::decode(br#"{"version":"1.0","title":"Q3"}"#).unwrap();
    assert_eq!(upcast, CreateDocument { title: "Q3".into(), pages: 0 });
    assert_set(&DocumentCommands);
    let t = MemoryTransport::new();
    t.ensure_stream(&cim_integrate::transport::StreamSpec::for_domain("document", None).unwrap()).await.unwrap();
    let service = CommandService::builder(t.clone(), "docs").register(DocumentCommands).start().await.unwrap();
    let bus = CommandBus::new(t).timeout(Duration::from_secs(1));
    let ack = bus.send(&CreateDocument { title: "".into(), pages: 1 }).await.unwrap();
    assert_eq!(ack, CommandAck::Rejected { reason: "a title is required".into() });
    service.shutdown(Duration::from_secs(1)).await;
}

use cim_integrate::transport::Transport;
