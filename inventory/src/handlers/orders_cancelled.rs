//! `orders/cancelled`: give back what the order holds (or remember the
//! cancellation if its send hasn't arrived), then confirm with
//! `inventory/released`. Repeats confirm again and change nothing.

use shared::consumer::{HandleError, Outcome};
use shared::db::Tx;
use shared::message::{Inbound, ReleaseRequested, Released};
use shared::outbox;
use shared::topics::Topic;

use crate::domain;
use crate::store::Stock;

pub fn handle(tx: &mut Tx<'_>, stock: &mut Stock, msg: &Inbound) -> Result<Outcome, HandleError> {
    let _: ReleaseRequested = msg.body()?;
    let order_id = msg.order_id();
    let existing = stock.reservation(tx, order_id)?;
    let (change, _event) = domain::on_cancelled(existing.as_ref());
    if let Some(change) = change {
        stock.apply(order_id, change);
    }
    outbox::enqueue(tx, Topic::Released, order_id, Released {});
    Ok(Outcome::Applied)
}
