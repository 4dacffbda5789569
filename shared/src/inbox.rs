//! Inbox: remembers every applied `message_id` in the same transaction as
//! its effect, so a second copy of a message is a no-op. Its rows are also
//! the timeline's record of applied messages (`timeline::for_order`).

use rusqlite::{params, Connection};

use crate::db::now_ms;
use crate::message::Inbound;

/// Records `msg`; returns whether its id is new (a copy seen before, in an
/// earlier batch or earlier in this one, returns `false`).
pub fn record(conn: &Connection, msg: &Inbound) -> rusqlite::Result<bool> {
    let mut stmt = conn.prepare_cached(
        "INSERT INTO inbox (message_id, topic, order_id, received_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (message_id) DO NOTHING",
    )?;
    let n =
        stmt.execute(params![msg.message_id().to_string(), msg.topic.suffix(), msg.order_id().to_string(), now_ms()])?;
    Ok(n == 1)
}

/// Forgets ids older than `keep_ms`. A duplicate arriving after that is
/// still harmless: business keys (one order, one reservation, one release
/// per `order_id`) make every effect idempotent on their own.
pub fn prune(conn: &Connection, keep_ms: i64) -> rusqlite::Result<usize> {
    conn.execute("DELETE FROM inbox WHERE received_at < ?", [now_ms() - keep_ms])
}

/// Forgets a message: one that was dead-lettered must not count as seen, so
/// that replaying it after a fix is applied rather than dropped.
pub fn forget(conn: &Connection, message_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM inbox WHERE message_id = ?")?.execute([message_id])?;
    Ok(())
}
