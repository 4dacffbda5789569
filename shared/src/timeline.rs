//! An order's message timeline on one node: what the consumer did with
//! each message about it (applied, deduplicated, parked, unparked,
//! ignored, dead-lettered), written in the same transaction, plus the
//! events the node queued and published (from the outbox).

use rusqlite::{params, Connection};
use serde::Serialize;
use sqlx::{Row, SqlitePool};

use crate::db::now_ms;
use crate::ids::{MessageId, OrderId};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS timeline (
    id         INTEGER PRIMARY KEY, -- rowid: ordering only (no AUTOINCREMENT bookkeeping)
    order_id   TEXT NOT NULL,
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL,
    topic      TEXT NOT NULL,
    message_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS timeline_by_order ON timeline(order_id, id);
"#;

/// What the consumer did with one message, kept until the batch commits.
#[derive(Debug, Clone, Copy)]
pub struct Note {
    pub order_id: OrderId,
    pub at_ms: i64,
    pub event: &'static str,
    pub topic: &'static str,
    pub message_id: MessageId,
}

/// Writes a batch's notes.
pub fn record_all(conn: &Connection, notes: &[Note]) -> rusqlite::Result<()> {
    let mut stmt =
        conn.prepare_cached("INSERT INTO timeline (order_id, at, event, topic, message_id) VALUES (?, ?, ?, ?, ?)")?;
    for n in notes {
        stmt.execute(params![n.order_id.to_string(), n.at_ms, n.event, n.topic, n.message_id.to_string()])?;
    }
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct Entry {
    pub at_ms: i64,
    pub event: String,
    pub topic: String,
    pub message_id: String,
}

/// Everything this node knows about `order_id`, oldest first.
pub async fn for_order(pool: &SqlitePool, order_id: &str) -> sqlx::Result<Vec<Entry>> {
    let rows = sqlx::query(
        "SELECT at, event, topic, message_id FROM timeline WHERE order_id = ?1
         UNION ALL SELECT created_at, 'queued', topic, message_id FROM outbox WHERE order_id = ?1
         UNION ALL SELECT sent_at, 'published', topic, message_id FROM outbox WHERE order_id = ?1 AND sent_at IS NOT NULL
         ORDER BY 1",
    )
    .bind(order_id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| Entry { at_ms: r.get(0), event: r.get(1), topic: r.get(2), message_id: r.get(3) })
        .collect())
}

/// Forgets entries older than `keep_ms`.
pub fn prune(conn: &Connection, keep_ms: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM timeline WHERE at < ?", [now_ms() - keep_ms])?;
    Ok(())
}
