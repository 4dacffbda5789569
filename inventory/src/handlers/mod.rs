//! Where inventory handles each topic it consumes, one file per topic:
//! - `orders/send` → [`orders_send`]: reserve all lines or reject;
//! - `orders/cancelled` → [`orders_cancelled`]: release, or tombstone.

mod orders_cancelled;
mod orders_send;

use shared::consumer::{HandleError, Handler, Outcome};
use std::collections::BTreeSet;

use shared::message::{Inbound, SendOrder};
use shared::topics::Topic;
use sqlx::SqliteConnection;

use crate::store::Stock;

/// The topics inventory subscribes to.
pub const SUBSCRIPTIONS: [Topic; 2] = [Topic::OrdersSend, Topic::OrdersCancelled];

/// Dispatches a decoded message to its topic's handler.
pub struct InventoryHandler;

impl Handler for InventoryHandler {
    type Batch = Stock;

    /// Every message names its order; sends name the SKUs whose stock they
    /// need. Read both for the whole batch at once.
    async fn load(&self, conn: &mut SqliteConnection, msgs: &[Inbound]) -> sqlx::Result<Stock> {
        let orders = msgs.iter().map(Inbound::order_id).collect();
        let skus = msgs
            .iter()
            .filter(|m| m.topic == Topic::OrdersSend)
            .filter_map(|m| m.body::<SendOrder>().ok())
            .flat_map(|o| o.items.into_iter().map(|l| l.sku))
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        Stock::load(conn, orders, skus).await
    }

    async fn handle(
        &self,
        conn: &mut SqliteConnection,
        stock: &mut Stock,
        msg: &Inbound,
    ) -> Result<Outcome, HandleError> {
        match msg.topic {
            Topic::OrdersSend => orders_send::handle(conn, stock, msg).await,
            Topic::OrdersCancelled => orders_cancelled::handle(conn, stock, msg).await,
            other => Ok(Outcome::Ignored(other.suffix())),
        }
    }

    async fn store(&self, conn: &mut SqliteConnection, stock: Stock) -> sqlx::Result<()> {
        stock.write(conn).await
    }
}
