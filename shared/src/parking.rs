//! Parking: a message that arrives before what it depends on (an
//! `in-stock` before its order) is stored and acked, never held unacked.
//! The consumer retries an order's parked messages right after any message
//! for that order is applied, and [`due`] feeds a timer for the rest.

use rusqlite::{params, Connection};
use sqlx::Row;

use std::collections::HashSet;

use crate::db::now_ms;
use crate::ids::OrderId;
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

pub fn park(conn: &Connection, msg: &Inbound, reason: &str, retry_in_ms: i64) -> rusqlite::Result<()> {
    let now = now_ms();
    conn.prepare_cached(
        "INSERT INTO parked (message_id, topic, order_id, payload, reason, parked_at, next_attempt_at)
         VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (message_id) DO NOTHING",
    )?
    .execute(params![
        msg.message_id().to_string(),
        msg.topic.suffix(),
        msg.order_id().to_string(),
        msg.payload.as_ref(),
        reason,
        now,
        now + retry_in_ms
    ])?;
    Ok(())
}

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Parked> {
    Ok(Parked {
        message_id: r.get(0)?,
        topic: r.get(1)?,
        order_id: r.get(2)?,
        payload: r.get(3)?,
        parked_at_ms: r.get(4)?,
        attempts: r.get(5)?,
    })
}

const COLUMNS: &str = "message_id, topic, order_id, payload, parked_at, attempts";

/// The messages parked for `order_id`, oldest first.
pub fn for_order(conn: &Connection, order_id: &str) -> rusqlite::Result<Vec<Parked>> {
    let mut stmt = conn
        .prepare_cached(&format!("SELECT {COLUMNS} FROM parked WHERE order_id = ? ORDER BY parked_at, message_id"))?;
    let rows = stmt.query_map([order_id], from_row)?;
    rows.collect()
}

/// Parked messages whose retry time has come.
pub fn due(conn: &Connection, limit: i64) -> rusqlite::Result<Vec<Parked>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM parked WHERE next_attempt_at <= ? ORDER BY next_attempt_at LIMIT ?"
    ))?;
    let rows = stmt.query_map([now_ms(), limit], from_row)?;
    rows.collect()
}

pub fn remove(conn: &Connection, message_id: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("DELETE FROM parked WHERE message_id = ?")?.execute([message_id])?;
    Ok(())
}

/// Pushes the next attempt back (exponential, capped at a minute).
pub fn postpone(conn: &Connection, message_id: &str, attempts: i64) -> rusqlite::Result<()> {
    let delay = (1000i64 << attempts.clamp(0, 6)).min(60_000);
    conn.prepare_cached("UPDATE parked SET attempts = attempts + 1, next_attempt_at = ? WHERE message_id = ?")?
        .execute(params![now_ms() + delay, message_id])?;
    Ok(())
}

/// The orders something is parked for, on the writer.
pub fn orders(conn: &Connection) -> rusqlite::Result<HashSet<OrderId>> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT order_id FROM parked")?;
    let ids = stmt.query_map([], |r| r.get::<_, String>(0))?;
    // Parked messages passed envelope validation: their order ids parse.
    ids.filter_map(|id| id.map(|id| OrderId::parse(&id).ok()).transpose()).collect()
}

/// How many messages are parked, for operators.
pub async fn count(pool: &sqlx::SqlitePool) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM parked").fetch_one(pool).await
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
