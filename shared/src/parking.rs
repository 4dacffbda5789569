//! Parking: a message that arrives before what it depends on (an
//! `in-stock` before its order) is stored and acked, never held unacked.
//! The consumer retries an order's parked messages right after any message
//! for that order is applied, and [`due`] feeds a timer for the rest.

use std::collections::HashSet;

use crate::clock::now_ms;
use crate::db::{DbError, DbResult, Reader, Row, Tx};
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

pub fn park(tx: &mut Tx<'_>, msg: &Inbound, reason: &str, retry_in_ms: i64) -> DbResult<()> {
    let now = now_ms();
    tx.execute(
        "INSERT INTO parked (message_id, topic, order_id, payload, reason, parked_at, next_attempt_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (message_id) DO NOTHING",
        &[
            &msg.message_id().to_string(),
            &msg.topic.suffix(),
            &msg.order_id().to_string(),
            &msg.payload.as_ref(),
            &reason,
            &now,
            &(now + retry_in_ms),
        ],
    )?;
    Ok(())
}

fn from_row(r: &Row<'_>) -> DbResult<Parked> {
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
pub fn for_order(tx: &mut Tx<'_>, order_id: &str) -> DbResult<Vec<Parked>> {
    tx.query(
        &format!("SELECT {COLUMNS} FROM parked WHERE order_id = $1 ORDER BY parked_at, message_id"),
        &[&order_id],
        from_row,
    )
}

/// Parked messages whose retry time has come. On PostgreSQL the rows are
/// locked, and rows another instance's timer holds are skipped.
pub fn due(tx: &mut Tx<'_>, limit: i64) -> DbResult<Vec<Parked>> {
    let lock = match tx.backend() {
        crate::db::Backend::Sqlite => "",
        crate::db::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
    };
    tx.query(
        &format!("SELECT {COLUMNS} FROM parked WHERE next_attempt_at <= $1 ORDER BY next_attempt_at LIMIT $2{lock}"),
        &[&now_ms(), &limit],
        from_row,
    )
}

pub fn remove(tx: &mut Tx<'_>, message_id: &str) -> DbResult<()> {
    tx.execute("DELETE FROM parked WHERE message_id = $1", &[&message_id])?;
    Ok(())
}

/// Pushes the next attempt back (exponential, capped at a minute).
pub fn postpone(tx: &mut Tx<'_>, message_id: &str, attempts: i64) -> DbResult<()> {
    let delay = (1000i64 << attempts.clamp(0, 6)).min(60_000);
    tx.execute(
        "UPDATE parked SET attempts = attempts + 1, next_attempt_at = $1 WHERE message_id = $2",
        &[&(now_ms() + delay), &message_id],
    )?;
    Ok(())
}

/// The orders something is parked for, on the writer.
pub fn orders(tx: &mut Tx<'_>) -> DbResult<HashSet<OrderId>> {
    tx.query("SELECT DISTINCT order_id FROM parked", &[], |r| {
        let id: String = r.get(0)?;
        // Parked messages passed envelope validation: their order ids parse.
        OrderId::parse(&id).map_err(|e| DbError::corrupt("parked", &id, e))
    })
    .map(|ids| ids.into_iter().collect())
}

/// Which of `order_ids` have parked messages (PostgreSQL: one statement).
pub fn orders_among(tx: &mut Tx<'_>, order_ids: &[String]) -> DbResult<HashSet<OrderId>> {
    tx.query("SELECT DISTINCT order_id FROM parked WHERE order_id = ANY($1)", &[&order_ids.to_vec()], |r| {
        let id: String = r.get(0)?;
        OrderId::parse(&id).map_err(|e| DbError::corrupt("parked", &id, e))
    })
    .map(|ids| ids.into_iter().collect())
}

/// How many messages are parked, for operators.
pub async fn count(reader: &Reader) -> DbResult<i64> {
    reader.scalar("SELECT COUNT(*) FROM parked", &[]).await
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

pub async fn list(reader: &Reader, limit: i64) -> DbResult<Vec<ParkedView>> {
    reader
        .fetch(
            "SELECT message_id, topic, order_id, reason, parked_at, attempts, next_attempt_at FROM parked
             ORDER BY parked_at LIMIT $1",
            &[&limit],
            |r| {
                Ok(ParkedView {
                    message_id: r.get(0)?,
                    topic: r.get(1)?,
                    order_id: r.get(2)?,
                    reason: r.get(3)?,
                    parked_at_ms: r.get(4)?,
                    attempts: r.get(5)?,
                    next_attempt_at_ms: r.get(6)?,
                })
            },
        )
        .await
}
