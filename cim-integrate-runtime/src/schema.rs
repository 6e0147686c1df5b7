//! The JSON Schema of a payload version, derived from its serde `Deserialize` impl: what the
//! wire-contract snapshots (`testing::snapshot`, feature `testing`) pin and what the
//! [AsyncAPI document](crate::asyncapi) describes each message version with.
//!
//! A tracing [`Deserializer`](serde::Deserializer) plays the JSON a decoder would read: it answers
//! every `deserialize_*` call of the type's `Deserialize` impl with a sample value and records
//! what was asked for (a struct and its fields, a string, an integer, an optional value, a list,
//! an enum and its variants, ...). Nothing is required of the user's types beyond the
//! `Deserialize` they already have for the wire: no schema trait on every field type.
//!
//! One trace follows one path through the type, so the tracer runs several passes:
//!
//! - one per enum variant beyond the first, so that each variant's content is described;
//! - one per struct field, with that field left out: if the value still decodes, the field is
//!   optional (an `Option`, `#[serde(default)]`), else it is required;
//! - again when a type rejects a sample string (a UUID, a timestamp, a validated subject): the
//!   string at that place is taken from the example payload when there is one, else from a short
//!   list of common shapes, one per pass.
//!
//! - again when serde reports a field given twice: one of the names was a `#[serde(alias)]`,
//!   which is then left out (the schema lists the name the field is written with).
//!
//! Recursive types are described down to their first repetition (options there are absent,
//! lists and maps empty). What cannot be traced is an error naming the place, not a wrong
//! schema: types that read "anything" and then decide (`#[serde(flatten)]`, untagged and
//! internally tagged enums) or that accept none of the sample strings. A field of type
//! `serde_json::Value` is described as `{}` (any JSON).

use serde::de::{self, DeserializeOwned, DeserializeSeed, IntoDeserializer, Visitor};
use serde_json::{Map, Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// Strings offered to a type that rejects the example's (or has none), in turn.
const CANDIDATES: &[&str] = &[
    "",
    "00000000-0000-7000-8000-000000000000",
    "1970-01-01T00:00:00Z",
    "a.b",
    "1.0",
    "0",
    "a",
    "A",
];

/// Options and lists below this depth are traced as absent and empty (recursive types).
const MAX_DEPTH: usize = 24;

/// Passes after which tracing gives up (a type with very many variants or fields).
const MAX_PASSES: usize = 4096;

/// Why a type could not be described.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot describe `{type_name}` version {version:?} from its `Deserialize` impl{}: {reason}", at(.path))]
pub struct SchemaError {
    /// The type.
    pub type_name: String,
    /// Its version tag.
    pub version: String,
    /// Where in the payload, as a JSON pointer (`/author`, `/items/0`); empty at the root.
    pub path: String,
    /// What went wrong.
    pub reason: String,
}

fn at(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!(" at `{path}`")
    }
}

/// The JSON Schema (draft 2020-12) of the payload of version `V`: an object with the `version`
/// tag as a constant (`{"const": "<version>"}`, required) beside every field `V` decodes, each
/// with its type and whether it is required. `example` is the JSON of a value of the type (or of
/// a newer version: fields are matched by name), used for strings the type validates.
///
/// # Errors
/// [`SchemaError`] if the `Deserialize` impl cannot be traced (see the module docs).
pub fn schema_of<V: DeserializeOwned>(
    type_name: &str,
    version: &str,
    example: Option<&Value>,
) -> Result<Value, SchemaError> {
    let mut tracer = Tracer {
        example,
        strings: BTreeMap::new(),
        nodes: BTreeMap::new(),
        passes: 0,
        retried: BTreeSet::new(),
        aliases: BTreeSet::new(),
    };
    let fail = |path: String, reason: String| SchemaError {
        type_name: type_name.to_owned(),
        version: version.to_owned(),
        path,
        reason,
    };
    let base = Plan::default();
    tracer.run::<V>(&base).map_err(|e| fail(e.path, e.reason))?;
    // Every enum's other variants, each in its own pass, until no new enum shows up.
    let mut expanded = BTreeSet::new();
    loop {
        let pending: Vec<(String, usize, Plan)> = tracer
            .nodes
            .iter()
            .filter_map(|(path, found)| match &found.node {
                Node::Enum { variants } if !expanded.contains(path) => {
                    Some((path.clone(), variants.len(), found.plan.clone()))
                }
                _ => None,
            })
            .collect();
        if pending.is_empty() {
            break;
        }
        for (path, count, plan) in pending {
            expanded.insert(path.clone());
            for i in 1..count {
                let mut plan = plan.clone();
                plan.variants.insert(path.clone(), i);
                tracer.run::<V>(&plan).map_err(|e| fail(e.path, e.reason))?;
            }
        }
    }
    // Required-ness: each field left out in turn.
    // A struct variant's fields are registered at `{variant}/#fields`; they are left out and
    // described at the variant's own path.
    let structs: Vec<(String, Vec<&'static str>, Plan)> = tracer
        .nodes
        .iter()
        .filter_map(|(path, found)| match &found.node {
            Node::Struct { fields } => {
                let path = path.strip_suffix("/#fields").unwrap_or(path);
                let fields = fields
                    .iter()
                    .copied()
                    .filter(|f| !tracer.aliases.contains(&(path.to_owned(), *f)))
                    .collect();
                Some((path.to_owned(), fields, found.plan.clone()))
            }
            _ => None,
        })
        .collect();
    let mut required = BTreeMap::new();
    for (path, fields, plan) in structs {
        let mut needed = Vec::new();
        for field in fields {
            let mut plan = plan.clone();
            plan.omit = Some((path.clone(), field));
            match tracer.run::<V>(&plan) {
                Ok(()) => {}
                Err(e) if e.passes_exhausted => return Err(fail(e.path, e.reason)),
                Err(_) => needed.push(field),
            }
        }
        required.insert(path, needed);
    }
    let is_struct = matches!(tracer.nodes.get("").map(|f| &f.node), Some(Node::Struct { .. }));
    let mut schema = tracer.render("", &required);
    if let (true, Value::Object(root)) = (is_struct, &mut schema) {
        let mut out = Map::new();
        out.insert("$schema".into(), json!("https://json-schema.org/draft/2020-12/schema"));
        out.insert("title".into(), json!(format!("{type_name} {version}")));
        out.insert("type".into(), json!("object"));
        let mut properties = Map::new();
        properties.insert(crate::event::VERSION_TAG.into(), json!({ "const": version }));
        if let Some(Value::Object(fields)) = root.remove("properties") {
            properties.extend(fields);
        }
        out.insert("properties".into(), Value::Object(properties));
        let mut names = vec![json!(crate::event::VERSION_TAG)];
        if let Some(Value::Array(more)) = root.remove("required") {
            names.extend(more);
        }
        names.sort_by(|a, b| a.as_str().cmp(&b.as_str()));
        out.insert("required".into(), Value::Array(names));
        schema = Value::Object(out);
    } else {
        return Err(fail(
            String::new(),
            "the payload is not a struct with named fields".into(),
        ));
    }
    Ok(schema)
}

/// The choices of one pass.
#[derive(Debug, Clone, Default)]
struct Plan {
    /// Which variant each enum (by path) takes; 0 if absent.
    variants: BTreeMap<String, usize>,
    /// A struct (by path) and the field to leave out.
    omit: Option<(String, &'static str)>,
}

/// What was found at a path, and the plan of the pass that first reached it.
#[derive(Debug)]
struct Found {
    node: Node,
    plan: Plan,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Bool,
    Integer {
        format: &'static str,
        unsigned: bool,
    },
    Number {
        format: &'static str,
    },
    Str,
    Char,
    Bytes,
    Null,
    Any,
    /// Content at `{path}` (the same path: JSON has no wrapper for `Some`).
    Option,
    /// Items at `{path}/0`.
    Seq,
    /// Keys at `{path}/<key>`, values at `{path}/*`.
    Map,
    /// Elements at `{path}/{i}`.
    Tuple(usize),
    Struct {
        fields: Vec<&'static str>,
    },
    Enum {
        variants: Vec<&'static str>,
    },
    /// A variant's content at `{path}` (under its enum's path and `/<Variant>`).
    Variant(VariantKind),
}

#[derive(Debug, Clone, PartialEq)]
enum VariantKind {
    Unit,
    Newtype,
    Tuple(usize),
    Struct(Vec<&'static str>),
}

struct Tracer<'e> {
    example: Option<&'e Value>,
    /// Which candidate string each path takes (learned across passes).
    strings: BTreeMap<String, usize>,
    nodes: BTreeMap<String, Found>,
    passes: usize,
    /// Paths whose candidates were all tried after a late rejection (once each).
    retried: BTreeSet<String>,
    /// `#[serde(alias)]` names of struct fields (by struct path): left out of the input, and of
    /// the schema, which lists the name the field is written with.
    aliases: BTreeSet<(String, &'static str)>,
}

/// A failed pass: where, why, and whether it is final.
struct Failure {
    path: String,
    reason: String,
    passes_exhausted: bool,
}

impl Tracer<'_> {
    /// One trace under `plan`, retried while a rejected sample string has another candidate.
    fn run<V: DeserializeOwned>(&mut self, plan: &Plan) -> Result<(), Failure> {
        loop {
            self.passes += 1;
            if self.passes > MAX_PASSES {
                return Err(Failure {
                    path: String::new(),
                    reason: format!("more than {MAX_PASSES} passes needed; the type is too large to trace"),
                    passes_exhausted: true,
                });
            }
            let mut state = PassState {
                plan,
                rejected: None,
                last_string: None,
                any_at: None,
                errored_at: None,
                ancestors: Vec::new(),
                repeated: 0,
                last_key: None,
                alias_found: false,
            };
            let result = V::deserialize(Tracing {
                tracer: self,
                state: &mut state,
                path: String::new(),
                depth: 0,
            });
            match result {
                Ok(_) => return Ok(()),
                Err(_) if state.alias_found => continue,
                Err(e) => {
                    if let Some(path) = state.rejected.take() {
                        let next = self.strings.get(&path).map_or(0, |i| i + 1);
                        if next < self.candidates(&path).len() {
                            self.strings.insert(path, next);
                            continue;
                        }
                    } else if let Some(path) = state.last_string.take()
                        && !self.retried.contains(&path)
                    {
                        // A type that takes any string and validates it afterwards (a timestamp
                        // parsed from a `String`): try the other candidates there, once, and
                        // keep the first that passes; else keep the choice as it was.
                        self.retried.insert(path.clone());
                        let before = self.strings.get(&path).copied();
                        for i in 0..self.candidates(&path).len() {
                            if Some(i) == before {
                                continue;
                            }
                            self.strings.insert(path.clone(), i);
                            if self.run::<V>(plan).is_ok() {
                                return Ok(());
                            }
                        }
                        match before {
                            Some(i) => self.strings.insert(path, i),
                            None => self.strings.remove(&path),
                        };
                    }
                    let (path, reason) = match (state.any_at, state.errored_at) {
                        (Some(any), _) => (
                            any,
                            format!(
                                "{e} (the type reads any JSON value and decides afterwards, as `#[serde(flatten)]`, \
                                 untagged and internally tagged enums do; the tracer cannot follow it)"
                            ),
                        ),
                        (None, at) => (at.unwrap_or_default(), e.0),
                    };
                    return Err(Failure {
                        path,
                        reason,
                        passes_exhausted: false,
                    });
                }
            }
        }
    }

    /// The strings to try at `path`: the example's string there first, then the common shapes.
    fn candidates(&self, path: &str) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(Value::String(s)) = self.example.and_then(|e| lookup(e, path)) {
            out.push(s.clone());
        }
        out.extend(CANDIDATES.iter().map(|s| (*s).to_owned()));
        out
    }

    fn sample_string(&self, path: &str) -> String {
        let i = self.strings.get(path).copied().unwrap_or(0);
        self.candidates(path).into_iter().nth(i).unwrap_or_default()
    }

    fn record(&mut self, path: &str, node: Node, plan: &Plan) {
        if let Some(found) = self.nodes.get_mut(path) {
            // A variant seen with more detail (e.g. a field list) keeps the first; an `Any`
            // placeholder (an option cut at the depth limit) gives way to what is really there.
            if found.node == Node::Any {
                found.node = node;
            }
        } else {
            self.nodes.insert(
                path.to_owned(),
                Found {
                    node,
                    plan: plan.clone(),
                },
            );
        }
    }

    fn render(&self, path: &str, required: &BTreeMap<String, Vec<&'static str>>) -> Value {
        let Some(found) = self.nodes.get(path) else {
            return json!({});
        };
        match &found.node {
            Node::Bool => json!({ "type": "boolean" }),
            Node::Integer { format, unsigned } => {
                let mut v = json!({ "type": "integer", "format": format });
                if *unsigned {
                    v["minimum"] = json!(0);
                }
                v
            }
            Node::Number { format } => json!({ "type": "number", "format": format }),
            Node::Str => json!({ "type": "string" }),
            Node::Char => json!({ "type": "string", "minLength": 1, "maxLength": 1 }),
            Node::Bytes => json!({ "type": "array", "items": { "type": "integer", "minimum": 0, "maximum": 255 } }),
            Node::Null => json!({ "type": "null" }),
            Node::Any => json!({}),
            Node::Option => {
                let inner = self.render(&format!("{path}/?"), required);
                nullable(inner)
            }
            Node::Seq => json!({ "type": "array", "items": self.render(&format!("{path}/0"), required) }),
            Node::Map => {
                let mut v = json!({
                    "type": "object",
                    "additionalProperties": self.render(&format!("{path}/*"), required),
                });
                let keys = self.render(&format!("{path}/<key>"), required);
                if keys != json!({ "type": "string" }) && keys != json!({}) {
                    v["propertyNames"] = keys;
                }
                v
            }
            Node::Tuple(n) => {
                let items: Vec<Value> = (0..*n).map(|i| self.render(&format!("{path}/{i}"), required)).collect();
                json!({ "type": "array", "prefixItems": items, "minItems": n, "maxItems": n })
            }
            Node::Struct { fields } => {
                let mut properties = Map::new();
                for field in fields
                    .iter()
                    .filter(|f| !self.aliases.contains(&(path.to_owned(), **f)))
                {
                    properties.insert((*field).to_owned(), self.render(&child(path, field), required));
                }
                let needed = sorted_names(required.get(path));
                json!({ "type": "object", "properties": properties, "required": needed })
            }
            Node::Enum { variants } => {
                let shapes: Vec<Value> = variants
                    .iter()
                    .map(|name| {
                        let at = child(path, name);
                        match self.nodes.get(&at).map(|f| &f.node) {
                            Some(Node::Variant(VariantKind::Unit)) | None => json!({ "const": name }),
                            Some(_) => json!({
                                "type": "object",
                                "properties": { (*name): self.render(&at, required) },
                                "required": [name],
                                "additionalProperties": false,
                            }),
                        }
                    })
                    .collect();
                if shapes.iter().all(|s| s.get("const").is_some()) {
                    json!({ "type": "string", "enum": variants })
                } else {
                    json!({ "oneOf": shapes })
                }
            }
            Node::Variant(kind) => match kind {
                VariantKind::Unit => json!({ "type": "null" }),
                VariantKind::Newtype => self.render(&format!("{path}/="), required),
                VariantKind::Tuple(n) => {
                    let items: Vec<Value> = (0..*n).map(|i| self.render(&format!("{path}/{i}"), required)).collect();
                    json!({ "type": "array", "prefixItems": items, "minItems": n, "maxItems": n })
                }
                VariantKind::Struct(fields) => {
                    let mut properties = Map::new();
                    for field in fields
                        .iter()
                        .filter(|f| !self.aliases.contains(&(path.to_owned(), **f)))
                    {
                        properties.insert((*field).to_owned(), self.render(&child(path, field), required));
                    }
                    let needed = sorted_names(required.get(path));
                    json!({ "type": "object", "properties": properties, "required": needed })
                }
            },
        }
    }
}

/// The required fields, sorted: the order of fields in the struct is not part of the wire.
fn sorted_names(names: Option<&Vec<&'static str>>) -> Vec<&'static str> {
    let mut names = names.cloned().unwrap_or_default();
    names.sort_unstable();
    names
}

/// `inner` or null.
fn nullable(inner: Value) -> Value {
    if let Value::Object(map) = &inner
        && let Some(Value::String(t)) = map.get("type")
    {
        let mut map = map.clone();
        map.insert("type".into(), json!([t, "null"]));
        return Value::Object(map);
    }
    if inner == json!({}) {
        return inner;
    }
    json!({ "anyOf": [inner, { "type": "null" }] })
}

/// `path/name`, with `~` and `/` escaped as in a JSON pointer.
fn child(path: &str, name: &str) -> String {
    format!("{path}/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// The value of the example at a trace path: fields by name, `?` (an option's content) in place,
/// `0` the first item, `*` a map's first value.
fn lookup<'v>(root: &'v Value, path: &str) -> Option<&'v Value> {
    let mut at = root;
    for seg in path.split('/').skip(1) {
        if seg == "?" || seg == "=" {
            continue;
        }
        at = match at {
            Value::Object(map) if seg == "*" => map.values().next()?,
            Value::Object(map) => map.get(&seg.replace("~1", "/").replace("~0", "~"))?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(at)
}

/// Per pass: the plan, and where a sample string was rejected.
struct PassState<'p> {
    plan: &'p Plan,
    /// The path whose sample string a visitor refused (another candidate may do).
    rejected: Option<String>,
    /// The path of the last string served (a type may reject it after taking it).
    last_string: Option<String>,
    /// Where "any value" was served, if it was.
    any_at: Option<String>,
    /// The names of the structs and enums being traced, outermost first.
    ancestors: Vec<&'static str>,
    /// How many of `ancestors` repeat an earlier one: inside a recursive type, options, lists
    /// and maps are traced absent and empty.
    /// The deepest path where an error was first seen.
    errored_at: Option<String>,
    repeated: usize,
    /// The last struct field name given, and the struct's path.
    last_key: Option<(String, &'static str)>,
    /// A field given twice under two of its names was found (an alias): run again without it.
    alias_found: bool,
}

/// The tracing deserializer, at one path.
struct Tracing<'t, 'e, 's, 'p> {
    tracer: &'t mut Tracer<'e>,
    state: &'s mut PassState<'p>,
    path: String,
    depth: usize,
}

/// The tracer's error: serde's message.
#[derive(Debug)]
struct TraceError(String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

impl de::Error for TraceError {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Self(msg.to_string())
    }
}

impl<'t, 'e, 's, 'p> Tracing<'t, 'e, 's, 'p> {
    fn at<'a>(&'a mut self, path: String) -> Tracing<'a, 'e, 'a, 'p> {
        Tracing {
            tracer: &mut *self.tracer,
            state: &mut *self.state,
            path,
            depth: self.depth + 1,
        }
    }

    /// The deserializer at `path`, at the same depth (a container's element: the container
    /// already counted one level).
    fn level<'a>(&'a mut self, path: String) -> Tracing<'a, 'e, 'a, 'p> {
        let depth = self.depth;
        let mut de = self.at(path);
        de.depth = depth;
        de
    }

    fn record(&mut self, node: Node) {
        let plan = self.state.plan;
        self.tracer.record(&self.path, node, plan);
    }

    /// Notes where an error first appeared, and passes it on.
    fn seen<T>(&mut self, result: Result<T, TraceError>) -> Result<T, TraceError> {
        if result.is_err() && self.state.errored_at.is_none() {
            self.state.errored_at = Some(self.path.clone());
        }
        result
    }

    fn string<'de, V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Str);
        let sample = self.tracer.sample_string(&self.path);
        self.state.last_string = Some(self.path.clone());
        let result = visitor.visit_string(sample);
        if result.is_err() && self.state.rejected.is_none() {
            self.state.rejected = Some(self.path.clone());
        }
        self.seen(result)
    }

    /// A value was accepted: a string or "any value" served inside it is not what failed.
    fn accepted(&mut self) {
        self.state.last_string = None;
        self.state.any_at = None;
    }

    fn too_deep(&self) -> bool {
        self.depth >= MAX_DEPTH || self.state.repeated > 0
    }

    /// Enters a named struct or enum; `leave` with what this returns.
    fn enter(&mut self, name: &'static str) -> bool {
        let repeat = self.state.ancestors.contains(&name);
        self.state.ancestors.push(name);
        self.state.repeated += usize::from(repeat);
        repeat
    }

    fn leave(&mut self, repeat: bool) {
        self.state.ancestors.pop();
        self.state.repeated -= usize::from(repeat);
    }
}

macro_rules! integer {
    ($($method:ident $visit:ident $ty:ty, $format:literal, $unsigned:literal;)*) => {$(
        fn $method<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
            self.record(Node::Integer { format: $format, unsigned: $unsigned });
            let result = visitor.$visit(<$ty>::default());
            self.seen(result)
        }
    )*};
}

impl<'de> de::Deserializer<'de> for Tracing<'_, '_, '_, '_> {
    type Error = TraceError;

    fn deserialize_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Any);
        self.state.any_at = Some(self.path.clone());
        let result = visitor.visit_unit();
        self.seen(result)
    }

    fn deserialize_bool<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Bool);
        let result = visitor.visit_bool(false);
        self.seen(result)
    }

    integer! {
        deserialize_i8 visit_i8 i8, "int8", false;
        deserialize_i16 visit_i16 i16, "int16", false;
        deserialize_i32 visit_i32 i32, "int32", false;
        deserialize_i64 visit_i64 i64, "int64", false;
        deserialize_i128 visit_i128 i128, "int128", false;
        deserialize_u8 visit_u8 u8, "uint8", true;
        deserialize_u16 visit_u16 u16, "uint16", true;
        deserialize_u32 visit_u32 u32, "uint32", true;
        deserialize_u64 visit_u64 u64, "uint64", true;
        deserialize_u128 visit_u128 u128, "uint128", true;
    }

    fn deserialize_f32<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Number { format: "float" });
        let result = visitor.visit_f32(0.0);
        self.seen(result)
    }

    fn deserialize_f64<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Number { format: "double" });
        let result = visitor.visit_f64(0.0);
        self.seen(result)
    }

    fn deserialize_char<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Char);
        let result = visitor.visit_char('a');
        self.seen(result)
    }

    fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.string(visitor)
    }

    fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.string(visitor)
    }

    fn deserialize_bytes<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Bytes);
        let result = visitor.visit_byte_buf(Vec::new());
        self.seen(result)
    }

    fn deserialize_byte_buf<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_bytes(visitor)
    }

    fn deserialize_option<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Option);
        if self.too_deep() {
            let result = visitor.visit_none();
            return self.seen(result);
        }
        let path = format!("{}/?", self.path);
        let result = visitor.visit_some(self.at(path));
        self.seen(result)
    }

    fn deserialize_unit<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Null);
        let result = visitor.visit_unit();
        self.seen(result)
    }

    fn deserialize_unit_struct<V: Visitor<'de>>(self, _name: &'static str, visitor: V) -> Result<V::Value, TraceError> {
        self.deserialize_unit(visitor)
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        mut self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        // JSON has no wrapper: the content is at the same place.
        let path = self.path.clone();
        let mut inner = self.at(path);
        inner.depth -= 1;
        let result = visitor.visit_newtype_struct(inner);
        self.seen(result)
    }

    fn deserialize_seq<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Seq);
        let len = usize::from(!self.too_deep());
        let path = format!("{}/0", self.path);
        let result = visitor.visit_seq(Elements {
            de: self.at(path),
            paths: (0..len).map(|_| None).collect(),
            next: 0,
        });
        self.seen(result)
    }

    fn deserialize_tuple<V: Visitor<'de>>(mut self, len: usize, visitor: V) -> Result<V::Value, TraceError> {
        self.record(Node::Tuple(len));
        let base = self.path.clone();
        let result = visitor.visit_seq(Elements {
            de: self.at(base.clone()),
            paths: (0..len).map(|i| Some(format!("{base}/{i}"))).collect(),
            next: 0,
        });
        self.seen(result)
    }

    fn deserialize_tuple_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        len: usize,
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.deserialize_tuple(len, visitor)
    }

    fn deserialize_map<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        // serde reads a struct with a `#[serde(flatten)]` field as a map, collecting every key:
        // its schema would be "any object", which is wrong, so it is an error.
        let expecting = format!("{}", &visitor as &dyn de::Expected);
        if expecting.starts_with("struct ") {
            return self.seen(Err(TraceError(format!(
                "{expecting} has a `#[serde(flatten)]` field, which the tracer cannot follow"
            ))));
        }
        self.record(Node::Map);
        let entries = if self.too_deep() {
            Vec::new()
        } else {
            vec![Entry::Traced]
        };
        let base = self.path.clone();
        let result = visitor.visit_map(Entries {
            de: self.at(base),
            entries,
            next: 0,
        });
        self.seen(result)
    }

    fn deserialize_struct<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.record(Node::Struct {
            fields: fields.to_vec(),
        });
        let entries = self.struct_entries(fields);
        let given = given(&entries);
        let base = self.path.clone();
        let repeat = self.enter(name);
        let result = visitor.visit_map(Entries {
            de: self.at(base),
            entries,
            next: 0,
        });
        self.leave(repeat);
        let result = self.aliased(&given, result);
        self.seen(result)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        mut self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.record(Node::Enum {
            variants: variants.to_vec(),
        });
        let chosen = self.state.plan.variants.get(&self.path).copied().unwrap_or(0);
        let Some(variant) = variants.get(chosen).copied() else {
            return self.seen(Err(TraceError("an enum without variants cannot be decoded".into())));
        };
        let path = child(&self.path, variant);
        let repeat = self.enter(name);
        let result = visitor.visit_enum(Variant {
            de: self.at(path),
            name: variant,
        });
        self.leave(repeat);
        self.seen(result)
    }

    fn deserialize_identifier<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, TraceError> {
        self.string(visitor)
    }

    fn deserialize_ignored_any<V: Visitor<'de>>(mut self, visitor: V) -> Result<V::Value, TraceError> {
        let result = visitor.visit_unit();
        self.seen(result)
    }

    fn is_human_readable(&self) -> bool {
        true
    }
}

impl Tracing<'_, '_, '_, '_> {
    fn struct_entries(&self, fields: &'static [&'static str]) -> Vec<Entry> {
        let omit = match &self.state.plan.omit {
            Some((path, field)) if *path == self.path => Some(*field),
            _ => None,
        };
        fields
            .iter()
            .filter(|f| Some(**f) != omit && !self.tracer.aliases.contains(&(self.path.clone(), **f)))
            .map(|f| Entry::Field(f))
            .collect()
    }

    /// After a struct's fields were given: serde's ``duplicate field `x` `` means two of the
    /// names given are one field's (its name and an alias; serde lists them alphabetically).
    /// The alias is the last name given, unless that is `x` itself: then it is the one before.
    fn aliased<T>(&mut self, given: &[&'static str], result: Result<T, TraceError>) -> Result<T, TraceError> {
        let Err(e) = &result else { return result };
        let Some(field) = e.0.strip_prefix("duplicate field `").and_then(|r| r.split('`').next()) else {
            return result;
        };
        let Some((path, last)) = self.state.last_key.clone() else {
            return result;
        };
        if path != self.path {
            return result;
        }
        let alias = if last == field {
            given
                .iter()
                .position(|g| *g == last)
                .and_then(|i| i.checked_sub(1))
                .and_then(|i| given.get(i).copied())
        } else {
            Some(last)
        };
        if let Some(alias) = alias
            && self.tracer.aliases.insert((self.path.clone(), alias))
        {
            self.state.alias_found = true;
        }
        result
    }
}

/// The field names a struct is given, in order.
fn given(entries: &[Entry]) -> Vec<&'static str> {
    entries
        .iter()
        .filter_map(|e| match e {
            Entry::Field(name) => Some(*name),
            Entry::Traced => None,
        })
        .collect()
}

/// A list's items or a tuple's elements.
struct Elements<'t, 'e, 's, 'p> {
    de: Tracing<'t, 'e, 's, 'p>,
    /// One per element: `None` for a list item (at the list's `/0`), else the element's path.
    paths: Vec<Option<String>>,
    next: usize,
}

impl<'de> de::SeqAccess<'de> for Elements<'_, '_, '_, '_> {
    type Error = TraceError;

    fn next_element_seed<T: DeserializeSeed<'de>>(&mut self, seed: T) -> Result<Option<T::Value>, TraceError> {
        let Some(slot) = self.paths.get(self.next) else {
            return Ok(None);
        };
        let path = slot.clone().unwrap_or_else(|| self.de.path.clone());
        self.next += 1;
        let de = self.de.level(path);
        let value = seed.deserialize(de)?;
        self.de.accepted();
        Ok(Some(value))
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.paths.len() - self.next)
    }
}

enum Entry {
    /// A struct field, by its wire name.
    Field(&'static str),
    /// A map's one traced entry: the key at `/<key>`, the value at `/*`.
    Traced,
}

/// A struct's fields or a map's entries.
struct Entries<'t, 'e, 's, 'p> {
    de: Tracing<'t, 'e, 's, 'p>,
    entries: Vec<Entry>,
    next: usize,
}

impl<'de> de::MapAccess<'de> for Entries<'_, '_, '_, '_> {
    type Error = TraceError;

    fn next_key_seed<K: DeserializeSeed<'de>>(&mut self, seed: K) -> Result<Option<K::Value>, TraceError> {
        let Some(entry) = self.entries.get(self.next) else {
            return Ok(None);
        };
        match entry {
            Entry::Field(name) => {
                self.de.state.last_key = Some((self.de.path.clone(), name));
                let key: de::value::StrDeserializer<'_, TraceError> = name.into_deserializer();
                seed.deserialize(key).map(Some)
            }
            Entry::Traced => {
                let path = format!("{}/<key>", self.de.path);
                let de = self.de.level(path);
                seed.deserialize(de).map(Some)
            }
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(&mut self, seed: V) -> Result<V::Value, TraceError> {
        let path = match self.entries.get(self.next) {
            Some(Entry::Field(name)) => child(&self.de.path, name),
            Some(Entry::Traced) => format!("{}/*", self.de.path),
            None => return Err(TraceError("a value asked for after the last key".into())),
        };
        self.next += 1;
        let de = self.de.level(path);
        let value = seed.deserialize(de)?;
        self.de.accepted();
        Ok(value)
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.entries.len() - self.next)
    }
}

/// The variant a pass chose, and its content.
struct Variant<'t, 'e, 's, 'p> {
    de: Tracing<'t, 'e, 's, 'p>,
    name: &'static str,
}

impl<'de, 't, 'e, 's, 'p> de::EnumAccess<'de> for Variant<'t, 'e, 's, 'p> {
    type Error = TraceError;
    type Variant = Self;

    fn variant_seed<V: DeserializeSeed<'de>>(self, seed: V) -> Result<(V::Value, Self), TraceError> {
        let key: de::value::StrDeserializer<'_, TraceError> = self.name.into_deserializer();
        let value = seed.deserialize(key)?;
        Ok((value, self))
    }
}

impl<'de> de::VariantAccess<'de> for Variant<'_, '_, '_, '_> {
    type Error = TraceError;

    fn unit_variant(mut self) -> Result<(), TraceError> {
        self.de.record(Node::Variant(VariantKind::Unit));
        Ok(())
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(mut self, seed: T) -> Result<T::Value, TraceError> {
        self.de.record(Node::Variant(VariantKind::Newtype));
        let path = format!("{}/=", self.de.path);
        let de = self.de.level(path);
        seed.deserialize(de)
    }

    fn tuple_variant<V: Visitor<'de>>(mut self, len: usize, visitor: V) -> Result<V::Value, TraceError> {
        self.de.record(Node::Variant(VariantKind::Tuple(len)));
        let base = self.de.path.clone();
        let depth = self.de.depth;
        let mut de = self.de.at(base.clone());
        de.depth = depth;
        visitor.visit_seq(Elements {
            de,
            paths: (0..len).map(|i| Some(format!("{base}/{i}"))).collect(),
            next: 0,
        })
    }

    fn struct_variant<V: Visitor<'de>>(
        mut self,
        fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, TraceError> {
        self.de.record(Node::Variant(VariantKind::Struct(fields.to_vec())));
        // Leaving out a field of a struct variant is probed like a struct's.
        self.de.record_struct_fields(fields);
        let entries = self.de.struct_entries(fields);
        let given = given(&entries);
        let base = self.de.path.clone();
        let depth = self.de.depth;
        let mut de = self.de.at(base);
        de.depth = depth;
        let result = visitor.visit_map(Entries { de, entries, next: 0 });
        self.de.aliased(&given, result)
    }
}

impl Tracing<'_, '_, '_, '_> {
    /// Registers a struct variant's fields for the required-ness passes, under a separate key
    /// (`{path}/#fields`) so the variant node itself stays a variant.
    fn record_struct_fields(&mut self, fields: &'static [&'static str]) {
        let plan = self.state.plan;
        let key = format!("{}/#fields", self.path);
        self.tracer.record(
            &key,
            Node::Struct {
                fields: fields.to_vec(),
            },
            plan,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Inner {
        n: u16,
        #[serde(default)]
        label: String,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    enum Shape {
        Dot,
        Circle(f64),
        Rect { w: u32, h: u32 },
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Payload {
        id: uuid::Uuid,
        at: crate::timestamp::Timestamp,
        note: Option<String>,
        inner: Inner,
        tags: Vec<String>,
        counts: std::collections::BTreeMap<String, i64>,
        shape: Shape,
        pair: (bool, char),
        extra: serde_json::Value,
    }

    #[test]
    fn describes_fields_types_and_required_ness() {
        let schema = schema_of::<Payload>("Payload", "1.0", None).unwrap();
        let expected = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": "Payload 1.0",
            "type": "object",
            "properties": {
                "version": { "const": "1.0" },
                "id": { "type": "string" },
                "at": { "type": "string" },
                "note": { "type": ["string", "null"] },
                "inner": {
                    "type": "object",
                    "properties": {
                        "n": { "type": "integer", "format": "uint16", "minimum": 0 },
                        "label": { "type": "string" },
                    },
                    "required": ["n"],
                },
                "tags": { "type": "array", "items": { "type": "string" } },
                "counts": { "type": "object", "additionalProperties": { "type": "integer", "format": "int64" } },
                "shape": { "oneOf": [
                    { "const": "Dot" },
                    { "type": "object", "properties": { "Circle": { "type": "number", "format": "double" } },
                      "required": ["Circle"], "additionalProperties": false },
                    { "type": "object", "properties": { "Rect": {
                        "type": "object",
                        "properties": {
                            "w": { "type": "integer", "format": "uint32", "minimum": 0 },
                            "h": { "type": "integer", "format": "uint32", "minimum": 0 },
                        },
                        "required": ["h", "w"],
                      } },
                      "required": ["Rect"], "additionalProperties": false },
                ] },
                "pair": { "type": "array", "prefixItems": [
                    { "type": "boolean" }, { "type": "string", "minLength": 1, "maxLength": 1 }
                ], "minItems": 2, "maxItems": 2 },
                "extra": {},
            },
            "required": ["at", "counts", "extra", "id", "inner", "pair", "shape", "tags", "version"],
        });
        assert_eq!(schema, expected, "{}", serde_json::to_string_pretty(&schema).unwrap());
    }

    #[test]
    fn aliases_are_left_out() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Renamed {
            #[serde(alias = "a_name")]
            name: String,
            #[serde(alias = "zz_count")]
            count: u8,
        }
        let schema = schema_of::<Renamed>("Renamed", "1.0", None).unwrap();
        let properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
        assert_eq!(properties, ["count", "name", "version"], "{schema}");
        assert_eq!(schema["required"], json!(["count", "name", "version"]));
    }

    #[test]
    fn a_type_that_cannot_be_traced_is_an_error_naming_the_place() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        #[serde(untagged)]
        enum Loose {
            A { a: u8 },
            B(String),
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            loose: Loose,
        }
        let err = schema_of::<P>("P", "1.0", None).unwrap_err();
        assert_eq!(err.path, "/loose", "{err}");
        assert!(err.to_string().contains("untagged"), "{err}");
    }

    #[test]
    fn flatten_and_internal_tags_are_errors_not_loose_schemas() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Extra {
            #[serde(default)]
            a: u8,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Outer {
            #[serde(flatten)]
            extra: Extra,
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Nested {
            outer: Outer,
        }
        let err = schema_of::<Nested>("Nested", "1.0", None).unwrap_err();
        assert_eq!(err.path, "/outer", "{err}");
        assert!(err.reason.contains("flatten"), "{err}");

        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        #[serde(tag = "kind")]
        enum Tagged {
            A { a: u8 },
        }
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            tagged: Tagged,
        }
        let err = schema_of::<P>("P", "1.0", None).unwrap_err();
        assert_eq!(err.path, "/tagged", "{err}");
        assert!(err.reason.contains("internally tagged"), "{err}");
    }

    #[test]
    fn recursive_types_stop_at_the_depth_limit() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Node {
            children: Vec<Node>,
            next: Option<Box<Node>>,
        }
        let schema = schema_of::<Node>("Node", "1.0", None).unwrap();
        assert_eq!(schema["properties"]["children"]["type"], "array");
    }
}
