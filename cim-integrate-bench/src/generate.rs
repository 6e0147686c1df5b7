//! Writes two equivalent crates for the `cargo check` benchmark: one using the macros
//! (`#[domain_event]`, `#[handlers]`/`#[subscribe]`, `#[saga]`), one written by hand against the
//! runtime API (the impls the macros expand into: `PayloadVersion`, `Versioned`, `DomainEvent`,
//! `HandlerSet` with `Registration::new`, `Saga` with a step table).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Package name of the crate using the macros.
pub const MACRO_CRATE: &str = "gen_macros";
/// Package name of the hand-written crate.
pub const HAND_CRATE: &str = "gen_hand";

/// How big the generated crates are.
pub struct Shape {
    /// Events, each with a current (2.0) and a frozen (1.0) version.
    pub events: usize,
    /// Handlers (one per event, in sets of ten).
    pub handlers: usize,
    /// Sagas of four steps (three compensated, one pivot).
    pub sagas: usize,
}

const DOMAINS: usize = 10;

/// Lines in a file.
pub fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

fn manifest(name: &str, workspace: &Path) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "0.0.0"
edition = "2024"
publish = false

[dependencies]
cim-integrate = {{ path = "{}" }}
serde = {{ version = "1", features = ["derive"] }}

[workspace]
"#,
        workspace.display()
    )
}

fn subject(i: usize) -> String {
    format!("domain{}.event{i}", i % DOMAINS)
}

fn macro_source(shape: &Shape) -> String {
    let mut s = String::from(
        "//! Generated: macros.\n#![allow(dead_code)]\nuse cim_integrate::handler::{Context, HandlerError};\n\
         use cim_integrate::saga::StepContext;\nuse cim_integrate::{domain_event, handlers, saga};\n\
         use std::sync::atomic::{AtomicU64, Ordering};\n\n",
    );
    for i in 0..shape.events {
        let _ = write!(
            s,
            r#"#[domain_event(subject = "{subj}", version = "2.0", previous = [E{i}V1])]
#[derive(Debug, Clone, PartialEq)]
pub struct E{i} {{ pub id: u64, pub name: String, pub note: Option<String> }}

#[domain_event(version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct E{i}V1 {{ pub id: u64, pub name: String }}

impl From<E{i}V1> for E{i} {{
    fn from(v: E{i}V1) -> Self {{ Self {{ id: v.id, name: v.name, note: None }} }}
}}

"#,
            subj = subject(i)
        );
    }
    let per_set = shape.handlers.div_ceil(DOMAINS);
    for set in 0..DOMAINS {
        let _ = writeln!(
            s,
            "#[derive(Default)]\npub struct Set{set} {{ pub count: AtomicU64 }}\n\n#[handlers(domain = \"set{set}\")]\nimpl Set{set} {{"
        );
        for h in 0..per_set {
            let i = set * per_set + h;
            if i >= shape.handlers {
                break;
            }
            let e = i % shape.events;
            let _ = writeln!(
                s,
                r#"    #[subscribe("{subj}", max_attempts = 3, backoff = "100ms")]
    async fn on_e{i}(&self, ctx: &Context, event: E{e}) -> Result<(), HandlerError> {{
        self.count.fetch_add(event.id + ctx.delivered(), Ordering::Relaxed);
        Ok(())
    }}
"#,
                subj = subject(e)
            );
        }
        s.push_str("}\n\n");
    }
    for g in 0..shape.sagas {
        let _ = writeln!(
            s,
            r#"#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Data{g} {{ pub done: Vec<String> }}

pub struct Saga{g};

#[saga(data = Data{g}, name = "saga{g}")]
impl Saga{g} {{
    #[step(compensate = "undo_a")]
    async fn a(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("a".into()); Ok(()) }}
    #[step(compensate = "undo_b", attempts = 5)]
    async fn b(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("b".into()); Ok(()) }}
    #[step(compensate = "undo_c", timeout = "5s")]
    async fn c(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("c".into()); Ok(()) }}
    #[step(no_compensation = "pivot")]
    async fn d(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("d".into()); Ok(()) }}
    async fn undo_a(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.pop(); Ok(()) }}
    async fn undo_b(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.pop(); Ok(()) }}
    async fn undo_c(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.pop(); Ok(()) }}
}}
"#
        );
    }
    s
}

fn hand_source(shape: &Shape) -> String {
    let mut s = String::from(
        "//! Generated: the same, by hand.\n#![allow(dead_code)]\nuse cim_integrate::event::{self, DecodeError, DomainEvent, PayloadVersion, Versioned};\n\
         use cim_integrate::handler::{Context, HandlerError, HandlerOptions, HandlerSet, Registration, RetryPolicy};\n\
         use cim_integrate::saga::{Saga, Step, StepContext};\nuse std::sync::Arc;\n\
         use std::sync::atomic::{AtomicU64, Ordering};\nuse std::time::Duration;\n\n",
    );
    for i in 0..shape.events {
        let _ = write!(
            s,
            r#"#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct E{i} {{ pub id: u64, pub name: String, pub note: Option<String> }}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct E{i}V1 {{ pub id: u64, pub name: String }}

impl From<E{i}V1> for E{i} {{
    fn from(v: E{i}V1) -> Self {{ Self {{ id: v.id, name: v.name, note: None }} }}
}}
impl PayloadVersion for E{i}V1 {{ const VERSION: &'static str = "1.0"; }}
impl PayloadVersion for E{i} {{ const VERSION: &'static str = "2.0"; }}
impl Versioned for E{i} {{
    const TYPE_NAME: &'static str = "E{i}";
    const VERSIONS: &'static [&'static str] = &["1.0", "2.0"];
    fn decode_version(version: &str, payload: &[u8]) -> Result<Option<Self>, DecodeError> {{
        let oldest = event::decode_oldest::<E{i}V1>("1.0", Self::TYPE_NAME, version, payload)?;
        event::decode_step::<E{i}V1, Self>(oldest, "2.0", Self::TYPE_NAME, version, payload)
    }}
}}
impl DomainEvent for E{i} {{ const SUBJECT: &'static str = "{subj}"; }}

"#,
            subj = subject(i)
        );
    }
    let per_set = shape.handlers.div_ceil(DOMAINS);
    for set in 0..DOMAINS {
        let mut regs = String::new();
        let _ = writeln!(
            s,
            "#[derive(Default)]\npub struct Set{set} {{ pub count: AtomicU64 }}\n\nimpl Set{set} {{"
        );
        for h in 0..per_set {
            let i = set * per_set + h;
            if i >= shape.handlers {
                break;
            }
            let e = i % shape.events;
            let _ = writeln!(
                s,
                r#"    async fn on_e{i}(&self, ctx: &Context, event: E{e}) -> Result<(), HandlerError> {{
        self.count.fetch_add(event.id + ctx.delivered(), Ordering::Relaxed);
        Ok(())
    }}
"#
            );
            let _ = writeln!(
                regs,
                r#"            {{
                let s = self.clone();
                Registration::new("on_e{i}", cim_integrate::subject_pattern!("{subj}"), E{e}::TYPE_NAME, E{e}::decode, move |ctx: Context, e: E{e}| {{
                    let s = s.clone();
                    async move {{ s.on_e{i}(&ctx, e).await }}
                }})
                .with_options(HandlerOptions {{
                    retry: RetryPolicy::attempts(3).backoff(Duration::from_millis(100), 2, Duration::from_secs(60)),
                    ..HandlerOptions::default()
                }})
            }},"#,
                subj = subject(e)
            );
        }
        let _ = writeln!(
            s,
            "}}\n\nimpl HandlerSet for Set{set} {{\n    fn set_name(&self) -> &str {{ \"set{set}\" }}\n    fn registrations(self: Arc<Self>) -> Vec<Registration> {{\n        vec![\n{regs}        ]\n    }}\n}}\n"
        );
    }
    for g in 0..shape.sagas {
        let _ = writeln!(
            s,
            r#"#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Data{g} {{ pub done: Vec<String> }}

pub struct Saga{g};

impl Saga{g} {{
    async fn a(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("a".into()); Ok(()) }}
    async fn b(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("b".into()); Ok(()) }}
    async fn c(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("c".into()); Ok(()) }}
    async fn d(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.push("d".into()); Ok(()) }}
    async fn undo_a(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.pop(); Ok(()) }}
    async fn undo_b(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.pop(); Ok(()) }}
    async fn undo_c(&self, ctx: &mut StepContext<Data{g}>) -> Result<(), HandlerError> {{ ctx.data_mut().done.pop(); Ok(()) }}
}}

impl Saga for Saga{g} {{
    type Data = Data{g};
    const NAME: &'static str = "saga{g}";
    fn steps() -> Vec<Step<Self>> {{
        vec![
            Step::new("a", |s, c| Box::pin(Saga{g}::a(s, c))).compensate("undo_a", |s, c| Box::pin(Saga{g}::undo_a(s, c))),
            Step::new("b", |s, c| Box::pin(Saga{g}::b(s, c))).compensate("undo_b", |s, c| Box::pin(Saga{g}::undo_b(s, c))).attempts(5),
            Step::new("c", |s, c| Box::pin(Saga{g}::c(s, c))).compensate("undo_c", |s, c| Box::pin(Saga{g}::undo_c(s, c))).timeout(Duration::from_secs(5)),
            Step::new("d", |s, c| Box::pin(Saga{g}::d(s, c))).no_compensation("pivot"),
        ]
    }}
}}
"#
        );
    }
    s
}

/// Writes both crates under `root`, each depending on the workspace at `workspace` by path and
/// sharing its `Cargo.lock` (so dependency versions match a warm target dir).
pub fn write_crates(root: &Path, workspace: &Path, shape: &Shape) -> std::io::Result<(PathBuf, PathBuf)> {
    let lock = std::fs::read(workspace.join("Cargo.lock")).ok();
    let mut dirs = Vec::new();
    for (name, source) in [(MACRO_CRATE, macro_source(shape)), (HAND_CRATE, hand_source(shape))] {
        let dir = root.join(name);
        std::fs::create_dir_all(dir.join("src"))?;
        std::fs::write(dir.join("Cargo.toml"), manifest(name, workspace))?;
        std::fs::write(dir.join("src/lib.rs"), source)?;
        if let Some(lock) = &lock {
            std::fs::write(dir.join("Cargo.lock"), lock)?;
        }
        dirs.push(dir);
    }
    let hand = dirs.pop().unwrap_or_default();
    let macros = dirs.pop().unwrap_or_default();
    Ok((macros, hand))
}
