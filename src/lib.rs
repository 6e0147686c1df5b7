//! # cim-integrate
//!
//! A procedural-macro DSL and a thin runtime for the cross-domain integration patterns of a CIM
//! (Composable Information Machine): bounded contexts that never call each other and talk only
//! through events and commands over NATS JetStream.
//!
//! This facade is the one crate users depend on. It re-exports the runtime
//! ([`cim_integrate_runtime`]) and the macros. Generated code refers to items only through the
//! hidden `__private` module, so the expansion does not depend on what the user's crate imports.
//!
//! The embedded in-memory transport ([`transport::memory::MemoryTransport`]) has the same
//! semantics as NATS JetStream and is the default, so everything runs with no server.
#![warn(missing_docs)]

pub use cim_integrate_macros::*;
pub use cim_integrate_runtime::*;

/// The names most programs need: `use cim_integrate::prelude::*;`.
pub mod prelude {
    pub use cim_integrate_macros::{domain_event, handlers, saga, subscribe};
    pub use cim_integrate_runtime::envelope::Envelope;
    pub use cim_integrate_runtime::event::{DecodeError, DomainEvent, EncodeError, PayloadVersion, Versioned};
    pub use cim_integrate_runtime::handler::{Context, HandlerError, HandlerOptions, ResultExt, RetryPolicy};
    pub use cim_integrate_runtime::id::{CausationId, CorrelationId, Identity, MessageId};
    pub use cim_integrate_runtime::saga::{Saga, SagaOutcome, SagaRunner, SagaStatus, StepContext};
    pub use cim_integrate_runtime::service::Service;
    pub use cim_integrate_runtime::subject::{Subject, SubjectPattern};
    pub use cim_integrate_runtime::timestamp::Timestamp;
    pub use cim_integrate_runtime::transport::any::AnyTransport;
    pub use cim_integrate_runtime::transport::memory::MemoryTransport;
    pub use cim_integrate_runtime::transport::{
        Consumer, ConsumerSpec, DeliverPolicy, KeyValue, KvSpec, OutboundMessage, StreamSpec, Transport,
    };
    pub use cim_integrate_runtime::{subject, subject_pattern, typed_id};
}

/// Paths used by generated code. Not public API: no stability guarantee.
#[doc(hidden)]
pub mod __private {
    pub use cim_integrate_macros::*;
    pub use cim_integrate_runtime::__private::*;
    pub use cim_integrate_runtime::*;
}
