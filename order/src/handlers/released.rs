//! `inventory/released`: inventory holds nothing for the order any more;
//! stop re-sending `orders/cancelled`.

use shared::consumer::{HandleError, Outcome};
use shared::message::{Inbound, Released};
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
    let _: Released = msg.body()?;
    h.apply(conn, orders, msg, Input::Released).await
}
