//! The macros' compile-fail and pass cases, run by trybuild from `tests/*_ui.rs`.
//!
//! A crate of its own: trybuild builds the crate under test together with every one of its
//! dev-dependencies, in a target directory of its own (other compiler flags). Under the facade
//! that was the whole workspace's dependency tree (NATS, OpenTelemetry, JSON Schema, proptest)
//! built a second time; here it is the facade without NATS, serde and tokio.
