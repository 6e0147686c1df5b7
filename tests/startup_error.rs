//! A start-up error returned with `?` from `main` prints its message, not only its fields.
//!
//! This is a binary (`harness = false`): run without arguments, it runs itself again with
//! `CIM_STARTUP_ERROR_CHILD=1`, whose `main` returns the `ServiceError` of two handler sets that
//! share a durable name, and checks what the child printed.

use cim_integrate::handler::{Context, HandlerError};
use cim_integrate::service::{Service, ServiceError};
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::{domain_event, handlers};

#[domain_event(subject = "document.created", version = "1.0")]
pub struct DocumentCreated {
    pub title: String,
}

struct First;

#[handlers(domain = "workflow")]
impl First {
    #[subscribe("document.created")]
    async fn start_approval(&self, _ctx: &Context, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

/// A second set of the same domain with a handler of the same name: the same durable consumer.
struct Second;

#[handlers(domain = "workflow")]
impl Second {
    #[subscribe("document.created")]
    async fn start_approval(&self, _event: DocumentCreated) -> Result<(), HandlerError> {
        Ok(())
    }
}

const CHILD: &str = "CIM_STARTUP_ERROR_CHILD";

fn main() -> Result<(), ServiceError> {
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        return runtime.block_on(async {
            Service::builder(MemoryTransport::new(), "app")
                .register(First)
                .register(Second)
                .start()
                .await
                .map(drop)
        });
    }
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = std::process::Command::new(exe)
        .env(CHILD, "1")
        .output()
        .expect("the child runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the child must fail to start; stderr: {stderr}");
    let expected = "Error: DuplicateHandler: two handlers use the durable name `workflow-start_approval`; \
                    give one of them another name or `durable = \"...\"`";
    assert!(
        stderr.contains(expected),
        "stderr of `main` returning the error:\n{stderr}"
    );
    println!("startup_error: ok ({})", stderr.trim());
    Ok(())
}
