//! Inbox: remembers every applied `message_id` in the same transaction as
//! its effect, so a second copy of a message is a no-op.

use sqlx::SqliteConnection;

use crate::db::now_ms;
use crate::message::Inbound;

/// Records the message; returns `false` if it was seen before (a duplicate).
pub async fn record(conn: &mut SqliteConnection, msg: &Inbound) -> sqlx::Result<bool> {
    let result = sqlx::query(
        "INSERT INTO inbox (message_id, topic, order_id, received_at) VALUES (?, ?, ?, ?)
         ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(msg.message_id().to_string())
    .bind(msg.topic.suffix())
    .bind(msg.order_id().to_string())
    .bind(now_ms())
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
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
