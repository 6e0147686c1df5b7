//! The runtime of cim-integrate: everything the macros expand into.
//!
//! - [`id`]: message identity (UUID v7 ids, root vs caused-by) and the [`typed_id!`] macro.
//! - [`timestamp`]: [`Timestamp`], RFC 3339 on the wire.
//! - [`subject`](mod@subject): validated [`Subject`] and [`SubjectPattern`], with `const fn` rules.
//! - [`headers`] and [`envelope`]: a message with its identity, to and from NATS headers.
//! - [`transport`]: the transport contract, and [`transport::memory`], the embedded default.
//! - `ops` (feature `nats`): what an operator sees and fixes (dead letters, sagas, lag).
//!
//! Users depend on the `cim-integrate` facade, which re-exports this crate.
#![warn(missing_docs)]

pub mod aggregate;
pub mod asyncapi;
mod backoff;
pub mod breaker;
pub mod clock;
pub mod command;
pub mod correlate;
pub mod dedup;
pub mod envelope;
pub mod event;
mod fast_hash;
pub mod handler;
pub mod headers;
pub mod id;
mod id_window;
mod json;
pub mod monitor;
#[cfg(feature = "nats")]
pub mod ops;
mod outbox;
pub mod pipeline;
pub mod process;
pub mod saga;
pub mod schema;
pub mod service;
pub mod settings;
pub mod subject;
mod throttle;
pub mod timestamp;
pub mod topology;
pub mod trace_context;
pub mod transport;
pub mod waiter;

#[cfg(feature = "testing")]
pub mod conformance;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "testing")]
pub mod testing;

pub use envelope::Envelope;
pub use headers::Headers;
pub use id::{CausationId, CorrelationId, Identity, MessageId};
pub use settings::SettingsError;
pub use subject::{Subject, SubjectPattern};
pub use timestamp::Timestamp;

#[doc(hidden)]
pub mod __private {
    pub use crate::id::new_v7;
    pub use serde;
    pub use uuid;
}
