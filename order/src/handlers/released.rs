//! `inventory/released`: inventory holds nothing for the order any more;
//! stop re-sending `orders/cancelled`.

use shared::consumer::{HandleError, Outcome};
use shared::message::{Inbound, Released};
use sqlx::SqliteConnection;

use super::OrderHandler;
use crate::domain::Input;

pub async fn handle(h: &OrderHandler, conn: &mut SqliteConnection, msg: &Inbound) -> Result<Outcome, HandleError> {
    let _: Released = msg.body()?;
    h.apply(conn, msg, Input::Released).await
}
