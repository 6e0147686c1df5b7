use cim_integrate::command;
use cim_integrate::command::CommandBus;
use cim_integrate::transport::memory::MemoryTransport;

#[command(version = "1.0", frozen)]
pub struct CreateDocumentV1 {
    pub title: String,
}

async fn send(bus: CommandBus) {
    let _ = bus.send(&CreateDocumentV1 { title: "x".into() }).await;
}

fn main() {
    let _ = send(CommandBus::new(MemoryTransport::new()));
}
