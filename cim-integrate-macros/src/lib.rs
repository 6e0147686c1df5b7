//! Procedural macros of [cim-integrate](https://docs.rs/cim-integrate). Use them through the
//! `cim-integrate` facade crate, which re-exports them with the runtime they expand into.
//!
//! Each macro is a thin entry point here; the work is in `expand(attr, item)` functions on
//! `proc_macro2` types, one module per macro, so that unit tests can snapshot the expansion.

#![warn(missing_docs)]

mod args;
mod command;
mod domain_event;
mod errors;
mod method;
mod process;
mod saga;
mod spans;
mod stubs;
mod subject;
mod subscribe;
mod versioning;

#[cfg(test)]
mod robustness;
#[cfg(test)]
mod tests;

use proc_macro::TokenStream;

/// Declares a version of a domain event: a struct with named fields, published on a concrete NATS
/// subject as JSON, `{"version":"2.0", ...fields}`, and decoded from every older version it lists.
///
/// ```ignore
/// use cim_integrate::prelude::*;
///
/// /// The current version: it has a `subject`, and lists its older versions, oldest first.
/// #[domain_event(subject = "document.created", version = "2.0", previous = [DocumentCreatedV1])]
/// pub struct DocumentCreated {
///     pub document_id: DocumentId,
///     pub title: String,
///     pub author: Option<UserId>,
/// }
///
/// /// A frozen older version: only a `version`. Never edit it; payloads of it are stored.
/// #[domain_event(version = "1.0")]
/// pub struct DocumentCreatedV1 {
///     pub document_id: DocumentId,
///     pub title: String,
/// }
///
/// /// The upcast: every older version becomes the next newer one through `From`.
/// impl From<DocumentCreatedV1> for DocumentCreated {
///     fn from(v1: DocumentCreatedV1) -> Self {
///         Self { document_id: v1.document_id, title: v1.title, author: None }
///     }
/// }
/// ```
///
/// # Arguments
///
/// - `subject = "domain.event"`: the concrete subject the event is published on. Only the
///   current version has one. Tokens are `[A-Za-z0-9_-]+` separated by dots; no wildcards.
/// - `version = "MAJOR.MINOR"`: this struct's wire version. Required.
/// - `previous = [V1, V2, ...]`: the older versions, oldest first, each a struct marked
///   `#[domain_event(version = "...")]` with a lower version than the next. Each needs
///   `impl From<Vn> for Vn+1`, the last one into the current version.
/// - `crate = "path"`: the path of the `cim-integrate` facade if it is renamed or re-exported
///   (default `::cim_integrate`).
///
/// # Expansion
///
/// `#[derive(Serialize, Deserialize)]` (through the facade's serde; `#[serde(...)]` field
/// attributes keep working), `cim_integrate::event::PayloadVersion`, and for the current
/// version `cim_integrate::event::Versioned` (encode, decode of any listed version with upcast)
/// and `cim_integrate::event::DomainEvent` (subject, envelopes).
///
/// Compile-time errors name the fix: an invalid or wildcard subject, a malformed or missing
/// version, duplicate or out-of-order versions, an older version without `From` into the next,
/// unknown or repeated arguments, and items that cannot be an event (enums, tuple structs,
/// generics, a field named `version`).
#[proc_macro_attribute]
pub fn domain_event(attr: TokenStream, item: TokenStream) -> TokenStream {
    domain_event::expand(attr.into(), item.into()).into()
}

/// Marks an `async fn` as an event handler: a durable consumer on `pattern`, typed decoding of the
/// event (any version, upcast), de-duplication by message id, retries, dead letters, identity
/// propagation. On methods, it works inside an `impl` block marked `#[handlers(domain = "...")]`;
/// on a free function, it also needs `domain = "..."` and generates a unit struct
/// `{FunctionName}Handler` implementing `HandlerSet`.
///
/// ```ignore
/// #[handlers(domain = "workflow")]
/// impl WorkflowService {
///     #[subscribe("document.created")]
///     async fn start_approval(&self, ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> {
///         ctx.publish(&WorkflowStarted { document_id: event.document_id }).await?;
///         Ok(())
///     }
///
///     #[subscribe("person.approved", max_attempts = 3, backoff = "500ms", ordered = true)]
///     async fn record_approval(&self, event: PersonApproved) -> Result<(), HandlerError> { Ok(()) }
/// }
///
/// #[subscribe("document.created", domain = "search")]
/// async fn index_document(ctx: &Context, event: DocumentCreated) -> Result<(), HandlerError> { Ok(()) }
///
/// Service::builder(transport, "app").register(WorkflowService::new()).register(IndexDocumentHandler).start().await?;
/// ```
///
/// # Arguments
///
/// The subject pattern first (`"document.created"`, `"document.*"`, `"document.>"`; its first
/// token is the domain whose stream is read), then any of:
/// `name = "..."` (the handler's name; default the function's), `durable = "..."` (the durable
/// consumer; default `{domain}-{name}`), `max_attempts = 5` (runs before dead-lettering),
/// `backoff = "1s"` and `max_backoff = "60s"` (retry delays, doubling), `concurrency = 16`,
/// `deliver = "all" | "new"`, `ordered = true` (one at a time, retries in place, per-subject order
/// kept), `ack_wait = "30s"`, `publishes = [WorkflowStarted, ...]` (declared for the topology),
/// `breaker_threshold = 5`, `breaker_window = "60s"`, `breaker_cool_down = "30s"`,
/// `breaker_probes = 1` (any `breaker_*` key attaches a circuit breaker: while it is open, messages
/// wait the cool-down instead of burning retries); on free functions also `domain = "..."` and
/// `crate = "..."`.
///
/// # Compile-time checks
///
/// An invalid pattern or one starting with a wildcard; an event type that is not a
/// `#[domain_event]`; an event whose subject can never match the pattern; a handler that is not
/// `async`, takes the wrong parameters or returns something other than
/// `Result<(), HandlerError>`; two handlers with one name in a set; unknown or repeated keys.
#[proc_macro_attribute]
pub fn subscribe(attr: TokenStream, item: TokenStream) -> TokenStream {
    subscribe::expand_subscribe(attr.into(), item.into()).into()
}

/// Collects the `#[subscribe]` methods of an inherent `impl` block into a `HandlerSet` for the
/// domain named by `domain = "..."` (optionally `crate = "..."`). See [`macro@subscribe`].
#[proc_macro_attribute]
pub fn handlers(attr: TokenStream, item: TokenStream) -> TokenStream {
    subscribe::expand_handlers(attr.into(), item.into()).into()
}

/// Declares a saga on an `impl` block: its `async fn`s marked `#[step(...)]` run in order; when
/// one fails for good, the compensations of the completed ones run in reverse. Every transition
/// is persisted (key-value, compare-and-set), so a saga resumes after a crash; see
/// `cim_integrate::saga`.
///
/// ```ignore
/// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
/// struct Publishing { document_id: String, published: bool }
///
/// #[saga(data = Publishing)]
/// impl DocumentPublishing {
///     #[step(no_compensation = "read-only validation")]
///     async fn validate(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
///
///     #[step(compensate = "unpublish", timeout = "10s", attempts = 3)]
///     async fn publish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> {
///         self.store.publish(&ctx.data().document_id, ctx.idempotency_key()).await.transient()
///     }
///
///     async fn unpublish(&self, ctx: &mut StepContext<Publishing>) -> Result<(), HandlerError> { Ok(()) }
/// }
/// ```
///
/// # Arguments
///
/// `#[saga(...)]`: `data = Type` (required: the persisted data, `Serialize + Deserialize + Clone`),
/// `name = "..."` (default: the type's name in snake case; it names the bucket and the lifecycle
/// subjects, so keep it stable), `crate = "path"` (the facade's path, default `::cim_integrate`).
///
/// `#[step(...)]`: exactly one of `compensate = "method"` or `no_compensation = "reason"`; and
/// optionally `name = "..."` (default: the method's name), `timeout = "30s"`, `attempts = 3`,
/// `compensation_timeout = "30s"`, `compensation_attempts = 5`.
///
/// Steps and compensations are `async fn name(&self, ctx: &mut StepContext<Data>) ->
/// Result<(), HandlerError>`.
///
/// # Compile-time checks
///
/// A step without `compensate` or `no_compensation` (or with both, or an empty reason); a
/// compensation naming a missing method, a step, or a method with the wrong signature; a
/// compensation used by two steps; duplicate step names; non-async steps; unknown or repeated
/// arguments; a missing `data`; generic or trait impls.
#[proc_macro_attribute]
pub fn saga(attr: TokenStream, item: TokenStream) -> TokenStream {
    saga::expand(attr.into(), item.into()).into()
}

/// Declares a command type (on a struct) or a domain's command handlers (on an `impl` block).
///
/// ```ignore
/// use cim_integrate::prelude::*;
///
/// /// A command: versioned like an event, sent on `commands.document.create`.
/// #[command(subject = "document.create", version = "2.0", previous = [CreateDocumentV1])]
/// pub struct CreateDocument { pub document_id: DocumentId, pub title: String }
///
/// /// A frozen older version (no subject): upcast with `From` into the next one.
/// #[command(version = "1.0", frozen)]
/// pub struct CreateDocumentV1 { pub document_id: DocumentId }
///
/// /// The handlers of a domain: each method handles one command type.
/// #[command(name = "document")]
/// impl DocumentCommands {
///     async fn create(&self, ctx: &Context, command: CreateDocument) -> CommandResult {
///         ctx.publish(&DocumentCreated { document_id: command.document_id }).await?;
///         Ok(())
///     }
/// }
/// ```
///
/// On a struct: `subject = "domain.name"` (required on the current version; it travels on
/// `commands.domain.name`, outside every event stream), `version = "MAJOR.MINOR"`,
/// `previous = [older versions, oldest first]`, `frozen` (an older version), `crate = "path"`.
/// Expands like `#[domain_event]` (serde derives, `PayloadVersion`, `Versioned`) plus
/// `cim_integrate::command::Command`.
///
/// On an `impl` block: `name = "set"` (required), `crate = "path"`. Every method must be
/// `async fn name(&self, ctx: &Context, command: C) -> CommandResult` with `C` a `#[command]`
/// type; expands to `cim_integrate::command::CommandHandlerSet` for `CommandService`.
#[proc_macro_attribute]
pub fn command(attr: TokenStream, item: TokenStream) -> TokenStream {
    command::expand(attr.into(), item.into()).into()
}

/// Declares a process manager on the `impl` block of its state type.
///
/// ```ignore
/// #[derive(Default, serde::Serialize, serde::Deserialize)]
/// pub struct Onboarding { organization: Option<OrganizationId>, documents: u32 }
///
/// #[process(name = "onboarding", key = person_id)]
/// impl Onboarding {
///     async fn person_created(&mut self, ctx: &mut ProcessContext, e: PersonCreated) -> Result<(), HandlerError> {
///         ctx.send(&AddToOrganization { person_id: e.person_id, organization_id: e.organization_id })?;
///         ctx.schedule("welcome", Duration::from_secs(3600));
///         Ok(())
///     }
///     #[key(owner_id)]
///     async fn document_created(&mut self, ctx: &mut ProcessContext, e: DocumentCreated) -> Result<(), HandlerError> {
///         self.documents += 1;
///         if self.documents == 2 { ctx.end(); }
///         Ok(())
///     }
///     #[deadline]
///     async fn timed_out(&mut self, ctx: &mut ProcessContext, d: Deadline) -> Result<(), HandlerError> { Ok(()) }
/// }
/// ```
///
/// Arguments: `name = "..."` (required; the buckets `cim_pm_{name}` and durable names), `key =
/// field` (the correlation field every handled event has; a method may name its own with
/// `#[key(field)]`), `crate = "path"`. The key field is checked at compile time to exist on each
/// handled event and to have one type across them. Expands to
/// `cim_integrate::process::ProcessManager`; run it with `ProcessRunner`.
#[proc_macro_attribute]
pub fn process(attr: TokenStream, item: TokenStream) -> TokenStream {
    process::expand(attr.into(), item.into()).into()
}
