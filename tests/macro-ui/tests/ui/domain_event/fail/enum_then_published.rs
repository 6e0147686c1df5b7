// One mistake, one error: an enum cannot be an event; publishing it reports nothing more.
use cim_integrate::domain_event;
use cim_integrate::handler::{Context, HandlerError};

#[domain_event(subject = "document.changed", version = "1.0")]
pub enum DocumentChanged {
    Renamed { title: String },
}

async fn publish(ctx: &Context) -> Result<(), HandlerError> {
    ctx.publish(&DocumentChanged::Renamed { title: String::new() }).await?;
    Ok(())
}

fn main() {
    let _ = publish;
}
