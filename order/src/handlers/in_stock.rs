//! `inventory/in-stock`: confirm a pending order (at the prices inventory
//! accepted, or not at all). Parked if the order
//! hasn't arrived; ignored once the order is settled (a cancelled order's
//! release is already on its way).

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::message::{InStock, Inbound};

use super::OrderHandler;
use crate::domain::Input;
use crate::store::Orders;

pub fn handle(h: &OrderHandler, tx: &mut Tx<'_>, orders: &mut Orders, msg: &Inbound) -> Result<Outcome, HandleError> {
    let body: InStock = msg.body()?;
    h.apply(tx, orders, msg, Input::InStock { fingerprint: &body.fingerprint, prices: &body.prices })
}
