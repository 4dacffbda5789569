//! `inventory/out-of-stock`: reject a pending order with inventory's
//! reason. Parked if the order hasn't arrived.

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::message::{Inbound, OutOfStock};

use super::OrderHandler;
use crate::domain::Input;
use crate::store::Orders;

pub fn handle(h: &OrderHandler, tx: &mut Tx<'_>, orders: &mut Orders, msg: &Inbound) -> Result<Outcome, HandleError> {
    let body: OutOfStock = msg.body()?;
    h.apply(tx, orders, msg, Input::OutOfStock { fingerprint: &body.fingerprint, reason: &body.reason })
}
