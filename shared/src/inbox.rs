//! Inbox: remembers every applied `message_id` in the same transaction as
//! its effect, so a second copy of a message is a no-op.

use std::collections::HashSet;

use sqlx::SqliteConnection;

use crate::db::{now_ms, values_sql, INSERT_CHUNK};
use crate::ids::MessageId;
use crate::message::Inbound;

/// Records every message of a batch in one statement per chunk; returns
/// the ids that were new. An id that was seen before, or that comes twice
/// in `msgs`, is recorded once: its first copy is the one to apply.
pub async fn record_all(conn: &mut SqliteConnection, msgs: &[Inbound]) -> sqlx::Result<HashSet<MessageId>> {
    let mut fresh = HashSet::with_capacity(msgs.len());
    let now = now_ms();
    for chunk in msgs.chunks(INSERT_CHUNK) {
        let sql = values_sql(
            "INSERT INTO inbox (message_id, topic, order_id, received_at)",
            4,
            chunk.len(),
            "ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
        );
        let mut q = sqlx::query_scalar::<_, String>(&sql);
        for msg in chunk {
            q = q
                .bind(msg.message_id().to_string())
                .bind(msg.topic.suffix())
                .bind(msg.order_id().to_string())
                .bind(now);
        }
        for id in q.fetch_all(&mut *conn).await? {
            // Written from a parsed MessageId just above.
            if let Ok(id) = uuid::Uuid::parse_str(&id) {
                fresh.insert(MessageId(id));
            }
        }
    }
    Ok(fresh)
}

/// Forgets ids older than `keep_ms`. A duplicate arriving after that is
/// still harmless: business keys (one order, one reservation, one release
/// per `order_id`) make every effect idempotent on their own.
pub async fn prune(conn: &mut SqliteConnection, keep_ms: i64) -> sqlx::Result<u64> {
    let r = sqlx::query("DELETE FROM inbox WHERE received_at < ?").bind(now_ms() - keep_ms).execute(conn).await?;
    Ok(r.rows_affected())
}

/// Forgets a message: one that was dead-lettered must not count as seen, so
/// that replaying it after a fix is applied rather than dropped.
pub async fn forget(conn: &mut SqliteConnection, message_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM inbox WHERE message_id = ?").bind(message_id).execute(conn).await?;
    Ok(())
}
