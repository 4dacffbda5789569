//! Where the order service handles each topic it consumes, one file per
//! topic:
//! - `orders/send` → [`orders_send`]: create the order (or repeat its status);
//! - `orders/cancel` → [`orders_cancel`]: cancel, or tombstone if unseen;
//! - `inventory/in-stock` → [`in_stock`]: confirm;
//! - `inventory/out-of-stock` → [`out_of_stock`]: reject;
//! - `inventory/released` → [`released`]: stop chasing the release.
//!
//! Each parses its body and calls [`crate::domain::decide`]; [`apply`]
//! persists the step and writes the events to the outbox.

mod in_stock;
mod orders_cancel;
mod orders_send;
mod out_of_stock;
mod released;

use shared::consumer::{HandleError, Handler, Outcome};
use shared::db::now_ms;
use shared::message::{Inbound, ReleaseRequested, StatusChanged};
use shared::outbox;
use shared::topics::Topic;
use sqlx::SqliteConnection;

use crate::domain::{self, Input, Order, Step};
use crate::store::Orders;

/// The topics the order service subscribes to.
pub const SUBSCRIPTIONS: [Topic; 5] =
    [Topic::OrdersSend, Topic::OrdersCancel, Topic::InStock, Topic::OutOfStock, Topic::Released];

/// Dispatches a decoded message to its topic's handler.
pub struct OrderHandler {
    /// How long to wait for inventory before chasing it again.
    pub follow_up_ms: i64,
}

impl Handler for OrderHandler {
    type Batch = Orders;

    /// Every message names its order: read them all at once.
    async fn load(&self, conn: &mut SqliteConnection, msgs: &[Inbound]) -> sqlx::Result<Orders> {
        Orders::load(conn, msgs.iter().map(Inbound::order_id)).await
    }

    async fn handle(
        &self,
        conn: &mut SqliteConnection,
        orders: &mut Orders,
        msg: &Inbound,
    ) -> Result<Outcome, HandleError> {
        match msg.topic {
            Topic::OrdersSend => orders_send::handle(self, conn, orders, msg).await,
            Topic::OrdersCancel => orders_cancel::handle(self, conn, orders, msg).await,
            Topic::InStock => in_stock::handle(self, conn, orders, msg).await,
            Topic::OutOfStock => out_of_stock::handle(self, conn, orders, msg).await,
            Topic::Released => released::handle(self, conn, orders, msg).await,
            other => Ok(Outcome::Ignored(other.suffix())),
        }
    }

    async fn store(&self, conn: &mut SqliteConnection, orders: Orders) -> sqlx::Result<()> {
        orders.write(conn).await
    }

    /// An `in-stock` whose order never arrived holds stock nobody will
    /// cancel: remember the order as cancelled and release it.
    async fn expired(
        &self,
        conn: &mut SqliteConnection,
        orders: &mut Orders,
        msg: &Inbound,
    ) -> Result<(), HandleError> {
        if msg.topic == Topic::InStock && orders.get(conn, msg.order_id()).await?.0.is_none() {
            tracing::warn!(order_id = %msg.order_id(), "releasing stock reserved for an order that never arrived");
            orders.tombstone(msg.order_id());
            outbox::enqueue(conn, Topic::OrdersCancelled, msg.order_id(), ReleaseRequested {}).await?;
        }
        Ok(())
    }
}

impl OrderHandler {
    /// Runs the lifecycle on `input` and persists what it decides.
    async fn apply(
        &self,
        conn: &mut SqliteConnection,
        orders: &mut Orders,
        msg: &Inbound,
        input: Input<'_>,
    ) -> Result<Outcome, HandleError> {
        let id = msg.order_id();
        let (existing, tombstoned) = orders.get(conn, id).await?;
        match domain::decide(existing.as_ref(), tombstoned, id, input, now_ms()) {
            Step::Save { order, emit_status, request_release } => {
                if emit_status {
                    tracing::info!(status = order.status.as_str(), version = order.version, "order status changed");
                    publish_status(conn, &order).await?;
                }
                orders.save(order, self.follow_up_ms);
                if request_release {
                    outbox::enqueue(conn, Topic::OrdersCancelled, id, ReleaseRequested {}).await?;
                }
                Ok(Outcome::Applied)
            }
            Step::Tombstone => {
                tracing::info!("cancel arrived before the order; tombstoned");
                orders.tombstone(id);
                Ok(Outcome::Applied)
            }
            Step::RepeatStatus => {
                if let Some(order) = &existing {
                    publish_status(conn, order).await?;
                }
                Ok(Outcome::Applied)
            }
            Step::Park(reason) => Ok(Outcome::Park(reason.to_owned())),
            Step::Ignore(reason) => Ok(Outcome::Ignored(reason)),
        }
    }
}

pub(crate) async fn publish_status(conn: &mut SqliteConnection, order: &Order) -> sqlx::Result<()> {
    let body = StatusChanged {
        status: order.status,
        version: order.version,
        fingerprint: order.fingerprint.clone(),
        reason: order.reason.clone(),
    };
    outbox::enqueue(conn, Topic::OrdersStatus, order.order_id, body).await
}
