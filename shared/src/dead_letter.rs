//! Dead letters: messages that can never be applied, kept with the reason
//! so an operator can inspect them. Recording one lets the consumer ack the
//! message, so poison never blocks what comes behind it.

use serde::{Deserialize, Serialize};

use crate::clock::now_ms;
use crate::db::{DbResult, Reader, Row, Tx};

/// At most this much of a payload is kept; the full size is recorded.
const KEEP_BYTES: usize = 16 * 1024;

pub fn record(
    tx: &mut Tx<'_>,
    topic: &str,
    message_id: Option<String>,
    order_id: Option<String>,
    payload: &[u8],
    reason: &str,
) -> DbResult<()> {
    tx.execute(
        "INSERT INTO dead_letters (topic, message_id, order_id, payload, payload_bytes, reason, at)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
        &[
            &topic,
            &message_id,
            &order_id,
            &&payload[..payload.len().min(KEEP_BYTES)],
            &(payload.len() as i64),
            &reason,
            &now_ms(),
        ],
    )?;
    Ok(())
}

/// A dead letter as operators see it (`GET /dead-letters` on a node).
#[derive(Debug, Serialize, Deserialize)]
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

pub async fn list(reader: &Reader, limit: i64) -> DbResult<Vec<DeadLetter>> {
    reader
        .fetch(
            "SELECT id, topic, message_id, order_id, payload, payload_bytes, reason, at
             FROM dead_letters ORDER BY id DESC LIMIT $1",
            &[&limit],
            |r: &Row<'_>| {
                Ok(DeadLetter {
                    id: r.get(0)?,
                    topic: r.get(1)?,
                    message_id: r.get(2)?,
                    order_id: r.get(3)?,
                    payload: String::from_utf8_lossy(&r.get::<Vec<u8>>(4)?).into_owned(),
                    payload_bytes: r.get(5)?,
                    reason: r.get(6)?,
                    at_ms: r.get(7)?,
                })
            },
        )
        .await
}

/// How many dead letters are kept.
pub async fn count(reader: &Reader) -> DbResult<i64> {
    reader.scalar("SELECT COUNT(*) FROM dead_letters", &[]).await
}

/// One dead letter with its stored payload bytes.
pub struct Stored {
    pub topic: String,
    pub payload: Vec<u8>,
    pub payload_bytes: i64,
}

pub async fn get(reader: &Reader, id: i64) -> DbResult<Option<Stored>> {
    reader
        .fetch_opt("SELECT topic, payload, payload_bytes FROM dead_letters WHERE id = $1", &[&id], |r| {
            Ok(Stored { topic: r.get(0)?, payload: r.get(1)?, payload_bytes: r.get(2)? })
        })
        .await
}

pub fn remove(tx: &mut Tx<'_>, id: i64) -> DbResult<()> {
    tx.execute("DELETE FROM dead_letters WHERE id = $1", &[&id])?;
    Ok(())
}
