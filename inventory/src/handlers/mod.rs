//! Where inventory handles each topic it consumes, one file per topic:
//! - `orders/send` → [`orders_send`]: reserve all lines or reject;
//! - `orders/cancelled` → [`orders_cancelled`]: release, or tombstone.

mod orders_cancelled;
mod orders_send;

use shared::consumer::{HandleError, Handler, Outcome};
use shared::message::Inbound;
use shared::topics::Topic;
use sqlx::SqliteConnection;

/// The topics inventory subscribes to.
pub const SUBSCRIPTIONS: [Topic; 2] = [Topic::OrdersSend, Topic::OrdersCancelled];

/// Dispatches a decoded message to its topic's handler.
pub struct InventoryHandler;

impl Handler for InventoryHandler {
    async fn handle(&self, conn: &mut SqliteConnection, msg: &Inbound) -> Result<Outcome, HandleError> {
        match msg.topic {
            Topic::OrdersSend => orders_send::handle(conn, msg).await,
            Topic::OrdersCancelled => orders_cancelled::handle(conn, msg).await,
            other => Ok(Outcome::Ignored(other.suffix())),
        }
    }
}
