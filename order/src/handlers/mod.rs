//! Where the order service handles each topic it consumes
//! ([`shared::topics::OrderConsumes`]: also what it subscribes to), one file
//! per topic:
//! - `orders/send` → [`orders_send`]: create the order (or repeat its status);
//! - `orders/cancel` → [`orders_cancel`]: cancel, or tombstone if unseen;
//! - `inventory/in-stock` → [`in_stock`]: confirm;
//! - `inventory/out-of-stock` → [`out_of_stock`]: reject;
//! - `inventory/released` → [`released`]: stop chasing the release (of an
//!   order, or of a tombstone when the order never arrived);
//! - `carts/command` → [`carts_command`]: create, change or check out a
//!   cart ([`crate::carts`]);
//! - `inventory/held` → [`held`]: what inventory holds for a cart now.
//!
//! The order handlers parse their body and call [`crate::domain::decide`];
//! [`apply`] persists the step and writes the events to the outbox. The
//! cart handlers do the same with [`crate::carts`].

mod carts_command;
mod held;
mod in_stock;
mod orders_cancel;
mod orders_send;
mod out_of_stock;
mod released;

use shared::clock::now_ms;
use shared::consumer::{HandleError, Handler, Outcome};
use shared::db::{Backend, DbResult, Tx};
use shared::message::{Inbound, OrderSnapshot, ReleaseRequested, StatusChanged};
use shared::outbox;
use shared::topics::{Consumes, OrderConsumes, Topic};
use shared::view::Order;

use crate::domain::{self, Input, Step};
use crate::store::Orders;

/// Dispatches a decoded message to its topic's handler.
pub struct OrderHandler {
    /// How long to wait for inventory before chasing it again.
    pub follow_up_ms: i64,
}

impl Handler for OrderHandler {
    type Batch = Orders;

    fn handle(&self, tx: &mut Tx<'_>, orders: &mut Orders, msg: &Inbound) -> Result<Outcome, HandleError> {
        match OrderConsumes::from_topic(msg.topic) {
            Some(OrderConsumes::OrdersSend) => orders_send::handle(self, tx, orders, msg),
            Some(OrderConsumes::OrdersCancel) => orders_cancel::handle(self, tx, orders, msg),
            Some(OrderConsumes::InStock) => in_stock::handle(self, tx, orders, msg),
            Some(OrderConsumes::OutOfStock) => out_of_stock::handle(self, tx, orders, msg),
            Some(OrderConsumes::Released) => released::handle(self, tx, orders, msg),
            Some(OrderConsumes::CartsCommand) => carts_command::handle(tx, msg),
            Some(OrderConsumes::Held) => held::handle(tx, msg),
            // Not subscribed: only a misrouting broker delivers it.
            None => Ok(Outcome::Ignored(msg.topic.suffix())),
        }
    }

    /// PostgreSQL: the batch's orders are locked, in id order, then read
    /// in one statement, before the first message is handled.
    fn prepare(&self, tx: &mut Tx<'_>, orders: &mut Orders, msgs: &[&Inbound]) -> DbResult<()> {
        let mut ids = msgs.iter().map(|m| m.order_id().to_string()).collect();
        crate::store::lock_orders(tx, &mut ids)?;
        if tx.backend() == Backend::Postgres {
            orders.read(tx, msgs.iter().map(|m| m.order_id()))?;
        }
        Ok(())
    }

    fn store(&self, tx: &mut Tx<'_>, orders: Orders) -> DbResult<()> {
        orders.write(tx)
    }

    /// An `in-stock` whose order never arrived holds stock nobody will
    /// cancel: remember the order as cancelled and release it, re-sending
    /// the release until inventory confirms it.
    fn expired(&self, tx: &mut Tx<'_>, orders: &mut Orders, msg: &Inbound) -> Result<(), HandleError> {
        if msg.topic == Topic::InStock {
            self.apply(tx, orders, msg, Input::InStockExpired)?;
        }
        Ok(())
    }
}

impl OrderHandler {
    /// Runs the lifecycle on `input` and persists what it decides.
    fn apply(
        &self,
        tx: &mut Tx<'_>,
        orders: &mut Orders,
        msg: &Inbound,
        input: Input<'_>,
    ) -> Result<Outcome, HandleError> {
        let id = msg.order_id();
        let (existing, tombstone) = orders.get(tx, id)?;
        match domain::decide(existing.as_ref(), tombstone, id, input, now_ms()) {
            Step::Save { order, emit_status, request_release } => {
                if emit_status {
                    tracing::info!(status = order.status.as_str(), version = order.version, "order status changed");
                    publish_status(tx, &order);
                }
                orders.save(order, self.follow_up_ms);
                if request_release {
                    outbox::enqueue(tx, Topic::OrdersCancelled, id, ReleaseRequested {});
                }
                Ok(Outcome::Applied)
            }
            Step::Tombstone { chase_release: false } => {
                tracing::info!("cancel arrived before the order; tombstoned");
                orders.tombstone(id);
                Ok(Outcome::Applied)
            }
            Step::Tombstone { chase_release: true } => {
                tracing::warn!(order_id = %id, "releasing stock reserved for an order that never arrived");
                orders.tombstone(id);
                orders.chase_release(id, self.follow_up_ms);
                outbox::enqueue(tx, Topic::OrdersCancelled, id, ReleaseRequested {});
                Ok(Outcome::Applied)
            }
            Step::ReleaseConfirmed => {
                tracing::info!("release confirmed for an order never seen; no longer chased");
                orders.end_chase(id);
                Ok(Outcome::Applied)
            }
            Step::RepeatStatus => {
                if let Some(order) = &existing {
                    publish_status(tx, order);
                }
                Ok(Outcome::Applied)
            }
            Step::Park(reason) => Ok(Outcome::Park(reason.to_owned())),
            Step::Ignore(reason) => Ok(Outcome::Ignored(reason)),
        }
    }
}

pub(crate) fn publish_status(tx: &mut Tx<'_>, order: &Order) {
    let body = StatusChanged {
        status: order.status,
        version: order.version,
        fingerprint: order.fingerprint.clone(),
        reason: order.reason.clone(),
        order: Some(OrderSnapshot {
            items: order.items.clone(),
            currency: order.currency.clone(),
            total_cents: order.total_cents,
            created_at_ms: order.created_at_ms,
            updated_at_ms: order.updated_at_ms,
        }),
    };
    outbox::enqueue(tx, Topic::OrdersStatus, order.order_id, body);
}
