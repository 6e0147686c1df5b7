//! The guide's DocumentPublishingSaga, run to completion and to compensation.

use cim_integrate::handler::{HandlerError, ResultExt};
use cim_integrate::saga;
use cim_integrate::saga::{Saga, SagaOutcome, SagaRunner, StepContext};
use cim_integrate::transport::memory::MemoryTransport;
use std::sync::Mutex;

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Publishing {
    pub document_id: String,
    pub published: bool,
    pub notified: bool,
}

#[derive(Default)]
pub struct DocumentPublishing {
    log: Mutex<Vec<String>>,
}

#[saga(data = Publishing)]
impl DocumentPublishing {
    #[step(no_compensation = "read-only validation")]
    async fn validate(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        if ctx.data().document_id.is_empty() {
            return Err(HandlerError::permanent("no document"));
        }
        Ok(())
    }

    #[step(compensate = "unpublish", timeout = "5s", attempts = 2)]
    async fn publish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        self.log.lock().unwrap().push(format!("publish {}", ctx.idempotency_key()));
        ctx.data_mut().published = true;
        Ok(())
    }

    #[step(name = "notify_subscribers", compensate = "retract_notification", compensation_attempts = 7)]
    async fn notify(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        if ctx.data().document_id == "unlucky" {
            return Err(std::io::Error::other("mail server down")).permanent();
        }
        ctx.data_mut().notified = true;
        Ok(())
    }

    async fn unpublish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        self.log.lock().unwrap().push(format!("unpublish {}", ctx.idempotency_key()));
        ctx.data_mut().published = false;
        Ok(())
    }

    async fn retract_notification(&self, _ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
        Ok(())
    }

    /// Not a step: an ordinary method stays an ordinary method.
    fn helper(&self) -> usize {
        self.log.lock().unwrap().len()
    }
}

fn main() {
    assert_eq!(<DocumentPublishing as Saga>::NAME, "document_publishing");
    let names: Vec<&str> = DocumentPublishing::steps().iter().map(|s| s.name()).collect();
    assert_eq!(names, ["validate", "publish", "notify_subscribers"]);
    let steps = DocumentPublishing::steps();
    assert_eq!(steps[1].policy().timeout, std::time::Duration::from_secs(5));
    assert_eq!(steps[1].policy().retry.max_attempts, 2);
    assert_eq!(steps[2].compensation_policy().retry.max_attempts, 7);

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let runner = SagaRunner::builder(MemoryTransport::new(), DocumentPublishing::default())
            .build()
            .await
            .unwrap();
        let data = Publishing { document_id: "doc-1".into(), ..Publishing::default() };
        assert_eq!(runner.start("doc-1", data).await.unwrap(), SagaOutcome::Completed);
        let unlucky = Publishing { document_id: "unlucky".into(), ..Publishing::default() };
        let outcome = runner.start("unlucky", unlucky).await.unwrap();
        assert!(matches!(outcome, SagaOutcome::Compensated { ref failed_step, .. } if failed_step == "notify_subscribers"));
        assert!(!runner.status("unlucky").await.unwrap().unwrap().data.published);
        assert_eq!(runner.saga().helper(), 3);
        assert_eq!(
            runner.saga().log.lock().unwrap()[2],
            "unpublish document_publishing/unlucky/publish/compensate"
        );
    });
}
