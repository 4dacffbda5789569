//! `inventory/released`: inventory holds nothing for the order any more;
//! stop re-sending `orders/cancelled` (for the order, or for its tombstone
//! when the order never arrived).

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::message::{Inbound, Released};

use super::OrderHandler;
use crate::domain::Input;
use crate::store::Orders;

pub fn handle(h: &OrderHandler, tx: &mut Tx<'_>, orders: &mut Orders, msg: &Inbound) -> Result<Outcome, HandleError> {
    let _: Released = msg.body()?;
    h.apply(tx, orders, msg, Input::Released)
}
