//! `TestHost` end to end with the macros: a small shop (order, inventory, billing) of
//! `#[domain_event]`s, `#[handlers]`, a `#[command]` handler, an event-started `#[saga]` and a
//! `#[process]` with a deadline, run under paused time with no sleeps.

use cim_integrate::command::CommandResult;
use cim_integrate::prelude::*;
use cim_integrate::process::ProcessRunner;
use cim_integrate::saga::SagaEventKind::{
    Compensated, Compensating, Started, StepCompensated, StepCompleted, StepFailed,
};
use cim_integrate::saga::StepState;
use cim_integrate::testing::{Answer, TestHost};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

// ---- events and commands ------------------------------------------------------------------

#[domain_event(subject = "order.placed", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPlaced {
    pub order_id: String,
    pub sku: String,
    pub amount: u32,
}

#[domain_event(subject = "inventory.reserved", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct StockReserved {
    pub order_id: String,
    pub sku: String,
}

#[domain_event(subject = "inventory.released", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct StockReleased {
    pub order_id: String,
}

#[domain_event(subject = "billing.paid", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentTaken {
    pub order_id: String,
    pub amount: u32,
}

#[domain_event(subject = "order.cancelled", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct OrderCancelled {
    pub order_id: String,
    pub reason: String,
}

#[domain_event(subject = "order.payment_overdue", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct PaymentOverdue {
    pub order_id: String,
}

#[command(subject = "order.cancel", version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct CancelOrder {
    pub order_id: String,
}

// ---- handlers -----------------------------------------------------------------------------

/// Reserves stock for every order; an order without a SKU cannot be reserved (dead letter); the
/// first `flaky` attempts fail for now (retried after 10 s).
#[derive(Default)]
struct Inventory {
    flaky: Arc<AtomicU32>,
}

#[handlers(domain = "inventory")]
impl Inventory {
    #[subscribe("order.placed", max_attempts = 5, backoff = "10s")]
    async fn reserve(&self, ctx: &Context, e: OrderPlaced) -> Result<(), HandlerError> {
        if e.sku.is_empty() {
            return Err(HandlerError::permanent(format!("order {} has no sku", e.order_id)));
        }
        let left = self.flaky.load(Ordering::SeqCst);
        if left > 0 {
            self.flaky.store(left - 1, Ordering::SeqCst);
            return Err(HandlerError::transient("the warehouse is busy"));
        }
        ctx.publish(&StockReserved {
            order_id: e.order_id,
            sku: e.sku,
        })
        .await?;
        Ok(())
    }
}

/// Takes the payment once stock is reserved; `broken` forgets to publish it.
#[derive(Default)]
struct Billing {
    broken: bool,
}

#[handlers(domain = "billing")]
impl Billing {
    #[subscribe("inventory.reserved")]
    async fn charge(&self, ctx: &Context, e: StockReserved) -> Result<(), HandlerError> {
        if !self.broken {
            ctx.publish(&PaymentTaken {
                order_id: e.order_id,
                amount: 42,
            })
            .await?;
        }
        Ok(())
    }
}

struct OrderCommands;

#[command(name = "orders")]
impl OrderCommands {
    async fn cancel(&self, ctx: &Context, c: CancelOrder) -> CommandResult {
        if c.order_id.is_empty() {
            return Err(CommandRejection::reject("which order?"));
        }
        ctx.publish(&OrderCancelled {
            order_id: c.order_id,
            reason: "customer".into(),
        })
        .await?;
        Ok(())
    }
}

// ---- a saga started by `order.placed` -----------------------------------------------------

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Fulfilment {
    pub order_id: String,
    pub undeliverable: bool,
    pub log: Vec<String>,
}

#[derive(Debug, Clone, Default)]
pub struct Fulfil;

#[saga(data = Fulfilment)]
impl Fulfil {
    #[step(compensate = "release")]
    async fn reserve(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        ctx.data_mut().log.push("+reserve".into());
        Ok(())
    }

    #[step(compensate = "refund")]
    async fn charge(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        ctx.data_mut().log.push("+charge".into());
        Ok(())
    }

    #[step(no_compensation = "the last step")]
    async fn ship(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        if ctx.data().undeliverable {
            return Err(HandlerError::permanent("no carrier goes there"));
        }
        ctx.data_mut().log.push("+ship".into());
        Ok(())
    }

    async fn refund(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        ctx.data_mut().log.push("-charge".into());
        Ok(())
    }

    async fn release(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        let order_id = ctx.data().order_id.clone();
        ctx.context().publish(&StockReleased { order_id }).await?;
        ctx.data_mut().log.push("-reserve".into());
        Ok(())
    }
}

// ---- a process manager: an order must be paid within 30 minutes ---------------------------

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct PaymentWatch {
    pub amount: u32,
}

#[process(name = "payment_watch", key = order_id)]
impl PaymentWatch {
    async fn placed(&mut self, ctx: &mut ProcessContext, e: OrderPlaced) -> Result<(), HandlerError> {
        self.amount = e.amount;
        ctx.schedule("pay_by", Duration::from_secs(30 * 60));
        Ok(())
    }

    async fn paid(&mut self, ctx: &mut ProcessContext, _e: PaymentTaken) -> Result<(), HandlerError> {
        ctx.end();
        Ok(())
    }

    #[deadline]
    async fn overdue(&mut self, ctx: &mut ProcessContext, _d: Deadline) -> Result<(), HandlerError> {
        let order_id = ctx.key().to_owned();
        ctx.publish(&PaymentOverdue {
            order_id: order_id.clone(),
        })
        .map_err(HandlerError::permanent)?;
        ctx.send(&CancelOrder { order_id }).map_err(HandlerError::permanent)?;
        ctx.end();
        Ok(())
    }
}

fn order(id: &str, sku: &str) -> OrderPlaced {
    OrderPlaced {
        order_id: id.into(),
        sku: sku.into(),
        amount: 42,
    }
}

/// Checks a test body's wall-clock time: the point of the host is tests in milliseconds.
fn quick(started: std::time::Instant) {
    let took = started.elapsed();
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

// ---- tests ----------------------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn a_cascade_settles_without_sleeping() {
    let started = std::time::Instant::now();
    let host = TestHost::start(
        TestHost::service("shop")
            .register(Inventory::default())
            .register(Billing::default()),
    )
    .await
    .unwrap();
    let placed = host.publish(&order("o-1", "book")).await.unwrap();
    host.settle().await;

    let events = host.events();
    let reserved = events.expect_after::<StockReserved>(&placed);
    let paid = events.expect_after::<PaymentTaken>(reserved.envelope());
    assert_eq!(paid.order_id, "o-1");
    events.expect_types(&["OrderPlaced", "StockReserved", "PaymentTaken"]);
    // Identity: one conversation, each caused by the one before.
    assert!(reserved.published.is_caused_by(&placed));
    assert!(paid.published.is_caused_by(reserved.envelope()));
    assert_eq!(events.correlated(placed.correlation_id()).all().len(), 3, "{events}");
    host.dead_letters().expect_none();
    host.shutdown().await;
    quick(started);
}

#[tokio::test(start_paused = true)]
async fn a_retry_waits_on_its_timer_until_time_advances() {
    let started = std::time::Instant::now();
    let inventory = Inventory::default();
    inventory.flaky.store(1, Ordering::SeqCst);
    let host = TestHost::start(TestHost::service("shop").register(inventory))
        .await
        .unwrap();
    host.publish(&order("o-2", "pen")).await.unwrap();
    // Settled: the failed attempt is given back with a 10 s delay, waiting on its timer.
    host.settle().await;
    let stats = host.running().unwrap().handler_stats("inventory-reserve").unwrap();
    assert_eq!((stats.retried, stats.succeeded), (1, 0), "{stats:?}");
    host.events().expect_none::<StockReserved>();
    host.advance(Duration::from_secs(5)).await;
    host.events().expect_none::<StockReserved>();
    host.advance(Duration::from_secs(6)).await;
    host.events().expect::<StockReserved>();
    host.shutdown().await;
    quick(started);
}

#[tokio::test(start_paused = true)]
async fn a_command_is_answered_and_its_events_are_seen() {
    let started = std::time::Instant::now();
    let host = TestHost::start(TestHost::service("shop").commands(OrderCommands))
        .await
        .unwrap();
    let ack = host.send(&CancelOrder { order_id: "o-3".into() }).await.unwrap();
    assert_eq!(ack, CommandAck::Accepted(()));
    let rejected = host.send(&CancelOrder { order_id: "".into() }).await.unwrap();
    assert_eq!(rejected.reason(), Some("which order?"));
    host.settle().await;

    let commands = host.commands();
    assert_eq!(commands.all().len(), 2, "{commands}");
    let (sent, cancel) = commands.expect_answered::<CancelOrder>(&Answer::Accepted);
    assert_eq!(cancel.order_id, "o-3");
    assert_eq!(commands.all()[1].answer, Answer::Rejected("which order?".into()));
    let cancelled = host.events().expect_one::<OrderCancelled>();
    assert_eq!(cancelled.order_id, "o-3");
    assert_eq!(
        cancelled.envelope().correlation_id(),
        sent.envelope.correlation_id(),
        "the event belongs to the command's conversation"
    );
    host.shutdown().await;
    quick(started);
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_carries_its_reason() {
    let started = std::time::Instant::now();
    let host = TestHost::start(TestHost::service("shop").register(Inventory::default()))
        .await
        .unwrap();
    let placed = host.publish(&order("o-4", "")).await.unwrap();
    host.settle().await;

    let letter = host.dead_letters().expect::<OrderPlaced>();
    assert_eq!(letter.kind, "permanent");
    assert!(letter.reason.contains("order o-4 has no sku"), "{letter}");
    assert!(letter.handler.contains("reserve"), "{letter}");
    assert_eq!(
        letter.correlation_id.as_deref(),
        Some(placed.correlation_id().to_string().as_str())
    );
    host.events().expect_none::<StockReserved>();
    host.shutdown().await;
    quick(started);
}

async fn fulfilment_host() -> (TestHost, SagaRunner<Fulfil, MemoryTransport>) {
    let builder = TestHost::service("fulfilment");
    let runner = SagaRunner::builder(builder.transport().clone(), Fulfil)
        .build()
        .await
        .unwrap();
    let start = runner.start_on(
        "start",
        subject_pattern!("order.placed"),
        "OrderPlaced",
        OrderPlaced::decode,
        |_ctx, e: OrderPlaced| {
            Ok((
                e.order_id.clone(),
                Fulfilment {
                    undeliverable: e.sku == "piano",
                    order_id: e.order_id,
                    log: Vec::new(),
                },
            ))
        },
    );
    let host = TestHost::start(builder.handler("fulfilment", start).saga(runner.clone()))
        .await
        .unwrap();
    (host, runner)
}

#[tokio::test(start_paused = true)]
async fn a_saga_started_by_an_event_is_compensated_in_reverse() {
    let started = std::time::Instant::now();
    let (host, runner) = fulfilment_host().await;
    host.publish(&order("o-5", "piano")).await.unwrap();
    host.settle().await;

    host.saga(&runner, "o-5")
        .await
        .then_compensated("ship")
        .then_steps(&[
            ("reserve", StepState::Compensated),
            ("charge", StepState::Compensated),
            ("ship", StepState::Failed),
        ])
        .then_events(&[
            Started,
            StepCompleted,
            StepCompleted,
            StepFailed,
            Compensating,
            StepCompensated,
            StepCompensated,
            Compensated,
        ])
        .then_data(|d| assert_eq!(d.log, ["+reserve", "+charge", "-charge", "-reserve"]));
    let released = host.events().expect_one::<StockReleased>();
    assert_eq!(released.order_id, "o-5");

    // The same host, another order: completed.
    host.publish(&order("o-6", "book")).await.unwrap();
    host.settle().await;
    host.saga(&runner, "o-6").await.then_completed();
    // A saga started directly.
    let outcome = host
        .start_saga(
            &runner,
            "o-7",
            Fulfilment {
                order_id: "o-7".into(),
                ..Fulfilment::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(outcome, SagaOutcome::Completed);
    host.shutdown().await;
    quick(started);
}

async fn watch_host(billing: bool) -> (TestHost, ProcessRunner<MemoryTransport, PaymentWatch>) {
    let builder = TestHost::service("shop");
    let runner = ProcessRunner::<_, PaymentWatch>::open(builder.transport().clone())
        .await
        .unwrap();
    let mut builder = builder
        .register(Inventory::default())
        .commands(OrderCommands)
        .process(runner.clone());
    if billing {
        builder = builder.register(Billing::default());
    }
    (TestHost::start(builder).await.unwrap(), runner)
}

#[tokio::test(start_paused = true)]
async fn a_missed_deadline_fires_when_time_advances() {
    let started = std::time::Instant::now();
    let (host, runner) = watch_host(false).await;
    let placed = host.publish(&order("o-8", "lamp")).await.unwrap();
    host.settle().await;
    assert_eq!(host.expect_process(&runner, "o-8").await.amount, 42);

    host.advance(Duration::from_secs(29 * 60)).await;
    host.events().expect_none::<PaymentOverdue>();
    host.advance(Duration::from_secs(2 * 60)).await;
    let overdue = host.events().expect_after::<PaymentOverdue>(&placed);
    assert_eq!(overdue.order_id, "o-8");
    assert_eq!(overdue.envelope().correlation_id(), placed.correlation_id());
    // The deadline's command, sent by the process manager, and what its handler published.
    let (sent, _) = host.commands().expect_answered::<CancelOrder>(&Answer::Accepted);
    assert_eq!(sent.envelope.correlation_id(), placed.correlation_id());
    let cancelled = host.events().expect_after::<OrderCancelled>(overdue.envelope());
    assert_eq!(cancelled.order_id, "o-8");
    host.expect_process_ended(&runner, "o-8").await;
    host.shutdown().await;
    quick(started);
}

#[tokio::test(start_paused = true)]
async fn a_paid_order_ends_its_process_before_the_deadline() {
    let started = std::time::Instant::now();
    let (host, runner) = watch_host(true).await;
    host.publish(&order("o-9", "lamp")).await.unwrap();
    host.settle().await;
    host.events().expect::<PaymentTaken>();
    host.expect_process_ended(&runner, "o-9").await;
    host.advance(Duration::from_secs(60 * 60)).await;
    host.events().expect_none::<PaymentOverdue>();
    host.commands().expect_none::<CancelOrder>();
    host.shutdown().await;
    quick(started);
}

/// The message of a failed expectation, from a panic.
fn panic_message(f: impl FnOnce()) -> String {
    let err = std::panic::catch_unwind(AssertUnwindSafe(f)).expect_err("the expectation should fail");
    err.downcast_ref::<String>()
        .cloned()
        .or_else(|| err.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_default()
}

#[tokio::test(start_paused = true)]
async fn a_broken_handler_fails_with_a_message_naming_the_missing_event() {
    let started = std::time::Instant::now();
    let host = TestHost::start(
        TestHost::service("shop")
            .register(Inventory::default())
            .register(Billing { broken: true }),
    )
    .await
    .unwrap();
    host.publish(&order("o-10", "book")).await.unwrap();
    host.settle().await;
    let events = host.events();
    let reserved = events.expect::<StockReserved>();
    let message = panic_message(|| {
        events.expect_after::<PaymentTaken>(reserved.envelope());
    });
    assert!(
        message.contains("expected `PaymentTaken` (billing.paid) published after inventory.reserved `StockReserved`"),
        "{message}"
    );
    assert!(
        message.contains("published after it instead: [] (nothing)"),
        "{message}"
    );
    let message = panic_message(|| {
        events.expect::<PaymentTaken>();
    });
    assert!(
        message.contains("expected `PaymentTaken` (billing.paid) to be published"),
        "{message}"
    );
    assert!(message.contains("order.placed `OrderPlaced`"), "{message}");
    assert!(message.contains("inventory.reserved `StockReserved`"), "{message}");
    let never = order("o-0", "book").to_envelope().unwrap();
    let message = panic_message(|| {
        events.expect_after::<StockReserved>(&never);
    });
    assert!(
        message.contains("was not published, so nothing can be published after it"),
        "{message}"
    );
    host.shutdown().await;
    quick(started);
}

/// Never finishes.
struct Stuck;

#[handlers(domain = "stuck")]
impl Stuck {
    #[subscribe("order.placed")]
    async fn hang(&self, _ctx: &Context, _e: OrderPlaced) -> Result<(), HandlerError> {
        std::future::pending::<()>().await;
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn a_host_that_never_settles_says_what_is_in_flight() {
    let started = std::time::Instant::now();
    let host = TestHost::start(TestHost::service("shop").register(Stuck))
        .await
        .unwrap()
        .settle_limit(Duration::from_secs(2));
    let placed = host.publish(&order("o-11", "book")).await.unwrap();
    let err = host.try_settle().await.expect_err("a hanging handler never settles");
    let text = err.to_string();
    assert!(text.contains("did not settle within 2s"), "{text}");
    assert!(
        text.contains("handler `stuck-hang` on ORDER_EVENTS: being handled [#1 order.placed"),
        "{text}"
    );
    assert!(text.contains(&placed.correlation_id().to_string()), "{text}");
    quick(started);
}

/// The shape of a user's test against a broken billing handler: it fails, naming the missing
/// event.
#[tokio::test(start_paused = true)]
#[should_panic(expected = "expected `PaymentTaken` (billing.paid) published after inventory.reserved `StockReserved`")]
async fn a_test_of_a_broken_handler_fails() {
    let host = TestHost::start(
        TestHost::service("shop")
            .register(Inventory::default())
            .register(Billing { broken: true }),
    )
    .await
    .unwrap();
    let placed = host.publish(&order("o-12", "book")).await.unwrap();
    host.settle().await;
    let events = host.events();
    let reserved = events.expect_after::<StockReserved>(&placed);
    events.expect_after::<PaymentTaken>(reserved.envelope());
}
