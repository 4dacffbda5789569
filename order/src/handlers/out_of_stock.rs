//! `inventory/out-of-stock`: reject a pending order with inventory's
//! reason. Parked if the order hasn't arrived.

use shared::consumer::{HandleError, Outcome};
use shared::message::{Inbound, OutOfStock};
use sqlx::SqliteConnection;

use super::OrderHandler;
use crate::domain::Input;
use crate::store::Orders;

pub async fn handle(
    h: &OrderHandler,
    conn: &mut SqliteConnection,
    orders: &mut Orders,
    msg: &Inbound,
) -> Result<Outcome, HandleError> {
    let body: OutOfStock = msg.body()?;
    h.apply(conn, orders, msg, Input::OutOfStock { fingerprint: &body.fingerprint, reason: &body.reason }).await
}
