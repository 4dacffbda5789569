//! Transactional outbox. A handler never publishes: it [`enqueue`]s the
//! event in the transaction that holds the state change, and the [`relay`]
//! publishes it after commit, marking it sent only on the broker's PUBACK.
//! Unsent events are republished after every reconnect and on start.
//!
//! The relay normally publishes what the node's writer just committed from
//! memory ([`Committed`]) rather than reading it back; the database stays
//! the record it falls back to whenever memory can't vouch for having
//! every event (on start, after a reconnect or a failed round, after an
//! overflow).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use serde::Serialize;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::clock::now_ms;
use crate::db::events::{Pending, Unsent, LEASE_MS};
use crate::db::{Backend, Db, DbResult, Tx};
use crate::ids::OrderId;
use crate::message::Envelope;
use crate::topics::Topic;

/// Most events the relay reads (from memory or the table) at a time.
pub const BATCH: i64 = 50;
/// Most events the relay has out before their PUBACKs, below the
/// connection's window (`bus::INFLIGHT`): publishes are pipelined, so one
/// late PUBACK holds up only its own event, not the ones behind it.
const RELAY_INFLIGHT: usize = 4 * BATCH as usize;
/// After a publish failed, how long before the relay reads from the oldest
/// unsent event again (the failed one among them).
const RESCAN_AFTER: Duration = Duration::from_secs(1);

/// Queues `body` as a new message on `topic` in the caller's transaction,
/// stamped with the transaction's trace context. [`Db::write`] inserts the
/// transaction's events, in order, just before it commits.
pub fn enqueue<B: Serialize>(tx: &mut Tx<'_>, topic: Topic, order_id: OrderId, body: B) {
    let envelope = Envelope::new(topic, order_id, body).with_traceparent(tx.traceparent.clone());
    tx.events.push(Pending {
        message_id: envelope.message_id.to_string(),
        topic: topic.suffix(),
        order_id: order_id.to_string(),
        payload: envelope.to_json(),
        created_at: now_ms(),
    });
}

/// How far behind the relay is.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Backlog {
    pub unsent: i64,
    pub oldest_unsent_age_ms: Option<i64>,
}

pub async fn backlog(reader: &crate::db::Reader) -> DbResult<Backlog> {
    let (unsent, oldest) = reader
        .fetch_opt("SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL", &[], |r| {
            Ok((r.get::<i64>(0)?, r.get::<Option<i64>>(1)?))
        })
        .await?
        .unwrap_or_default();
    Ok(Backlog { unsent, oldest_unsent_age_ms: oldest.map(|t| now_ms() - t) })
}

/// Wakes the relay when a transaction that enqueued events has committed.
#[derive(Clone, Default)]
pub struct Wakeup(Arc<Notify>);

impl Wakeup {
    pub fn wake(&self) {
        self.0.notify_one();
    }
}

/// Publishes unsent events in order until `shutdown`; on shutdown it makes
/// one last pass so committed events leave before the process exits.
///
/// Publishes are pipelined: up to [`RELAY_INFLIGHT`] are out at once, each
/// marked sent on its own PUBACK. A publish that fails (no PUBACK within
/// the bus's timeout, a lost connection) is published again by a pass from
/// the oldest unsent event a moment later; the events still out are
/// skipped by that pass, not sent twice.
///
/// Events the broker acknowledged are marked sent by the next write
/// transaction of the node (usually the consumer's next batch, see
/// [`Sent`]) rather than by a commit of their own: one commit and fsync
/// less per round. Until then the relay's cursor keeps it from publishing
/// them again; a crash in between republishes them, which consumers
/// deduplicate like any redelivery.
pub async fn relay(db: Db, bus: Bus, wakeup: Wakeup, shutdown: CancellationToken) {
    let mut session = bus.session_watch();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut last_prune = 0i64;
    // Highest seq published (or out); everything unsent above it is next.
    // 0: read from the oldest unsent event.
    let mut cursor = 0i64;
    let mut out = Outstanding::default();
    let mut rescan_at: Option<tokio::time::Instant> = None;
    loop {
        let flush = tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = wakeup.0.notified() => false,
            _ = tick.tick() => {
                // PostgreSQL assigns seqs before commit, and other instances
                // write the same table: a row below the cursor may commit
                // later, or be left by an instance that died. Each second the
                // relay claims from the oldest unsent row again.
                if db.backend() == Backend::Postgres {
                    cursor = 0;
                }
                true
            }
            // A fresh connection: republish what is still unsent.
            _ = session.changed() => {
                cursor = 0;
                true
            }
            Some((seq, result)) = out.futures.next(), if !out.futures.is_empty() => {
                out.seqs.remove(&seq);
                match result {
                    Ok(()) => {
                        crate::crash_point!("outbox::before_mark_sent");
                        db.sent.push([seq]);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, seq, "event not acknowledged by the broker; publishing it again");
                        rescan_at.get_or_insert_with(|| tokio::time::Instant::now() + RESCAN_AFTER);
                    }
                }
                false
            }
        };
        if rescan_at.is_some_and(|at| at <= tokio::time::Instant::now()) {
            rescan_at = None;
            cursor = 0;
        }
        // Marks left waiting (the node wrote nothing for a second), or
        // about to read from the oldest unsent event again: write them.
        if (flush || cursor == 0) && db.sent.has_pending() {
            if let Err(e) = write_marks(&db).await {
                tracing::warn!(error = %e, "marking published events sent failed; retrying");
            }
        }
        while bus.is_connected() && out.seqs.len() < RELAY_INFLIGHT {
            match next_events(&db, cursor).await {
                Ok(rows) => {
                    let Some(last) = rows.last().map(|r| r.seq) else { break };
                    let full = rows.len() == BATCH as usize;
                    crate::crash_point!("outbox::before_publish");
                    for row in rows {
                        out.publish(&bus, row);
                    }
                    cursor = last;
                    if !full {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "reading the outbox failed; retrying");
                    cursor = 0;
                    break;
                }
            }
        }
        if now_ms() - last_prune > PRUNE_EVERY_MS {
            last_prune = now_ms();
            if let Err(e) = prune(&db).await {
                tracing::warn!(error = %e, "pruning sent outbox rows failed");
            }
            // `seq` is a plain rowid: once pruning has emptied the table,
            // new events number from 1 again, below the cursor.
            cursor = 0;
        }
    }
    // Flush, within a bound: what is out, then events committed just
    // before shutdown.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        if bus.is_connected() {
            if let Ok(rows) = next_events(&db, cursor).await {
                for row in rows {
                    out.publish(&bus, row);
                }
            }
        }
        while let Some((seq, result)) = out.futures.next().await {
            if result.is_ok() {
                db.sent.push([seq]);
            }
        }
    })
    .await;
    if let Err(e) = write_marks(&db).await {
        tracing::warn!(error = %e, "marking the last published events sent failed");
    }
}

type PublishFuture = futures_util::future::BoxFuture<'static, (i64, Result<(), crate::bus::BusError>)>;

/// The relay's publishes waiting for their PUBACKs.
#[derive(Default)]
struct Outstanding {
    futures: FuturesUnordered<PublishFuture>,
    seqs: HashSet<i64>,
}

impl Outstanding {
    /// Publishes `row` unless it is out already (a pass from the oldest
    /// unsent event reads those again).
    fn publish(&mut self, bus: &Bus, row: Unsent) {
        if !self.seqs.insert(row.seq) {
            return;
        }
        let bus = bus.clone();
        self.futures.push(Box::pin(async move {
            let path = bus.route_stored(&row.topic, &row.order_id);
            (row.seq, bus.publish(&path, row.payload).await)
        }));
    }
}

/// A transaction of nothing but the pending marks (when no other write
/// came to take them).
async fn write_marks(db: &Db) -> DbResult<()> {
    db.write(|_| Ok(())).await
}

/// The oldest unsent events after `after`, in the order they were written.
///
/// SQLite: read on the read pool (only committed rows matter, and the
/// writer stays free for the consumer). PostgreSQL: claimed on the read
/// pool, one statement: rows this instance owns or whose lease ran out,
/// skipping rows another relay is claiming at that moment, leased to this
/// instance for [`LEASE_MS`].
pub async fn unsent(db: &Db, after: i64, limit: i64) -> DbResult<Vec<Unsent>> {
    let row = |r: &crate::db::Row<'_>| {
        Ok(Unsent { seq: r.get(0)?, topic: r.get(1)?, payload: r.get(2)?, order_id: r.get(3)? })
    };
    match db.backend() {
        Backend::Sqlite => {
            db.reader
                .fetch(
                    "SELECT seq, topic, payload, COALESCE(order_id, '') FROM outbox
                     WHERE sent_at IS NULL AND seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &limit],
                    row,
                )
                .await
        }
        Backend::Postgres => {
            let now = now_ms();
            let mut rows = db
                .reader
                .fetch(
                    "UPDATE outbox SET owner = $1, lease_until = $2
                     WHERE seq IN (SELECT seq FROM outbox
                                   WHERE sent_at IS NULL AND seq > $3 AND (owner = $1 OR lease_until < $4)
                                   ORDER BY seq LIMIT $5 FOR UPDATE SKIP LOCKED)
                     RETURNING seq, topic, payload, COALESCE(order_id, '')",
                    &[&crate::db::instance(), &(now + LEASE_MS), &after, &now, &limit],
                    row,
                )
                .await?;
            rows.sort_unstable_by_key(|r| r.seq);
            Ok(rows)
        }
    }
}

/// Marks events sent now (the broker acknowledged them), in a transaction
/// of its own: for tools and tests that publish outside the relay.
pub async fn mark_sent(db: &Db, seqs: Vec<i64>) -> DbResult<()> {
    db.sent.push(seqs);
    write_marks(db).await
}

/// The next events after `after`: from memory when it can vouch for
/// them, else from the table.
async fn next_events(db: &Db, after: i64) -> DbResult<Vec<Unsent>> {
    if let Some(rows) = db.committed.next(after, BATCH as usize) {
        return Ok(rows);
    }
    let rows = unsent(db, after, BATCH).await?;
    if rows.len() < BATCH as usize {
        db.committed.caught_up();
    }
    Ok(rows)
}

/// Deletes events sent more than `keep_ms` ago, at most `limit` seqs'
/// worth. Events are sent in `seq` order, so those are the lowest seqs; it
/// stops at the oldest event still unsent.
fn prune_sent(tx: &mut Tx<'_>, keep_ms: i64, limit: i64) -> DbResult<u64> {
    crate::db::prune_log(tx, "outbox", "seq", "sent_at IS NULL OR sent_at >= $1", now_ms() - keep_ms, limit)
}

/// How often the relay prunes.
const PRUNE_EVERY_MS: i64 = 1_000;
/// Rows the prune deletes per table and transaction: a short transaction,
/// so the consumer's batches go on between two (one minute's worth at a
/// time stalled the writer for seconds at 4,000 orders/s).
const PRUNE_CHUNK: i64 = 5_000;
/// Most transactions one pass takes: a backlog (after a long stop) is
/// worked off over several passes.
const PRUNE_CHUNKS: usize = 20;

/// Forgets what `db.retention` no longer keeps, a chunk per transaction.
/// On PostgreSQL one instance at a time prunes (the others skip a pass).
async fn prune(db: &Db) -> DbResult<()> {
    let ms = |secs: f64| (secs * 1000.0) as i64;
    let keep = db.retention;
    for _ in 0..PRUNE_CHUNKS {
        let most = db
            .write(move |tx| {
                if tx.backend() == Backend::Postgres
                    && tx
                        .scalar("SELECT CASE WHEN pg_try_advisory_xact_lock(hashtextextended('prune', 0)) THEN 1::bigint ELSE 0 END", &[])?
                        == 0
                {
                    return Ok(0);
                }
                let sent = prune_sent(tx, ms(keep.sent_events_secs), PRUNE_CHUNK)?;
                let inbox = crate::inbox::prune(tx, ms(keep.inbox_secs), PRUNE_CHUNK)?;
                let notes = crate::timeline::prune(tx, ms(keep.timeline_secs), PRUNE_CHUNK)?;
                Ok::<_, crate::db::DbError>(sent.max(inbox).max(notes))
            })
            .await?;
        if most < PRUNE_CHUNK as u64 {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::db::events::tests::events;

    fn left(tx: &mut Tx<'_>) -> Vec<String> {
        tx.query("SELECT message_id FROM outbox ORDER BY seq", &[], |r| r.get(0)).unwrap()
    }

    #[tokio::test]
    async fn prune_deletes_old_sent_events_up_to_the_oldest_unsent() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::test_db(dir.path()).await;
        db.write(|tx| -> DbResult<()> {
            let (old, now) = (now_ms() - 90_000, now_ms());
            events(tx, &[Some(old), Some(old), None, Some(old), Some(now)]);
            assert_eq!(prune_sent(tx, 60_000, 100)?, 2);
            assert_eq!(left(tx), ["m2", "m3", "m4"], "never past an unsent event");
            tx.execute("UPDATE outbox SET sent_at = $1 WHERE message_id = 'm2'", &[&old])?;
            assert_eq!(prune_sent(tx, 60_000, 100)?, 2);
            assert_eq!(left(tx), ["m4"], "a recent event stays");
            tx.execute("UPDATE outbox SET sent_at = $1", &[&old])?;
            assert_eq!(prune_sent(tx, 60_000, 100)?, 1);
            assert!(left(tx).is_empty());
            assert_eq!(prune_sent(tx, 60_000, 100)?, 0);
            events(tx, &[Some(old), Some(old), Some(old)]);
            assert_eq!(prune_sent(tx, 60_000, 2)?, 2, "at most the limit");
            assert_eq!(prune_sent(tx, 60_000, 2)?, 1);
            Ok(())
        })
        .await
        .unwrap();
    }
}
