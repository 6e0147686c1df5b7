//! Order fulfilment: the flagship. Four bounded contexts (order, inventory, payment, shipping)
//! that never call each other and talk only through events and commands, using every pattern of
//! the project in one application, tested end to end with `TestHost` (see the tests at the end).
//!
//! ```text
//! storefront ── order.placed (2.0; 1.0 upcast) ─────────▶ checkout (process manager, per order)
//!            ◀─ order.awaiting_payment ─────────────────  starts a 30-minute clock
//!            ── order.payment_submitted ────────────────▶ paid in time: order.checked_out, ends
//!                                                         too late: order.cancelled (deadline)
//! order.checked_out ─▶ fulfil_order (saga)
//!   1 accept_order    publishes order.accepted             ⟲ cancel_order: order.cancelled
//!   2 reserve_stock   ReserveStock ──▶ inventory (answer)  ⟲ release_stock: ReleaseStock
//!   3 charge_payment  ChargePayment ─▶ payment   (Receipt) the pivot: declined -> compensate
//!   4 confirm_order   publishes order.confirmed
//! order.confirmed ─▶ shipping (circuit breaker around a flaky carrier) ─▶ shipping.booked
//! storefront waits (Waiter) for shipping.booked or order.cancelled
//! ```
//!
//! | pattern | where |
//! | --- | --- |
//! | versioned event | `OrderPlaced` 2.0, with the frozen 1.0 of the old storefront upcast by `From` |
//! | cascade | `order.placed` starts the checkout; `order.confirmed` makes shipping book a carrier, which publishes `shipping.booked` |
//! | saga with compensation | `FulfilOrder`: a declined payment releases the stock, then cancels the order (reverse order) |
//! | command with an answer | `ChargePayment` answered with a typed `Receipt` (or rejected when declined), `ReserveStock` (rejected when out of stock), `ReleaseStock` |
//! | process manager with a cancelling deadline | `Checkout`: an order not paid within 30 minutes is cancelled |
//! | waiter | the storefront awaits the payment page, then the parcel or the cancellation |
//! | circuit breaker | `Shipping::book`: `breaker_threshold`/`breaker_cool_down` around the flaky `Carrier` |
//!
//! ```text
//! cargo run --example order_fulfilment                                  # embedded transport
//! NATS_URL=nats://127.0.0.1:4222 cargo run --example order_fulfilment   # NATS JetStream
//! cargo test --example order_fulfilment --features testing              # the TestHost tests
//! cargo run --example order_fulfilment -- --asyncapi > asyncapi.json    # the message contract
//! ```
//!
//! `--asyncapi` prints the shop's message contract as an AsyncAPI 3.0 document, generated from
//! the host's topology and every version of every message (`cim_integrate::asyncapi`); a test
//! validates it against the AsyncAPI 3.0 JSON Schema.

#[path = "support/mod.rs"]
mod support;

use cim_integrate::command::{Command, CommandRejection, CommandResult};
use cim_integrate::handler::HandlerSet;
use cim_integrate::prelude::*;
use cim_integrate::process::ProcessRunner;
use cim_integrate::service::ServiceBuilder;
use cim_integrate::topology::EventRef;
use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{Audit, Error, short};

typed_id! {
    /// An order.
    pub struct OrderId;
}

/// How long a customer has to pay for an order before it is cancelled.
pub const PAY_WITHIN: Duration = Duration::from_secs(30 * 60);
/// A card the payment provider accepts (its test card).
pub const GOOD_CARD: &str = "4242 4242 4242 4242";
/// A card the payment provider declines.
pub const DECLINED_CARD: &str = "4000 0000 0000 0002";
/// How long the saga waits for a command's answer.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

// ---- order: events --------------------------------------------------------------------------

/// A customer placed an order. Version 2.0 added the customer; orders of the old storefront
/// (1.0) are still in the stream and still arrive from its last installations.
#[domain_event(subject = "order.placed", version = "2.0", previous = [OrderPlacedV1])]
#[derive(Debug, Clone, PartialEq)]
pub struct OrderPlaced {
    pub order_id: OrderId,
    pub customer: String,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
}

/// Frozen: the old storefront's payload. Never edit it.
#[domain_event(version = "1.0")]
pub struct OrderPlacedV1 {
    pub order_id: OrderId,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
}

impl From<OrderPlacedV1> for OrderPlaced {
    /// The old storefront had no accounts: its orders are a guest's.
    fn from(v1: OrderPlacedV1) -> Self {
        Self {
            order_id: v1.order_id,
            customer: "guest".into(),
            sku: v1.sku,
            quantity: v1.quantity,
            amount_cents: v1.amount_cents,
        }
    }
}

/// The checkout shows the payment page, with the time left to pay.
#[domain_event(subject = "order.awaiting_payment", version = "1.0")]
#[derive(Debug, Clone)]
pub struct AwaitingPayment {
    pub order_id: OrderId,
    pub amount_cents: u64,
    pub pay_within_secs: u64,
}

/// The customer entered a card on the payment page.
#[domain_event(subject = "order.payment_submitted", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PaymentSubmitted {
    pub order_id: OrderId,
    pub card: String,
}

/// Paid in time: everything fulfilment needs.
#[domain_event(subject = "order.checked_out", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OrderCheckedOut {
    pub order_id: OrderId,
    pub customer: String,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
    pub card: String,
}

#[domain_event(subject = "order.accepted", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OrderAccepted {
    pub order_id: OrderId,
}

#[domain_event(subject = "order.confirmed", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OrderConfirmed {
    pub order_id: OrderId,
    pub customer: String,
    pub sku: String,
    pub quantity: u32,
    /// The payment's receipt.
    pub receipt: String,
}

#[domain_event(subject = "order.cancelled", version = "1.0")]
#[derive(Debug, Clone)]
pub struct OrderCancelled {
    pub order_id: OrderId,
    pub reason: String,
}

// ---- order: the checkout process manager -----------------------------------------------------

/// One order's checkout, from placing it until it is paid (or the time to pay runs out). Its
/// state is persisted per order with compare-and-set; its deadline survives restarts.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct Checkout {
    pub placed: bool,
    pub customer: String,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
}

#[process(name = "checkout", key = order_id)]
impl Checkout {
    async fn placed(&mut self, ctx: &mut ProcessContext, e: OrderPlaced) -> Result<(), HandlerError> {
        *self = Self {
            placed: true,
            customer: e.customer,
            sku: e.sku,
            quantity: e.quantity,
            amount_cents: e.amount_cents,
        };
        // Published (and the deadline stored) only once this state is: a storefront that saw
        // the payment page can rely on the checkout knowing the order.
        ctx.publish(&AwaitingPayment {
            order_id: e.order_id,
            amount_cents: e.amount_cents,
            pay_within_secs: PAY_WITHIN.as_secs(),
        })
        .permanent()?;
        ctx.schedule("pay_by", PAY_WITHIN);
        Ok(())
    }

    async fn payment_submitted(&mut self, ctx: &mut ProcessContext, e: PaymentSubmitted) -> Result<(), HandlerError> {
        if !self.placed {
            // Its checkout has ended (cancelled) or never began: no stock is reserved and nobody
            // is charged. Dead-lettered, for a person to tell the customer.
            return Err(HandlerError::permanent(format!(
                "order {} is not awaiting payment (cancelled, or never placed)",
                e.order_id
            )));
        }
        ctx.publish(&OrderCheckedOut {
            order_id: e.order_id,
            customer: self.customer.clone(),
            sku: self.sku.clone(),
            quantity: self.quantity,
            amount_cents: self.amount_cents,
            card: e.card,
        })
        .permanent()?;
        ctx.end(); // paid in time: the deadline goes with the process
        Ok(())
    }

    /// Nobody paid within `PAY_WITHIN`.
    #[deadline]
    async fn pay_by(&mut self, ctx: &mut ProcessContext, _deadline: Deadline) -> Result<(), HandlerError> {
        let order_id: OrderId = ctx.key().parse().permanent()?;
        let reason = format!("not paid within {} minutes", PAY_WITHIN.as_secs() / 60);
        ctx.publish(&OrderCancelled { order_id, reason }).permanent()?;
        ctx.end();
        Ok(())
    }
}

// ---- order: the fulfilment saga ----------------------------------------------------------------

/// The saga's persisted data: the checked-out order.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Fulfilment {
    pub order_id: OrderId,
    pub customer: String,
    pub sku: String,
    pub quantity: u32,
    pub amount_cents: u64,
    pub card: String,
    /// The payment's receipt, once charged.
    pub receipt: Option<String>,
}

impl From<OrderCheckedOut> for Fulfilment {
    fn from(e: OrderCheckedOut) -> Self {
        Self {
            order_id: e.order_id,
            customer: e.customer,
            sku: e.sku,
            quantity: e.quantity,
            amount_cents: e.amount_cents,
            card: e.card,
            receipt: None,
        }
    }
}

/// Fulfils a checked-out order. It reaches inventory and payment only through commands, whose
/// answers decide whether it goes on or compensates.
pub struct FulfilOrder {
    bus: CommandBus,
}

impl FulfilOrder {
    /// Sends `command` as caused by the order that started the saga, with a message id derived
    /// from the step's idempotency key: a step re-run after a crash re-sends the same id, and the
    /// handler's service answers it from its result cache instead of reserving (or charging)
    /// twice (a re-sent charge gets the first charge's receipt). Returns the command's answer;
    /// a rejection is final (compensate); no answer is transient (the step is retried).
    async fn send<C: Command>(&self, ctx: &StepContext<Fulfilment>, command: &C) -> Result<C::Answer, HandlerError> {
        let scope = format!("{}/command", ctx.idempotency_key());
        let identity = ctx.identity().stable_child(&scope, 0);
        match self.bus.send_with(identity, command, COMMAND_TIMEOUT).await? {
            CommandAck::Accepted(answer) => Ok(answer),
            CommandAck::Rejected { reason } => Err(HandlerError::permanent(reason)),
        }
    }
}

#[saga(data = Fulfilment)] // named `fulfil_order`
impl FulfilOrder {
    #[step(compensate = "cancel_order")]
    async fn accept_order(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        let order_id = ctx.data().order_id;
        ctx.context().publish(&OrderAccepted { order_id }).await?;
        Ok(())
    }

    #[step(compensate = "release_stock")]
    async fn reserve_stock(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        let d = ctx.data();
        let reserve = ReserveStock {
            order_id: d.order_id,
            sku: d.sku.clone(),
            quantity: d.quantity,
        };
        self.send(ctx, &reserve).await
    }

    #[step(
        no_compensation = "the pivot: once the customer is charged the order goes ahead, and the step after it only publishes"
    )]
    async fn charge_payment(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        let d = ctx.data();
        let charge = ChargePayment {
            order_id: d.order_id,
            card: d.card.clone(),
            amount_cents: d.amount_cents,
        };
        let receipt = self.send(ctx, &charge).await?;
        // Kept with the step's completion: the next step reads it.
        ctx.data_mut().receipt = Some(receipt.receipt);
        Ok(())
    }

    #[step(no_compensation = "publishes the confirmation after the pivot")]
    async fn confirm_order(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        let d = ctx.data();
        let confirmed = OrderConfirmed {
            order_id: d.order_id,
            customer: d.customer.clone(),
            sku: d.sku.clone(),
            quantity: d.quantity,
            receipt: d.receipt.clone().unwrap_or_default(),
        };
        ctx.context().publish(&confirmed).await?;
        Ok(())
    }

    async fn release_stock(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        let order_id = ctx.data().order_id;
        self.send(ctx, &ReleaseStock { order_id }).await
    }

    async fn cancel_order(&self, ctx: &mut StepContext<Fulfilment>) -> Result<(), HandlerError> {
        let order_id = ctx.data().order_id;
        let reason = "could not be fulfilled".to_owned();
        ctx.context().publish(&OrderCancelled { order_id, reason }).await?;
        Ok(())
    }
}

// ---- inventory ----------------------------------------------------------------------------------

#[command(subject = "inventory.reserve_stock", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReserveStock {
    pub order_id: OrderId,
    pub sku: String,
    pub quantity: u32,
}

#[command(subject = "inventory.release_stock", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ReleaseStock {
    pub order_id: OrderId,
}

#[domain_event(subject = "inventory.reserved", version = "1.0")]
#[derive(Debug, Clone)]
pub struct StockReserved {
    pub order_id: OrderId,
    pub sku: String,
    pub quantity: u32,
}

#[domain_event(subject = "inventory.released", version = "1.0")]
#[derive(Debug, Clone)]
pub struct StockReleased {
    pub order_id: OrderId,
    pub sku: String,
    pub quantity: u32,
}

/// The warehouse's stock and reservations. (In memory here; a real inventory keeps them in its
/// own store.)
#[derive(Default)]
pub struct Inventory {
    warehouse: Mutex<Warehouse>,
}

#[derive(Default)]
struct Warehouse {
    on_hand: HashMap<String, u32>,
    /// Every reservation made, and whether it was released since.
    reservations: HashMap<OrderId, Reservation>,
}

struct Reservation {
    sku: String,
    quantity: u32,
    released: bool,
}

impl Inventory {
    pub fn with_stock(items: &[(&str, u32)]) -> Self {
        let on_hand = items.iter().map(|(sku, n)| ((*sku).to_owned(), *n)).collect();
        Self {
            warehouse: Mutex::new(Warehouse {
                on_hand,
                ..Warehouse::default()
            }),
        }
    }
}

// Each handler changes the warehouse first and publishes after. A command whose publish failed
// is answered `failed` and sent again by the saga with the same message id: the change is not
// made twice, and the event is published again with the same id (which the stream drops if the
// first publish had landed after all).
#[command(name = "inventory")]
impl Inventory {
    async fn reserve_stock(&self, ctx: &Context, c: ReserveStock) -> CommandResult {
        {
            let mut w = self.warehouse.lock().unwrap();
            let Warehouse { on_hand, reservations } = &mut *w;
            if let Entry::Vacant(slot) = reservations.entry(c.order_id) {
                let left = on_hand.entry(c.sku.clone()).or_default();
                if *left < c.quantity {
                    return Err(CommandRejection::reject(format!(
                        "out of stock: {} {} wanted, {} left",
                        c.quantity, c.sku, left
                    )));
                }
                *left -= c.quantity;
                slot.insert(Reservation {
                    sku: c.sku.clone(),
                    quantity: c.quantity,
                    released: false,
                });
            }
        }
        let reserved = StockReserved {
            order_id: c.order_id,
            sku: c.sku,
            quantity: c.quantity,
        };
        ctx.publish(&reserved).await?;
        Ok(())
    }

    /// Releasing what was never reserved is accepted, with nothing to publish.
    async fn release_stock(&self, ctx: &Context, c: ReleaseStock) -> CommandResult {
        let released = {
            let mut w = self.warehouse.lock().unwrap();
            let Warehouse { on_hand, reservations } = &mut *w;
            reservations.get_mut(&c.order_id).map(|r| {
                if !r.released {
                    r.released = true;
                    *on_hand.entry(r.sku.clone()).or_default() += r.quantity;
                }
                StockReleased {
                    order_id: c.order_id,
                    sku: r.sku.clone(),
                    quantity: r.quantity,
                }
            })
        };
        if let Some(released) = released {
            ctx.publish(&released).await?;
        }
        Ok(())
    }
}

// ---- payment ------------------------------------------------------------------------------------

/// Answered with a [`Receipt`] when the card is charged.
#[command(subject = "payment.charge", version = "1.0", answer = Receipt)]
#[derive(Debug, Clone)]
pub struct ChargePayment {
    pub order_id: OrderId,
    pub card: String,
    pub amount_cents: u64,
}

/// The answer to an accepted `ChargePayment`.
#[command(answer, version = "1.0")]
#[derive(Debug, Clone, PartialEq)]
pub struct Receipt {
    pub receipt: String,
}

#[domain_event(subject = "payment.charged", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PaymentCharged {
    pub order_id: OrderId,
    pub amount_cents: u64,
}

#[domain_event(subject = "payment.declined", version = "1.0")]
#[derive(Debug, Clone)]
pub struct PaymentDeclined {
    pub order_id: OrderId,
    pub reason: String,
}

/// Charges cards (the provider is simulated: one test card is declined).
pub struct Payments;

#[command(name = "payment")]
impl Payments {
    async fn charge(&self, ctx: &Context, c: ChargePayment) -> CommandResult<Receipt> {
        if c.card == DECLINED_CARD {
            let reason = "card declined".to_owned();
            ctx.publish(&PaymentDeclined {
                order_id: c.order_id,
                reason: reason.clone(),
            })
            .await?;
            // A business answer: the saga compensates instead of retrying.
            return Err(CommandRejection::reject(reason));
        }
        ctx.publish(&PaymentCharged {
            order_id: c.order_id,
            amount_cents: c.amount_cents,
        })
        .await?;
        // Named after the command's message id: one receipt per charge.
        Ok(Receipt {
            receipt: format!("R-{}", short(ctx.message_id())),
        })
    }
}

// ---- shipping -----------------------------------------------------------------------------------

#[domain_event(subject = "shipping.booked", version = "1.0")]
#[derive(Debug, Clone)]
pub struct ShipmentBooked {
    pub order_id: OrderId,
    pub carrier: String,
    pub tracking: String,
}

/// The external carrier: its booking API refuses the first `failures` calls.
#[derive(Debug, Default)]
pub struct Carrier {
    failures: u32,
    calls: AtomicU32,
}

impl Carrier {
    /// A carrier that takes every booking.
    pub fn reliable() -> Self {
        Self::default()
    }

    /// A carrier whose booking API is down for its first `failures` calls.
    pub fn failing_first(failures: u32) -> Self {
        Self {
            failures,
            ..Self::default()
        }
    }

    /// How many bookings were attempted.
    pub fn calls(&self) -> u32 {
        self.calls.load(Ordering::SeqCst)
    }

    async fn book(&self, order_id: OrderId, quantity: u32) -> Result<String, std::io::Error> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        if n < self.failures {
            return Err(std::io::Error::other("carrier API unavailable (503)"));
        }
        Ok(format!("PKG-{}-{quantity}", short(order_id)))
    }
}

/// The shipping context: books confirmed orders with the carrier.
pub struct Shipping {
    carrier: Arc<Carrier>,
}

#[handlers(domain = "shipping")]
impl Shipping {
    /// Books a confirmed order with the carrier. A failed call is transient: retried after
    /// `backoff`. Two failures in a row open the breaker: for `breaker_cool_down` the handler is
    /// not run at all (its messages are deferred, not retried, never dead-lettered), then one
    /// probe decides whether it closes again.
    #[subscribe(
        "order.confirmed",
        max_attempts = 20,
        backoff = "100ms",
        breaker_threshold = 2,
        breaker_cool_down = "500ms",
        publishes = [ShipmentBooked]
    )]
    async fn book(&self, ctx: &Context, e: OrderConfirmed) -> Result<(), HandlerError> {
        let tracking = self.carrier.book(e.order_id, e.quantity).await.transient()?;
        ctx.publish(&ShipmentBooked {
            order_id: e.order_id,
            carrier: "Parcel Co".into(),
            tracking,
        })
        .await?;
        Ok(())
    }
}

// ---- the application ------------------------------------------------------------------------------

/// What is stateful across the contexts' handlers: the runners of the saga and the process
/// manager (tests assert on their records) and the carrier (tests count its calls).
pub struct Shop<T: Transport> {
    pub fulfilment: SagaRunner<FulfilOrder, T>,
    pub checkout: ProcessRunner<T, Checkout>,
    pub carrier: Arc<Carrier>,
}

impl<T: Transport> Shop<T> {
    pub async fn open(t: &T, carrier: Carrier) -> Result<Self, Error> {
        let bus = CommandBus::new(t.clone()).timeout(COMMAND_TIMEOUT);
        Ok(Self {
            fulfilment: SagaRunner::builder(t.clone(), FulfilOrder { bus }).build().await?,
            checkout: ProcessRunner::open(t.clone()).await?,
            carrier: Arc::new(carrier),
        })
    }

    /// Every context's handlers in one host. (They could as well be four services in four
    /// processes: nothing here calls across contexts.) `shipping` is the shipping context's
    /// handler set, replaceable in tests.
    pub fn host_with(&self, builder: ServiceBuilder<T>, shipping: impl HandlerSet) -> ServiceBuilder<T> {
        let start = self.fulfilment.start_on(
            "fulfil",
            subject_pattern!("order.checked_out"),
            "OrderCheckedOut",
            OrderCheckedOut::decode,
            |_ctx, e: OrderCheckedOut| Ok((e.order_id.to_string(), Fulfilment::from(e))),
        );
        builder
            // order
            .process(self.checkout.clone())
            .handler("order", start)
            .saga(self.fulfilment.clone())
            // inventory
            .commands(Inventory::with_stock(&[("book", 100), ("lamp", 3)]))
            // payment
            .commands(Payments)
            // shipping
            .register(shipping)
            // What the process manager, the saga and the command handlers publish and send, for
            // the topology and the AsyncAPI document (`--asyncapi`); handlers declare theirs with
            // `publishes = [...]`.
            .describe(|t| {
                for e in [
                    EventRef::of::<AwaitingPayment>(),
                    EventRef::of::<OrderCheckedOut>(),
                    EventRef::of::<OrderCancelled>(),
                ] {
                    t.add_publication("checkout", None, e);
                }
                for e in [
                    EventRef::of::<OrderAccepted>(),
                    EventRef::of::<OrderConfirmed>(),
                    EventRef::of::<OrderCancelled>(),
                ] {
                    t.add_publication("fulfil_order", None, e);
                }
                for c in [
                    command_ref::<ReserveStock>(),
                    command_ref::<ReleaseStock>(),
                    command_ref::<ChargePayment>(),
                ] {
                    t.add_command_sender("fulfil_order", None, c);
                }
                for e in [EventRef::of::<StockReserved>(), EventRef::of::<StockReleased>()] {
                    t.add_publication("inventory", None, e);
                }
                for e in [EventRef::of::<PaymentCharged>(), EventRef::of::<PaymentDeclined>()] {
                    t.add_publication("payment", None, e);
                }
            })
    }

    /// [`host_with`](Self::host_with) the real shipping context.
    pub fn host(&self, builder: ServiceBuilder<T>) -> ServiceBuilder<T> {
        let shipping = Shipping {
            carrier: self.carrier.clone(),
        };
        self.host_with(builder, shipping)
    }
}

/// A command type in the topology: its subject (`commands.` + its own) and type name.
fn command_ref<C: Command>() -> EventRef {
    EventRef::typed(C::subject().as_str().to_owned(), C::TYPE_NAME)
}

/// How an order ended, as the storefront saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// `shipping.booked`, with the carrier's tracking number.
    Shipped { tracking: String },
    /// `order.cancelled`, with the reason.
    Cancelled { reason: String },
}

/// The storefront: places an order, waits for the payment page, pays with `card`, and waits for
/// the parcel or the cancellation. It publishes events and waits for events; it calls nobody.
async fn order_and_pay<T: Transport>(t: &T, card: &str, timeout: Duration) -> Result<Outcome, Error> {
    let order_id = OrderId::new();
    let waiter = Waiter::new(t.clone());
    // Subscribe before publishing, so that no answer can slip past.
    let page = waiter
        .expect::<AwaitingPayment, _>(move |e| e.order_id == order_id)
        .await?;
    let shipped = waiter
        .expect::<ShipmentBooked, _>(move |e| e.order_id == order_id)
        .await?;
    let cancelled = waiter
        .expect::<OrderCancelled, _>(move |e| e.order_id == order_id)
        .await?;

    let placed = OrderPlaced {
        order_id,
        customer: "ada@example.com".into(),
        sku: "book".into(),
        quantity: 2,
        amount_cents: 4_200,
    }
    .to_envelope()?;
    println!("order {} placed; paying with card {card}", short(order_id));
    t.publish_and_wait(placed.clone().into()).await?;
    // Eventual consistency: pay once the checkout has the order (it shows the payment page).
    let page = page.wait(timeout).await?;
    println!(
        "order {}: payment page for {} cents, {} s to pay",
        short(order_id),
        page.event.amount_cents,
        page.event.pay_within_secs
    );
    let submitted = PaymentSubmitted {
        order_id,
        card: card.into(),
    }
    .to_envelope_caused_by(placed.identity())?;
    t.publish_and_wait(submitted.into()).await?;

    let outcome = tokio::select! {
        s = shipped.wait(timeout) => Outcome::Shipped { tracking: s?.event.tracking },
        c = cancelled.wait(timeout) => Outcome::Cancelled { reason: c?.event.reason },
    };
    println!("order {}: {outcome:?}", short(order_id));
    Ok(outcome)
}

/// Runs the shop on `t` and places one order per card; returns how each ended.
async fn run<T: Transport>(t: T, cards: &[&str]) -> Result<Vec<Outcome>, Error> {
    // The carrier's API is down for its first two calls: watch the breaker open and close.
    let shop = Shop::open(&t, Carrier::failing_first(2)).await?;
    let audit = Audit::new(&["order", "inventory", "payment", "shipping"]);
    let service = shop
        .host(Service::builder(t.clone(), "shop"))
        .register(audit)
        .start()
        .await?;

    let mut outcomes = Vec::new();
    for card in cards {
        outcomes.push(order_and_pay(&t, card, Duration::from_secs(30)).await?);
    }
    if let (Some(stats), Some(breaker)) = (
        service.handler_stats("shipping-book"),
        service.breaker_state("shipping-book"),
    ) {
        println!(
            "carrier: {} calls, {} retried, {} deferred while the breaker was open; breaker {breaker:?}",
            shop.carrier.calls(),
            stats.retried,
            stats.deferred,
        );
    }
    service.shutdown(Duration::from_secs(5)).await;
    Ok(outcomes)
}

/// The shop's message contract: an AsyncAPI 3.0 document of its host's topology (who publishes,
/// handles, sends and answers what) and of every version of every message, with its schema.
pub async fn asyncapi() -> Result<serde_json::Value, Error> {
    let t = cim_integrate::transport::memory::MemoryTransport::new();
    let shop = Shop::open(&t, Carrier::failing_first(0)).await?;
    let topology = shop.host(Service::builder(t.clone(), "shop")).topology();
    let doc = cim_integrate::asyncapi::AsyncApi::new("Order fulfilment", "1.0.0")
        .description("Four bounded contexts (order, inventory, payment, shipping) over NATS.")
        .topology(&topology)
        .event::<OrderPlaced>()?
        .event::<AwaitingPayment>()?
        .event::<PaymentSubmitted>()?
        .event::<OrderCheckedOut>()?
        .event::<OrderAccepted>()?
        .event::<OrderConfirmed>()?
        .event::<OrderCancelled>()?
        .event::<StockReserved>()?
        .event::<StockReleased>()?
        .event::<PaymentCharged>()?
        .event::<PaymentDeclined>()?
        .event::<ShipmentBooked>()?
        .command::<ReserveStock>()?
        .command::<ReleaseStock>()?
        .command::<ChargePayment>()?;
    Ok(doc.to_json())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    if std::env::args().any(|a| a == "--asyncapi") {
        println!("{}", serde_json::to_string_pretty(&asyncapi().await?)?);
        return Ok(());
    }
    let transport = AnyTransport::from_env().await?;
    println!("order fulfilment on the {} transport", transport.kind());
    let outcomes = run(transport, &[GOOD_CARD, DECLINED_CARD]).await?;
    // The first order ships; the second's payment is declined: its stock is released and the
    // order cancelled, in that order.
    match outcomes.as_slice() {
        [Outcome::Shipped { .. }, Outcome::Cancelled { .. }] => Ok(()),
        other => Err(format!("unexpected outcomes: {other:?}").into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The contract is a valid AsyncAPI 3.0 document (against the specification's own JSON
    /// Schema) that names every channel, the command replies and every message version.
    #[tokio::test]
    async fn the_asyncapi_document_is_valid_and_complete() {
        let doc = asyncapi().await.expect("document");
        let spec: serde_json::Value = serde_json::from_str(include_str!("../tests/fixtures/asyncapi/3.0.0.json"))
            .expect("the AsyncAPI 3.0.0 schema");
        let validator = jsonschema::draft7::new(&spec).expect("a valid JSON Schema");
        let errors: Vec<String> = validator
            .iter_errors(&doc)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(
            errors.is_empty(),
            "invalid AsyncAPI 3.0 document:\n{}",
            errors.join("\n")
        );
        // The validator does reject what 3.0 forbids (2.x's `publish` action, a missing address).
        let mut broken = doc.clone();
        let first = broken["operations"]
            .as_object_mut()
            .expect("operations")
            .values_mut()
            .next();
        first.expect("an operation")["action"] = serde_json::json!("publish");
        broken["channels"]["order_placed"]["address"] = serde_json::json!(42);
        assert!(validator.iter_errors(&broken).count() >= 2);
        // Both versions of the versioned event, with their schemas.
        let messages = &doc["components"]["messages"];
        assert_eq!(
            messages["OrderPlaced_v1_0"]["payload"]["properties"]["version"]["const"],
            "1.0"
        );
        assert_eq!(
            messages["OrderPlaced_v2_0"]["payload"]["properties"]["version"]["const"],
            "2.0"
        );
        assert_eq!(doc["channels"]["order_placed"]["address"], "order.placed");
        // The command with an answer: handled by payment, replied with a Receipt.
        let ops = doc["operations"].as_object().expect("operations");
        let charge = ops
            .iter()
            .find(|(id, op)| id.contains("handles") && op["channel"]["$ref"] == "#/channels/commands_payment_charge")
            .map(|(_, op)| op)
            .expect("payment handles payment.charge");
        assert_eq!(charge["action"], "receive");
        assert_eq!(
            charge["reply"]["messages"][0]["$ref"],
            "#/channels/command_reply/messages/Receipt_reply"
        );
        assert!(messages["Receipt_v1_0"]["payload"].is_object());
        // Who publishes what: the saga's declared events and the subscriptions.
        assert!(
            ops.keys().any(|id| id.contains("receives_order_checked_out")),
            "{:?}",
            ops.keys()
        );
        let send = &ops["fulfil_order_sends_commands_payment_charge"];
        assert_eq!(send["action"], "send");
        assert_eq!(
            send["reply"]["messages"][0]["$ref"],
            "#/channels/command_reply/messages/Receipt_reply"
        );
    }

    use cim_integrate::breaker::BreakerState;
    use cim_integrate::saga::SagaEventKind::{
        Compensated, Compensating, Started, StepCompensated, StepCompleted, StepFailed,
    };
    use cim_integrate::saga::StepState;
    use cim_integrate::testing::{Answer, TestHost};
    use cim_integrate::transport::memory::MemoryTransport;

    /// The point of the host: the whole shop, end to end, in milliseconds of wall time.
    fn quick(started: std::time::Instant) {
        let took = started.elapsed();
        assert!(took < Duration::from_secs(1), "took {took:?}");
    }

    /// The shop in a test host, with the shipping context `shipping` makes.
    async fn shop_with<S: HandlerSet>(
        carrier: Carrier,
        shipping: impl FnOnce(Arc<Carrier>) -> S,
    ) -> (TestHost, Shop<MemoryTransport>) {
        let builder = TestHost::service("shop");
        let shop = Shop::open(builder.transport(), carrier).await.unwrap();
        let builder = shop.host_with(builder, shipping(shop.carrier.clone()));
        (TestHost::start(builder).await.unwrap(), shop)
    }

    async fn shop(carrier: Carrier) -> (TestHost, Shop<MemoryTransport>) {
        shop_with(carrier, |carrier| Shipping { carrier }).await
    }

    fn order(order_id: OrderId, sku: &str, quantity: u32) -> OrderPlaced {
        OrderPlaced {
            order_id,
            customer: "ada@example.com".into(),
            sku: sku.into(),
            quantity,
            amount_cents: 4_200,
        }
    }

    /// The customer places an order and pays with `card` once the payment page is up; returns
    /// the placed order's envelope.
    async fn place_and_pay(host: &TestHost, order_id: OrderId, card: &str) -> Envelope {
        place_and_pay_for(host, order(order_id, "book", 2), card).await
    }

    async fn place_and_pay_for(host: &TestHost, order: OrderPlaced, card: &str) -> Envelope {
        let order_id = order.order_id;
        let placed = host.publish(&order).await.unwrap();
        host.settle().await;
        host.events().expect_after::<AwaitingPayment>(&placed);
        let pay = PaymentSubmitted {
            order_id,
            card: card.into(),
        };
        host.publish_caused_by(placed.identity(), &pay).await.unwrap();
        host.settle().await;
        placed
    }

    /// What a shipped order looks like: each event caused by the one before, in one
    /// conversation, ending with the carrier's booking.
    fn expect_shipped(host: &TestHost, placed: &Envelope) -> String {
        let events = host.events();
        let checked_out = events.expect_after::<OrderCheckedOut>(placed);
        let reserved = events.expect_after::<StockReserved>(checked_out.envelope());
        let charged = events.expect_after::<PaymentCharged>(reserved.envelope());
        let confirmed = events.expect_after::<OrderConfirmed>(charged.envelope());
        let booked = events.expect_after::<ShipmentBooked>(confirmed.envelope());
        assert!(booked.published.is_caused_by(confirmed.envelope()));
        assert_eq!(booked.envelope().correlation_id(), placed.correlation_id());
        booked.tracking.clone()
    }

    #[tokio::test(start_paused = true)]
    async fn a_paid_order_is_reserved_charged_and_shipped() {
        let started = std::time::Instant::now();
        let (host, shop) = shop(Carrier::reliable()).await;
        let order_id = OrderId::new();
        let placed = place_and_pay(&host, order_id, GOOD_CARD).await;

        let tracking = expect_shipped(&host, &placed);
        assert!(tracking.starts_with("PKG-"), "{tracking}");
        let events = host.events().correlated(placed.correlation_id());
        events.expect_types(&[
            "OrderPlaced",
            "AwaitingPayment",
            "PaymentSubmitted",
            "OrderCheckedOut",
            "OrderAccepted",
            "StockReserved",
            "PaymentCharged",
            "OrderConfirmed",
            "ShipmentBooked",
        ]);
        // The commands the saga sent, answered in order.
        let commands = host.commands();
        commands.expect_answered::<ReserveStock>(&Answer::Accepted);
        let (charged, _) = commands.expect_answered::<ChargePayment>(&Answer::Accepted);
        commands.expect_none::<ReleaseStock>();
        // The charge's typed answer, carried by the saga into the confirmation.
        let receipt = charged.answer_as::<Receipt>().expect("a receipt");
        assert!(receipt.receipt.starts_with("R-"), "{receipt:?}");
        assert_eq!(host.events().expect::<OrderConfirmed>().receipt, receipt.receipt);
        let id = order_id.to_string();
        host.saga(&shop.fulfilment, &id).await.then_completed().then_steps(&[
            ("accept_order", StepState::Completed),
            ("reserve_stock", StepState::Completed),
            ("charge_payment", StepState::Completed),
            ("confirm_order", StepState::Completed),
        ]);
        // Paid in time: the checkout ended, and its deadline with it.
        host.expect_process_ended(&shop.checkout, &id).await;
        host.advance(PAY_WITHIN * 2).await;
        host.events().expect_none::<OrderCancelled>();
        host.dead_letters().expect_none();
        host.shutdown().await;
        quick(started);
    }

    #[tokio::test(start_paused = true)]
    async fn a_declined_payment_releases_the_stock_then_cancels_the_order() {
        let started = std::time::Instant::now();
        let (host, shop) = shop(Carrier::reliable()).await;
        let order_id = OrderId::new();
        let placed = place_and_pay(&host, order_id, DECLINED_CARD).await;

        let events = host.events();
        let declined = events.expect_after::<PaymentDeclined>(&placed);
        assert_eq!(declined.reason, "card declined");
        // Compensation in reverse: the stock (step 2) first, then the order (step 1).
        events
            .after(declined.envelope())
            .expect_types(&["StockReleased", "OrderCancelled"]);
        let released = events.expect_after::<StockReleased>(declined.envelope());
        assert_eq!((released.sku.as_str(), released.quantity), ("book", 2));
        let cancelled = events.expect_after::<OrderCancelled>(released.envelope());
        assert_eq!(cancelled.reason, "could not be fulfilled");
        events.expect_none::<OrderConfirmed>();
        events.expect_none::<ShipmentBooked>();

        // The commands, in the order they were answered: the rejection is the saga's cue.
        let commands = host.commands();
        let answered: Vec<(String, Answer)> = commands
            .all()
            .iter()
            .map(|c| (c.envelope.event_type().unwrap_or_default().to_owned(), c.answer.clone()))
            .collect();
        assert_eq!(
            answered,
            [
                ("ReserveStock".to_owned(), Answer::Accepted),
                ("ChargePayment".to_owned(), Answer::Rejected("card declined".into())),
                ("ReleaseStock".to_owned(), Answer::Accepted),
            ],
            "{commands}"
        );
        host.saga(&shop.fulfilment, &order_id.to_string())
            .await
            .then_compensated("charge_payment")
            .then_steps(&[
                ("accept_order", StepState::Compensated),
                ("reserve_stock", StepState::Compensated),
                ("charge_payment", StepState::Failed),
                ("confirm_order", StepState::Pending),
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
            ]);
        host.dead_letters().expect_none();
        host.shutdown().await;
        quick(started);
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_out_of_stock_is_cancelled_and_nobody_is_charged() {
        let started = std::time::Instant::now();
        let (host, shop) = shop(Carrier::reliable()).await;
        let order_id = OrderId::new();
        // Three lamps are in stock.
        let placed = place_and_pay_for(&host, order(order_id, "lamp", 5), GOOD_CARD).await;

        // Inventory's answer is a rejection with its reason: the saga compensates at once.
        let commands = host.commands();
        commands.expect_answered::<ReserveStock>(&Answer::Rejected("out of stock: 5 lamp wanted, 3 left".into()));
        commands.expect_none::<ChargePayment>();
        commands.expect_none::<ReleaseStock>();
        host.saga(&shop.fulfilment, &order_id.to_string())
            .await
            .then_compensated("reserve_stock");
        let events = host.events();
        let accepted = events.expect_after::<OrderAccepted>(&placed);
        events.after(accepted.envelope()).expect_types(&["OrderCancelled"]);
        host.dead_letters().expect_none();
        host.shutdown().await;
        quick(started);
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_not_paid_in_time_is_cancelled() {
        let started = std::time::Instant::now();
        let (host, shop) = shop(Carrier::reliable()).await;
        let order_id = OrderId::new();
        let id = order_id.to_string();
        let placed = host.publish(&order(order_id, "book", 2)).await.unwrap();
        host.settle().await;
        host.events().expect_after::<AwaitingPayment>(&placed);
        assert_eq!(host.expect_process(&shop.checkout, &id).await.quantity, 2);

        // The customer walks away. A minute before the deadline nothing has happened ...
        host.advance(PAY_WITHIN - Duration::from_secs(60)).await;
        host.events().expect_none::<OrderCancelled>();
        // ... and at the deadline the checkout cancels the order and ends.
        host.advance(Duration::from_secs(61)).await;
        let cancelled = host.events().expect_one::<OrderCancelled>();
        assert_eq!(cancelled.reason, "not paid within 30 minutes");
        assert_eq!(cancelled.envelope().correlation_id(), placed.correlation_id());
        host.expect_process_ended(&shop.checkout, &id).await;

        // A payment that comes too late starts nothing: no stock reserved, nobody charged. It
        // is dead-lettered, with the reason, for a person to follow up.
        let late = PaymentSubmitted {
            order_id,
            card: GOOD_CARD.into(),
        };
        host.publish_caused_by(placed.identity(), &late).await.unwrap();
        host.settle().await;
        let letter = host.dead_letters().expect::<PaymentSubmitted>();
        assert!(letter.reason.contains("is not awaiting payment"), "{letter}");
        host.events().expect_none::<OrderCheckedOut>();
        assert!(host.commands().all().is_empty(), "{}", host.commands());
        host.shutdown().await;
        quick(started);
    }

    #[tokio::test(start_paused = true)]
    async fn the_breaker_holds_off_a_failing_carrier_and_the_parcel_still_ships() {
        let started = std::time::Instant::now();
        let (host, shop) = shop(Carrier::failing_first(2)).await;
        let order_id = OrderId::new();
        let placed = place_and_pay(&host, order_id, GOOD_CARD).await;

        // Settled, but not shipped: the first call failed, and the retry waits on its timer.
        host.events().expect_none::<ShipmentBooked>();
        assert_eq!(shop.carrier.calls(), 1);
        // The retry fails too: two failures in a row open the breaker, and the booking waits
        // out its cool-down.
        host.advance(Duration::from_millis(150)).await;
        host.events().expect_none::<ShipmentBooked>();
        assert_eq!(shop.carrier.calls(), 2);
        let service = host.running().unwrap();
        assert_eq!(service.breaker_state("shipping-book"), Some(BreakerState::Open));
        // After the cool-down one probe books the parcel, and the breaker closes.
        host.advance(Duration::from_secs(1)).await;
        expect_shipped(&host, &placed);
        assert_eq!(shop.carrier.calls(), 3);
        let service = host.running().unwrap();
        assert_eq!(service.breaker_state("shipping-book"), Some(BreakerState::Closed));
        let stats = service.handler_stats("shipping-book").unwrap();
        assert_eq!((stats.succeeded, stats.dead_lettered), (1, 0), "{stats:?}");
        host.dead_letters().expect_none();
        host.shutdown().await;
        quick(started);
    }

    #[tokio::test(start_paused = true)]
    async fn an_order_of_the_old_storefront_is_upcast() {
        let started = std::time::Instant::now();
        let (host, shop) = shop(Carrier::reliable()).await;
        let order_id = OrderId::new();
        // A 1.0 payload, as the old storefront still publishes it.
        let v1 =
            format!(r#"{{"version":"1.0","order_id":"{order_id}","sku":"lamp","quantity":1,"amount_cents":1999}}"#);
        let placed = host
            .publish_envelope(Envelope::root(subject!("order.placed"), v1).typed("OrderPlaced", "1.0"))
            .await
            .unwrap();
        host.settle().await;
        host.events().expect_after::<AwaitingPayment>(&placed);
        let checkout = host.expect_process(&shop.checkout, &order_id.to_string()).await;
        assert_eq!(
            (checkout.customer.as_str(), checkout.sku.as_str(), checkout.amount_cents),
            ("guest", "lamp", 1999)
        );
        host.shutdown().await;
        quick(started);
    }

    /// A shipping context whose handler books the parcel but forgets to publish
    /// `shipping.booked`: the bug a test must catch.
    struct BrokenShipping {
        carrier: Arc<Carrier>,
    }

    #[handlers(domain = "shipping")]
    impl BrokenShipping {
        #[subscribe("order.confirmed")]
        async fn book(&self, _ctx: &Context, e: OrderConfirmed) -> Result<(), HandlerError> {
            self.carrier.book(e.order_id, e.quantity).await.transient()?;
            Ok(())
        }
    }

    /// The happy-path scenario against the broken shipping handler: it fails, and the message
    /// names the event that is missing and what it should have followed.
    #[tokio::test(start_paused = true)]
    #[should_panic(
        expected = "expected `ShipmentBooked` (shipping.booked) published after order.confirmed `OrderConfirmed`"
    )]
    async fn a_broken_shipping_handler_fails_the_scenario_naming_the_missing_event() {
        let (host, _shop) = shop_with(Carrier::reliable(), |carrier| BrokenShipping { carrier }).await;
        let placed = place_and_pay(&host, OrderId::new(), GOOD_CARD).await;
        expect_shipped(&host, &placed);
    }

    #[tokio::test]
    async fn runs_on_the_embedded_transport() {
        let outcomes = run(MemoryTransport::new(), &[GOOD_CARD, DECLINED_CARD])
            .await
            .expect("run");
        assert!(matches!(outcomes[0], Outcome::Shipped { .. }), "{outcomes:?}");
        assert_eq!(
            outcomes[1],
            Outcome::Cancelled {
                reason: "could not be fulfilled".into()
            }
        );
    }

    #[tokio::test]
    async fn ships_on_nats_with_identity_headers() {
        support::run_on_nats_checking_headers(
            &["order", "inventory", "payment", "shipping", "commands"],
            |t| async move {
                let outcomes = run(t, &[GOOD_CARD]).await?;
                assert!(matches!(outcomes[0], Outcome::Shipped { .. }), "{outcomes:?}");
                Ok(())
            },
        )
        .await;
    }
}
