//! `orders/send`: create the order as pending (or cancelled, if its cancel
//! came first). A send for a known order repeats its status, so a client
//! retrying with the same idempotency key gets its answer.

use shared::consumer::{HandleError, Outcome};
use shared::message::{Inbound, SendOrder};
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
    let send: SendOrder = msg.body()?;
    send.validate()?;
    h.apply(conn, orders, msg, Input::Send(&send)).await
}
