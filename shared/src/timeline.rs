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

use serde::Serialize;

use crate::clock::now_ms;
use crate::db::{Backend, DbResult, Reader, Tx};
use crate::ids::{MessageId, OrderId};

/// What the consumer did with one message, kept until the batch commits.
#[derive(Debug, Clone, Copy)]
pub struct Note {
    pub order_id: OrderId,
    pub at_ms: i64,
    pub event: &'static str,
    pub topic: &'static str,
    pub message_id: MessageId,
}

/// Writes a batch's notes (PostgreSQL: in one statement).
pub fn record_all(tx: &mut Tx<'_>, notes: &[Note]) -> DbResult<()> {
    const INSERT: &str = "INSERT INTO timeline (order_id, at, event, topic, message_id)";
    match tx.backend() {
        Backend::Sqlite => {
            for n in notes {
                tx.execute(
                    &format!("{INSERT} VALUES ($1, $2, $3, $4, $5)"),
                    &[&n.order_id.to_string(), &n.at_ms, &n.event, &n.topic, &n.message_id.to_string()],
                )?;
            }
        }
        Backend::Postgres if notes.is_empty() => {}
        Backend::Postgres => {
            let column = |f: fn(&Note) -> String| notes.iter().map(f).collect::<Vec<_>>();
            let ats: Vec<i64> = notes.iter().map(|n| n.at_ms).collect();
            tx.execute(
                &format!(
                    "{INSERT} SELECT o, a, e, t, m
                     FROM unnest($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[])
                          WITH ORDINALITY AS x(o, a, e, t, m, n)
                     ORDER BY n"
                ),
                &[
                    &column(|n| n.order_id.to_string()),
                    &ats,
                    &column(|n| n.event.to_owned()),
                    &column(|n| n.topic.to_owned()),
                    &column(|n| n.message_id.to_string()),
                ],
            )?;
        }
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
pub async fn for_order(reader: &Reader, order_id: &str) -> DbResult<Vec<Entry>> {
    reader.fetch(
        "WITH events AS MATERIALIZED (SELECT created_at, sent_at, topic, message_id FROM outbox WHERE order_id = $1),
              notes AS MATERIALIZED (SELECT at, event, topic, message_id FROM timeline WHERE order_id = $1)
         SELECT at, event, topic, message_id FROM notes
         UNION ALL SELECT received_at, 'applied', topic, message_id FROM inbox i WHERE order_id = $1
             AND NOT EXISTS (SELECT 1 FROM notes n WHERE n.message_id = i.message_id AND n.event IN ('parked', 'ignored'))
         UNION ALL SELECT created_at, 'queued', topic, message_id FROM events
         UNION ALL SELECT sent_at, 'published', topic, message_id FROM events WHERE sent_at IS NOT NULL
         ORDER BY 1",
        &[&order_id],
        |r| Ok(Entry { at_ms: r.get(0)?, event: r.get(1)?, topic: r.get(2)?, message_id: r.get(3)? }),
    )
    .await
}

/// Forgets entries older than `keep_ms`, at most `limit` of them. Notes are
/// written in time order, so the old ones are the lowest ids.
pub fn prune(tx: &mut Tx<'_>, keep_ms: i64, limit: i64) -> DbResult<u64> {
    crate::db::prune_log(tx, "timeline", "id", "at >= $1", now_ms() - keep_ms, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notes_at(tx: &mut Tx<'_>, ats: &[i64]) {
        for (i, at) in ats.iter().enumerate() {
            tx.execute(
                "INSERT INTO timeline (order_id, at, event, topic, message_id)
                 VALUES ($1, $2, 'applied', 'orders/send', $3)",
                &[&format!("o{i}"), at, &format!("m{i}")],
            )
            .unwrap();
        }
    }

    fn left(tx: &mut Tx<'_>) -> Vec<String> {
        tx.query("SELECT order_id FROM timeline ORDER BY id", &[], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn prune_forgets_only_notes_older_than_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::test_db(dir.path()).await;
        db.write(|tx| -> DbResult<()> {
            let now = now_ms();
            notes_at(tx, &[now - 90_000, now - 80_000, now - 1_000, now]);
            prune(tx, 60_000, 100)?;
            assert_eq!(left(tx), ["o2", "o3"]);
            prune(tx, 60_000, 100)?;
            assert_eq!(left(tx), ["o2", "o3"], "nothing old is left to forget");
            prune(tx, -10_000, 100)?;
            assert!(left(tx).is_empty(), "every note older than the window goes, the newest too");
            prune(tx, 60_000, 100)?;
            Ok(())
        })
        .await
        .unwrap();
    }
}
