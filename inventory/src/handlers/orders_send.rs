//! `orders/send`: reserve every line of the order in one transaction, or
//! reject it; emit `inventory/in-stock` or `inventory/out-of-stock`. A send
//! for an order already decided re-emits the decision.

use shared::consumer::{HandleError, Outcome};
use shared::message::{InStock, Inbound, OutOfStock, Released, SendOrder};
use shared::outbox;
use shared::topics::Topic;
use sqlx::SqliteConnection;

use crate::domain::{self, Event};
use crate::store::Stock;

pub async fn handle(conn: &mut SqliteConnection, stock: &mut Stock, msg: &Inbound) -> Result<Outcome, HandleError> {
    let order: SendOrder = msg.body()?;
    order.validate()?;
    let order_id = msg.order_id();
    let existing = stock.reservation(conn, order_id).await?;
    let levels = stock.levels(conn, order.items.iter().map(|l| &l.sku)).await?;
    let (change, event) = domain::on_send(existing.as_ref(), &order, &levels);
    if let Some(change) = change {
        stock.apply(order_id, change);
    }
    match event {
        Some(Event::InStock { fingerprint }) => {
            outbox::enqueue(conn, Topic::InStock, order_id, InStock { fingerprint }).await?
        }
        Some(Event::OutOfStock { fingerprint, reason }) => {
            tracing::info!(%reason, "order rejected");
            outbox::enqueue(conn, Topic::OutOfStock, order_id, OutOfStock { fingerprint, reason }).await?
        }
        Some(Event::Released) => outbox::enqueue(conn, Topic::Released, order_id, Released {}).await?,
        None => {}
    }
    Ok(Outcome::Applied)
}
