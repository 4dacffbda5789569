//! Dead letters: messages that can never be applied, kept with the reason
//! so an operator can inspect them. Recording one lets the consumer ack the
//! message, so poison never blocks what comes behind it.

use rusqlite::{params, Connection};
use serde::Serialize;
use sqlx::Row;

use crate::db::now_ms;

/// At most this much of a payload is kept; the full size is recorded.
const KEEP_BYTES: usize = 16 * 1024;

pub fn record(
    conn: &Connection,
    topic: &str,
    message_id: Option<String>,
    order_id: Option<String>,
    payload: &[u8],
    reason: &str,
) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO dead_letters (topic, message_id, order_id, payload, payload_bytes, reason, at)
         VALUES (?, ?, ?, ?, ?, ?, ?)",
    )?
    .execute(params![
        topic,
        message_id,
        order_id,
        &payload[..payload.len().min(KEEP_BYTES)],
        payload.len() as i64,
        reason,
        now_ms()
    ])?;
    Ok(())
}

/// A dead letter as operators see it.
#[derive(Debug, Serialize)]
pub struct DeadLetter {
    pub id: i64,
    pub topic: String,
    pub message_id: Option<String>,
    pub order_id: Option<String>,
    pub payload_bytes: i64,
    /// The stored (possibly truncated) payload, lossily as text.
    pub payload: String,
    pub reason: String,
    pub at_ms: i64,
}

pub async fn list(pool: &sqlx::SqlitePool, limit: i64) -> sqlx::Result<Vec<DeadLetter>> {
    let rows = sqlx::query(
        "SELECT id, topic, message_id, order_id, payload, payload_bytes, reason, at
         FROM dead_letters ORDER BY id DESC LIMIT ?",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| DeadLetter {
            id: r.get(0),
            topic: r.get(1),
            message_id: r.get(2),
            order_id: r.get(3),
            payload: String::from_utf8_lossy(r.get::<&[u8], _>(4)).into_owned(),
            payload_bytes: r.get(5),
            reason: r.get(6),
            at_ms: r.get(7),
        })
        .collect())
}

/// One dead letter with its stored payload bytes.
pub struct Stored {
    pub topic: String,
    pub payload: Vec<u8>,
    pub payload_bytes: i64,
}

pub async fn get(pool: &sqlx::SqlitePool, id: i64) -> sqlx::Result<Option<Stored>> {
    let row = sqlx::query("SELECT topic, payload, payload_bytes FROM dead_letters WHERE id = ?")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    Ok(row.map(|r| Stored { topic: r.get(0), payload: r.get(1), payload_bytes: r.get(2) }))
}

pub fn remove(conn: &Connection, id: i64) -> rusqlite::Result<()> {
    conn.execute("DELETE FROM dead_letters WHERE id = ?", [id])?;
    Ok(())
}
