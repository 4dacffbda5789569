//! An order's message timeline on one node: what the consumer did with
//! each message about it (applied, deduplicated, parked, unparked,
//! ignored, dead-lettered), plus the events the node queued and published
//! (from the outbox).
//!
//! Notes are written in the consumer's transaction for everything but the
//! common case: a message applied as it came has its inbox row (same
//! columns, same transaction) and no note, one insert less per message.
//! [`for_order`] reads an inbox row as "applied" unless a note says the
//! message was parked or ignored instead.

use rusqlite::{params, Connection};
use serde::Serialize;
use sqlx::{Row, SqlitePool};

use crate::db::now_ms;
use crate::ids::{MessageId, OrderId};

pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS timeline (
    id         INTEGER PRIMARY KEY, -- rowid: write order (no AUTOINCREMENT bookkeeping)
    order_id   TEXT NOT NULL,
    at         INTEGER NOT NULL,
    event      TEXT NOT NULL,
    topic      TEXT NOT NULL,
    message_id TEXT NOT NULL
);
-- No index on order_id: order ids are hashes, so every note would update an
-- entry on a random page of that index, one more page for the commit to
-- write per message (about 16 % of the end-to-end order rate, measured with
-- `webshop bench`). Notes only append; the rare lookup of one order scans
-- them, as it scans the outbox.
DROP INDEX IF EXISTS timeline_by_order;
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

/// Everything this node knows about `order_id`, oldest first. Scans the
/// node's notes, inbox and outbox once each (an operator's lookup on the read
/// pool, off the write path: about 0.3 s with a million of each).
pub async fn for_order(pool: &SqlitePool, order_id: &str) -> sqlx::Result<Vec<Entry>> {
    let rows = sqlx::query(
        "WITH events AS MATERIALIZED (SELECT created_at, sent_at, topic, message_id FROM outbox WHERE order_id = ?1),
              notes AS MATERIALIZED (SELECT at, event, topic, message_id FROM timeline WHERE order_id = ?1)
         SELECT at, event, topic, message_id FROM notes
         UNION ALL SELECT received_at, 'applied', topic, message_id FROM inbox i WHERE order_id = ?1
             AND NOT EXISTS (SELECT 1 FROM notes n WHERE n.message_id = i.message_id AND n.event IN ('parked', 'ignored'))
         UNION ALL SELECT created_at, 'queued', topic, message_id FROM events
         UNION ALL SELECT sent_at, 'published', topic, message_id FROM events WHERE sent_at IS NOT NULL
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

/// Forgets entries older than `keep_ms`. Notes are written in time order,
/// so the old ones are the lowest ids.
pub fn prune(conn: &Connection, keep_ms: i64) -> rusqlite::Result<()> {
    crate::db::prune_log(conn, "timeline", "id", "at >= ?1", now_ms() - keep_ms)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes_at(conn: &Connection, ats: &[i64]) {
        for (i, at) in ats.iter().enumerate() {
            conn.execute(
                "INSERT INTO timeline (order_id, at, event, topic, message_id) VALUES (?, ?, 'applied', 'orders/send', ?)",
                params![format!("o{i}"), at, format!("m{i}")],
            )
            .unwrap();
        }
    }

    fn left(conn: &Connection) -> Vec<String> {
        let mut stmt = conn.prepare("SELECT order_id FROM timeline ORDER BY id").unwrap();
        stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[test]
    fn prune_forgets_only_notes_older_than_the_window() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        let now = now_ms();
        notes_at(&conn, &[now - 90_000, now - 80_000, now - 1_000, now]);
        prune(&conn, 60_000).unwrap();
        assert_eq!(left(&conn), ["o2", "o3"]);
        prune(&conn, 60_000).unwrap();
        assert_eq!(left(&conn), ["o2", "o3"], "nothing old is left to forget");
        prune(&conn, -10_000).unwrap();
        assert!(left(&conn).is_empty(), "every note older than the window goes, the newest too");
        prune(&conn, 60_000).unwrap();
    }
}
