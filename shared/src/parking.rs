//! Parking: a message that arrives before what it depends on (an
//! `in-stock` before its order) is stored and acked, never held unacked.
//! The consumer retries an order's parked messages right after any message
//! for that order is applied, and [`due`] feeds a timer for the rest.

use sqlx::{Row, SqliteConnection};

use crate::db::now_ms;
use crate::message::Inbound;

/// A parked message waiting for its turn.
#[derive(Debug)]
pub struct Parked {
    pub message_id: String,
    pub topic: String,
    pub order_id: String,
    pub payload: Vec<u8>,
    pub parked_at_ms: i64,
    pub attempts: i64,
}

pub async fn park(conn: &mut SqliteConnection, msg: &Inbound, reason: &str, retry_in_ms: i64) -> sqlx::Result<()> {
    let now = now_ms();
    sqlx::query(
        "INSERT INTO parked (message_id, topic, order_id, payload, reason, parked_at, next_attempt_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
    )
    .bind(msg.message_id().to_string())
    .bind(msg.topic.suffix())
    .bind(msg.order_id().to_string())
    .bind(msg.payload.as_ref())
    .bind(reason)
    .bind(now)
    .bind(now + retry_in_ms)
    .execute(conn)
    .await?;
    Ok(())
}

fn from_row(r: sqlx::sqlite::SqliteRow) -> Parked {
    Parked {
        message_id: r.get(0),
        topic: r.get(1),
        order_id: r.get(2),
        payload: r.get(3),
        parked_at_ms: r.get(4),
        attempts: r.get(5),
    }
}

const COLUMNS: &str = "message_id, topic, order_id, payload, parked_at, attempts";

/// The messages parked for `order_id`, oldest first.
pub async fn for_order(conn: &mut SqliteConnection, order_id: &str) -> sqlx::Result<Vec<Parked>> {
    let rows = sqlx::query(&format!("SELECT {COLUMNS} FROM parked WHERE order_id = ? ORDER BY parked_at, message_id"))
        .bind(order_id)
        .fetch_all(conn)
        .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

/// Parked messages whose retry time has come.
pub async fn due(conn: &mut SqliteConnection, limit: i64) -> sqlx::Result<Vec<Parked>> {
    let rows = sqlx::query(&format!(
        "SELECT {COLUMNS} FROM parked WHERE next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
    ))
    .bind(now_ms())
    .bind(limit)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(from_row).collect())
}

pub async fn remove(conn: &mut SqliteConnection, message_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM parked WHERE message_id = ?").bind(message_id).execute(conn).await?;
    Ok(())
}

/// Pushes the next attempt back (exponential, capped at a minute).
pub async fn postpone(conn: &mut SqliteConnection, message_id: &str, attempts: i64) -> sqlx::Result<()> {
    let delay = (1000i64 << attempts.clamp(0, 6)).min(60_000);
    sqlx::query("UPDATE parked SET attempts = attempts + 1, next_attempt_at = ? WHERE message_id = ?")
        .bind(now_ms() + delay)
        .bind(message_id)
        .execute(conn)
        .await?;
    Ok(())
}

pub async fn count<'e, E: sqlx::SqliteExecutor<'e>>(conn: E) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM parked").fetch_one(conn).await
}

/// A parked message as operators see it.
#[derive(Debug, serde::Serialize)]
pub struct ParkedView {
    pub message_id: String,
    pub topic: String,
    pub order_id: String,
    pub reason: String,
    pub parked_at_ms: i64,
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
}

pub async fn list(pool: &sqlx::SqlitePool, limit: i64) -> sqlx::Result<Vec<ParkedView>> {
    let rows = sqlx::query(
        "SELECT message_id, topic, order_id, reason, parked_at, attempts, next_attempt_at FROM parked
         ORDER BY parked_at LIMIT ?",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| ParkedView {
            message_id: r.get(0),
            topic: r.get(1),
            order_id: r.get(2),
            reason: r.get(3),
            parked_at_ms: r.get(4),
            attempts: r.get(5),
            next_attempt_at_ms: r.get(6),
        })
        .collect())
}
