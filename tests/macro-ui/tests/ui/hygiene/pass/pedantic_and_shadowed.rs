//! Every macro, expanded in a module under `#![deny(warnings, clippy::all, clippy::pedantic)]`
//! that shadows `Result`, `Option`, `String`, `Box`, `Vec`, `serde`, `core` and `std`: the
//! expansions name everything by absolute path and raise no warning or lint. Run as a trybuild
//! pass case and, for clippy, as a module of `tests/hygiene_ui.rs`.
#![deny(warnings, clippy::all, clippy::pedantic)]
// The handlers here have nothing to await; that is this file's code, not the expansions'.
#![allow(clippy::unused_async)]

#[allow(dead_code, non_camel_case_types)]
mod shadowed {
    use cim_integrate::command::CommandResult;
    use cim_integrate::handler::{Context, HandlerError};
    use cim_integrate::process::{Deadline, ProcessContext};
    use cim_integrate::saga::StepContext;
    use cim_integrate::{command, domain_event, handlers, process, saga, subscribe};

    pub struct Result;
    pub struct Option;
    pub struct String;
    pub struct Box;
    pub struct Vec;
    pub struct Ok;
    pub struct Err;
    pub struct Some;
    pub struct None;
    pub mod serde {}
    pub mod core {}
    pub mod std {}

    type Outcome = ::core::result::Result<(), HandlerError>;

    #[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
    pub struct DocumentCreated {
        pub document_id: ::std::string::String,
        pub pages: u32,
    }

    #[domain_event(version = "1.0")]
    pub struct DocumentCreatedV1 {
        pub document_id: ::std::string::String,
    }

    impl ::core::convert::From<DocumentCreatedV1> for DocumentCreated {
        fn from(v1: DocumentCreatedV1) -> Self {
            Self {
                document_id: v1.document_id,
                pages: 0,
            }
        }
    }

    #[command(subject = "document.archive", version = "1.0")]
    pub struct ArchiveDocument {
        pub document_id: ::std::string::String,
    }

    pub struct Workflow;

    #[handlers(domain = "workflow")]
    impl Workflow {
        #[subscribe("document.created", max_attempts = 3, backoff = "1s", publishes = [DocumentCreated])]
        async fn r#type(&self, ctx: &Context, event: DocumentCreated) -> Outcome {
            ctx.publish(&event).await?;
            ::core::result::Result::Ok(())
        }

        #[subscribe("document.*", name = "audit", breaker_threshold = 2)]
        async fn audit(&self, event: DocumentCreated) -> Outcome {
            let DocumentCreated { document_id, pages } = event;
            let _ = (document_id, pages);
            ::core::result::Result::Ok(())
        }
    }

    #[subscribe("document.created", domain = "search")]
    pub async fn index_document(ctx: Context, event: DocumentCreated) -> Outcome {
        ctx.publish(&event).await?;
        ::core::result::Result::Ok(())
    }

    pub struct Archive;

    #[command(name = "document")]
    impl Archive {
        async fn archive(&self, _ctx: &Context, command: ArchiveDocument) -> CommandResult {
            let ArchiveDocument { document_id } = command;
            let _ = document_id;
            ::core::result::Result::Ok(())
        }
    }

    #[derive(::core::clone::Clone, ::core::default::Default, ::serde::Serialize, ::serde::Deserialize)]
    pub struct Publishing {
        pub published: bool,
    }

    pub struct DocumentPublishing;

    #[saga(data = Publishing)]
    impl DocumentPublishing {
        #[step(no_compensation = "read-only validation", timeout = "1s")]
        async fn validate(&self, _ctx: &mut StepContext<Publishing>) -> Outcome {
            ::core::result::Result::Ok(())
        }

        #[step(compensate = "unpublish", attempts = 2)]
        async fn publish(&self, ctx: &mut StepContext<Publishing>) -> Outcome {
            ctx.data_mut().published = true;
            ::core::result::Result::Ok(())
        }

        async fn unpublish(&self, ctx: &mut StepContext<Publishing>) -> Outcome {
            ctx.data_mut().published = false;
            ::core::result::Result::Ok(())
        }
    }

    #[derive(::core::default::Default, ::serde::Serialize, ::serde::Deserialize)]
    pub struct Onboarding {
        documents: u32,
    }

    #[process(name = "onboarding", key = document_id)]
    impl Onboarding {
        async fn created(&mut self, ctx: &mut ProcessContext, event: DocumentCreated) -> Outcome {
            self.documents += event.pages;
            ctx.end();
            ::core::result::Result::Ok(())
        }

        #[deadline]
        async fn timed_out(&mut self, ctx: &mut ProcessContext, _deadline: Deadline) -> Outcome {
            ctx.end();
            ::core::result::Result::Ok(())
        }
    }
}

/// Uses the generated items, so that nothing is dead code.
pub fn main() {
    use cim_integrate::event::Versioned;
    use cim_integrate::process::ProcessManager;
    use cim_integrate::saga::Saga;
    assert_eq!(shadowed::DocumentCreated::VERSIONS, ["1.0", "2.0"]);
    assert_eq!(shadowed::DocumentPublishing::steps().len(), 2);
    assert_eq!(shadowed::Onboarding::handlers().len(), 1);
    let _ = shadowed::IndexDocumentHandler;
    let _ = (shadowed::Workflow, shadowed::Archive);
}
