//! `orders/cancel`: cancel a pending or confirmed order and ask inventory
//! to release; remember a cancel for an order not seen yet (tombstone).

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::message::{CancelOrder, Inbound};

use super::OrderHandler;
use crate::domain::Input;
use crate::store::Orders;

pub fn handle(h: &OrderHandler, tx: &mut Tx<'_>, orders: &mut Orders, msg: &Inbound) -> Result<Outcome, HandleError> {
    let _: CancelOrder = msg.body()?;
    h.apply(tx, orders, msg, Input::Cancel)
}
