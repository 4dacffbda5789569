//! Inbox: remembers every applied `message_id` in the same transaction as
//! its effect, so a second copy of a message is a no-op. Its rows are also
//! the timeline's record of applied messages (`timeline::for_order`).

use crate::clock::now_ms;
use crate::db::{DbResult, Tx};
use crate::message::Inbound;

/// Records `msg`; returns whether its id is new (a copy seen before, in an
/// earlier batch or earlier in this one, returns `false`).
pub fn record(tx: &mut Tx<'_>, msg: &Inbound) -> DbResult<bool> {
    let n = tx.execute(
        "INSERT INTO inbox (message_id, topic, order_id, received_at) VALUES ($1, $2, $3, $4)
         ON CONFLICT (message_id) DO NOTHING",
        &[&msg.message_id().to_string(), &msg.topic.suffix(), &msg.order_id().to_string(), &now_ms()],
    )?;
    Ok(n == 1)
}

/// Forgets ids older than `keep_ms`. A duplicate arriving after that is
/// still harmless: business keys (one order, one reservation, one release
/// per `order_id`) make every effect idempotent on their own.
pub fn prune(tx: &mut Tx<'_>, keep_ms: i64) -> DbResult<u64> {
    tx.execute("DELETE FROM inbox WHERE received_at < $1", &[&(now_ms() - keep_ms)])
}

/// Forgets a message: one that was dead-lettered must not count as seen, so
/// that replaying it after a fix is applied rather than dropped.
pub fn forget(tx: &mut Tx<'_>, message_id: &str) -> DbResult<()> {
    tx.execute("DELETE FROM inbox WHERE message_id = $1", &[&message_id])?;
    Ok(())
}
