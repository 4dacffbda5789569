//! `carts/command`: create a cart, set a line, or check it out
//! ([`crate::carts::decide`]). Every command is answered on `carts/status`
//! (applied or refused), which the front that sent it waits for; a change
//! asks inventory to hold the cart again, and a checkout sends its order.

use shared::clock::now_ms;
use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::ids::CartId;
use shared::message::{CartChanged, CartCommand, Inbound};
use shared::outbox;
use shared::topics::Topic;

use crate::carts::{self, store};

pub fn handle(tx: &mut Tx<'_>, msg: &Inbound) -> Result<Outcome, HandleError> {
    let command: CartCommand = msg.body()?;
    command.validate()?;
    let cart_id = CartId::of_subject(msg.order_id());
    let existing = store::get(tx, cart_id)?;
    let step = carts::decide(existing.as_ref(), cart_id, &command, now_ms());
    if let Some(cart) = &step.save {
        store::save(tx, cart)?;
    }
    if let Some(hold) = step.hold {
        outbox::enqueue(tx, Topic::CartsHold, cart_id.subject(), hold);
    }
    if let Some((order_id, send)) = step.order {
        tracing::info!(%cart_id, %order_id, "cart checked out");
        outbox::enqueue(tx, Topic::OrdersSend, order_id, send);
    }
    if let Some(why) = step.refused {
        tracing::info!(%cart_id, refused = ?why, "cart command refused");
    }
    let answer = CartChanged { command_id: msg.message_id(), refused: step.refused, cart: step.save.or(existing) };
    outbox::enqueue(tx, Topic::CartsStatus, cart_id.subject(), answer);
    Ok(Outcome::Applied)
}
