//! Raw identifiers name handlers like any other identifier: `r#type` registers as `type`
//! (durable `workflow-type`), a free `r#match` generates `MatchHandler`, and the service starts.
use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::service::Service;
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::{domain_event, handlers, subscribe};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub r#type: String,
}

pub struct Svc;

#[handlers(domain = "workflow")]
impl Svc {
    #[subscribe("document.created")]
    async fn r#type(&self, _ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
        let _ = event.r#type;
        Ok(())
    }

    #[subscribe("document.*")]
    async fn r#loop(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[subscribe("document.created", domain = "search")]
async fn r#match(_event: DocumentCreated) -> Result<(), HandlerError> {
    Ok(())
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let service = Service::builder(MemoryTransport::new(), "app")
            .register(Svc)
            .register(MatchHandler)
            .start()
            .await
            .expect("raw identifiers give valid handler and durable names");
        service.shutdown(std::time::Duration::from_secs(1)).await;
    });
}
