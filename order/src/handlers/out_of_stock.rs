//! `inventory/out-of-stock`: reject a pending order with inventory's
//! reason. Parked if the order hasn't arrived.

use shared::consumer::{HandleError, Outcome};
use shared::message::{Inbound, OutOfStock};
use sqlx::SqliteConnection;

use super::OrderHandler;
use crate::domain::Input;

pub async fn handle(h: &OrderHandler, conn: &mut SqliteConnection, msg: &Inbound) -> Result<Outcome, HandleError> {
    let body: OutOfStock = msg.body()?;
    h.apply(conn, msg, Input::OutOfStock { fingerprint: &body.fingerprint, reason: &body.reason }).await
}
