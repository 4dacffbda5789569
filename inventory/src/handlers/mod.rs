//! Where inventory handles each topic it consumes
//! ([`shared::topics::InventoryConsumes`]: also what it subscribes to), one
//! file per topic:
//! - `orders/send` → [`orders_send`]: reserve all lines or reject;
//! - `orders/cancelled` → [`orders_cancelled`]: release, or tombstone.

mod orders_cancelled;
mod orders_send;

use shared::consumer::{HandleError, Handler, Outcome};
use shared::db::{Backend, DbResult, Tx};
use shared::ids::Sku;
use shared::message::{Inbound, SendOrder};
use shared::topics::{Consumes, InventoryConsumes};

use crate::domain::Reservation;
use crate::store::Stock;

/// Dispatches a decoded message to its topic's handler.
pub struct InventoryHandler {
    /// How long a replaced price is still honoured (`price_grace_secs`).
    pub price_grace_ms: i64,
}

impl Default for InventoryHandler {
    /// With the default `price_grace_secs`.
    fn default() -> Self {
        Self { price_grace_ms: (crate::Config::default().price_grace_secs * 1000.0) as i64 }
    }
}

impl Handler for InventoryHandler {
    type Batch = Stock;

    fn handle(&self, tx: &mut Tx<'_>, stock: &mut Stock, msg: &Inbound) -> Result<Outcome, HandleError> {
        match InventoryConsumes::from_topic(msg.topic) {
            Some(InventoryConsumes::OrdersSend) => orders_send::handle(tx, stock, msg, self.price_grace_ms),
            Some(InventoryConsumes::OrdersCancelled) => orders_cancelled::handle(tx, stock, msg),
            // Not subscribed: only a misrouting broker delivers it.
            None => Ok(Outcome::Ignored(msg.topic.suffix())),
        }
    }

    /// PostgreSQL: reads the batch's reservations in one statement, then
    /// locks every product row the batch may change, sorted by SKU, before
    /// the first message is handled: the SKUs of its orders and of the
    /// reservations its cancellations release. (SQLite has one writer;
    /// there is nothing to order, and a row read costs no round trip.)
    fn prepare(&self, tx: &mut Tx<'_>, stock: &mut Stock, msgs: &[&Inbound]) -> DbResult<()> {
        if tx.backend() != Backend::Postgres {
            return Ok(());
        }
        stock.read_reservations(tx, msgs.iter().map(|m| m.order_id()))?;
        let mut skus: Vec<Sku> = Vec::new();
        for msg in msgs {
            match InventoryConsumes::from_topic(msg.topic) {
                Some(InventoryConsumes::OrdersSend) => {
                    // A body that doesn't parse is refused by its handler.
                    if let Ok(order) = msg.body::<SendOrder>() {
                        skus.extend(order.items.into_iter().map(|l| l.sku));
                    }
                }
                Some(InventoryConsumes::OrdersCancelled) => {
                    if let Some(Reservation::Reserved { lines, .. }) = stock.reservation(tx, msg.order_id())? {
                        skus.extend(lines.into_iter().map(|line| line.sku));
                    }
                }
                None => {}
            }
        }
        stock.lock(tx, skus.iter())
    }

    fn store(&self, tx: &mut Tx<'_>, stock: Stock) -> DbResult<()> {
        stock.write(tx)
    }
}
