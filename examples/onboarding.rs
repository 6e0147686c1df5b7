//! Onboarding: the guide's process manager, across Person, Organization and Document domains.
//!
//! 1. **person** publishes `person.created`;
//! 2. the **onboarding** process (keyed by `person_id`, state persisted with compare-and-set)
//!    sends the command `organization.add_member` and sets a deadline;
//! 3. **organization** handles the command (request/reply, queue group) and publishes
//!    `organization.member_added`;
//! 4. the process sends `document.create_from_template` for each template;
//! 5. **document** creates them (`document.created`, keyed back by `owner_id`);
//! 6. once every template exists the process publishes `person.onboarded` and ends (its state is
//!    deleted). Had the documents not arrived before the deadline, `person.onboarding_overdue`.
//!
//! ```text
//! cargo run --example onboarding
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example onboarding
//! ```

#[path = "support/mod.rs"]
mod support;

use cim_integrate::command::{CommandRejection, CommandResult};
use cim_integrate::prelude::*;
use cim_integrate::process::{Deadline, ProcessContext, ProcessOptions, ProcessRunner};
use cim_integrate::waiter::Waiter;
use cim_integrate::{command, process};
use std::time::Duration;
use support::{Audit, Error, short};

typed_id! {
    /// A person.
    pub struct PersonId;
}
typed_id! {
    /// An organization.
    pub struct OrganizationId;
}
typed_id! {
    /// A document.
    pub struct DocumentId;
}

/// The templates every new person gets a document from.
pub const TEMPLATES: [&str; 2] = ["handbook", "contract"];

// ---- events ------------------------------------------------------------------------------

#[domain_event(subject = "person.created", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PersonCreated {
    pub person_id: PersonId,
    pub name: String,
    pub organization_id: OrganizationId,
}

#[domain_event(subject = "organization.member_added", version = "1.0")]
#[derive(Debug, Clone)]
pub struct MemberAdded {
    pub person_id: PersonId,
    pub organization_id: OrganizationId,
}

#[domain_event(subject = "document.created", version = "1.0")]
#[derive(Debug, Clone)]
pub struct DocumentCreated {
    pub document_id: DocumentId,
    pub owner_id: PersonId,
    pub template: String,
}

#[domain_event(subject = "person.onboarded", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PersonOnboarded {
    pub person_id: PersonId,
    pub documents: Vec<String>,
}

#[domain_event(subject = "person.onboarding_overdue", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OnboardingOverdue {
    pub person_id: PersonId,
}

// ---- commands and their handlers ----------------------------------------------------------

#[command(subject = "organization.add_member", version = "1.0")]
#[derive(Debug, Clone)]
pub struct AddMember {
    pub person_id: PersonId,
    pub organization_id: OrganizationId,
    pub role: String,
}

#[command(subject = "document.create_from_template", version = "1.0")]
#[derive(Debug, Clone)]
pub struct CreateFromTemplate {
    pub document_id: DocumentId,
    pub owner_id: PersonId,
    pub template: String,
}

pub struct OrganizationCommands;

#[command(name = "organization")]
impl OrganizationCommands {
    async fn add_member(&self, ctx: &Context, command: AddMember) -> CommandResult {
        if command.role.is_empty() {
            return Err(CommandRejection::reject("a member needs a role"));
        }
        ctx.publish(&MemberAdded {
            person_id: command.person_id,
            organization_id: command.organization_id,
        })
        .await?;
        Ok(())
    }
}

pub struct DocumentCommands;

#[command(name = "document")]
impl DocumentCommands {
    async fn create_from_template(&self, ctx: &Context, command: CreateFromTemplate) -> CommandResult {
        let e = DocumentCreated {
            document_id: command.document_id,
            owner_id: command.owner_id,
            template: command.template,
        };
        ctx.publish(&e).await?;
        Ok(())
    }
}

// ---- the process manager --------------------------------------------------------------------

/// The onboarding process's persisted state, one per person.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Onboarding {
    pub name: String,
    pub organization: Option<OrganizationId>,
    pub documents: Vec<String>,
}

#[process(name = "onboarding", key = person_id)]
impl Onboarding {
    async fn person_created(&mut self, ctx: &mut ProcessContext, e: PersonCreated) -> Result<(), HandlerError> {
        self.name = e.name;
        let add = AddMember {
            person_id: e.person_id,
            organization_id: e.organization_id,
            role: "employee".into(),
        };
        ctx.send(&add).map_err(HandlerError::permanent)?;
        ctx.schedule("complete_by", Duration::from_secs(60));
        Ok(())
    }

    async fn member_added(&mut self, ctx: &mut ProcessContext, e: MemberAdded) -> Result<(), HandlerError> {
        self.organization = Some(e.organization_id);
        for template in TEMPLATES {
            let command = CreateFromTemplate {
                document_id: DocumentId::new(),
                owner_id: e.person_id,
                template: template.into(),
            };
            ctx.send(&command).map_err(HandlerError::permanent)?;
        }
        Ok(())
    }

    /// `document.created` names the person `owner_id`.
    #[key(owner_id)]
    async fn document_created(&mut self, ctx: &mut ProcessContext, e: DocumentCreated) -> Result<(), HandlerError> {
        if !self.documents.contains(&e.template) {
            self.documents.push(e.template);
        }
        if self.documents.len() == TEMPLATES.len() {
            ctx.publish(&PersonOnboarded {
                person_id: e.owner_id,
                documents: self.documents.clone(),
            })
            .map_err(HandlerError::permanent)?;
            ctx.end();
        }
        Ok(())
    }

    #[deadline]
    async fn overdue(&mut self, ctx: &mut ProcessContext, _deadline: Deadline) -> Result<(), HandlerError> {
        let person_id: PersonId = ctx.key().parse().map_err(HandlerError::permanent)?;
        ctx.publish(&OnboardingOverdue { person_id })
            .map_err(HandlerError::permanent)?;
        ctx.end();
        Ok(())
    }
}

/// Onboards one person; returns the documents created for them and whether the process's state
/// is gone at the end.
async fn run<T: Transport>(t: T) -> Result<(Vec<String>, bool), Error> {
    let audit = Audit::new(&["person", "organization", "document"]);
    let runner = ProcessRunner::<T, Onboarding>::with_options(t.clone(), ProcessOptions::default()).await?;
    // One host: the command handlers, the process manager (its handlers and its deadline
    // timers) and the audit handlers, with one start and one shutdown.
    let service = Service::builder(t.clone(), "onboarding")
        .commands(OrganizationCommands)
        .commands(DocumentCommands)
        .process(runner.clone())
        .register(audit)
        .start()
        .await?;

    let person_id = PersonId::new();
    // Subscribe to the outcome before anything can produce it.
    let onboarded = Waiter::new(t.clone())
        .expect::<PersonOnboarded, _>(move |e| e.person_id == person_id)
        .await?;
    let created = PersonCreated {
        person_id,
        name: "Ada".into(),
        organization_id: OrganizationId::new(),
    };
    println!("person {} created", short(person_id));
    t.publish_and_wait(created.to_envelope()?.into()).await?;

    let done = onboarded.wait(Duration::from_secs(20)).await?;
    let mut documents = done.event.documents.clone();
    documents.sort();
    println!("person {} onboarded with {documents:?}", short(person_id));
    let mut ended = false;
    for _ in 0..100 {
        if runner.state(&person_id.to_string()).await?.is_none() {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    service.shutdown(Duration::from_secs(5)).await;
    println!("process state deleted at its end: {ended}");
    Ok((documents, ended))
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let transport = AnyTransport::from_env().await?;
    println!("onboarding on the {} transport", transport.kind());
    run(transport).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn onboards_on_the_embedded_transport() {
        let (documents, ended) = run(MemoryTransport::new()).await.expect("run");
        assert_eq!(documents, ["contract", "handbook"]);
        assert!(ended);
    }

    /// The same application in a `TestHost`: no waiter, no polling of the process state, no
    /// sleep; the commands the process sent are seen with their answers.
    #[tokio::test(start_paused = true)]
    async fn onboards_in_a_test_host() {
        use cim_integrate::testing::{Answer, TestHost};
        let builder = TestHost::service("onboarding");
        let runner = ProcessRunner::<_, Onboarding>::open(builder.transport().clone())
            .await
            .unwrap();
        let host = TestHost::start(
            builder
                .commands(OrganizationCommands)
                .commands(DocumentCommands)
                .process(runner.clone()),
        )
        .await
        .unwrap();
        let person_id = PersonId::new();
        let created = host
            .publish(&PersonCreated {
                person_id,
                name: "Ada".into(),
                organization_id: OrganizationId::new(),
            })
            .await
            .unwrap();
        host.settle().await;

        let commands = host.commands();
        commands.expect_answered::<AddMember>(&Answer::Accepted);
        assert_eq!(commands.of::<CreateFromTemplate>().len(), 2, "{commands}");
        let onboarded = host.events().expect_after::<PersonOnboarded>(&created);
        let mut documents = onboarded.documents.clone();
        documents.sort();
        assert_eq!(documents, ["contract", "handbook"]);
        assert_eq!(onboarded.envelope().correlation_id(), created.correlation_id());
        host.expect_process_ended(&runner, &person_id.to_string()).await;
        // Its deadline went with it.
        host.advance(Duration::from_secs(120)).await;
        host.events().expect_none::<OnboardingOverdue>();
        host.shutdown().await;
    }

    #[tokio::test]
    async fn onboards_on_nats_with_identity_headers() {
        support::run_on_nats_checking_headers(&["person", "organization", "document", "commands"], |t| async move {
            let (documents, ended) = run(t).await?;
            assert_eq!(documents, ["contract", "handbook"]);
            assert!(ended);
            Ok(())
        })
        .await;
    }
}
