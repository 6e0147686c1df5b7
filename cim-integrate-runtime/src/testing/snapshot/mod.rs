//! Snapshot helpers for CI: the wire contract of every event and command version, and the
//! topology, compared to files committed with the code.
//!
//! - [`WireContract`]: for every version of each event and command registered, its JSON Schema
//!   ([`schema_of`], derived from the type's serde `Deserialize`: the `version` tag and every
//!   field with its type and required-ness) and, for the current version, a golden payload (the
//!   example value given, encoded exactly as the wire carries it); and the **golden check**:
//!   every committed golden payload of an older version still decodes and upcasts through the
//!   current type.
//! - [`assert_topology`]: a [`Topology`] as Mermaid and as JSON.
//!
//! Files, under the directory given (e.g. `tests/contracts`):
//!
//! ```text
//! document_created/1.0.json          golden payload of 1.0 (committed when 1.0 was current; never rewritten)
//! document_created/1.0.schema.json   JSON Schema of 1.0 (a frozen version: never rewritten)
//! document_created/3.0.json          golden payload of the current version
//! document_created/3.0.schema.json   JSON Schema of the current version
//! topology.mmd, topology.json        assert_topology(&t, dir, "topology")
//! ```
//!
//! [`SnapshotMode`] (from `CIM_SNAPSHOTS` and `CI`) says what happens to a missing or changed
//! file: by default a missing one is written locally and is a failure in CI; a changed one is
//! a failure that names the type, the version and the field, with a diff, until
//! `CIM_SNAPSHOTS=update cargo test` rewrites it. Comparison is of JSON values, so a committed
//! file may be reformatted by hand.

mod diff;

pub use crate::schema::{SchemaError, schema_of};

use crate::command::Command;
use crate::event::{DecodeError, DomainEvent, PayloadVersion, VersionVisitor, Versioned, read_version_tag};
use crate::topology::Topology;
use serde_json::{Value, json};
use std::fmt;
use std::path::{Path, PathBuf};

/// The environment variable that chooses the [`SnapshotMode`]: `update`, `force` or `no`.
pub const MODE_ENV: &str = "CIM_SNAPSHOTS";

/// What a snapshot check does with a missing or changed file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SnapshotMode {
    /// A missing file is written (and the check passes, logging it); a changed one fails. The
    /// default outside CI.
    Local,
    /// A missing or changed file fails; nothing is written. The default when `CI` is set (to
    /// anything but `false` or `0`), and `CIM_SNAPSHOTS=no`.
    Check,
    /// Missing and changed files of current versions and topologies are written
    /// (`CIM_SNAPSHOTS=update`). A frozen version's schema is written only when missing: a change
    /// to it is still a failure (its payloads are in streams), and its golden payload is never
    /// written.
    Update,
    /// As `Update`, and a frozen version's schema is rewritten too (`CIM_SNAPSHOTS=force`): after
    /// an upgrade of this crate that describes types differently, never to accept an edit of a
    /// frozen struct.
    Force,
}

impl SnapshotMode {
    /// The mode from the environment: `CIM_SNAPSHOTS` if set (`update`, `force`, `no`; anything
    /// else is `Check`, logged), else `Check` if `CI` is set, else `Local`.
    pub fn from_env() -> Self {
        match std::env::var(MODE_ENV).ok().as_deref().map(str::trim) {
            Some("update") => Self::Update,
            Some("force") => Self::Force,
            Some("no" | "check") => Self::Check,
            Some("") | None => {
                let ci = std::env::var("CI").ok();
                match ci.as_deref().map(str::trim) {
                    None | Some("" | "false" | "0") => Self::Local,
                    Some(_) => Self::Check,
                }
            }
            Some(other) => {
                tracing::warn!(
                    value = other,
                    "{MODE_ENV} is not one of `update`, `force`, `no`: checking only"
                );
                Self::Check
            }
        }
    }

    fn writes_missing(self) -> bool {
        self != Self::Check
    }

    fn writes_changed(self, frozen: bool) -> bool {
        match self {
            Self::Update => !frozen,
            Self::Force => true,
            Self::Local | Self::Check => false,
        }
    }
}

/// Is it an event or a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Event,
    Command,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::Event => "event",
            Self::Command => "command",
        }
    }
}

/// One registered type: what its snapshots must hold.
struct Contract {
    kind: Kind,
    type_name: &'static str,
    current: &'static str,
    /// Every version type's schema, oldest first.
    schemas: Vec<(&'static str, Result<Value, SchemaError>)>,
    /// The example, encoded.
    golden: Result<Vec<u8>, String>,
    /// Decodes (and upcasts) through the current type.
    decode: fn(&[u8]) -> Result<(), DecodeError>,
}

/// The wire contract of a set of events and commands, checked against a directory of committed
/// snapshots. See the [module docs](self).
///
/// ```no_run
/// # use cim_integrate_runtime::event::{self, DecodeError, DomainEvent, PayloadVersion, Versioned};
/// # #[derive(serde::Serialize, serde::Deserialize)]
/// # struct OrderPlaced { order_id: String }
/// # impl PayloadVersion for OrderPlaced { const VERSION: &'static str = "1.0"; }
/// # impl Versioned for OrderPlaced {
/// #     const TYPE_NAME: &'static str = "OrderPlaced";
/// #     const VERSIONS: &'static [&'static str] = &["1.0"];
/// #     fn decode_version(v: &str, p: &[u8]) -> Result<Option<Self>, DecodeError> {
/// #         event::decode_oldest::<Self>("1.0", Self::TYPE_NAME, v, p)
/// #     }
/// # }
/// # impl DomainEvent for OrderPlaced { const SUBJECT: &'static str = "order.placed"; }
/// use cim_integrate_runtime::testing::snapshot::WireContract;
///
/// WireContract::new()
///     .event(&OrderPlaced { order_id: "o-1".into() })
///     .assert_matches_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/contracts"));
/// ```
#[derive(Default)]
pub struct WireContract {
    contracts: Vec<Contract>,
    mode: Option<SnapshotMode>,
}

impl fmt::Debug for WireContract {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let types: Vec<&str> = self.contracts.iter().map(|c| c.type_name).collect();
        f.debug_struct("WireContract")
            .field("types", &types)
            .field("mode", &self.mode)
            .finish()
    }
}

impl WireContract {
    /// An empty contract.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the event `E`, with `example` as the golden payload of its current version. Every
    /// version of its history (`previous`) gets a schema.
    pub fn event<E: DomainEvent>(self, example: &E) -> Self {
        self.add(Kind::Event, E::SUBJECT, example)
    }

    /// Adds the command `C`, with `example` as the golden payload of its current version.
    pub fn command<C: Command>(self, example: &C) -> Self {
        self.add(Kind::Command, C::SUBJECT, example)
    }

    /// Overrides the mode the environment chooses ([`SnapshotMode::from_env`]).
    pub fn mode(mut self, mode: SnapshotMode) -> Self {
        self.mode = Some(mode);
        self
    }

    fn add<T: Versioned>(mut self, kind: Kind, subject: &'static str, example: &T) -> Self {
        let golden = example.encode().map(|b| b.to_vec()).map_err(|e| e.to_string());
        let example_json = golden
            .as_ref()
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(b).ok());
        let mut visitor = Schemas {
            type_name: T::TYPE_NAME,
            kind,
            subject,
            example: example_json.as_ref(),
            out: Vec::new(),
        };
        T::visit_versions(&mut visitor);
        let schemas = visitor.out;
        self.contracts.push(Contract {
            kind,
            type_name: T::TYPE_NAME,
            current: T::VERSION,
            schemas,
            golden,
            decode: decode_through::<T>,
        });
        self
    }

    /// Checks every snapshot under `dir` (writing what the mode allows), without panicking.
    ///
    /// # Errors
    /// [`SnapshotMismatch`] listing every problem: a schema or golden payload that differs from
    /// the committed file (or is missing, in [`SnapshotMode::Check`]), a type that cannot be
    /// described or encoded, and a committed golden payload that no longer decodes.
    pub fn check_dir(&self, dir: impl AsRef<Path>) -> Result<SnapshotReport, SnapshotMismatch> {
        let dir = dir.as_ref();
        let mode = self.mode.unwrap_or_else(SnapshotMode::from_env);
        let mut run = Run::new(mode);
        for c in &self.contracts {
            self.check_one(c, dir, &mut run);
        }
        run.finish()
    }

    /// [`check_dir`](Self::check_dir), panicking with every problem. For tests.
    #[track_caller]
    pub fn assert_matches_dir(&self, dir: impl AsRef<Path>) -> SnapshotReport {
        match self.check_dir(dir) {
            Ok(report) => report,
            Err(mismatch) => panic!("{mismatch}"),
        }
    }

    fn check_one(&self, c: &Contract, dir: &Path, run: &mut Run) {
        let folder = dir.join(snake_case(c.type_name));
        let label = |version: &str| Label {
            kind: c.kind,
            type_name: c.type_name,
            version: version.to_owned(),
        };
        // Schemas of every version.
        for (version, schema) in &c.schemas {
            let frozen = *version != c.current;
            let file = folder.join(format!("{version}.schema.json"));
            match schema {
                Ok(schema) => run.compare_json(&label(version), &file, schema, frozen, Artifact::Schema),
                Err(e) => run.problem(&label(version), &file, ProblemKind::Undescribable, e.to_string()),
            }
        }
        // The golden payload of the current version: the example, as the wire carries it.
        let file = folder.join(format!("{}.json", c.current));
        match &c.golden {
            Ok(bytes) => match serde_json::from_slice::<Value>(bytes) {
                Ok(value) => {
                    if let Err(e) = decode_guarded(c.decode, bytes) {
                        run.problem(
                            &label(c.current),
                            &file,
                            ProblemKind::GoldenNotDecodable,
                            format!("the example does not decode back: {e}"),
                        );
                    }
                    run.compare_golden(&label(c.current), &file, bytes, &value);
                }
                Err(e) => run.problem(&label(c.current), &file, ProblemKind::Unencodable, e.to_string()),
            },
            Err(e) => run.problem(&label(c.current), &file, ProblemKind::Unencodable, e.clone()),
        }
        // The golden check: every committed payload of an older version decodes and upcasts.
        let mut goldens: Vec<(String, PathBuf)> = match std::fs::read_dir(&folder) {
            Ok(entries) => entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter_map(|p| {
                    let name = p.file_name()?.to_str()?.to_owned();
                    let version = name.strip_suffix(".json")?;
                    (!version.ends_with(".schema")).then(|| (version.to_owned(), p.clone()))
                })
                .collect(),
            Err(_) => Vec::new(),
        };
        goldens.sort();
        for (version, _) in &c.schemas {
            if *version != c.current && !goldens.iter().any(|(v, _)| v == version) {
                tracing::warn!(
                    type_name = c.type_name,
                    version,
                    "no golden payload of this older version: its decoding and upcast are not checked; \
                     commit one by hand as {}",
                    folder.join(format!("{version}.json")).display()
                );
                run.report
                    .goldens_missing
                    .push((c.type_name.to_owned(), (*version).to_owned()));
            }
        }
        for (version, file) in goldens {
            if version == c.current {
                continue;
            }
            let bytes = match std::fs::read(&file) {
                Ok(b) => b,
                Err(e) => {
                    run.problem(&label(&version), &file, ProblemKind::Unreadable, e.to_string());
                    continue;
                }
            };
            match read_version_tag(c.type_name, &[], &bytes) {
                Ok(tag) if tag == version.as_str() => {}
                Ok(tag) => {
                    run.problem(
                        &label(&version),
                        &file,
                        ProblemKind::GoldenNotDecodable,
                        format!("the file is named for version {version} but its `version` tag is {tag:?}"),
                    );
                    continue;
                }
                Err(e) => {
                    run.problem(&label(&version), &file, ProblemKind::GoldenNotDecodable, e.to_string());
                    continue;
                }
            }
            match decode_guarded(c.decode, &bytes) {
                Ok(()) => run.report.goldens_decoded.push(file),
                Err(e) => {
                    let hint = if matches!(e, Failed::Decode(DecodeError::UnknownVersion { .. })) {
                        format!(
                            "; version {version} is no longer in `{}`'s history: stored payloads of it would be \
                             dead-lettered. Keep its frozen struct in `previous` with its `From` upcast",
                            c.type_name
                        )
                    } else {
                        String::new()
                    };
                    run.problem(
                        &label(&version),
                        &file,
                        ProblemKind::GoldenNotDecodable,
                        format!(
                            "no longer decodes and upcasts to the current version {}: {e}{hint}",
                            c.current
                        ),
                    );
                }
            }
        }
    }
}

/// Decodes through `T`, as a subscriber of the current version would.
fn decode_through<T: Versioned>(payload: &[u8]) -> Result<(), DecodeError> {
    T::decode(payload).map(drop)
}

/// Why a golden payload failed: the decoder's error, or a panic in an upcast.
enum Failed {
    Decode(DecodeError),
    Panicked(String),
}

impl fmt::Display for Failed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Decode(e) => e.fmt(f),
            Self::Panicked(m) => write!(f, "an upcast panicked: {m}"),
        }
    }
}

fn decode_guarded(decode: fn(&[u8]) -> Result<(), DecodeError>, bytes: &[u8]) -> Result<(), Failed> {
    match std::panic::catch_unwind(|| decode(bytes)) {
        Ok(result) => result.map_err(Failed::Decode),
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "(no message)".to_owned());
            Err(Failed::Panicked(message))
        }
    }
}

/// Collects the schema of each version type.
struct Schemas<'e> {
    type_name: &'static str,
    kind: Kind,
    subject: &'static str,
    example: Option<&'e Value>,
    out: Vec<(&'static str, Result<Value, SchemaError>)>,
}

impl VersionVisitor for Schemas<'_> {
    fn visit<V: PayloadVersion>(&mut self) {
        let schema = schema_of::<V>(self.type_name, V::VERSION, self.example).map(|mut s| {
            s["x-cim-kind"] = json!(self.kind.name());
            s["x-cim-subject"] = json!(self.subject);
            s
        });
        self.out.push((V::VERSION, schema));
    }
}

/// Snapshots a topology as `{dir}/{name}.mmd` (Mermaid) and `{dir}/{name}.json`, in the mode the
/// environment chooses; panics with a diff if either differs. For tests.
#[track_caller]
pub fn assert_topology(topology: &Topology, dir: impl AsRef<Path>, name: &str) -> SnapshotReport {
    match check_topology(topology, dir, name, SnapshotMode::from_env()) {
        Ok(report) => report,
        Err(mismatch) => panic!("{mismatch}"),
    }
}

/// [`assert_topology`] without panicking, in `mode`.
///
/// # Errors
/// [`SnapshotMismatch`] if a file differs (or is missing, in [`SnapshotMode::Check`]).
pub fn check_topology(
    topology: &Topology,
    dir: impl AsRef<Path>,
    name: &str,
    mode: SnapshotMode,
) -> Result<SnapshotReport, SnapshotMismatch> {
    let dir = dir.as_ref();
    let mut run = Run::new(mode);
    let label = Label {
        kind: Kind::Event,
        type_name: "topology",
        version: name.to_owned(),
    };
    run.compare_text(&label, &dir.join(format!("{name}.mmd")), &topology.to_mermaid());
    run.compare_json(
        &label,
        &dir.join(format!("{name}.json")),
        &topology.to_json(),
        false,
        Artifact::Topology,
    );
    run.finish()
}

/// What a successful check did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SnapshotReport {
    /// Files compared and found equal.
    pub matched: Vec<PathBuf>,
    /// Files written because they were missing ([`SnapshotMode::Local`], `Update`, `Force`).
    pub written: Vec<PathBuf>,
    /// Files rewritten because they differed (`Update`, `Force`).
    pub updated: Vec<PathBuf>,
    /// Golden payloads of older versions that decoded and upcast.
    pub goldens_decoded: Vec<PathBuf>,
    /// Older versions (type name, version) with no committed golden payload, so their decoding
    /// and upcast are not checked. Not a failure: a golden payload of a frozen version cannot be
    /// generated (there is no example of it), so one is written by hand, or exists because the
    /// snapshots were taken while that version was current.
    pub goldens_missing: Vec<(String, String)>,
}

/// What went wrong with one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// No committed file, and the mode does not write one.
    Missing,
    /// The current version's (or a topology's) snapshot differs from the committed file.
    Changed,
    /// A frozen version's schema differs from the committed file: its struct was edited.
    FrozenChanged,
    /// The type's `Deserialize` impl could not be traced into a schema.
    Undescribable,
    /// The example could not be encoded.
    Unencodable,
    /// A committed golden payload no longer decodes and upcasts (or the example does not).
    GoldenNotDecodable,
    /// A committed file could not be read, parsed or written.
    Unreadable,
}

/// One problem: which type, version and file, what, and the details (the changed fields, a
/// diff, the decode error).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// `event DocumentCreated`, `command CancelOrder`, `topology`.
    pub subject: String,
    /// The version (for a topology, the snapshot's name).
    pub version: String,
    /// The snapshot file.
    pub file: PathBuf,
    /// What kind of problem.
    pub kind: ProblemKind,
    /// The details.
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.kind {
            ProblemKind::Missing => "no committed snapshot",
            ProblemKind::Changed => "changed",
            ProblemKind::FrozenChanged => "FROZEN version changed",
            ProblemKind::Undescribable => "cannot be described",
            ProblemKind::Unencodable => "the example cannot be encoded",
            ProblemKind::GoldenNotDecodable => "golden payload broken",
            ProblemKind::Unreadable => "unreadable snapshot",
        };
        write!(
            f,
            "{} version {}: {what} ({})\n{}",
            self.subject,
            self.version,
            self.file.display(),
            indent(&self.detail)
        )
    }
}

/// Every problem of a snapshot check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct SnapshotMismatch {
    /// The problems, in the order found.
    pub problems: Vec<Problem>,
    /// The mode the check ran in.
    pub mode: SnapshotMode,
}

impl fmt::Display for SnapshotMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} snapshot problem(s):", self.problems.len())?;
        for p in &self.problems {
            writeln!(f, "\n{p}")?;
        }
        let frozen = self.problems.iter().any(|p| p.kind == ProblemKind::FrozenChanged);
        let changed = self
            .problems
            .iter()
            .any(|p| matches!(p.kind, ProblemKind::Changed | ProblemKind::Missing));
        if changed {
            write!(
                f,
                "\nIf the change is intended and no payload of the changed version was ever published, accept it with \
                 `{MODE_ENV}=update cargo test`, review the files and commit them"
            )?;
            if self.mode == SnapshotMode::Check {
                write!(
                    f,
                    " (this run only checks: `CI` or `{MODE_ENV}=no` is set, or the test chose `SnapshotMode::Check`)"
                )?;
            }
            writeln!(
                f,
                ". If payloads of it exist, keep the version as it was and declare a new one (docs/domain_event.md, \
                 \"Evolving an event\")."
            )?;
        }
        if frozen {
            writeln!(
                f,
                "\nA frozen version is on the wire in stored payloads: restore its struct. To evolve the event, \
                 declare a new version (docs/domain_event.md, \"Evolving an event\")."
            )?;
        }
        Ok(())
    }
}

/// The type, version and kind a snapshot belongs to.
struct Label {
    kind: Kind,
    type_name: &'static str,
    version: String,
}

impl Label {
    fn subject(&self) -> String {
        if self.type_name == "topology" {
            "topology".to_owned()
        } else {
            format!("{} `{}`", self.kind.name(), self.type_name)
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Artifact {
    Schema,
    Topology,
}

/// One check in progress.
struct Run {
    mode: SnapshotMode,
    report: SnapshotReport,
    problems: Vec<Problem>,
}

impl Run {
    fn new(mode: SnapshotMode) -> Self {
        Self {
            mode,
            report: SnapshotReport::default(),
            problems: Vec::new(),
        }
    }

    fn finish(self) -> Result<SnapshotReport, SnapshotMismatch> {
        if self.problems.is_empty() {
            Ok(self.report)
        } else {
            Err(SnapshotMismatch {
                problems: self.problems,
                mode: self.mode,
            })
        }
    }

    fn problem(&mut self, label: &Label, file: &Path, kind: ProblemKind, detail: String) {
        self.problems.push(Problem {
            subject: label.subject(),
            version: label.version.clone(),
            file: file.to_owned(),
            kind,
            detail,
        });
    }

    /// Reads a committed file: `Ok(None)` if there is none.
    fn read(&mut self, label: &Label, file: &Path) -> Result<Option<String>, ()> {
        match std::fs::read_to_string(file) {
            Ok(text) => Ok(Some(text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => {
                self.problem(label, file, ProblemKind::Unreadable, e.to_string());
                Err(())
            }
        }
    }

    fn write(&mut self, label: &Label, file: &Path, text: &str, updated: bool) {
        let written = file
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(file, text));
        match written {
            Ok(()) => {
                tracing::warn!(
                    file = %file.display(),
                    "snapshot {}: review and commit it",
                    if updated { "updated" } else { "written" }
                );
                if updated {
                    self.report.updated.push(file.to_owned());
                } else {
                    self.report.written.push(file.to_owned());
                }
            }
            Err(e) => self.problem(label, file, ProblemKind::Unreadable, format!("cannot write: {e}")),
        }
    }

    /// Missing: written or a problem, as the mode says.
    fn missing(&mut self, label: &Label, file: &Path, text: &str) {
        if self.mode.writes_missing() {
            self.write(label, file, text, false);
        } else {
            self.problem(
                label,
                file,
                ProblemKind::Missing,
                format!("run the tests once locally (or with `{MODE_ENV}=update`) and commit the file it writes"),
            );
        }
    }

    fn compare_json(&mut self, label: &Label, file: &Path, actual: &Value, frozen: bool, artifact: Artifact) {
        let text = pretty(actual);
        let Ok(committed) = self.read(label, file) else { return };
        let Some(committed) = committed else {
            return self.missing(label, file, &text);
        };
        let expected: Value = match serde_json::from_str(&committed) {
            Ok(v) => v,
            Err(e) => {
                if self.mode.writes_changed(frozen) {
                    return self.write(label, file, &text, true);
                }
                return self.problem(label, file, ProblemKind::Unreadable, format!("not JSON: {e}"));
            }
        };
        if expected == *actual {
            self.report.matched.push(file.to_owned());
            return;
        }
        if self.mode.writes_changed(frozen) {
            return self.write(label, file, &text, true);
        }
        let changes = match artifact {
            Artifact::Schema => diff::schema_changes(&expected, actual),
            Artifact::Topology => diff::value_changes(&expected, actual),
        };
        let detail = format!(
            "{}\n--- committed\n+++ now\n{}",
            changes.join("\n"),
            diff::text(&pretty(&expected), &text)
        );
        let kind = if frozen {
            ProblemKind::FrozenChanged
        } else {
            ProblemKind::Changed
        };
        self.problem(label, file, kind, detail);
    }

    fn compare_golden(&mut self, label: &Label, file: &Path, wire: &[u8], actual: &Value) {
        // The file holds the wire bytes as they are; comparison is of the JSON values.
        let text = format!("{}\n", String::from_utf8_lossy(wire));
        let Ok(committed) = self.read(label, file) else { return };
        let Some(committed) = committed else {
            return self.missing(label, file, &text);
        };
        match serde_json::from_str::<Value>(&committed) {
            Ok(expected) if expected == *actual => self.report.matched.push(file.to_owned()),
            Ok(_) | Err(_) if self.mode.writes_changed(false) => self.write(label, file, &text, true),
            Ok(expected) => {
                let detail = format!(
                    "{}\n--- committed\n+++ now\n{}",
                    diff::value_changes(&expected, actual).join("\n"),
                    diff::text(&pretty(&expected), &pretty(actual))
                );
                self.problem(label, file, ProblemKind::Changed, detail);
            }
            Err(e) => self.problem(label, file, ProblemKind::Unreadable, format!("not JSON: {e}")),
        }
    }

    fn compare_text(&mut self, label: &Label, file: &Path, actual: &str) {
        let Ok(committed) = self.read(label, file) else { return };
        let Some(committed) = committed else {
            return self.missing(label, file, actual);
        };
        if committed.replace("\r\n", "\n") == actual {
            self.report.matched.push(file.to_owned());
        } else if self.mode.writes_changed(false) {
            self.write(label, file, actual, true);
        } else {
            let detail = format!("--- committed\n+++ now\n{}", diff::text(&committed, actual));
            self.problem(label, file, ProblemKind::Changed, detail);
        }
    }
}

/// Pretty JSON with sorted keys and a final newline, whatever serde_json's map order.
fn pretty(value: &Value) -> String {
    let mut text = serde_json::to_string_pretty(&sorted(value)).unwrap_or_default();
    text.push('\n');
    text
}

fn sorted(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect())
        }
        Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
        other => other.clone(),
    }
}

fn indent(text: &str) -> String {
    text.lines().map(|l| format!("    {l}")).collect::<Vec<_>>().join("\n")
}

/// `DocumentCreated` -> `document_created`, `HTTPRequestSent` -> `http_request_sent`: the folder
/// of a type's snapshots.
pub fn snake_case(name: &str) -> String {
    let chars: Vec<char> = name.chars().collect();
    let mut out = String::with_capacity(name.len() + 4);
    for (i, &c) in chars.iter().enumerate() {
        if c.is_uppercase() {
            let prev = i.checked_sub(1).and_then(|j| chars.get(j));
            let next = chars.get(i + 1);
            let boundary = prev.is_some_and(|p| p.is_lowercase() || p.is_ascii_digit())
                || (prev.is_some_and(|p| p.is_uppercase()) && next.is_some_and(|n| n.is_lowercase()));
            if boundary {
                out.push('_');
            }
            out.extend(c.to_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snake_case_names_folders() {
        assert_eq!(snake_case("DocumentCreated"), "document_created");
        assert_eq!(snake_case("HTTPRequestSent"), "http_request_sent");
        assert_eq!(snake_case("OrderV2Placed"), "order_v2_placed");
        assert_eq!(snake_case("x"), "x");
    }

    #[test]
    fn pretty_sorts_keys() {
        assert_eq!(
            pretty(&json!({"b": 1, "a": {"d": 2, "c": 3}})),
            "{\n  \"a\": {\n    \"c\": 3,\n    \"d\": 2\n  },\n  \"b\": 1\n}\n"
        );
    }
}
