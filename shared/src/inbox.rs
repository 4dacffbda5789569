//! Inbox: remembers every applied `message_id` in the same transaction as
//! its effect, so a second copy of a message is a no-op. Its rows are also
//! the timeline's record of applied messages (`timeline::for_order`).

use std::collections::HashSet;

use crate::clock::now_ms;
use crate::db::{Backend, DbResult, Tx};
use crate::message::Inbound;

/// Records the batch's messages; returns, per message, whether its id is
/// new (a copy seen before, in an earlier batch or earlier in this one, is
/// `false`). SQLite: one statement per message; PostgreSQL: one for all.
pub fn record_all(tx: &mut Tx<'_>, msgs: &[Inbound]) -> DbResult<Vec<bool>> {
    let now = now_ms();
    let mut seen = HashSet::with_capacity(msgs.len());
    // Only a first copy within the batch can be new.
    let first: Vec<bool> = msgs.iter().map(|m| seen.insert(m.message_id())).collect();
    match tx.backend() {
        Backend::Sqlite => {
            let mut fresh = Vec::with_capacity(msgs.len());
            for (msg, first) in msgs.iter().zip(first) {
                let n = match first {
                    true => tx.execute(
                        "INSERT INTO inbox (message_id, topic, order_id, received_at) VALUES ($1, $2, $3, $4)
                         ON CONFLICT (message_id) DO NOTHING",
                        &[&msg.message_id().to_string(), &msg.topic.suffix(), &msg.order_id().to_string(), &now],
                    )?,
                    false => 0,
                };
                fresh.push(n == 1);
            }
            Ok(fresh)
        }
        Backend::Postgres => {
            let firsts = || msgs.iter().zip(&first).filter(|(_, f)| **f).map(|(m, _)| m);
            let ids: Vec<String> = firsts().map(|m| m.message_id().to_string()).collect();
            let topics: Vec<String> = firsts().map(|m| m.topic.suffix().to_owned()).collect();
            let orders: Vec<String> = firsts().map(|m| m.order_id().to_string()).collect();
            let inserted: HashSet<String> = tx
                .query(
                    "INSERT INTO inbox (message_id, topic, order_id, received_at)
                     SELECT m, t, o, $4 FROM unnest($1::text[], $2::text[], $3::text[]) AS e(m, t, o)
                     ON CONFLICT (message_id) DO NOTHING RETURNING message_id",
                    &[&ids, &topics, &orders, &now],
                    |r| r.get(0),
                )?
                .into_iter()
                .collect();
            Ok(msgs.iter().zip(first).map(|(m, f)| f && inserted.contains(&m.message_id().to_string())).collect())
        }
    }
}

/// Forgets ids older than `keep_ms`, at most `limit` of them, oldest
/// first. A duplicate arriving after that is still harmless: business keys
/// (one order, one reservation, one release per `order_id`) make every
/// effect idempotent on their own.
pub fn prune(tx: &mut Tx<'_>, keep_ms: i64, limit: i64) -> DbResult<u64> {
    tx.execute(
        "DELETE FROM inbox WHERE message_id IN
             (SELECT message_id FROM inbox WHERE received_at < $1 ORDER BY received_at LIMIT $2)",
        &[&(now_ms() - keep_ms), &limit],
    )
}

/// Forgets a message: one that was dead-lettered must not count as seen, so
/// that replaying it after a fix is applied rather than dropped.
pub fn forget(tx: &mut Tx<'_>, message_id: &str) -> DbResult<()> {
    tx.execute("DELETE FROM inbox WHERE message_id = $1", &[&message_id])?;
    Ok(())
}
