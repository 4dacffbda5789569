//! `orders/send`: reserve every line of the order in one transaction, or
//! reject it; emit `inventory/in-stock` or `inventory/out-of-stock`. A send
//! for an order already decided re-emits the decision. Inventory is the
//! price authority: prices it never charged reject the order.
//!
//! An order that checks out a cart (`cart_id`) takes the cart's holds
//! first and the rest from what is available; reserved or not, what the
//! cart still holds goes back, the cart closes, and `inventory/held` tells
//! the order service, all in the same transaction.

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::ids::Sku;
use shared::message::{InStock, Inbound, OutOfStock, Released, SendOrder};
use shared::outbox;
use shared::topics::Topic;

use shared::clock::now_ms;

use crate::domain::{self, Event};
use crate::store::Stock;

pub fn handle(tx: &mut Tx<'_>, stock: &mut Stock, msg: &Inbound, price_grace_ms: i64) -> Result<Outcome, HandleError> {
    let order: SendOrder = msg.body()?;
    order.validate()?;
    let order_id = msg.order_id();
    let existing = stock.reservation(tx, order_id)?;
    // Only a first decision looks at the cart and at prices; a decided
    // order is answered from its reservation.
    let cart = match (&existing, order.cart_id) {
        (None, Some(cart_id)) => stock.cart(tx, cart_id)?,
        _ => None,
    };
    let mut skus: Vec<Sku> = order.items.iter().map(|l| l.sku.clone()).collect();
    skus.extend(cart.iter().flat_map(|c| c.lines.keys().cloned()));
    let levels = stock.levels(tx, skus.iter())?;
    let now_ms = now_ms();
    let prices = match existing {
        None => stock.price_histories(tx, order.items.iter().map(|l| &l.sku), now_ms - price_grace_ms)?,
        Some(_) => Default::default(),
    };
    let pricing = domain::Pricing { prices: &prices, now_ms, grace_ms: price_grace_ms };
    let (change, event, closed) = domain::on_checkout(existing.as_ref(), &order, cart.as_ref(), &levels, &pricing);
    // The holds go back before the order takes its units.
    if let (Some(closed), Some(cart_id)) = (closed, order.cart_id) {
        stock.apply_holds(cart_id, &closed);
        outbox::enqueue(tx, Topic::Held, cart_id.subject(), closed.event);
    }
    if let Some(change) = change {
        stock.apply(order_id, change);
    }
    match event {
        Some(Event::InStock { fingerprint, prices }) => {
            outbox::enqueue(tx, Topic::InStock, order_id, InStock { fingerprint, prices })
        }
        Some(Event::OutOfStock { fingerprint, reason }) => {
            tracing::info!(%reason, "order rejected");
            outbox::enqueue(tx, Topic::OutOfStock, order_id, OutOfStock { fingerprint, reason })
        }
        Some(Event::Released) => outbox::enqueue(tx, Topic::Released, order_id, Released {}),
        None => {}
    }
    Ok(Outcome::Applied)
}
