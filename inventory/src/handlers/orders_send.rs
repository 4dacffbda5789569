//! `orders/send`: reserve every line of the order in one transaction, or
//! reject it; emit `inventory/in-stock` or `inventory/out-of-stock`. A send
//! for an order already decided re-emits the decision. Inventory is the
//! price authority: prices it never charged reject the order.

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
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
    let levels = stock.levels(tx, order.items.iter().map(|l| &l.sku))?;
    let now_ms = now_ms();
    // Only a first decision looks at prices; a decided order is answered
    // from its reservation.
    let prices = match existing {
        None => stock.price_histories(tx, order.items.iter().map(|l| &l.sku), now_ms - price_grace_ms)?,
        Some(_) => Default::default(),
    };
    let pricing = domain::Pricing { prices: &prices, now_ms, grace_ms: price_grace_ms };
    let (change, event) = domain::on_send(existing.as_ref(), &order, &levels, &pricing);
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
