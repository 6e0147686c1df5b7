//! An AsyncAPI 3.0 document of a deployment's message contracts, generated from the same model
//! as the [topology](crate::topology): its subjects become channels, who publishes, subscribes,
//! sends and handles becomes operations, and every version of every message becomes a message
//! with its JSON Schema, the CIM identity headers, and, for commands with an answer, the reply.
//!
//! ```
//! use cim_integrate_runtime::asyncapi::AsyncApi;
//! use cim_integrate_runtime::topology::{EventRef, ParticipantKind, Topology};
//!
//! let mut topology = Topology::new();
//! topology
//!     .add_participant("document", ParticipantKind::HandlerSet)
//!     .add_publication("document", Some("create"), EventRef::typed("document.created", "DocumentCreated"))
//!     .add_participant("search", ParticipantKind::HandlerSet)
//!     .add_subscription("search", "index", "document.created", Some("DocumentCreated"));
//! let doc = AsyncApi::new("Documents", "1.0.0")
//!     .topology(&topology)
//!     .message_schema(
//!         "DocumentCreated",
//!         "1.0",
//!         serde_json::json!({"type": "object", "properties": {"version": {"const": "1.0"}}}),
//!     )
//!     .to_json();
//! assert_eq!(doc["asyncapi"], "3.0.0");
//! assert_eq!(doc["channels"]["document_created"]["address"], "document.created");
//! ```
//!
//! What maps to what:
//!
//! - a concrete subject of the topology (an event's or a command's, `commands.` + its subject)
//!   is a channel, its id the subject with `.` as `_`; a subscription's pattern (`document.>`)
//!   is a channel of its own whose address is the pattern;
//! - each version of a message type known to the topology (with a schema given to
//!   [`message_schema`](AsyncApi::message_schema)) is a message `{Type}_v{major}_{minor}`, its
//!   payload the schema, its headers the identity headers ([`IDENTITY_HEADERS`]); a type whose
//!   versions are unknown gets one message with no payload schema;
//! - a publication is a `send` operation of its participant (and handler), a subscription a
//!   `receive`; a command handler is a `receive` with a `reply` (the answer's versions, or the
//!   acknowledgement), a command sender a `send` with the same reply.
//!
//! [`IDENTITY_HEADERS`]: crate::headers::IDENTITY_HEADERS

use crate::command::{Command, CommandAnswer};
use crate::event::{DomainEvent, PayloadVersion, VersionVisitor, Versioned};
use crate::headers::{CAUSATION_ID, CORRELATION_ID, EVENT_TYPE, EVENT_VERSION, MESSAGE_ID, NATS_MSG_ID, OCCURRED_AT};
use crate::schema::{SchemaError, schema_of};
use crate::topology::{EventRef, MessageKind, Topology};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// Builds an AsyncAPI 3.0 document; see the [module documentation](self).
#[derive(Debug, Clone, Default)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    topology: Topology,
    /// (type name, version) -> payload schema.
    schemas: BTreeMap<(String, String), Value>,
    /// Versions per type, oldest first, from the schemas given and the topology.
    versions: BTreeMap<String, Vec<String>>,
    /// Command type -> its answer's type name.
    answers: BTreeMap<String, String>,
}

impl AsyncApi {
    /// A document titled `title` for the application version `version`.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
            ..Self::default()
        }
    }

    /// Its description.
    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// Adds `topology` (merged with what was added before).
    pub fn topology(mut self, topology: &Topology) -> Self {
        self.topology.merge(topology);
        self
    }

    /// The JSON Schema of version `version` of the message type `type_name` (as the wire
    /// carries it: with its `version` tag). Versions are listed in the order given, which
    /// should be oldest first.
    pub fn message_schema(mut self, type_name: &str, version: &str, schema: Value) -> Self {
        let versions = self.versions.entry(type_name.to_owned()).or_default();
        if !versions.iter().any(|v| v == version) {
            versions.push(version.to_owned());
        }
        self.schemas.insert((type_name.to_owned(), version.to_owned()), schema);
        self
    }

    /// Every version of the message type `V` (an event's or a command's history, oldest first,
    /// through [`Versioned::visit_versions`]), each with its JSON Schema traced from its serde
    /// `Deserialize` ([`schema_of`]).
    ///
    /// # Errors
    /// A version whose schema cannot be traced.
    pub fn versions_of<V: Versioned>(self) -> Result<Self, SchemaError> {
        let mut visitor = Collect {
            type_name: V::TYPE_NAME,
            schemas: Vec::new(),
        };
        V::visit_versions(&mut visitor);
        self.with_schemas(V::TYPE_NAME, visitor.schemas)
    }

    /// The event `E`: declared on its subject (a channel even if the topology does not name it)
    /// with every version ([`versions_of`](Self::versions_of)).
    ///
    /// # Errors
    /// A version whose schema cannot be traced.
    pub fn event<E: DomainEvent>(mut self) -> Result<Self, SchemaError> {
        self.topology.declare_event::<E>();
        self.versions_of::<E>()
    }

    /// The command `C`: declared on its subject with every version
    /// ([`versions_of`](Self::versions_of)) and, if it has one, its answer type's versions,
    /// declared as its reply.
    ///
    /// # Errors
    /// A version whose schema cannot be traced.
    pub fn command<C: Command>(mut self) -> Result<Self, SchemaError> {
        self.topology.declare_message(
            EventRef::typed(C::subject().as_str().to_owned(), C::TYPE_NAME),
            MessageKind::Command,
        );
        let mut doc = self.versions_of::<C>()?;
        if let Some(answer) = <C::Answer as CommandAnswer>::__answer_type() {
            let mut visitor = Collect {
                type_name: answer,
                schemas: Vec::new(),
            };
            <C::Answer as CommandAnswer>::__visit_answer_versions(&mut visitor);
            doc = doc.with_schemas(answer, visitor.schemas)?;
            doc = doc.command_answer(C::TYPE_NAME, answer);
        }
        Ok(doc)
    }

    fn with_schemas(
        mut self,
        type_name: &str,
        schemas: Vec<(&'static str, Result<Value, SchemaError>)>,
    ) -> Result<Self, SchemaError> {
        for (version, schema) in schemas {
            self = self.message_schema(type_name, version, schema?);
        }
        Ok(self)
    }

    /// Declares that the command `command_type` is answered with `answer_type` (whose versions'
    /// schemas are given with [`message_schema`](Self::message_schema)).
    pub fn command_answer(mut self, command_type: &str, answer_type: &str) -> Self {
        self.answers.insert(command_type.to_owned(), answer_type.to_owned());
        self
    }

    /// The document.
    pub fn to_json(&self) -> Value {
        let mut doc = Doc::default();
        let messages: Vec<_> = self.topology.messages().collect();
        // Channels of concrete subjects, with their messages.
        for m in &messages {
            let address = m.subject.clone();
            let channel = channel_id(&address);
            let type_name = m.type_name.clone().unwrap_or_else(|| m.subject.clone());
            let ids = self.message_ids(&type_name, &m.versions, &mut doc);
            doc.channel(&channel, &address, m.kind).add(&ids);
            doc.types.insert(type_name, (channel, ids));
        }
        for p in self.topology.publications() {
            let address = p.subject.clone();
            let channel = channel_id(&address);
            let ids = self.ids_on(&doc, p.type_name.as_deref(), &channel);
            let who = operation_name(&p.participant, p.handler.as_deref());
            let (verb, reply) = match p.kind {
                MessageKind::Event => ("publishes", None),
                MessageKind::Command => ("sends", self.reply(p.type_name.as_deref(), &mut doc)),
            };
            doc.operation(
                format!("{who}_{verb}_{channel}"),
                "send",
                &channel,
                &ids,
                format!("`{}` {verb} `{}`", p.participant, p.subject),
                reply,
            );
        }
        for s in self.topology.subscriptions() {
            let address = s.pattern.clone();
            let channel = channel_id(&address);
            if !doc.channels.contains_key(&channel) {
                // A pattern: a channel of its own, with the messages of the subjects it matches.
                let matched: Vec<String> = self
                    .topology
                    .matching(&s.pattern)
                    .filter_map(|subject| {
                        messages
                            .iter()
                            .find(|m| m.subject == subject)
                            .and_then(|m| doc.types.get(m.type_name.as_deref().unwrap_or(&m.subject)))
                            .map(|(_, ids)| ids.clone())
                    })
                    .flatten()
                    .collect();
                doc.channel(&channel, &address, s.kind).add(&matched);
            }
            let ids = self.ids_on(&doc, s.event_type.as_deref(), &channel);
            let who = operation_name(&s.participant, Some(&s.handler));
            let (verb, reply) = match s.kind {
                MessageKind::Event => ("receives", None),
                MessageKind::Command => ("handles", self.reply(s.event_type.as_deref(), &mut doc)),
            };
            doc.operation(
                format!("{who}_{verb}_{channel}"),
                "receive",
                &channel,
                &ids,
                format!("`{}`'s `{}` {verb} `{}`", s.participant, s.handler, s.pattern),
                reply,
            );
        }
        let mut info = json!({"title": self.title, "version": self.version});
        if let Some(d) = &self.description {
            info["description"] = json!(d);
        }
        json!({
            "asyncapi": "3.0.0",
            "info": info,
            "defaultContentType": "application/json",
            "channels": doc.channels_json(),
            "operations": Value::Object(doc.operations),
            "components": {
                "messages": Value::Object(doc.messages),
                "schemas": {"CimHeaders": identity_headers_schema()},
            },
        })
    }

    /// [`to_json`](Self::to_json), pretty-printed.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
    }

    /// The component messages of `type_name`, one per version (created once).
    fn message_ids(&self, type_name: &str, declared: &[String], doc: &mut Doc) -> Vec<String> {
        let versions: Vec<String> = match self.versions.get(type_name) {
            Some(v) => v.clone(),
            None => declared.to_vec(),
        };
        if versions.is_empty() {
            let id = sanitize(type_name);
            doc.messages.entry(id.clone()).or_insert_with(|| {
                json!({
                    "name": type_name,
                    "title": type_name,
                    "contentType": "application/json",
                    "headers": {"$ref": "#/components/schemas/CimHeaders"},
                })
            });
            return vec![id];
        }
        versions
            .iter()
            .map(|version| {
                let id = format!("{}_v{}", sanitize(type_name), sanitize(version));
                let mut message = json!({
                    "name": type_name,
                    "title": format!("{type_name} {version}"),
                    "contentType": "application/json",
                    "headers": {"$ref": "#/components/schemas/CimHeaders"},
                    "x-cim-version": version,
                });
                if let Some(schema) = self.schemas.get(&(type_name.to_owned(), version.clone())) {
                    message["payload"] = schema.clone();
                }
                doc.messages.entry(id.clone()).or_insert(message);
                id
            })
            .collect()
    }

    /// The messages of `type_name` on `channel` (all of the channel's if the type is unknown).
    fn ids_on(&self, doc: &Doc, type_name: Option<&str>, channel: &str) -> Vec<String> {
        let on_channel = doc
            .channels
            .get(channel)
            .map(|c| c.messages.keys().cloned().collect::<Vec<_>>());
        match type_name.and_then(|t| doc.types.get(t)) {
            Some((_, ids)) => ids
                .iter()
                .filter(|id| on_channel.as_ref().is_none_or(|c| c.contains(id)))
                .cloned()
                .collect(),
            None => on_channel.unwrap_or_default(),
        }
    }

    /// The reply of a command: its answer's versions, or the bare acknowledgement.
    fn reply(&self, command_type: Option<&str>, doc: &mut Doc) -> Option<Value> {
        let answer = command_type.and_then(|c| self.answers.get(c));
        let ids = match answer {
            Some(answer) => {
                let ids = self.message_ids(answer, &[], doc);
                let id = format!("{}_reply", sanitize(answer));
                doc.messages.entry(id.clone()).or_insert_with(|| {
                    json!({
                        "name": format!("{answer} reply"),
                        "title": format!("The reply: accepted with a {answer}, rejected or failed"),
                        "contentType": "application/json",
                        "payload": ack_schema(Some(&ids)),
                    })
                });
                vec![id]
            }
            None => {
                let id = "CommandAck".to_owned();
                doc.messages.entry(id.clone()).or_insert_with(|| {
                    json!({
                        "name": "CommandAck",
                        "title": "The reply: accepted, rejected or failed",
                        "contentType": "application/json",
                        "payload": ack_schema(None),
                    })
                });
                vec![id]
            }
        };
        let channel = "command_reply";
        let entry = doc.channel(channel, "", MessageKind::Command);
        entry.reply = true;
        entry.add(&ids);
        Some(json!({
            "address": {
                "description": "the NATS inbox of the request (its reply subject)",
                "location": "$message.header#/reply_to",
            },
            "channel": {"$ref": format!("#/channels/{channel}")},
            "messages": channel_messages(channel, &ids),
        }))
    }
}

/// Collects the schema of every version visited.
struct Collect {
    type_name: &'static str,
    schemas: Vec<(&'static str, Result<Value, SchemaError>)>,
}

impl VersionVisitor for Collect {
    fn visit<V: PayloadVersion>(&mut self) {
        self.schemas
            .push((V::VERSION, schema_of::<V>(self.type_name, V::VERSION, None)));
    }
}

/// The document being built.
#[derive(Default)]
struct Doc {
    channels: BTreeMap<String, Channel>,
    operations: Map<String, Value>,
    messages: Map<String, Value>,
    /// Type name -> (its channel, its message ids).
    types: BTreeMap<String, (String, Vec<String>)>,
}

struct Channel {
    address: String,
    kind: MessageKind,
    messages: BTreeMap<String, Value>,
    /// The replies' channel: its address is dynamic (the requester's inbox).
    reply: bool,
}

impl Channel {
    /// Adds the component messages `ids` to the channel.
    fn add(&mut self, ids: &[String]) {
        for id in ids {
            self.messages
                .insert(id.clone(), json!({"$ref": format!("#/components/messages/{id}")}));
        }
    }
}

/// References to the messages `ids` of `channel` (an operation's or a reply's `messages`).
fn channel_messages(channel: &str, ids: &[String]) -> Vec<Value> {
    ids.iter()
        .map(|id| json!({"$ref": format!("#/channels/{channel}/messages/{id}")}))
        .collect()
}

impl Doc {
    fn channel(&mut self, id: &str, address: &str, kind: MessageKind) -> &mut Channel {
        self.channels.entry(id.to_owned()).or_insert_with(|| Channel {
            address: address.to_owned(),
            kind,
            messages: BTreeMap::new(),
            reply: false,
        })
    }

    fn operation(
        &mut self,
        id: String,
        action: &str,
        channel: &str,
        ids: &[String],
        summary: String,
        reply: Option<Value>,
    ) {
        let mut op = json!({
            "action": action,
            "channel": {"$ref": format!("#/channels/{channel}")},
            "summary": summary,
            "messages": channel_messages(channel, ids),
        });
        if let Some(reply) = reply {
            op["reply"] = reply;
        }
        self.operations.insert(sanitize(&id), op);
    }

    fn channels_json(&self) -> Value {
        let mut out = Map::new();
        for (id, c) in &self.channels {
            let mut channel = json!({
                "messages": Value::Object(c.messages.clone().into_iter().collect()),
            });
            if c.reply {
                channel["address"] = Value::Null;
                channel["description"] = json!("Replies to commands, on the requester's NATS inbox.");
            } else {
                channel["address"] = json!(c.address);
                channel["description"] = json!(match c.kind {
                    MessageKind::Event => "Events on a JetStream stream's subject.",
                    MessageKind::Command => "Commands: NATS request/reply, one handler per command (a queue group).",
                });
            }
            out.insert(id.clone(), channel);
        }
        Value::Object(out)
    }
}

/// `participant.handler` as an identifier.
fn operation_name(participant: &str, handler: Option<&str>) -> String {
    match handler {
        Some(h) => format!("{participant}_{h}"),
        None => participant.to_owned(),
    }
}

/// A subject or pattern as a channel id: `document.created` -> `document_created`, `>` -> `all`,
/// `*` -> `any`.
fn channel_id(address: &str) -> String {
    sanitize(&address.replace('>', "all").replace('*', "any"))
}

/// Keeps `[A-Za-z0-9_-]`, replacing anything else by `_` (AsyncAPI component keys).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The identity headers every message carries (see [`crate::envelope`]).
fn identity_headers_schema() -> Value {
    let text = |d: &str| json!({"type": "string", "description": d});
    let mut properties = Map::new();
    properties.insert(NATS_MSG_ID.into(), text("JetStream de-duplication id: the message id"));
    properties.insert(MESSAGE_ID.into(), text("this message's id (UUID)"));
    properties.insert(CORRELATION_ID.into(), text("the conversation's id (UUID)"));
    properties.insert(CAUSATION_ID.into(), text("the id of the message that caused this one"));
    properties.insert(EVENT_TYPE.into(), text("the payload's type name"));
    properties.insert(EVENT_VERSION.into(), text("the payload's version"));
    properties.insert(OCCURRED_AT.into(), text("when it happened (RFC 3339)"));
    properties.insert(
        crate::trace_context::TRACEPARENT.into(),
        text("W3C trace context (feature `otel`)"),
    );
    properties.insert(
        crate::trace_context::TRACESTATE.into(),
        text("W3C trace state (feature `otel`)"),
    );
    json!({
        "type": "object",
        "description": "The CIM identity headers. A receiver derives what is missing: no correlation or causation id means a root message; the version is also the payload's `version` field.",
        "properties": Value::Object(properties),
    })
}

/// The command acknowledgement's JSON Schema; with `answers`, the accepted reply's `answer` is
/// one of those messages' payloads.
fn ack_schema(answers: Option<&[String]>) -> Value {
    let mut accepted = json!({
        "type": "object",
        "properties": {"status": {"const": "accepted"}},
        "required": ["status"],
    });
    if let Some(ids) = answers {
        accepted["properties"]["answer"] = json!({
            "description": format!("the answer: one of {}", ids.join(", ")),
            "type": "object",
        });
        accepted["required"] = json!(["status", "answer"]);
    }
    json!({
        "oneOf": [
            accepted,
            {
                "type": "object",
                "properties": {"status": {"const": "rejected"}, "reason": {"type": "string"}},
                "required": ["status", "reason"],
            },
            {
                "type": "object",
                "properties": {"status": {"const": "failed"}, "reason": {"type": "string"}},
                "required": ["status", "reason"],
            },
        ],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_component_keys() {
        assert_eq!(channel_id("document.>"), "document_all");
        assert_eq!(channel_id("commands.inventory.reserve"), "commands_inventory_reserve");
        assert_eq!(sanitize("2.0"), "2_0");
    }
}
