//! The events a write transaction enqueued, from the insert that gives
//! them their seqs to the marks that record their PUBACKs: `Db::write`
//! inserts a transaction's [`Pending`] events before it commits, hands
//! them to [`Committed`] after, and writes the [`Sent`] marks the relay
//! collected. The relay itself (`crate::outbox`) reads these; nothing here
//! reads the relay, so the unit of work and the relay import one way.

use std::collections::VecDeque;
use std::sync::Arc;

use crate::clock::now_ms;
use crate::db::{Backend, DbError, DbResult, Tx};

/// PostgreSQL: how long an instance owns the events it committed or
/// claimed before another instance's relay may claim them (it died, or
/// can't reach the broker).
pub(crate) const LEASE_MS: i64 = 10_000;

/// An event enqueued but not yet inserted.
#[derive(Debug)]
pub struct Pending {
    pub(crate) message_id: String,
    pub(crate) topic: &'static str,
    pub(crate) order_id: String,
    pub(crate) payload: Vec<u8>,
    pub(crate) created_at: i64,
}

/// Inserts events, in order (called by `Db::write`);
/// returns them with the seqs they got, for [`Committed`] once the
/// transaction commits.
/// SQLite: one statement per event. PostgreSQL: one for all of them, the
/// rows leased to this instance (its relay publishes them from memory),
/// seqs drawn in the events' order.
pub(crate) fn write_all(tx: &mut Tx<'_>, rows: Vec<Pending>) -> DbResult<Vec<Unsent>> {
    let seqs = match tx.backend() {
        Backend::Sqlite => {
            let mut seqs = Vec::with_capacity(rows.len());
            for r in &rows {
                seqs.push(tx.scalar(
                    "INSERT INTO outbox (message_id, topic, order_id, payload, created_at)
                     VALUES ($1, $2, $3, $4, $5) RETURNING seq",
                    &[&r.message_id, &r.topic, &r.order_id, &r.payload, &r.created_at],
                )?);
            }
            seqs
        }
        Backend::Postgres if rows.is_empty() => Vec::new(),
        Backend::Postgres => {
            let column = |f: fn(&Pending) -> String| rows.iter().map(f).collect::<Vec<_>>();
            let (ids, topics, orders) =
                (column(|r| r.message_id.clone()), column(|r| r.topic.to_owned()), column(|r| r.order_id.clone()));
            let payloads: Vec<Vec<u8>> = rows.iter().map(|r| r.payload.clone()).collect();
            let created: Vec<i64> = rows.iter().map(|r| r.created_at).collect();
            let lease = rows.iter().map(|r| r.created_at).max().unwrap_or_default() + LEASE_MS;
            let mut seqs: Vec<(String, i64)> = tx.query(
                "INSERT INTO outbox (message_id, topic, order_id, payload, created_at, owner, lease_until)
                 SELECT m, t, o, p, c, $6, $7
                 FROM unnest($1::text[], $2::text[], $3::text[], $4::bytea[], $5::bigint[])
                      WITH ORDINALITY AS e(m, t, o, p, c, n)
                 ORDER BY n
                 RETURNING message_id, seq",
                &[&ids, &topics, &orders, &payloads, &created, &crate::db::instance(), &lease],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            // Rows are inserted in `ORDER BY n` order, so seqs rise with it.
            seqs.sort_unstable_by_key(|(_, seq)| *seq);
            if seqs.iter().map(|(id, _)| id).ne(ids.iter()) {
                return Err(DbError::Misuse("outbox seqs out of the events' order".into()));
            }
            seqs.into_iter().map(|(_, seq)| seq).collect()
        }
    };
    Ok(rows
        .into_iter()
        .zip(seqs)
        .map(|(r, seq)| Unsent { seq, topic: r.topic.to_owned(), order_id: r.order_id, payload: r.payload })
        .collect())
}

/// Most committed events held for the relay; beyond that the relay reads
/// the outbox table instead (a broker outage, a relay far behind).
const COMMITTED_CAP: usize = 2048;

/// Events the node's writer committed and the relay has not taken yet, in
/// seq order: the relay publishes them from here instead of reading them
/// back on the read pool (one read and its wakeups per round). Memory only
/// vouches for what was committed since the relay last read the table and
/// caught up; until then, and after anything was dropped for want of room,
/// [`Committed::next`] sends the relay to the table, and starts over.
#[derive(Debug, Default, Clone)]
pub struct Committed(Arc<std::sync::Mutex<CommittedState>>);

#[derive(Debug, Default)]
struct CommittedState {
    events: VecDeque<Unsent>,
    /// The relay's last read of the table found every unsent event
    /// (fewer than a round), so from then on memory holds all new ones.
    synced: bool,
    /// An event was dropped (no room): memory no longer holds them all.
    lost: bool,
}

impl Committed {
    fn state(&self) -> std::sync::MutexGuard<'_, CommittedState> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One committed transaction's events (called by `Db::write` after
    /// the commit, on the writer thread, before the caller hears of it).
    pub(crate) fn push(&self, events: Vec<Unsent>) {
        if events.is_empty() {
            return;
        }
        let mut s = self.state();
        if s.events.len() + events.len() > COMMITTED_CAP {
            s.lost = true;
            return;
        }
        s.events.extend(events);
    }

    /// Up to `limit` events right after seq `after`, if memory can vouch
    /// for them (an empty list: nothing is unsent). `None`: read the table;
    /// memory is emptied and collects from this moment, so whatever
    /// committed before is in that read and whatever commits after is
    /// here (an event in both is skipped by its seq).
    pub(crate) fn next(&self, after: i64, limit: usize) -> Option<Vec<Unsent>> {
        let mut s = self.state();
        if after > 0 && s.synced && !s.lost {
            while s.events.front().is_some_and(|e| e.seq <= after) {
                s.events.pop_front();
            }
            // Seqs of one writer are consecutive (max + 1), so a gap means
            // memory missed something: go to the table.
            if s.events.front().is_none_or(|e| e.seq == after + 1) {
                let n = s.events.iter().zip(after + 1..).take(limit).take_while(|(e, seq)| e.seq == *seq).count();
                return Some(s.events.drain(..n).collect());
            }
        }
        *s = CommittedState::default();
        None
    }

    /// The relay read the table (after [`Committed::next`] sent it there)
    /// and found fewer than a round: memory holds everything newer.
    pub(crate) fn caught_up(&self) {
        self.state().synced = true;
    }
}

/// Events the broker acknowledged (seq, when), waiting to be marked sent
/// by the node's next write transaction (`Db::write` takes them).
#[derive(Debug, Default, Clone)]
pub struct Sent(Arc<std::sync::Mutex<Vec<(i64, i64)>>>);

impl Sent {
    fn pending(&self) -> std::sync::MutexGuard<'_, Vec<(i64, i64)>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn push(&self, seqs: impl IntoIterator<Item = i64>) {
        let now = now_ms();
        self.pending().extend(seqs.into_iter().map(|s| (s, now)));
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending().is_empty()
    }

    /// Takes the pending marks for one transaction. Unless that transaction
    /// commits ([`Taken::committed`]), they go back when the [`Taken`] is
    /// dropped: on an error, a rollback or a panic alike.
    pub(crate) fn take(&self) -> Taken<'_> {
        Taken { sent: self, marks: std::mem::take(&mut *self.pending()) }
    }
}

/// Marks taken by one write transaction.
pub(crate) struct Taken<'a> {
    sent: &'a Sent,
    marks: Vec<(i64, i64)>,
}

impl Taken<'_> {
    /// Sets `sent_at` of the taken events, in `conn`'s transaction: one
    /// statement per run of consecutive seqs acknowledged together (a relay
    /// round is one run), not one per event.
    pub(crate) fn write(&self, tx: &mut Tx<'_>) -> DbResult<()> {
        for (first, last, at) in runs(&self.marks) {
            tx.execute("UPDATE outbox SET sent_at = $1 WHERE seq BETWEEN $2 AND $3", &[&at, &first, &last])?;
        }
        Ok(())
    }

    /// The transaction committed: the marks are written.
    pub(crate) fn committed(mut self) {
        self.marks.clear();
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if !self.marks.is_empty() {
            self.sent.pending().append(&mut self.marks);
        }
    }
}

/// `(seq, at)` marks as `(first, last, at)` runs of consecutive seqs with
/// the same time.
fn runs(marks: &[(i64, i64)]) -> Vec<(i64, i64, i64)> {
    let mut marks = marks.to_vec();
    marks.sort_unstable();
    let mut runs: Vec<(i64, i64, i64)> = Vec::new();
    for (seq, at) in marks {
        match runs.last_mut() {
            Some((_, last, t)) if *t == at && seq == *last + 1 => *last = seq,
            _ => runs.push((seq, seq, at)),
        }
    }
    runs
}

/// An event waiting to be published.
#[derive(Debug, Clone)]
pub struct Unsent {
    pub seq: i64,
    /// Topic below the prefix.
    pub topic: String,
    /// The order it is about: picks the topic's partition.
    pub order_id: String,
    pub payload: Vec<u8>,
}
#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Outbox rows with the given `sent_at`s, message ids `m0`, `m1`, ...
    pub(crate) fn events(tx: &mut Tx<'_>, sent_at: &[Option<i64>]) {
        for (i, at) in sent_at.iter().enumerate() {
            tx.execute(
                "INSERT INTO outbox (message_id, topic, order_id, payload, created_at, sent_at)
                 VALUES ($1, 'orders/status', 'o', x'', 0, $2)",
                &[&format!("m{i}"), at],
            )
            .unwrap();
        }
    }

    #[tokio::test]
    async fn marks_are_written_as_runs_of_consecutive_seqs() {
        assert_eq!(runs(&[(5, 1), (3, 1), (4, 1), (9, 1), (6, 2), (7, 2)]), [(3, 5, 1), (6, 7, 2), (9, 9, 1)]);
        assert_eq!(runs(&[(2, 1), (2, 1), (3, 1)]), [(2, 2, 1), (2, 3, 1)], "a repeat starts a new run");
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db::test_db(dir.path()).await;
        db.write(|tx| -> DbResult<()> {
            events(tx, &[None; 6]);
            let sent = Sent::default();
            sent.pending().extend([(1, 10), (2, 10), (4, 11), (5, 11)]);
            sent.take().write(tx)?;
            let at: Vec<Option<i64>> = tx.query("SELECT sent_at FROM outbox ORDER BY seq", &[], |r| r.get(0))?;
            assert_eq!(at, [Some(10), Some(10), None, Some(11), Some(11), None], "exactly the acknowledged events");
            Ok(())
        })
        .await
        .unwrap();
    }

    fn committed(seqs: std::ops::RangeInclusive<i64>) -> Vec<Unsent> {
        seqs.map(|seq| Unsent { seq, topic: "orders/status".into(), order_id: String::new(), payload: Vec::new() })
            .collect()
    }

    fn seqs(rows: Option<Vec<Unsent>>) -> Option<Vec<i64>> {
        rows.map(|r| r.into_iter().map(|u| u.seq).collect())
    }

    #[test]
    fn committed_events_are_handed_over_only_while_memory_has_them_all() {
        let c = Committed::default();
        c.push(committed(1..=3));
        assert_eq!(seqs(c.next(0, 50)), None, "a cursor of 0 reads the table");
        assert!(c.state().events.is_empty(), "and memory starts over");
        c.push(committed(4..=5));
        assert_eq!(seqs(c.next(3, 50)), None, "not caught up yet: the table again");
        c.push(committed(6..=7));
        c.caught_up();
        assert_eq!(seqs(c.next(5, 50)), Some(vec![6, 7]), "caught up: from memory");
        assert_eq!(seqs(c.next(7, 50)), Some(vec![]), "nothing unsent, without a read");
        c.push(committed(8..=10));
        assert_eq!(seqs(c.next(8, 2)), Some(vec![9, 10]), "skips what the table read already gave");
        c.push(committed(11..=12));
        c.push(committed(14..=15));
        assert_eq!(seqs(c.next(10, 50)), Some(vec![11, 12]), "up to a gap");
        assert_eq!(seqs(c.next(12, 50)), None, "at a gap: the table");
        c.caught_up();
        c.push(committed(13..=COMMITTED_CAP as i64 + 20));
        assert_eq!(seqs(c.next(12, 50)), None, "an overflow: the table");
    }
}
