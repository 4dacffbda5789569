//! `carts/hold`: hold stock for a cart (the whole cart, as of the
//! request's version), as far as stock goes, and tell the order service
//! what it holds now with `inventory/held`. A copy, a request older than
//! the last one applied, or one for a checked-out cart changes nothing and
//! is not answered (the answer to the newer request stands).

use shared::clock::now_ms;
use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::ids::{CartId, Sku};
use shared::message::{HoldRequest, Inbound};
use shared::outbox;
use shared::topics::Topic;

use crate::domain;
use crate::store::Stock;

pub fn handle(tx: &mut Tx<'_>, stock: &mut Stock, msg: &Inbound, hold_ms: i64) -> Result<Outcome, HandleError> {
    let request: HoldRequest = msg.body()?;
    request.validate()?;
    let cart_id = CartId::of_subject(msg.order_id());
    let cart = stock.cart(tx, cart_id)?;
    let mut skus: Vec<Sku> = request.lines.iter().map(|l| l.sku.clone()).collect();
    skus.extend(stock.held_skus(cart_id));
    let levels = stock.levels(tx, skus.iter())?;
    let Some(change) = domain::on_hold(cart.as_ref(), &request, &levels, now_ms(), hold_ms) else {
        return Ok(Outcome::Ignored("a hold request no newer than the last applied, or for a checked-out cart"));
    };
    stock.apply_holds(cart_id, &change);
    outbox::enqueue(tx, Topic::Held, cart_id.subject(), change.event);
    Ok(Outcome::Applied)
}
