//! `inventory/held`: record what inventory holds for a cart now (after a
//! hold, an expiry or the checkout), if it is newer than what the cart
//! has ([`crate::carts::held`]).

use shared::clock::now_ms;
use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::ids::CartId;
use shared::message::{Held, Inbound};

use crate::carts::{self, store};

pub fn handle(tx: &mut Tx<'_>, msg: &Inbound) -> Result<Outcome, HandleError> {
    let body: Held = msg.body()?;
    let cart_id = CartId::of_subject(msg.order_id());
    let existing = store::get(tx, cart_id)?;
    match carts::held(existing.as_ref(), &body, now_ms()) {
        Some(cart) => {
            store::save(tx, &cart)?;
            Ok(Outcome::Applied)
        }
        None if existing.is_none() => Ok(Outcome::Ignored("no such cart")),
        None => Ok(Outcome::Ignored("an older answer than the cart has")),
    }
}
