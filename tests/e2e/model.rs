//! Model-based test: proptest generates random interleavings of place,
//! cancel, cart changes and checkouts, deliver (in any order), duplicate,
//! crash-before-ack (applied but delivered again), relay, restart,
//! follow-up and hold expiry, and drives the services'
//! real handlers through the real consumer, with a fake bus the test
//! controls. After every step the audit's invariants hold; after draining,
//! every order is settled and nothing is in flight.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;
use shared::config::DbConfig;
use shared::consumer::{Consumer, ParkingPolicy, Stats};
use shared::db::Db;
use shared::ids::{CartId, Email, IdempotencyKey, OrderId, Sku};
use shared::message::{CancelOrder, CartCommand, Checkout, Envelope, LinePrice};
use shared::outbox::Wakeup;
use shared::topics::{Topic, DEFAULT_PREFIX};

use crate::helpers::send_body_at;

const SKUS: [&str; 2] = ["LOW-STOCK-1", "SOME-STOCK-2"];
const CATALOG: &str = r#"[
  {"sku": "LOW-STOCK-1", "name": "a", "description": "a", "price_cents": 100, "currency": "EUR", "stock": 3},
  {"sku": "SOME-STOCK-2", "name": "b", "description": "b", "price_cents": 200, "currency": "EUR", "stock": 5}
]"#;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Node {
    Inventory,
    Order,
}

#[derive(Debug, Clone)]
enum Op {
    /// A customer places (or re-sends) order `order`.
    Place {
        order: u8,
        sku: u8,
        qty: u8,
    },
    Cancel {
        order: u8,
    },
    /// A customer sets a line of cart `cart` (created on first use); 0
    /// removes it.
    CartSet {
        cart: u8,
        sku: u8,
        qty: u8,
    },
    /// A customer checks cart `cart` out, at the version the order service
    /// has now (as the front reads it).
    CartCheckout {
        cart: u8,
    },
    /// Deliver `batch` in-flight messages to `to`, from the `pick`-th on
    /// (any order), in one consumer transaction. With `again`, they stay
    /// in flight: duplicates, or a crash after commit and before ack (the
    /// broker redelivers).
    Deliver {
        to: Node,
        pick: usize,
        again: bool,
        batch: usize,
    },
    /// The node's outbox relay publishes what is unsent.
    Relay {
        from: Node,
    },
    /// The node restarts: its database is reopened, nothing else survives.
    Restart {
        node: Node,
    },
    /// The order service's follow-up and parking timers fire.
    Timers,
    /// Every hold runs out: inventory's expiry timer fires as if their
    /// time had come.
    Expire,
}

fn op() -> impl Strategy<Value = Op> {
    let node = prop_oneof![Just(Node::Inventory), Just(Node::Order)];
    prop_oneof![
        3 => (0u8..5, 0u8..2, 1u8..4).prop_map(|(order, sku, qty)| Op::Place { order, sku, qty }),
        2 => (0u8..5).prop_map(|order| Op::Cancel { order }),
        2 => (0u8..3, 0u8..2, 0u8..4).prop_map(|(cart, sku, qty)| Op::CartSet { cart, sku, qty }),
        1 => (0u8..3).prop_map(|cart| Op::CartCheckout { cart }),
        8 => (node.clone(), any::<usize>(), prop::bool::weighted(0.2), prop_oneof![3 => Just(1usize), 1 => 2usize..5])
            .prop_map(|(to, pick, again, batch)| Op::Deliver { to, pick, again, batch }),
        3 => node.clone().prop_map(|from| Op::Relay { from }),
        1 => node.prop_map(|node| Op::Restart { node }),
        1 => Just(Op::Timers),
        1 => Just(Op::Expire),
    ]
}

struct Model {
    dir: tempfile::TempDir,
    inventory: (Db, Consumer<inventory::handlers::InventoryHandler>),
    order: (Db, Consumer<order::handlers::OrderHandler>),
    to_inventory: Vec<(String, Bytes)>,
    to_order: Vec<(String, Bytes)>,
    orders: Vec<OrderId>,
    carts: Vec<CartId>,
}

async fn open_inventory(dir: &std::path::Path) -> (Db, Consumer<inventory::handlers::InventoryHandler>) {
    let db = Db::open(
        &DbConfig {
            path: dir.join("inventory.db"),
            synchronous: shared::config::Synchronous::Off,
            ..Default::default()
        },
        &inventory::store::migrations(),
    )
    .await
    .unwrap();
    inventory::store::seed_if_empty(&db, &serde_json::from_str::<Vec<_>>(CATALOG).unwrap()).await.unwrap();
    let consumer = Consumer::new(
        "inventory",
        db.clone(),
        DEFAULT_PREFIX,
        inventory::handlers::InventoryHandler::default(),
        Wakeup::default(),
        Default::default(),
        ParkingPolicy { retry_ms: 0, horizon_ms: i64::MAX / 2 },
    );
    (db, consumer)
}

async fn open_order(dir: &std::path::Path) -> (Db, Consumer<order::handlers::OrderHandler>) {
    let db = Db::open(
        &DbConfig { path: dir.join("order.db"), synchronous: shared::config::Synchronous::Off, ..Default::default() },
        &order::store::migrations(),
    )
    .await
    .unwrap();
    let consumer = Consumer::new(
        "order",
        db.clone(),
        DEFAULT_PREFIX,
        order::handlers::OrderHandler { follow_up_ms: 0 },
        Wakeup::default(),
        std::sync::Arc::new(Stats::default()),
        ParkingPolicy { retry_ms: 0, horizon_ms: i64::MAX / 2 },
    );
    (db, consumer)
}

/// The services' own row types as the audit reads them (over HTTP, JSON).
fn convert<T: serde::de::DeserializeOwned>(v: impl serde::Serialize) -> T {
    serde_json::from_value(serde_json::to_value(v).unwrap()).unwrap()
}

fn order_id(i: u8) -> OrderId {
    OrderId(uuid::Uuid::from_u128(0x1000 + u128::from(i)))
}

fn cart_id(i: u8) -> CartId {
    CartId(uuid::Uuid::from_u128(0xca47_0000_0000_0000_0000_0000_0000_0000 + u128::from(i)))
}

impl Model {
    async fn new() -> Model {
        let dir = tempfile::tempdir().unwrap();
        let inventory = open_inventory(dir.path()).await;
        let order = open_order(dir.path()).await;
        Model { dir, inventory, order, to_inventory: vec![], to_order: vec![], orders: vec![], carts: vec![] }
    }

    fn route(&mut self, topic: Topic, payload: Bytes) {
        let path = topic.path(DEFAULT_PREFIX);
        match topic {
            Topic::OrdersSend => {
                self.to_inventory.push((path.clone(), payload.clone()));
                self.to_order.push((path, payload));
            }
            Topic::OrdersCancelled | Topic::CartsHold => self.to_inventory.push((path, payload)),
            Topic::OrdersCancel
            | Topic::InStock
            | Topic::OutOfStock
            | Topic::Released
            | Topic::CartsCommand
            | Topic::Held => self.to_order.push((path, payload)),
            Topic::OrdersStatus | Topic::CartsStatus => {}
        }
    }

    async fn step(&mut self, op: &Op) {
        match *op {
            Op::Place { order, sku, qty } => {
                let id = order_id(order);
                if !self.orders.contains(&id) {
                    self.orders.push(id);
                }
                // The same key always carries the same body (the front turns
                // a different body into a 409 before it reaches the bus).
                let _ = (sku, qty);
                let (sku, qty) = (SKUS[usize::from(order) % 2], i64::from(order % 3) + 1);
                let price = if sku == SKUS[0] { 100 } else { 200 };
                let env = Envelope::new(Topic::OrdersSend, id, send_body_at(sku, qty, &format!("fp-{order}"), price));
                self.route(Topic::OrdersSend, env.to_json().into());
            }
            Op::Cancel { order } => {
                let env = Envelope::new(Topic::OrdersCancel, order_id(order), CancelOrder::default());
                self.route(Topic::OrdersCancel, env.to_json().into());
            }
            Op::CartSet { cart, sku, qty } => {
                let id = cart_id(cart);
                if !self.carts.contains(&id) {
                    self.carts.push(id);
                    let env = Envelope::new(Topic::CartsCommand, id.subject(), CartCommand::Create);
                    self.route(Topic::CartsCommand, env.to_json().into());
                }
                let set =
                    CartCommand::SetItem { sku: Sku::parse(SKUS[usize::from(sku)]).unwrap(), quantity: qty.into() };
                let env = Envelope::new(Topic::CartsCommand, id.subject(), set);
                self.route(Topic::CartsCommand, env.to_json().into());
            }
            Op::CartCheckout { cart } => {
                let id = cart_id(cart);
                let Some(seen) = order::carts::store::read(&self.order.0.reader, id).await.unwrap() else { return };
                let prices = SKUS
                    .iter()
                    .zip([100, 200])
                    .map(|(sku, unit_price_cents)| LinePrice { sku: Sku::parse(sku).unwrap(), unit_price_cents })
                    .collect();
                let checkout = Checkout {
                    version: seen.version,
                    order_id: OrderId::for_checkout(id, &IdempotencyKey::parse("checkout").unwrap()),
                    customer_email: Email::parse("cart@example.com").unwrap(),
                    currency: "EUR".into(),
                    prices,
                    fingerprint: format!("fp-cart-{cart}"),
                };
                let env = Envelope::new(Topic::CartsCommand, id.subject(), CartCommand::Checkout(checkout));
                self.route(Topic::CartsCommand, env.to_json().into());
            }
            Op::Deliver { to, pick, again, batch } => {
                let queue = if to == Node::Inventory { &mut self.to_inventory } else { &mut self.to_order };
                let mut msgs = Vec::new();
                for k in 0..batch {
                    if queue.is_empty() {
                        break;
                    }
                    let i = pick.wrapping_add(k) % queue.len();
                    msgs.push(if again { queue[i].clone() } else { queue.remove(i) });
                }
                if msgs.is_empty() {
                    return;
                }
                match to {
                    Node::Inventory => self.inventory.1.apply(msgs).await.unwrap(),
                    Node::Order => self.order.1.apply(msgs).await.unwrap(),
                };
            }
            Op::Relay { from } => {
                let db = if from == Node::Inventory { self.inventory.0.clone() } else { self.order.0.clone() };
                let unsent = shared::outbox::unsent(&db, 0, 10_000).await.unwrap();
                for u in &unsent {
                    let topic = Topic::ALL.into_iter().find(|t| t.suffix() == u.topic).unwrap();
                    self.route(topic, u.payload.clone().into());
                }
                let seqs: Vec<i64> = unsent.iter().map(|u| u.seq).collect();
                shared::outbox::mark_sent(&db, seqs).await.unwrap();
            }
            Op::Restart { node } => match node {
                Node::Inventory => {
                    self.inventory.0.close().await;
                    self.inventory = open_inventory(self.dir.path()).await;
                }
                Node::Order => {
                    self.order.0.close().await;
                    self.order = open_order(self.dir.path()).await;
                }
            },
            Op::Timers => {
                order::follow_up::pass(&self.order.0, 0).await.unwrap();
                self.order.1.retry_due_parked().await.unwrap();
            }
            Op::Expire => {
                inventory::expiry::pass(&self.inventory.0, i64::MAX / 4, 10_000).await.unwrap();
            }
        }
    }

    async fn books(&self) -> public_front::audit::Books {
        let stats = |db: Db| async move {
            let backlog = shared::outbox::backlog(&db.reader).await.unwrap();
            public_front::audit::NodeStatsLite {
                outbox: public_front::audit::OutboxLite {
                    unsent: backlog.unsent,
                    oldest_unsent_age_ms: backlog.oldest_unsent_age_ms,
                },
                parked: shared::parking::count(&db.reader).await.unwrap(),
                dead_letters: 0,
            }
        };
        public_front::audit::Books {
            stock: convert(inventory::store::stock(&self.inventory.0.reader).await.unwrap()),
            orders: convert(order::store::list(&self.order.0.reader, None, 10_000).await.unwrap()),
            reservations: convert(
                inventory::store::list_reservations(&self.inventory.0.reader, None, 10_000).await.unwrap(),
            ),
            release_chases: convert(order::store::release_chases(&self.order.0.reader, None, 10_000).await.unwrap()),
            holds: inventory::store::list_holds(&self.inventory.0.reader, None, 10_000).await.unwrap(),
            inventory: stats(self.inventory.0.clone()).await,
            order: stats(self.order.0.clone()).await,
        }
    }

    async fn check(&self, when: &str) -> public_front::audit::Report {
        let report =
            public_front::audit::check(&self.books().await, shared::clock::now_ms(), Duration::from_secs(3600));
        assert!(report.passed, "invariant broken {when}:\n{report}");
        report
    }

    /// Delivers everything, relays everything and fires the timers until
    /// nothing moves any more.
    async fn drain(&mut self) -> public_front::audit::Report {
        for _ in 0..50 {
            for from in [Node::Inventory, Node::Order] {
                self.step(&Op::Relay { from }).await;
            }
            while !self.to_inventory.is_empty() || !self.to_order.is_empty() {
                for to in [Node::Inventory, Node::Order] {
                    self.step(&Op::Deliver { to, pick: 0, again: false, batch: 1 }).await;
                }
                for from in [Node::Inventory, Node::Order] {
                    self.step(&Op::Relay { from }).await;
                }
            }
            let report = self.check("while draining").await;
            if report.in_flight.is_empty() && report.parked == 0 {
                return report;
            }
            self.step(&Op::Timers).await;
        }
        panic!("did not converge:\n{}", self.check("at the end").await);
    }
}

/// An `in-stock` ahead of its order in the same batch (the broker reorders
/// across topics under load) applies once the order is in, within the
/// batch: counted as parked and unparked, nothing left in the parked table.
#[tokio::test]
async fn in_stock_ahead_of_its_order_in_one_batch_applies_without_parking() {
    let mut model = Model::new().await;
    model.step(&Op::Place { order: 1, sku: 0, qty: 1 }).await;
    let send = model.to_order.remove(0);
    model.step(&Op::Deliver { to: Node::Inventory, pick: 0, again: false, batch: 1 }).await;
    model.step(&Op::Relay { from: Node::Inventory }).await;
    let in_stock = model.to_order.remove(0);
    assert!(in_stock.0.ends_with("inventory/in-stock"), "{}", in_stock.0);

    let tally = model.order.1.apply(vec![in_stock, send]).await.unwrap();
    assert_eq!((tally.applied, tally.parked, tally.unparked), (1, 1, 1), "{tally:?}");
    assert_eq!(shared::parking::count(&model.order.0.reader).await.unwrap(), 0);
    let order = order::store::read(&model.order.0.reader, order_id(1)).await.unwrap().unwrap();
    assert_eq!(order.status.as_str(), "confirmed");
    let events: Vec<String> = shared::timeline::for_order(&model.order.0.reader, &order_id(1).to_string())
        .await
        .unwrap()
        .into_iter()
        .filter(|e| e.topic == "inventory/in-stock")
        .map(|e| e.event)
        .collect();
    assert_eq!(events, ["parked", "unparked"]);
    model.check("after the batch").await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn any_interleaving_keeps_the_books_and_converges(ops in prop::collection::vec(op(), 1..80)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let mut model = Model::new().await;
            for (i, op) in ops.iter().enumerate() {
                model.step(op).await;
                model.check(&format!("after step {i} ({op:?})")).await;
            }
            let report = model.drain().await;
            // Every order placed, and every checked-out cart's, exists and
            // is settled.
            let mut checked_out = 0;
            for id in &model.carts {
                let cart = order::carts::store::read(&model.order.0.reader, *id).await.unwrap();
                checked_out += usize::from(cart.is_some_and(|c| c.order_id.is_some()));
            }
            prop_assert_eq!(report.orders, model.orders.len() + checked_out);
            prop_assert!(!report.orders_by_status.contains_key("pending"), "{}", report);
            Ok(())
        })?;
    }
}
