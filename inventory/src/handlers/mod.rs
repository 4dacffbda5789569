//! Where inventory handles each topic it consumes
//! ([`shared::topics::InventoryConsumes`]: also what it subscribes to), one
//! file per topic:
//! - `orders/send` → [`orders_send`]: reserve all lines or reject (an
//!   order checking out a cart takes the cart's holds first);
//! - `orders/cancelled` → [`orders_cancelled`]: release, or tombstone;
//! - `carts/hold` → [`carts_hold`]: hold stock for a cart.

mod carts_hold;
mod orders_cancelled;
mod orders_send;

use shared::consumer::{HandleError, Handler, Outcome};
use shared::db::{Backend, DbResult, Tx};
use shared::ids::{CartId, Sku};
use shared::message::{HoldRequest, Inbound, SendOrder};
use shared::topics::{Consumes, InventoryConsumes};

use crate::domain::Reservation;
use crate::store::Stock;

/// Dispatches a decoded message to its topic's handler.
pub struct InventoryHandler {
    /// How long a replaced price is still honoured (`price_grace_secs`).
    pub price_grace_ms: i64,
    /// How long a cart's holds last after its last hold request
    /// (`hold_secs`).
    pub hold_ms: i64,
}

impl InventoryHandler {
    pub fn new(cfg: &crate::Config) -> Self {
        Self { price_grace_ms: (cfg.price_grace_secs * 1000.0) as i64, hold_ms: cfg.hold_ms() }
    }
}

impl Default for InventoryHandler {
    /// With the default `price_grace_secs` and `hold_secs`.
    fn default() -> Self {
        Self::new(&crate::Config::default())
    }
}

impl Handler for InventoryHandler {
    type Batch = Stock;

    fn handle(&self, tx: &mut Tx<'_>, stock: &mut Stock, msg: &Inbound) -> Result<Outcome, HandleError> {
        match InventoryConsumes::from_topic(msg.topic) {
            Some(InventoryConsumes::OrdersSend) => orders_send::handle(tx, stock, msg, self.price_grace_ms),
            Some(InventoryConsumes::OrdersCancelled) => orders_cancelled::handle(tx, stock, msg),
            Some(InventoryConsumes::CartsHold) => carts_hold::handle(tx, stock, msg, self.hold_ms),
            // Not subscribed: only a misrouting broker delivers it.
            None => Ok(Outcome::Ignored(msg.topic.suffix())),
        }
    }

    /// PostgreSQL: before the first message is handled, reads the batch's
    /// reservations in one statement, locks the rows of the carts it
    /// touches (those it holds for, those its orders check out), sorted by
    /// cart, and then every product row the batch may change, sorted by
    /// SKU: the SKUs of its orders, of the reservations its cancellations
    /// release, and of the carts' holds and hold requests. Carts before
    /// products, as the expiry timer takes them, so the two never deadlock.
    /// (SQLite has one writer; there is nothing to order, and a row read
    /// costs no round trip.)
    fn prepare(&self, tx: &mut Tx<'_>, stock: &mut Stock, msgs: &[&Inbound]) -> DbResult<()> {
        if tx.backend() != Backend::Postgres {
            return Ok(());
        }
        let mut orders = Vec::new();
        let mut skus: Vec<Sku> = Vec::new();
        let mut carts: Vec<CartId> = Vec::new();
        // A body that doesn't parse is refused by its handler.
        for msg in msgs {
            match InventoryConsumes::from_topic(msg.topic) {
                Some(InventoryConsumes::OrdersSend) => {
                    orders.push(msg.order_id());
                    if let Ok(order) = msg.body::<SendOrder>() {
                        carts.extend(order.cart_id);
                        skus.extend(order.items.into_iter().map(|l| l.sku));
                    }
                }
                Some(InventoryConsumes::OrdersCancelled) => orders.push(msg.order_id()),
                Some(InventoryConsumes::CartsHold) => {
                    if let Ok(request) = msg.body::<HoldRequest>() {
                        carts.push(CartId::of_subject(msg.order_id()));
                        skus.extend(request.lines.into_iter().map(|l| l.sku));
                    }
                }
                None => {}
            }
        }
        stock.read_reservations(tx, orders.iter().copied())?;
        stock.read_carts(tx, carts.iter().copied())?;
        for cart in carts {
            skus.extend(stock.held_skus(cart));
        }
        for msg in msgs {
            if InventoryConsumes::from_topic(msg.topic) == Some(InventoryConsumes::OrdersCancelled) {
                if let Some(Reservation::Reserved { lines, .. }) = stock.reservation(tx, msg.order_id())? {
                    skus.extend(lines.into_iter().map(|line| line.sku));
                }
            }
        }
        stock.lock(tx, skus.iter())
    }

    fn store(&self, tx: &mut Tx<'_>, stock: Stock) -> DbResult<()> {
        stock.write(tx)
    }
}
