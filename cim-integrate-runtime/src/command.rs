//! Commands: versioned requests to one domain, routed over request/reply with queue groups, each
//! handled once, answered with a typed acknowledgement.
//!
//! - A command type is the current version of a [`Versioned`] payload (the same machinery as
//!   events: `{"version":"1.0", ...fields}`, older versions upcast) that also implements
//!   [`Command`]: its subject, `domain.name` (`document.create`). `#[command(...)]` writes both.
//! - It travels on `commands.{domain}.{name}` ([`COMMAND_TOKEN`]): outside every event stream,
//!   because a core request to a subject a stream captures is answered by the stream's PubAck.
//! - [`CommandBus::send`] encodes it with identity headers, sends it as a request and waits, up to
//!   a timeout, for a [`CommandAck`]: accepted, or rejected with a reason.
//! - [`CommandService`] serves the handlers of a service. Every instance joins one queue group
//!   per command (`commands_{domain}_{name}`), so several instances share the load and each
//!   command is handled by one of them. Two handlers for one command in one service are refused
//!   at start-up ([`CommandServiceError::DuplicateHandler`]).
//! - Identity propagates: a handler receives a [`Context`] with the command's identity, and the
//!   events it publishes keep the correlation id and name the command as their cause.
//! - A command sent twice with the same message id (a retry, or a process manager re-running)
//!   gets the first run's acknowledgement without running the handler again, for as long as the
//!   service's result cache keeps it ([`CommandServiceBuilder::result_ttl`]).

use crate::envelope::Envelope;
use crate::event::{EncodeError, PayloadVersion, Versioned};
use crate::handler::{BoxError, Context, HandlerError, PublishError};
use crate::headers::Headers;
use crate::id::Identity;
use crate::service::{Service, ServiceBuilder, ServiceError};
use crate::subject::{self, Subject, SubjectError};
use crate::transport::{Reply, Request, Transport, TransportError};
use bytes::Bytes;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// The first token of every command subject: `commands.document.create`.
pub const COMMAND_TOKEN: &str = "commands";
/// The default time [`CommandBus::send`] waits for an acknowledgement: 5 seconds.
pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);
/// The default time a command's acknowledgement is remembered for repeated sends: 1 hour.
pub const DEFAULT_RESULT_TTL: Duration = Duration::from_secs(3600);
/// Reply header: `accepted`, `rejected` or `failed`.
pub const ACK_STATUS: &str = "X-Command-Status";

/// A command: the current version of a versioned payload, addressed to one domain.
///
/// `#[command(subject = "document.create", version = "1.0")]` implements it (with
/// [`Versioned`] and the serde derives); by hand:
///
/// ```
/// use cim_integrate_runtime::command::Command;
/// use cim_integrate_runtime::event::{self, DecodeError, PayloadVersion, Versioned};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct CreateDocument { title: String }
/// impl PayloadVersion for CreateDocument { const VERSION: &'static str = "1.0"; }
/// impl Versioned for CreateDocument {
///     const TYPE_NAME: &'static str = "CreateDocument";
///     const VERSIONS: &'static [&'static str] = &["1.0"];
///     fn decode_version(v: &str, p: &[u8]) -> Result<Option<Self>, DecodeError> {
///         event::decode_oldest::<Self>("1.0", Self::TYPE_NAME, v, p)
///     }
/// }
/// impl Command for CreateDocument {
///     const SUBJECT: &'static str = "document.create";
///     type Answer = ();
/// }
///
/// assert_eq!(CreateDocument::subject().as_str(), "commands.document.create");
/// assert_eq!(CreateDocument::domain(), "document");
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not the current version of a `#[command]`",
    note = "declare it with `#[command(subject = \"document.create\", version = \"1.0\")]`; a frozen older version (`#[command(version = \"1.0\", frozen)]`) cannot be sent or handled"
)]
pub trait Command: Versioned + Send + Sync + 'static {
    /// `domain.name`, e.g. `"document.create"`: concrete, checked at compile time. The command
    /// travels on `commands.` + this.
    const SUBJECT: &'static str;

    /// What an accepted command answers: `()` (nothing but "accepted"), or a versioned answer
    /// type declared with `#[command(answer, version = "1.0")]` and named by
    /// `#[command(..., answer = Reserved)]`. Its handlers return `CommandResult<Answer>`, and
    /// [`CommandBus::send`] returns it in [`CommandAck::Accepted`].
    type Answer: CommandAnswer;

    /// The subject the command travels on: `commands.{SUBJECT}`.
    fn subject() -> Subject {
        const {
            assert!(
                subject::is_valid_subject(Self::SUBJECT),
                "Command::SUBJECT must be a concrete subject such as `document.create`"
            )
        };
        // Both parts are valid (the subject is checked at compile time), so the join is too;
        // the fallback is never taken.
        Subject::new(format!("{COMMAND_TOKEN}.{}", Self::SUBJECT))
            .unwrap_or_else(|_| Subject::__from_checked_literal(COMMAND_TOKEN))
    }

    /// The domain that handles it: the first token of [`SUBJECT`](Command::SUBJECT).
    fn domain() -> &'static str {
        Self::SUBJECT.split('.').next().unwrap_or(Self::SUBJECT)
    }
}

/// The acknowledgement of a command: accepted with the command's answer (`()` for a command
/// without one), or rejected with a reason. A rejection is never an answer: it stays distinct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandAck<A = ()> {
    /// The handler accepted and carried out the command; its answer.
    Accepted(A),
    /// The handler refused it (a business rule): it will not be carried out.
    Rejected {
        /// Why, for the sender.
        reason: String,
    },
}

impl<A> CommandAck<A> {
    /// The answer, if accepted.
    pub fn answer(&self) -> Option<&A> {
        match self {
            Self::Accepted(a) => Some(a),
            Self::Rejected { .. } => None,
        }
    }

    /// The answer, if accepted, taken.
    pub fn into_answer(self) -> Option<A> {
        match self {
            Self::Accepted(a) => Some(a),
            Self::Rejected { .. } => None,
        }
    }

    /// `true` for [`CommandAck::Accepted`].
    pub fn is_accepted(&self) -> bool {
        matches!(self, Self::Accepted(_))
    }
    /// The rejection reason, if rejected.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Accepted(_) => None,
            Self::Rejected { reason } => Some(reason),
        }
    }
}

/// What an accepted command answers, on the wire: `()` (no answer) or a versioned answer type
/// (`#[command(answer, version = "1.0")]` implements it: encoded like an event, with its
/// `version` tag, and decoded with upcasting from its older versions).
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command answer",
    label = "not declared as an answer",
    note = "declare the answer type with `#[command(answer, version = \"1.0\")]` and name it in the command: `#[command(subject = \"inventory.reserve\", version = \"1.0\", answer = Reserved)]`"
)]
pub trait CommandAnswer: Sized + Send + 'static {
    /// The answer as JSON (`None` for no answer).
    ///
    /// # Errors
    /// If it cannot be encoded.
    fn to_answer(&self) -> Result<Option<serde_json::Value>, EncodeError>;

    /// The answer from its JSON (`None`: the reply carried none, e.g. from a handler built
    /// before the command had an answer).
    ///
    /// # Errors
    /// Why it cannot be read as this type (an unknown version, a missing answer).
    fn from_answer(answer: Option<&serde_json::Value>) -> Result<Self, String>;

    /// The answer's type name, for a [`VersionedAnswer`]; `None` for `()`. Describes the contract (the AsyncAPI document).
    #[doc(hidden)]
    fn __answer_type() -> Option<&'static str> {
        None
    }

    /// [`Versioned::visit_versions`] of a [`VersionedAnswer`]; nothing for `()`.
    #[doc(hidden)]
    fn __visit_answer_versions<Vis: crate::event::VersionVisitor>(_visitor: &mut Vis) {}
}

impl CommandAnswer for () {
    fn to_answer(&self) -> Result<Option<serde_json::Value>, EncodeError> {
        Ok(None)
    }

    /// Any answer reads as `()`: a sender that expects none ignores one.
    fn from_answer(_: Option<&serde_json::Value>) -> Result<Self, String> {
        Ok(())
    }
}

/// A versioned answer type: what `#[command(answer, version = "...")]` declares (an empty impl).
/// Its [`CommandAnswer`] comes from one blanket impl: encoded as a versioned payload, decoded
/// with upcasting from its older versions.
pub trait VersionedAnswer: Versioned + Send + 'static {}

#[diagnostic::do_not_recommend]
impl<A: VersionedAnswer> CommandAnswer for A {
    fn to_answer(&self) -> Result<Option<serde_json::Value>, EncodeError> {
        let bytes = self.encode()?;
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| EncodeError::Serialize {
                type_name: A::TYPE_NAME,
                reason: e.to_string(),
            })
    }

    fn from_answer(answer: Option<&serde_json::Value>) -> Result<Self, String> {
        let answer = answer.ok_or_else(|| {
            format!(
                "the reply carries no {} (is the handler older than the command's answer?)",
                A::TYPE_NAME
            )
        })?;
        let bytes = serde_json::to_vec(answer).map_err(|e| e.to_string())?;
        A::decode(&bytes).map_err(|e| e.to_string())
    }

    fn __answer_type() -> Option<&'static str> {
        Some(A::TYPE_NAME)
    }

    fn __visit_answer_versions<Vis: crate::event::VersionVisitor>(visitor: &mut Vis) {
        A::visit_versions(visitor);
    }
}

/// The reply on the wire: an acknowledgement, or a failure of the handler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub(crate) enum WireReply {
    /// `{"status":"accepted"}`, with `"answer":{...}` for a command with an answer.
    Accepted {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        answer: Option<serde_json::Value>,
    },
    Rejected {
        reason: String,
    },
    Failed {
        reason: String,
    },
}

impl WireReply {
    pub(crate) fn status(&self) -> &'static str {
        match self {
            Self::Accepted { .. } => "accepted",
            Self::Rejected { .. } => "rejected",
            Self::Failed { .. } => "failed",
        }
    }
    pub(crate) fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_else(|_| br#"{"status":"failed","reason":"unencodable reply"}"#.to_vec())
    }
    pub(crate) fn to_reply(&self) -> Reply {
        Self::reply_of(self.status(), Bytes::from(self.to_json()))
    }

    /// A reply whose JSON is already written (`status` must be the one it carries).
    pub(crate) fn reply_of(status: &'static str, json: Bytes) -> Reply {
        let mut headers = Headers::new();
        // A fixed ASCII name and value: cannot fail.
        let _ = headers.insert(ACK_STATUS, status);
        Reply { headers, payload: json }
    }
}

/// How a command handler declines: a rejection (final, a business answer) or a failure (the
/// handler could not decide, e.g. a dependency is down; the sender may retry).
#[derive(Debug, thiserror::Error)]
pub enum CommandRejection {
    /// Refused for a reason the sender should see. Final: a repeated send gets the same answer.
    #[error("rejected: {0}")]
    Rejected(String),
    /// Could not be carried out now. Not remembered: a repeated send runs the handler again.
    #[error("failed: {0}")]
    Failed(#[source] BoxError),
}

impl CommandRejection {
    /// A rejection with a reason.
    pub fn reject(reason: impl Into<String>) -> Self {
        Self::Rejected(reason.into())
    }
    /// A failure.
    pub fn failed(e: impl Into<BoxError>) -> Self {
        Self::Failed(e.into())
    }
}

impl From<PublishError> for CommandRejection {
    /// A failed publish is a failure: the sender may retry, and the derived message ids make the
    /// retried publishes idempotent.
    fn from(e: PublishError) -> Self {
        Self::Failed(Box::new(e))
    }
}

impl From<HandlerError> for CommandRejection {
    /// Permanent handler errors become rejections, transient ones failures.
    fn from(e: HandlerError) -> Self {
        match e {
            HandlerError::Permanent(e) => Self::Rejected(e.to_string()),
            HandlerError::Transient(e) => Self::Failed(e),
        }
    }
}

/// What a command handler returns: `Ok(answer)` accepts (`Ok(())` for a command without an
/// answer), `Err(CommandRejection)` rejects or fails.
pub type CommandResult<A = ()> = Result<A, CommandRejection>;

/// The output of a command handler: [`CommandResult`] of the command's answer.
#[diagnostic::on_unimplemented(
    message = "a command handler must return `CommandResult<{A}>`, not `{Self}`",
    label = "returns `{Self}`",
    note = "write `async fn name(&self, ctx: &Context, command: MyCommand) -> CommandResult<{A}>`, `{A}` being the command's answer (`CommandResult` for `()`); `Ok(answer)` accepts, `Err(CommandRejection::reject(\"why\"))` rejects"
)]
pub trait IntoCommandResult<A = ()> {
    /// Converts into a [`CommandResult`].
    fn into_command_result(self) -> CommandResult<A>;
}

impl<A> IntoCommandResult<A> for CommandResult<A> {
    fn into_command_result(self) -> CommandResult<A> {
        self
    }
}

/// Why sending a command did not produce an acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// No service handles the command (no responder on its subject).
    #[error("no handler for `{subject}`: no running service serves this command")]
    NoHandler {
        /// The command's subject.
        subject: String,
    },
    /// No acknowledgement within the timeout. The command may or may not have been carried out;
    /// sending it again with the same identity is safe (the handler's result is remembered).
    #[error("no acknowledgement for `{subject}` within {timeout:?}; it may or may not have been handled")]
    Timeout {
        /// The command's subject.
        subject: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The handler failed (not a rejection); sending again may succeed.
    #[error("handler of `{subject}` failed: {reason}")]
    Failed {
        /// The command's subject.
        subject: String,
        /// What failed.
        reason: String,
    },
    /// The command could not be encoded.
    #[error(transparent)]
    Encode(#[from] EncodeError),
    /// A subject is invalid.
    #[error(transparent)]
    Subject(#[from] SubjectError),
    /// The reply was not an acknowledgement.
    #[error("invalid reply to `{subject}`: {reason}")]
    InvalidReply {
        /// The command's subject.
        subject: String,
        /// What was wrong.
        reason: String,
    },
    /// The transport failed.
    #[error(transparent)]
    Transport(TransportError),
}

impl CommandError {
    /// `true` if sending the same command again later may succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::NoHandler { .. } | Self::Timeout { .. } | Self::Failed { .. } => true,
            Self::Transport(t) => t.is_transient(),
            Self::Encode(_) | Self::Subject(_) | Self::InvalidReply { .. } => false,
        }
    }
}

impl From<CommandError> for HandlerError {
    /// Transient send errors retry the handler; the others dead-letter its message.
    fn from(e: CommandError) -> Self {
        if e.is_transient() {
            Self::Transient(Box::new(e))
        } else {
            Self::Permanent(Box::new(e))
        }
    }
}

/// Object-safe request/reply, so that [`CommandBus`] is not generic over the transport.
trait DynRequest: Send + Sync + 'static {
    fn request(&self, request: Request, timeout: Duration) -> BoxFuture<'static, Result<Reply, TransportError>>;
}

impl<T: Transport> DynRequest for T {
    fn request(&self, request: Request, timeout: Duration) -> BoxFuture<'static, Result<Reply, TransportError>> {
        let t = self.clone();
        Box::pin(async move { t.request(request, timeout).await })
    }
}

/// The future of a command send: resolves to the handler's acknowledgement with the answer.
pub type SendFuture<'a, A = ()> = futures::future::BoxFuture<'a, Result<CommandAck<A>, CommandError>>;

/// A [`Command`] as an object: how [`CommandBus::send`] and its siblings take their command, so
/// that they do not name its type (passing something that is not a command is one compile
/// error, on the argument) while the answer type still comes from it. Every `Command` is one;
/// there is nothing to implement.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a command",
    label = "not the current version of a `#[command]`",
    note = "declare it with `#[command(subject = \"document.create\", version = \"1.0\")]`; a frozen older version (`#[command(version = \"1.0\", frozen)]`) cannot be sent or handled"
)]
pub trait SendableCommand {
    /// [`Command::Answer`] (read with [`answer_reader`](Self::answer_reader)).
    type Answer;
    /// [`Command::subject`].
    fn command_subject(&self) -> Subject;
    /// [`Versioned::TYPE_NAME`].
    fn command_type(&self) -> &'static str;
    /// [`PayloadVersion::VERSION`].
    fn command_version(&self) -> &'static str;
    /// [`Versioned::encode`].
    ///
    /// # Errors
    /// As [`Versioned::encode`].
    fn encode_command(&self) -> Result<Bytes, EncodeError>;
    /// [`CommandAnswer::from_answer`] of the answer type (so that the senders need no bound of
    /// their own on it: a command whose answer is not one is reported once, at its declaration).
    fn answer_reader(&self) -> AnswerReader<Self::Answer>;
}

/// Reads a reply's answer as `A`: [`CommandAnswer::from_answer`].
pub type AnswerReader<A> = fn(Option<&serde_json::Value>) -> Result<A, String>;

#[diagnostic::do_not_recommend]
impl<C: Command> SendableCommand for C {
    type Answer = C::Answer;
    fn command_subject(&self) -> Subject {
        C::subject()
    }
    fn command_type(&self) -> &'static str {
        C::TYPE_NAME
    }
    fn command_version(&self) -> &'static str {
        <C as PayloadVersion>::VERSION
    }
    fn encode_command(&self) -> Result<Bytes, EncodeError> {
        self.encode()
    }
    fn answer_reader(&self) -> AnswerReader<C::Answer> {
        <C::Answer as CommandAnswer>::from_answer
    }
}

/// Sends commands and waits for their acknowledgement. Cheap to clone.
///
/// ```
/// # use cim_integrate_runtime::command::*;
/// # use cim_integrate_runtime::transport::memory::MemoryTransport;
/// # use std::time::Duration;
/// let bus = CommandBus::new(MemoryTransport::new()).timeout(Duration::from_secs(2));
/// assert_eq!(bus.default_timeout(), Duration::from_secs(2));
/// ```
#[derive(Clone)]
pub struct CommandBus {
    transport: Arc<dyn DynRequest>,
    timeout: Duration,
}

impl fmt::Debug for CommandBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandBus")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CommandBus {
    /// A bus on `transport` with the default timeout ([`DEFAULT_COMMAND_TIMEOUT`]).
    pub fn new<T: Transport>(transport: T) -> Self {
        Self {
            transport: Arc::new(transport),
            timeout: DEFAULT_COMMAND_TIMEOUT,
        }
    }

    /// Sets the default timeout.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The default timeout.
    pub fn default_timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends `command` as the root of a new conversation and waits for its acknowledgement.
    ///
    /// The acknowledgement carries the command's typed answer ([`Command::Answer`]):
    /// `CommandAck::Accepted(answer)`, or `Rejected`.
    ///
    /// (The sending methods take the command as a [`SendableCommand`] object and return a boxed
    /// future, so a type that is not a command gives exactly one compile error, on the
    /// argument.)
    pub fn send<'a, A: Send + 'static>(
        &'a self,
        command: &(dyn SendableCommand<Answer = A> + '_),
    ) -> SendFuture<'a, A> {
        self.send_with(Identity::root(), command, self.timeout)
    }

    /// Sends `command` as caused by the message with identity `parent` (same correlation id,
    /// `parent`'s message id as causation id).
    pub fn send_caused_by<'a, A: Send + 'static>(
        &'a self,
        parent: &Identity,
        command: &(dyn SendableCommand<Answer = A> + '_),
    ) -> SendFuture<'a, A> {
        self.send_with(parent.child(), command, self.timeout)
    }

    /// Sends `command` with an explicit identity and timeout. Sending again with the same
    /// identity is idempotent while the handler's service remembers the result (its answer
    /// included).
    pub fn send_with<'a, A: Send + 'static>(
        &'a self,
        identity: Identity,
        command: &(dyn SendableCommand<Answer = A> + '_),
        timeout: Duration,
    ) -> SendFuture<'a, A> {
        // Encoded now, so the future borrows nothing of `command`.
        let payload = command.encode_command();
        let subject = command.command_subject();
        let (command_type, version) = (command.command_type(), command.command_version());
        let read = command.answer_reader();
        Box::pin(async move {
            let payload = payload?;
            self.request(identity, &subject, command_type, version, payload, timeout, read)
                .await
        })
    }

    /// Sends an already encoded command (what process managers replay from their outbox),
    /// reading the answer as `A` (`()` to ignore it).
    pub async fn send_encoded<A: CommandAnswer>(
        &self,
        identity: Identity,
        subject: &Subject,
        command_type: &str,
        version: &str,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<CommandAck<A>, CommandError> {
        self.request(
            identity,
            subject,
            command_type,
            version,
            payload,
            timeout,
            A::from_answer,
        )
        .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn request<A>(
        &self,
        identity: Identity,
        subject: &Subject,
        command_type: &str,
        version: &str,
        payload: Bytes,
        timeout: Duration,
        read: AnswerReader<A>,
    ) -> Result<CommandAck<A>, CommandError> {
        let envelope = Envelope::with_identity(identity, subject.clone(), payload).typed(command_type, version);
        let span = tracing::debug_span!(
            "send_command",
            subject = %subject,
            message_id = %identity.message_id,
            correlation_id = %identity.correlation_id,
            causation_id = %identity.causation_id,
        );
        async {
            let reply = self
                .transport
                .request(Request::from(&envelope), timeout)
                .await
                .map_err(|e| match e {
                    TransportError::NoResponders { subject } => CommandError::NoHandler { subject },
                    TransportError::Timeout(_) => CommandError::Timeout {
                        subject: subject.to_string(),
                        timeout,
                    },
                    other => CommandError::Transport(other),
                })?;
            let wire: WireReply = serde_json::from_slice(&reply.payload).map_err(|e| CommandError::InvalidReply {
                subject: subject.to_string(),
                reason: e.to_string(),
            })?;
            tracing::debug!(status = wire.status(), "command acknowledged");
            match wire {
                WireReply::Accepted { answer } => {
                    read(answer.as_ref())
                        .map(CommandAck::Accepted)
                        .map_err(|reason| CommandError::InvalidReply {
                            subject: subject.to_string(),
                            reason,
                        })
                }
                WireReply::Rejected { reason } => Ok(CommandAck::Rejected { reason }),
                WireReply::Failed { reason } => Err(CommandError::Failed {
                    subject: subject.to_string(),
                    reason,
                }),
            }
        }
        .instrument(span)
        .await
    }
}

/// A command handler's future: the answer as JSON (`None` for none) or why not.
pub type CommandFuture = BoxFuture<'static, CommandResult<Option<serde_json::Value>>>;
type Invoke = dyn Fn(Context, &Bytes) -> Result<CommandFuture, String> + Send + Sync;

/// One command handler, type-erased: its name, the command's subject and type, decoder + function.
#[derive(Clone)]
pub struct CommandRegistration {
    name: String,
    subject: Subject,
    command_type: &'static str,
    pub(crate) invoke: Arc<Invoke>,
}

impl fmt::Debug for CommandRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandRegistration")
            .field("name", &self.name)
            .field("subject", &self.subject)
            .field("command_type", &self.command_type)
            .finish_non_exhaustive()
    }
}

/// A function that handles commands of type `C`:
/// `async fn(Context, C) -> CommandResult<C::Answer>`.
#[diagnostic::on_unimplemented(
    message = "this is not a handler of the command `{C}`",
    label = "expected `async fn(Context, {C}) -> CommandResult<answer>`",
    note = "a command handler takes the context and the command by value and returns `CommandResult` of the command's answer (`CommandResult` for a command without one)"
)]
pub trait CommandHandler<C, A = ()>: Send + Sync + 'static {
    /// Runs the handler.
    fn call(&self, ctx: Context, command: C) -> impl Future<Output = CommandResult<A>> + Send + 'static;
}

impl<C, A, F, Fut> CommandHandler<C, A> for F
where
    A: Send + 'static,
    F: Fn(Context, C) -> Fut + Send + Sync + 'static,
    Fut: Future + Send + 'static,
    Fut::Output: IntoCommandResult<A>,
{
    fn call(&self, ctx: Context, command: C) -> impl Future<Output = CommandResult<A>> + Send + 'static {
        let fut = self(ctx, command);
        async move { fut.await.into_command_result() }
    }
}

impl CommandRegistration {
    /// A handler named `name` (`[A-Za-z0-9_-]+`) of the command `C`.
    pub fn new<C: Command>(name: impl Into<String>, handler: impl CommandHandler<C, C::Answer>) -> Self {
        let invoke = move |ctx: Context, payload: &Bytes| -> Result<CommandFuture, String> {
            let command = C::decode(payload).map_err(|e| e.to_string())?;
            let answer = handler.call(ctx, command);
            let answered: CommandFuture = Box::pin(async move {
                // An answer that cannot be encoded is the handler's failure (a bug to fix), not
                // a business rejection.
                answer.await?.to_answer().map_err(CommandRejection::failed)
            });
            Ok(answered)
        };
        Self {
            name: name.into(),
            subject: C::subject(),
            command_type: C::TYPE_NAME,
            invoke: Arc::new(invoke),
        }
    }

    /// The handler's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The command's subject (`commands.document.create`).
    pub fn subject(&self) -> &Subject {
        &self.subject
    }
    /// The command's type name.
    pub fn command_type(&self) -> &'static str {
        self.command_type
    }
}

/// The command handlers of one domain service, registered together. `#[command]` on an `impl`
/// block generates it.
pub trait CommandHandlerSet: Send + Sync + 'static {
    /// The set's name, usually its domain (`document`).
    fn set_name(&self) -> &str;
    /// The handlers.
    fn command_registrations(self: Arc<Self>) -> Vec<CommandRegistration>;
}

/// Why a command service could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandServiceError {
    /// Two handlers in one service handle the same command.
    #[error(
        "two handlers for the command `{command}` (`{subject}`): `{first}` and `{second}`; a command is handled by exactly one handler"
    )]
    DuplicateHandler {
        /// The command type.
        command: String,
        /// Its subject.
        subject: String,
        /// The first handler (`set.name`).
        first: String,
        /// The second handler.
        second: String,
    },
    /// Anything else that stopped the service from starting.
    #[error(transparent)]
    Service(ServiceError),
}

impl From<ServiceError> for CommandServiceError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::DuplicateCommandHandler {
                command,
                subject,
                first,
                second,
            } => Self::DuplicateHandler {
                command,
                subject,
                first,
                second,
            },
            other => Self::Service(other),
        }
    }
}

/// The queue group shared by every handler instance of a command: `commands_document_create`.
pub fn queue_group(subject: &Subject) -> String {
    subject.as_str().replace('.', "_")
}

/// Builds a [`CommandService`]: a [`Service`] with command handlers only. Commands run through
/// the same [pipeline](crate::pipeline) as events; an app with events and commands registers
/// both on one [`Service::builder`] ([`ServiceBuilder::commands`]) and has one lifecycle.
pub struct CommandServiceBuilder<T: Transport> {
    inner: ServiceBuilder<T>,
}

impl<T: Transport> fmt::Debug for CommandServiceBuilder<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.inner.fmt(f)
    }
}

impl<T: Transport> CommandServiceBuilder<T> {
    /// Most commands handled at once per handler (default 16).
    pub fn concurrency(self, n: usize) -> Self {
        Self {
            inner: self.inner.command_concurrency(n),
        }
    }

    /// How long acknowledgements are remembered so that a repeated send (same message id) is
    /// answered without running the handler again (default [`DEFAULT_RESULT_TTL`]). `None`
    /// remembers nothing.
    pub fn result_ttl(self, ttl: Option<Duration>) -> Self {
        Self {
            inner: self.inner.result_ttl(ttl),
        }
    }

    /// Registers a set of handlers (usually generated by `#[command]` on an `impl` block).
    pub fn register<S: CommandHandlerSet>(self, set: S) -> Self {
        Self {
            inner: self.inner.commands(set),
        }
    }

    /// Registers a shared set of handlers.
    pub fn register_arc<S: CommandHandlerSet>(self, set: Arc<S>) -> Self {
        Self {
            inner: self.inner.commands_arc(set),
        }
    }

    /// Registers one handler under the set name `set`.
    pub fn handler(self, set: &str, registration: CommandRegistration) -> Self {
        Self {
            inner: self.inner.command_handler(set, registration),
        }
    }

    /// Checks the handlers (one per command), opens the result cache, joins one queue group
    /// per command, and starts serving.
    pub async fn start(self) -> Result<CommandService, CommandServiceError> {
        Ok(CommandService {
            service: self.inner.start().await?,
        })
    }
}

/// A running command service. Dropping it without [`shutdown`](Self::shutdown) stops serving at
/// once (requests in flight time out at their senders).
#[derive(Debug)]
pub struct CommandService {
    service: Service,
}

impl CommandService {
    /// A builder for a service named `name` (`[A-Za-z0-9_-]+`) on `transport`.
    pub fn builder<T: Transport>(transport: T, name: impl Into<String>) -> CommandServiceBuilder<T> {
        CommandServiceBuilder {
            inner: Service::builder(transport, name),
        }
    }

    /// The subjects served.
    pub fn subjects(&self) -> &[String] {
        self.service.command_subjects()
    }

    /// Counters of every command handler (`{set}-{name}`).
    pub fn stats(&self) -> Vec<crate::service::HandlerStats> {
        self.service.stats()
    }

    /// Leaves the queue groups and waits up to `grace` for commands in flight to be answered.
    pub async fn shutdown(self, grace: Duration) {
        self.service.shutdown(grace).await;
    }
}
