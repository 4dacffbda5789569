//! `orders/send`: create the order as pending (or cancelled, if its cancel
//! came first). A send for a known order repeats its status, so a client
//! retrying with the same idempotency key gets its answer.

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::message::{Inbound, SendOrder};

use super::OrderHandler;
use crate::domain::Input;
use crate::store::Orders;

pub fn handle(h: &OrderHandler, tx: &mut Tx<'_>, orders: &mut Orders, msg: &Inbound) -> Result<Outcome, HandleError> {
    let send: SendOrder = msg.body()?;
    send.validate()?;
    h.apply(tx, orders, msg, Input::Send(&send))
}
