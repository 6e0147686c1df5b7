//! The integration topology: who publishes what, and who subscribes to what.
//!
//! A [`Topology`] is built from what is declared (the handlers registered with a
//! [`ServiceBuilder`](crate::service::ServiceBuilder), the events each handler says it publishes in
//! [`HandlerOptions::publishes`](crate::handler::HandlerOptions), event types, sagas and command
//! handlers that other modules add), and from what is observed (every publish a running
//! [`Service`](crate::service::Service)'s handlers make through their
//! [`Context`](crate::handler::Context)). It renders as a Mermaid flowchart
//! ([`to_mermaid`](Topology::to_mermaid)) and as JSON ([`to_json`](Topology::to_json)), both
//! deterministic, so a test can snapshot them and a change in topology shows up as a diff in
//! review. [`warnings`](Topology::warnings) names messages published that no one subscribes to,
//! and subscriptions that match nothing declared.
//!
//! ```
//! use cim_integrate_runtime::topology::{EventRef, ParticipantKind, Topology};
//!
//! let mut t = Topology::new();
//! t.add_participant("document", ParticipantKind::Publisher);
//! t.add_publication("document", None, EventRef::typed("document.created", "DocumentCreated"));
//! t.add_subscription("workflow", "start_review", "document.created", Some("DocumentCreated"));
//! t.add_subscription("search", "reindex", "document.updated", None);
//! assert!(t.to_mermaid().contains(r#"m_document_created -->|"start_review"| p_workflow"#));
//! assert_eq!(t.warnings().len(), 1); // nothing declares document.updated
//! ```

use crate::event::DomainEvent;
use crate::subject::pattern_matches;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{self, Write as _};
use std::sync::Mutex;

/// A message something publishes: its subject and, when known, its type name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct EventRef {
    /// The concrete subject, without deployment prefix (`document.created`).
    pub subject: Cow<'static, str>,
    /// The type name (`DocumentCreated`), if known.
    pub type_name: Option<Cow<'static, str>>,
}

impl EventRef {
    /// The event type `E`: its [`SUBJECT`](DomainEvent::SUBJECT) and
    /// [`TYPE_NAME`](crate::event::Versioned::TYPE_NAME).
    pub const fn of<E: crate::event::PublishedEvent>() -> Self {
        Self {
            subject: Cow::Borrowed(E::SUBJECT),
            type_name: Some(Cow::Borrowed(E::TYPE_NAME)),
        }
    }

    /// A subject with no type name.
    pub fn subject(subject: impl Into<Cow<'static, str>>) -> Self {
        Self {
            subject: subject.into(),
            type_name: None,
        }
    }

    /// A subject and a type name.
    pub fn typed(subject: impl Into<Cow<'static, str>>, type_name: impl Into<Cow<'static, str>>) -> Self {
        Self {
            subject: subject.into(),
            type_name: Some(type_name.into()),
        }
    }
}

/// What takes part in the integration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ParticipantKind {
    /// A set of event handlers (usually a domain service): `Service` registers these.
    HandlerSet,
    /// A saga.
    Saga,
    /// A process manager.
    ProcessManager,
    /// A set of command handlers.
    CommandHandler,
    /// Something that only publishes (an API, another process).
    Publisher,
}

/// Events or commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MessageKind {
    /// A domain event (published to a stream, fanned out to every subscriber).
    #[default]
    Event,
    /// A command (request/reply, one handler).
    Command,
}

/// A message subject known to the topology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageNode {
    /// The subject.
    pub subject: String,
    /// Event or command.
    pub kind: MessageKind,
    /// Its type name, if known.
    pub type_name: Option<String>,
    /// Its versions, oldest first, if declared from a type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
}

/// "`participant` publishes `subject`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Publication {
    /// Who publishes.
    pub participant: String,
    /// Which of its handlers (or steps), if known.
    pub handler: Option<String>,
    /// The subject.
    pub subject: String,
    /// Event or command.
    pub kind: MessageKind,
    /// Its type name, if known.
    pub type_name: Option<String>,
    /// Declared (in a `publishes` list or by a module).
    pub declared: bool,
    /// Seen at run time.
    pub observed: bool,
}

/// "`participant`'s `handler` subscribes to `pattern`".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subscription {
    /// Who subscribes.
    pub participant: String,
    /// The handler.
    pub handler: String,
    /// The subject pattern.
    pub pattern: String,
    /// Event or command.
    pub kind: MessageKind,
    /// The handled type's name, if known.
    pub event_type: Option<String>,
}

/// Something in the topology that is probably a mistake.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "warning", rename_all = "snake_case")]
pub enum TopologyWarning {
    /// A subject is published but no subscription in the topology matches it.
    Unsubscribed {
        /// The subject.
        subject: String,
        /// Who publishes it.
        publishers: Vec<String>,
    },
    /// A subscription matches no declared or observed subject.
    Unmatched {
        /// Who subscribes.
        participant: String,
        /// The handler.
        handler: String,
        /// Its pattern.
        pattern: String,
    },
}

impl fmt::Display for TopologyWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Unsubscribed { subject, publishers } => write!(
                f,
                "`{subject}` is published (by {}) but nothing in this topology subscribes to it",
                publishers.join(", ")
            ),
            Self::Unmatched {
                participant,
                handler,
                pattern,
            } => write!(
                f,
                "`{participant}.{handler}` subscribes to `{pattern}`, which matches no declared or published subject"
            ),
        }
    }
}

/// Who publishes what and who subscribes to what. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    participants: BTreeMap<String, ParticipantKind>,
    messages: BTreeMap<String, MessageNode>,
    /// Keyed by (participant, handler, subject).
    publications: BTreeMap<(String, Option<String>, String), Publication>,
    /// Keyed by (participant, handler, pattern).
    subscriptions: BTreeMap<(String, String, String), Subscription>,
}

impl Topology {
    /// An empty topology.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a participant (kept as first added if it exists).
    pub fn add_participant(&mut self, name: impl Into<String>, kind: ParticipantKind) -> &mut Self {
        self.participants.entry(name.into()).or_insert(kind);
        self
    }

    /// Declares the event type `E` (subject, type name, versions).
    pub fn declare_event<E: DomainEvent>(&mut self) -> &mut Self {
        let node = self.message(E::SUBJECT, MessageKind::Event, Some(E::TYPE_NAME));
        if node.versions.is_empty() {
            node.versions = E::VERSIONS.iter().map(|v| (*v).to_owned()).collect();
        }
        self
    }

    /// Declares a message subject of `kind`.
    pub fn declare_message(&mut self, message: EventRef, kind: MessageKind) -> &mut Self {
        self.message(&message.subject, kind, message.type_name.as_deref());
        self
    }

    /// Declares that `participant` (through `handler`, if given) publishes `event`.
    pub fn add_publication(&mut self, participant: &str, handler: Option<&str>, event: EventRef) -> &mut Self {
        self.publication(participant, handler, &event, MessageKind::Event, true);
        self
    }

    /// Declares that `participant` (through `handler`, if given) sends the command `command`.
    pub fn add_command_sender(&mut self, participant: &str, handler: Option<&str>, command: EventRef) -> &mut Self {
        self.publication(participant, handler, &command, MessageKind::Command, true);
        self
    }

    /// Records a publish seen at run time.
    pub fn observe_publication(&mut self, participant: &str, handler: Option<&str>, event: EventRef) -> &mut Self {
        self.publication(participant, handler, &event, MessageKind::Event, false);
        self
    }

    /// Declares that `participant`'s `handler` subscribes to events matching `pattern`.
    pub fn add_subscription(
        &mut self,
        participant: &str,
        handler: &str,
        pattern: &str,
        event_type: Option<&str>,
    ) -> &mut Self {
        self.subscription(participant, handler, pattern, event_type, MessageKind::Event);
        self
    }

    /// Declares that `participant`'s `handler` handles the command on `subject` (a command handler
    /// participant, unless `participant` was added as something else).
    pub fn add_command_handler(
        &mut self,
        participant: &str,
        handler: &str,
        subject: &str,
        command_type: Option<&str>,
    ) -> &mut Self {
        self.add_participant(participant, ParticipantKind::CommandHandler);
        self.message(subject, MessageKind::Command, command_type);
        self.subscription(participant, handler, subject, command_type, MessageKind::Command);
        self
    }

    /// Adds everything in `other`.
    pub fn merge(&mut self, other: &Topology) -> &mut Self {
        for (name, kind) in &other.participants {
            self.add_participant(name.clone(), *kind);
        }
        for m in other.messages.values() {
            let node = self.message(&m.subject, m.kind, m.type_name.as_deref());
            if node.versions.is_empty() {
                node.versions = m.versions.clone();
            }
        }
        for p in other.publications.values() {
            let event = EventRef {
                subject: Cow::Owned(p.subject.clone()),
                type_name: p.type_name.clone().map(Cow::Owned),
            };
            if p.declared {
                self.publication(&p.participant, p.handler.as_deref(), &event, p.kind, true);
            }
            if p.observed {
                self.publication(&p.participant, p.handler.as_deref(), &event, p.kind, false);
            }
        }
        for s in other.subscriptions.values() {
            self.subscription(&s.participant, &s.handler, &s.pattern, s.event_type.as_deref(), s.kind);
        }
        self
    }

    /// The participants and their kinds, by name.
    pub fn participants(&self) -> impl Iterator<Item = (&str, ParticipantKind)> {
        self.participants.iter().map(|(n, k)| (n.as_str(), *k))
    }

    /// The known message subjects, sorted.
    pub fn messages(&self) -> impl Iterator<Item = &MessageNode> {
        self.messages.values()
    }

    /// The publications, sorted by participant, handler, subject.
    pub fn publications(&self) -> impl Iterator<Item = &Publication> {
        self.publications.values()
    }

    /// The subscriptions, sorted by participant, handler, pattern.
    pub fn subscriptions(&self) -> impl Iterator<Item = &Subscription> {
        self.subscriptions.values()
    }

    /// The subjects `pattern` matches among the known messages.
    pub fn matching<'a>(&'a self, pattern: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.messages
            .keys()
            .map(String::as_str)
            .filter(move |s| pattern_matches(pattern, s))
    }

    /// Published subjects that nothing subscribes to, and subscriptions that match nothing.
    pub fn warnings(&self) -> Vec<TopologyWarning> {
        let mut out = Vec::new();
        let mut publishers: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        for p in self.publications.values() {
            publishers
                .entry(p.subject.as_str())
                .or_default()
                .insert(p.participant.as_str());
        }
        for (subject, by) in publishers {
            if !self
                .subscriptions
                .values()
                .any(|s| pattern_matches(&s.pattern, subject))
            {
                out.push(TopologyWarning::Unsubscribed {
                    subject: subject.to_owned(),
                    publishers: by.into_iter().map(str::to_owned).collect(),
                });
            }
        }
        for s in self.subscriptions.values() {
            if self.matching(&s.pattern).next().is_none() {
                out.push(TopologyWarning::Unmatched {
                    participant: s.participant.clone(),
                    handler: s.handler.clone(),
                    pattern: s.pattern.clone(),
                });
            }
        }
        out
    }

    /// A Mermaid flowchart: participants as boxes (sagas rounded, command handlers framed), events
    /// as hexagons, commands as parallelograms, an arrow from each publisher to what it publishes
    /// (dotted if only observed at run time, not declared) and from each message to each handler
    /// whose pattern matches it, labelled with the handler. A pattern that matches nothing known
    /// is drawn as its own flag-shaped node with a dotted arrow.
    pub fn to_mermaid(&self) -> String {
        let mut out = String::from("flowchart LR\n");
        let participants = self.participants_in_use();
        let ids = mermaid_ids("p_", participants.iter().map(|(name, _)| *name));
        let msg_ids = mermaid_ids("m_", self.messages.keys().map(String::as_str));
        for (name, kind) in participants {
            let id = &ids[name];
            let label = escape(name);
            let _ = match kind {
                ParticipantKind::HandlerSet => writeln!(out, "    {id}[\"{label}\"]"),
                ParticipantKind::Saga => writeln!(out, "    {id}([\"{label}<br/>saga\"])"),
                ParticipantKind::ProcessManager => writeln!(out, "    {id}([\"{label}<br/>process manager\"])"),
                ParticipantKind::CommandHandler => writeln!(out, "    {id}[[\"{label}\"]]"),
                ParticipantKind::Publisher => writeln!(out, "    {id}[/\"{label}\"\\]"),
            };
        }
        for m in self.messages.values() {
            let id = &msg_ids[m.subject.as_str()];
            let mut label = escape(&m.subject);
            if let Some(t) = &m.type_name {
                let _ = write!(label, "<br/>{}", escape(t));
                if !m.versions.is_empty() {
                    let _ = write!(label, " {}", escape(&m.versions.join(", ")));
                }
            }
            let _ = match m.kind {
                MessageKind::Event => writeln!(out, "    {id}{{{{\"{label}\"}}}}"),
                MessageKind::Command => writeln!(out, "    {id}[/\"{label}\"/]"),
            };
        }
        let mut edges = BTreeSet::new();
        for p in self.publications.values() {
            let arrow = if p.declared { "-->" } else { "-.->" };
            edges.insert(format!(
                "    {} {arrow} {}",
                ids[p.participant.as_str()],
                msg_ids[p.subject.as_str()]
            ));
        }
        let unmatched: Vec<&Subscription> = self
            .subscriptions
            .values()
            .filter(|s| self.matching(&s.pattern).next().is_none())
            .collect();
        let unmatched_ids = mermaid_ids(
            "u_",
            unmatched.iter().map(|s| s.pattern.as_str()).collect::<BTreeSet<_>>(),
        );
        for (pattern, id) in &unmatched_ids {
            let _ = writeln!(out, "    {id}>\"{} (matches nothing)\"]", escape(pattern));
        }
        for s in self.subscriptions.values() {
            let to = &ids[s.participant.as_str()];
            let handler = escape(&s.handler);
            for subject in self.matching(&s.pattern) {
                edges.insert(format!("    {} -->|\"{handler}\"| {to}", msg_ids[subject]));
            }
            if let Some(id) = unmatched_ids.get(s.pattern.as_str()) {
                edges.insert(format!("    {id} -.->|\"{handler}\"| {to}"));
            }
        }
        for e in edges {
            out.push_str(&e);
            out.push('\n');
        }
        out
    }

    /// The topology as a JSON value: `participants`, `messages`, `publications`,
    /// `subscriptions` (each with the subjects it `matches`) and `warnings`, all sorted.
    pub fn to_json(&self) -> serde_json::Value {
        #[derive(Serialize)]
        struct Participant<'a> {
            name: &'a str,
            kind: ParticipantKind,
        }
        #[derive(Serialize)]
        struct Sub<'a> {
            #[serde(flatten)]
            subscription: &'a Subscription,
            matches: Vec<&'a str>,
        }
        #[derive(Serialize)]
        struct Doc<'a> {
            participants: Vec<Participant<'a>>,
            messages: Vec<&'a MessageNode>,
            publications: Vec<&'a Publication>,
            subscriptions: Vec<Sub<'a>>,
            warnings: Vec<TopologyWarning>,
        }
        let doc = Doc {
            participants: self
                .participants_in_use()
                .into_iter()
                .map(|(name, kind)| Participant { name, kind })
                .collect(),
            messages: self.messages.values().collect(),
            publications: self.publications.values().collect(),
            subscriptions: self
                .subscriptions
                .values()
                .map(|s| Sub {
                    subscription: s,
                    matches: self.matching(&s.pattern).collect(),
                })
                .collect(),
            warnings: self.warnings(),
        };
        serde_json::to_value(doc).unwrap_or(serde_json::Value::Null)
    }

    /// [`to_json`](Self::to_json), pretty-printed.
    pub fn to_json_pretty(&self) -> String {
        serde_json::to_string_pretty(&self.to_json()).unwrap_or_default()
    }

    /// Participants, including those only named by a publication or subscription (as handler
    /// sets or publishers).
    fn participants_in_use(&self) -> Vec<(&str, ParticipantKind)> {
        let mut all: BTreeMap<&str, ParticipantKind> =
            self.participants.iter().map(|(n, k)| (n.as_str(), *k)).collect();
        for s in self.subscriptions.values() {
            all.entry(s.participant.as_str()).or_insert(ParticipantKind::HandlerSet);
        }
        for p in self.publications.values() {
            all.entry(p.participant.as_str()).or_insert(ParticipantKind::Publisher);
        }
        all.into_iter().collect()
    }

    fn message(&mut self, subject: &str, kind: MessageKind, type_name: Option<&str>) -> &mut MessageNode {
        let node = self.messages.entry(subject.to_owned()).or_insert_with(|| MessageNode {
            subject: subject.to_owned(),
            kind,
            type_name: None,
            versions: Vec::new(),
        });
        if node.type_name.is_none() {
            node.type_name = type_name.map(str::to_owned);
        }
        node
    }

    fn publication(
        &mut self,
        participant: &str,
        handler: Option<&str>,
        event: &EventRef,
        kind: MessageKind,
        declared: bool,
    ) {
        self.message(&event.subject, kind, event.type_name.as_deref());
        let key = (
            participant.to_owned(),
            handler.map(str::to_owned),
            event.subject.clone().into_owned(),
        );
        let p = self.publications.entry(key).or_insert_with(|| Publication {
            participant: participant.to_owned(),
            handler: handler.map(str::to_owned),
            subject: event.subject.clone().into_owned(),
            kind,
            type_name: None,
            declared: false,
            observed: false,
        });
        if p.type_name.is_none() {
            p.type_name = event.type_name.as_deref().map(str::to_owned);
        }
        if declared {
            p.declared = true;
        } else {
            p.observed = true;
        }
    }

    fn subscription(
        &mut self,
        participant: &str,
        handler: &str,
        pattern: &str,
        event_type: Option<&str>,
        kind: MessageKind,
    ) {
        let key = (participant.to_owned(), handler.to_owned(), pattern.to_owned());
        self.subscriptions.entry(key).or_insert_with(|| Subscription {
            participant: participant.to_owned(),
            handler: handler.to_owned(),
            pattern: pattern.to_owned(),
            kind,
            event_type: event_type.map(str::to_owned),
        });
    }
}

impl fmt::Display for Topology {
    /// The Mermaid rendering.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_mermaid())
    }
}

/// Mermaid node ids derived from the names (`document.created` -> `m_document_created`), so that a
/// new node does not renumber the others in a diff; names that map to the same id get `_2`, `_3`.
fn mermaid_ids<'a>(prefix: &str, names: impl IntoIterator<Item = &'a str>) -> BTreeMap<&'a str, String> {
    let mut used = BTreeSet::new();
    let mut out = BTreeMap::new();
    for name in names {
        let base: String = prefix
            .chars()
            .chain(name.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }))
            .collect();
        let mut id = base.clone();
        let mut n = 2;
        while !used.insert(id.clone()) {
            id = format!("{base}_{n}");
            n += 1;
        }
        out.insert(name, id);
    }
    out
}

/// Mermaid labels are quoted; a quote inside would end them.
fn escape(s: &str) -> String {
    s.replace('"', "#quot;")
}

/// Most distinct publishes a [`PublishLog`] keeps (subjects can be built at run time).
pub(crate) const OBSERVED_LIMIT: usize = 4096;

/// Publishes seen at run time, shared by a service's contexts: by participant, handler and
/// subject, the event type names published there (`""` for an untyped publish). Bounded by
/// [`OBSERVED_LIMIT`]. A publish seen before is found by borrowed lookups: no allocation, one
/// lock.
#[derive(Debug, Default)]
pub(crate) struct PublishLog {
    seen: Mutex<Seen>,
}

#[derive(Debug, Default)]
struct Seen {
    /// participant -> handler -> subject -> type names.
    by: BTreeMap<String, BTreeMap<String, BTreeMap<String, Vec<String>>>>,
    /// How many (participant, handler, subject, type name) the map holds.
    len: usize,
}

impl Seen {
    fn types(&self, participant: &str, handler: &str, subject: &str) -> Option<&Vec<String>> {
        self.by.get(participant)?.get(handler)?.get(subject)
    }
}

impl PublishLog {
    /// Records that `participant`'s `handler` published to `subject` an event of `type_name`
    /// (`""`: untyped), unless it was recorded before or the log is full.
    pub(crate) fn record(&self, participant: &str, handler: &str, subject: &str, type_name: &str) {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen
            .types(participant, handler, subject)
            .is_some_and(|t| t.iter().any(|t| t == type_name))
        {
            return;
        }
        if seen.len >= OBSERVED_LIMIT {
            return;
        }
        seen.by
            .entry(participant.to_owned())
            .or_default()
            .entry(handler.to_owned())
            .or_default()
            .entry(subject.to_owned())
            .or_default()
            .push(type_name.to_owned());
        seen.len += 1;
    }

    /// Whether `record` was called with these (a test's view of the log).
    #[cfg(test)]
    pub(crate) fn contains(&self, participant: &str, handler: &str, subject: &str, type_name: &str) -> bool {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.types(participant, handler, subject)
            .is_some_and(|t| t.iter().any(|t| t == type_name))
    }

    /// How many distinct publishes the log holds.
    #[cfg(test)]
    pub(crate) fn recorded(&self) -> usize {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).len
    }

    pub(crate) fn apply(&self, topology: &mut Topology) {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        for (participant, handlers) in &seen.by {
            for (handler, subjects) in handlers {
                for (subject, types) in subjects {
                    for type_name in types {
                        let event = EventRef {
                            subject: Cow::Owned(subject.clone()),
                            type_name: (!type_name.is_empty()).then(|| Cow::Owned(type_name.clone())),
                        };
                        topology.observe_publication(participant, Some(handler), event);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_and_declared_publications_merge() {
        let mut t = Topology::new();
        t.add_publication("doc", Some("h"), EventRef::subject("doc.created"));
        t.observe_publication("doc", Some("h"), EventRef::typed("doc.created", "DocCreated"));
        let p: Vec<_> = t.publications().collect();
        assert_eq!(p.len(), 1);
        assert!(p[0].declared && p[0].observed);
        assert_eq!(p[0].type_name.as_deref(), Some("DocCreated"));
        assert_eq!(
            t.warnings(),
            [TopologyWarning::Unsubscribed {
                subject: "doc.created".into(),
                publishers: vec!["doc".into()]
            }]
        );
    }

    #[test]
    fn wildcard_subscriptions_match_every_declared_subject() {
        let mut t = Topology::new();
        t.declare_message(EventRef::subject("doc.created"), MessageKind::Event);
        t.declare_message(EventRef::subject("doc.archived"), MessageKind::Event);
        t.add_subscription("audit", "all", "doc.>", None);
        assert_eq!(t.matching("doc.>").collect::<Vec<_>>(), ["doc.archived", "doc.created"]);
        assert!(t.warnings().is_empty());
        let m = t.to_mermaid();
        assert!(
            m.contains(r#"m_doc_created -->|"all"| p_audit"#) && m.contains(r#"m_doc_archived -->|"all"| p_audit"#),
            "{m}"
        );
    }

    #[test]
    fn mermaid_ids_are_readable_and_unique() {
        let ids = mermaid_ids("m_", ["a-b.c", "a_b.c", "a.b_c"]);
        assert_eq!(ids["a-b.c"], "m_a_b_c");
        assert_eq!(ids["a_b.c"], "m_a_b_c_2");
        assert_eq!(ids["a.b_c"], "m_a_b_c_3");
    }

    #[test]
    fn the_log_is_bounded() {
        let log = PublishLog::default();
        for i in 0..OBSERVED_LIMIT + 10 {
            log.record("p", "h", &format!("d.e{i}"), "");
        }
        let mut t = Topology::new();
        log.apply(&mut t);
        assert_eq!(t.publications().count(), OBSERVED_LIMIT);
    }
}
