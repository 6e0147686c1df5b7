//! Typed command answers, on the embedded transport and on a private nats-server: a command
//! declares its answer type (versioned like an event); `CommandBus::send` returns it typed in
//! `CommandAck::Accepted`; a rejection stays a rejection, not an answer; a command sent again
//! with the same identity is answered from the result cache (the same answer, the handler not run
//! again); an answer of an older version is upcast.

use cim_integrate::command::{CommandAnswer, CommandBus, CommandRejection, CommandResult};
use cim_integrate::handler::Context;
use cim_integrate::prelude::*;
use cim_integrate::service::Service;
use cim_integrate::testing::NatsServer;
use cim_integrate::transport::Transport;
use cim_integrate::transport::memory::MemoryTransport;
use cim_integrate::transport::nats::NatsTransport;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[command(subject = "inventory.reserve", version = "1.0", answer = Reserved)]
#[derive(Debug, Clone)]
pub struct ReserveStock {
    pub sku: String,
    pub quantity: u32,
}

/// The answer, version 2.0: how many were reserved and how many are left.
#[command(answer, version = "2.0", previous = [ReservedV1])]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reserved {
    pub reserved: u32,
    pub available: Option<u32>,
}

/// The answer as version 1.0 was: only how many were reserved.
#[command(version = "1.0", frozen)]
#[derive(Debug, Clone)]
pub struct ReservedV1 {
    pub reserved: u32,
}

impl From<ReservedV1> for Reserved {
    fn from(v1: ReservedV1) -> Self {
        Self {
            reserved: v1.reserved,
            available: None,
        }
    }
}

/// A command without an answer, beside it: still `CommandAck<()>`.
#[command(subject = "inventory.restock", version = "1.0")]
#[derive(Debug, Clone)]
pub struct Restock {
    pub quantity: u32,
}

struct Inventory {
    stock: Mutex<u32>,
    runs: AtomicU32,
}

#[command(name = "inventory")]
impl Inventory {
    async fn reserve(&self, _ctx: &Context, command: ReserveStock) -> CommandResult<Reserved> {
        self.runs.fetch_add(1, Ordering::SeqCst);
        let mut stock = self.stock.lock().unwrap();
        if command.quantity > *stock {
            return Err(CommandRejection::reject(format!(
                "insufficient {}: {} of {}",
                command.sku, *stock, command.quantity
            )));
        }
        *stock -= command.quantity;
        Ok(Reserved {
            reserved: command.quantity,
            available: Some(*stock),
        })
    }

    async fn restock(&self, _ctx: &Context, command: Restock) -> CommandResult {
        *self.stock.lock().unwrap() += command.quantity;
        Ok(())
    }
}

async fn answers_are_typed<T: Transport>(t: T) {
    let inventory = Arc::new(Inventory {
        stock: Mutex::new(50),
        runs: AtomicU32::new(0),
    });
    let service = Service::builder(t.clone(), "inventory")
        .commands_arc(inventory.clone())
        .start()
        .await
        .expect("service");
    let bus = CommandBus::new(t.clone()).timeout(Duration::from_secs(10));

    let first = ReserveStock {
        sku: "bolt".into(),
        quantity: 10,
    };
    let identity = Identity::root();
    let ack = bus
        .send_with(identity, &first, Duration::from_secs(10))
        .await
        .expect("answered");
    assert_eq!(
        ack,
        CommandAck::Accepted(Reserved {
            reserved: 10,
            available: Some(40)
        })
    );

    // A rejection is not an answer.
    let too_many = ReserveStock {
        sku: "bolt".into(),
        quantity: 50,
    };
    let ack = bus.send(&too_many).await.expect("answered");
    assert_eq!(
        ack,
        CommandAck::Rejected {
            reason: "insufficient bolt: 40 of 50".into()
        }
    );
    assert_eq!(ack.answer(), None);

    // Sent again with the same identity: the remembered answer, the handler not run again.
    let runs = inventory.runs.load(Ordering::SeqCst);
    let again = bus
        .send_with(identity, &first, Duration::from_secs(10))
        .await
        .expect("answered");
    assert_eq!(
        again.into_answer(),
        Some(Reserved {
            reserved: 10,
            available: Some(40)
        })
    );
    assert_eq!(inventory.runs.load(Ordering::SeqCst), runs, "answered from the cache");
    assert_eq!(*inventory.stock.lock().unwrap(), 40, "reserved once");

    // A command without an answer.
    let ack: CommandAck = bus.send(&Restock { quantity: 5 }).await.expect("answered");
    assert_eq!(ack, CommandAck::Accepted(()));
    assert_eq!(*inventory.stock.lock().unwrap(), 45);

    service.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn answers_are_typed_on_the_embedded_transport() {
    answers_are_typed(MemoryTransport::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_are_typed_on_nats() {
    let server = NatsServer::start().await.expect("server");
    let t = NatsTransport::connect_url(&server.url()).await.expect("connect");
    answers_are_typed(t).await;
}

#[test]
fn an_older_answer_is_upcast_and_a_missing_one_is_an_error() {
    let v1 = serde_json::json!({"version": "1.0", "reserved": 7});
    assert_eq!(
        Reserved::from_answer(Some(&v1)),
        Ok(Reserved {
            reserved: 7,
            available: None
        })
    );
    let v2 = Reserved {
        reserved: 3,
        available: Some(9),
    }
    .to_answer()
    .expect("encodes");
    assert_eq!(
        v2,
        Some(serde_json::json!({"version": "2.0", "reserved": 3, "available": 9}))
    );
    let missing = Reserved::from_answer(None).expect_err("no answer");
    assert!(missing.contains("carries no Reserved"), "{missing}");
    let unknown = serde_json::json!({"version": "9.0", "reserved": 1});
    assert!(Reserved::from_answer(Some(&unknown)).is_err());
}
