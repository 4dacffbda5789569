//! Where inventory handles each topic it consumes, one file per topic:
//! - `orders/send` → [`orders_send`]: reserve all lines or reject;
//! - `orders/cancelled` → [`orders_cancelled`]: release, or tombstone.

mod orders_cancelled;
mod orders_send;

use rusqlite::Connection;
use shared::consumer::{HandleError, Handler, Outcome};
use shared::db::Tx;
use shared::message::Inbound;
use shared::topics::Topic;

use crate::store::Stock;

/// The topics inventory subscribes to.
pub const SUBSCRIPTIONS: [Topic; 2] = [Topic::OrdersSend, Topic::OrdersCancelled];

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
        match msg.topic {
            Topic::OrdersSend => orders_send::handle(tx, stock, msg, self.price_grace_ms),
            Topic::OrdersCancelled => orders_cancelled::handle(tx, stock, msg),
            other => Ok(Outcome::Ignored(other.suffix())),
        }
    }

    fn store(&self, conn: &Connection, stock: Stock) -> rusqlite::Result<()> {
        stock.write(conn)
    }
}
