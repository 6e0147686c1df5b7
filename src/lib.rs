//! # cim-integrate
//!
//! A procedural-macro DSL and a thin runtime for the cross-domain integration patterns of a CIM
//! (Composable Information Machine): bounded contexts that never call each other and talk only
//! through events and commands over NATS JetStream.
//!
//! This facade is the one crate users depend on. It re-exports the runtime
//! ([`cim_integrate_runtime`]) and the macros. [`prelude`] is the DSL: the six attribute macros
//! and the types handlers, sagas, commands and process managers are written against. Transport
//! plumbing (consumer and stream specs, key-value stores) stays at [`transport`].
//!
//! Generated code refers to items only through the hidden `__private` module, so the expansion
//! does not depend on what the user's crate imports.
//!
//! The embedded in-memory transport ([`transport::memory::MemoryTransport`]) has the same
//! semantics as NATS JetStream and is the default, so everything runs with no server.
//!
//! ## Features
//!
//! - `nats` (default): the NATS JetStream transport, selected at run time by `NATS_URL`.
//! - `testing`: test support, for `[dev-dependencies]`: `cim_integrate::testing` with
//!   `TestHost` (the whole host on the embedded transport under paused time: publish, send,
//!   settle, advance, typed assertions; docs/testing.md), `SagaFixture` (given/when/then for
//!   one saga, with injected crashes), `testing::snapshot` (the wire contract of every event and
//!   command version and the topology, compared to committed files: `WireContract`,
//!   `assert_topology`) and a private `nats-server` harness (`NatsServer`), and the
//!   conformance macros `conformance_tests!` and `saga_conformance_tests!`. Without it none of
//!   this is compiled.
//!
//!   ```toml
//!   [dev-dependencies]
//!   cim-integrate = { version = "0.1", features = ["testing"] }
//!   ```
#![warn(missing_docs)]

pub use cim_integrate_macros::*;
pub use cim_integrate_runtime::*;

/// The DSL: `use cim_integrate::prelude::*;`.
///
/// The six attribute macros ([`domain_event`](macro@crate::domain_event),
/// [`subscribe`](macro@crate::subscribe), [`handlers`](macro@crate::handlers),
/// [`saga`](macro@crate::saga), [`command`](macro@crate::command), [`process`](macro@crate::process)),
/// the `subject!`, `subject_pattern!` and `typed_id!` macros, and the types their code is written
/// against. Transport plumbing (`ConsumerSpec`, `StreamSpec`, `KeyValue`, ...) is not here: it
/// stays at [`crate::transport`].
pub mod prelude {
    pub use cim_integrate_macros::{command, domain_event, handlers, process, saga, subscribe};
    pub use cim_integrate_runtime::command::{CommandAck, CommandBus, CommandRejection, CommandResult};
    pub use cim_integrate_runtime::envelope::Envelope;
    pub use cim_integrate_runtime::event::{DecodeError, DomainEvent, EncodeError, PayloadVersion, Versioned};
    pub use cim_integrate_runtime::handler::{Context, HandlerError, HandlerOptions, ResultExt, RetryPolicy};
    pub use cim_integrate_runtime::id::{CausationId, CorrelationId, Identity, MessageId};
    pub use cim_integrate_runtime::process::{Deadline, ProcessContext};
    pub use cim_integrate_runtime::saga::{Saga, SagaOutcome, SagaRunner, SagaStatus, StepContext};
    pub use cim_integrate_runtime::service::Service;
    pub use cim_integrate_runtime::subject::{Subject, SubjectPattern};
    pub use cim_integrate_runtime::timestamp::Timestamp;
    pub use cim_integrate_runtime::transport::Transport;
    pub use cim_integrate_runtime::transport::any::AnyTransport;
    pub use cim_integrate_runtime::transport::memory::MemoryTransport;
    pub use cim_integrate_runtime::waiter::Waiter;
    pub use cim_integrate_runtime::{subject, subject_pattern, typed_id};
}

/// Paths used by generated code, and nothing else. Not public API: no stability guarantee.
///
/// Every item here is named by an expansion of one of the macros (see the insta snapshots of
/// `cim-integrate-macros`).
#[doc(hidden)]
pub mod __private {
    pub use cim_integrate_runtime::__private::{serde, uuid};

    /// `#[subscribe(breaker(..))]`.
    pub mod breaker {
        pub use cim_integrate_runtime::breaker::BreakerSettings;
    }
    /// `#[command]`.
    pub mod command {
        pub use cim_integrate_runtime::command::{
            Command, CommandHandlerSet, CommandRegistration, IntoCommandResult, VersionedAnswer,
        };
    }
    /// `#[domain_event]` and `#[command]` (versioned payloads).
    pub mod event {
        pub use cim_integrate_runtime::event::{
            DecodeError, DomainEvent, PayloadVersion, VersionVisitor, Versioned, check_version_order, decode_oldest,
            decode_step,
        };
    }
    /// `#[subscribe]` and `#[handlers]`.
    pub mod handler {
        pub use cim_integrate_runtime::handler::{Context, HandlerError, HandlerOptions, HandlerSet, Registration};
        /// The helpers the handler expansion calls.
        pub mod macro_support {
            pub use cim_integrate_runtime::handler::macro_support::{
                EventInfo, check_can_match, event_info, millis, registration,
            };
        }
    }
    /// `#[process]`.
    pub mod process {
        pub use cim_integrate_runtime::process::{
            __same_key, BoxFuture, Deadline, ProcessContext, ProcessHandler, ProcessManager, key_of,
        };
    }
    /// `#[saga]`.
    pub mod saga {
        pub use cim_integrate_runtime::saga::{Saga, Step};
    }
    /// Compile-time subject checks of `#[subscribe]`.
    pub mod subject {
        pub use cim_integrate_runtime::subject::pattern_matches;
    }
    /// `#[subscribe]`'s topology entries.
    pub mod topology {
        pub use cim_integrate_runtime::topology::EventRef;
    }
    /// `#[subscribe(deliver = ..)]`.
    pub mod transport {
        pub use cim_integrate_runtime::transport::DeliverPolicy;
    }
}

/// The Rust snippets of the documentation, compiled (and run, unless `no_run`) as doctests, so
/// the documentation cannot drift from the code. Only built by `cargo test --doc`.
#[cfg(doctest)]
pub mod doc_snippets {
    /// `README.md`.
    #[doc = include_str!("../README.md")]
    pub struct Readme;
    /// `docs/ARCHITECTURE.md`.
    #[doc = include_str!("../docs/ARCHITECTURE.md")]
    pub struct Architecture;
    /// `docs/benchmarks.md`.
    #[doc = include_str!("../docs/benchmarks.md")]
    pub struct Benchmarks;
    /// `docs/cluster.md`.
    #[doc = include_str!("../docs/cluster.md")]
    pub struct Cluster;
    /// `docs/domain_event.md`.
    #[doc = include_str!("../docs/domain_event.md")]
    pub struct DomainEvent;
    /// `docs/faults.md`.
    #[doc = include_str!("../docs/faults.md")]
    pub struct Faults;
    /// `docs/operations.md`.
    #[doc = include_str!("../docs/operations.md")]
    pub struct Operations;
    /// `docs/monitoring.md`.
    #[doc = include_str!("../docs/monitoring.md")]
    pub struct Monitoring;
    /// `docs/patterns.md`.
    #[doc = include_str!("../docs/patterns.md")]
    pub struct Patterns;
    /// `docs/saga.md`.
    #[doc = include_str!("../docs/saga.md")]
    pub struct Saga;
    /// `docs/testing.md` (needs the `testing` feature).
    #[cfg(feature = "testing")]
    #[doc = include_str!("../docs/testing.md")]
    pub struct Testing;
}
