//! The expansions of every macro under `#![deny(warnings, clippy::all, clippy::pedantic)]` and
//! with the prelude, `serde`, `core` and `std` shadowed: compiled and run as a trybuild pass case,
//! and compiled here as a module so that `cargo clippy --all-targets` lints it.

#[path = "ui/hygiene/pass/pedantic_and_shadowed.rs"]
mod pedantic_and_shadowed;

#[test]
fn expansions_run_under_deny_pedantic() {
    pedantic_and_shadowed::main();
}

#[test]
fn hygiene_ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/hygiene/pass/*.rs");
}
