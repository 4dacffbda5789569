//! `orders/cancel`: cancel a pending or confirmed order and ask inventory
//! to release; remember a cancel for an order not seen yet (tombstone).

use shared::consumer::{HandleError, Outcome};
use shared::message::{CancelOrder, Inbound};
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
    let _: CancelOrder = msg.body()?;
    h.apply(conn, orders, msg, Input::Cancel).await
}
