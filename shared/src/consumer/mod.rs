//! The consuming side of every service, written once: take a batch of
//! deliveries, apply each inside one write transaction (inbox
//! dedup, handler, parking, dead letters), commit, then ack in receive
//! order and wake the outbox relay. Nothing is acked before its commit, and
//! nothing is held unacked: a message that can't be applied yet is parked,
//! one that can never be applied is dead-lettered.
//!
//! - `ack`: the loop that takes batches from the bus, retries a failed one
//!   and acks each after its commit;
//! - `apply`: one batch in one transaction (inbox, handler, parking of what
//!   can't apply yet, dead letters);
//! - `parked`: retrying parked messages, after their order moved and on a
//!   timer;
//! - `stats`: what the consumer did, for `/stats` and metrics.

mod ack;
mod apply;
mod parked;
mod stats;

pub use stats::{Stats, StatsSnapshot};

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::clock::now_ms;
use crate::db::{Db, DbError, DbResult, Tx};
use crate::ids::OrderId;
use crate::message::{Inbound, Poison};
use crate::outbox::Wakeup;
use crate::timeline;

/// Most deliveries applied in one transaction (group commit).
pub const MAX_BATCH: usize = 100;

/// What a handler did with a message.
#[derive(Debug)]
pub enum Outcome {
    /// The effect is written (events, if any, are in the outbox).
    Applied,
    /// It can't be applied yet (what it depends on hasn't arrived): park it.
    Park(String),
    /// Nothing to do (e.g. a late event for a settled order).
    Ignored(&'static str),
}

#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// The message can never be applied; it is dead-lettered.
    #[error(transparent)]
    Poison(#[from] Poison),
    /// The database failed; the whole batch is retried, nothing is acked.
    #[error(transparent)]
    Db(#[from] DbError),
}

/// A service's message handling: pure decisions wrapped in a unit of work.
///
/// A transaction's messages share a [`Handler::Batch`], a unit of work that
/// starts empty: [`Handler::handle`] reads what a message needs into it on
/// first use and decides and changes it in memory, and [`Handler::store`]
/// writes the changes back before the commit. All of it
/// runs on the writer thread inside one transaction ([`Db::write`]);
/// events go to the outbox with [`crate::outbox::enqueue`].
pub trait Handler: Send + Sync + 'static {
    type Batch: Default;

    /// Applies `msg` to `batch` (and, for what isn't batched, on `tx`),
    /// inside the batch transaction. A handler decides before it changes
    /// anything: it returns `Park` or a `Poison` error only before its first
    /// change (including enqueued events), because the consumer does not
    /// roll a message back (a savepoint per message would cost two
    /// statements on the hot path). Debug builds check that no row was
    /// written and no event enqueued, and fail the batch otherwise.
    fn handle(&self, tx: &mut Tx<'_>, batch: &mut Self::Batch, msg: &Inbound) -> Result<Outcome, HandleError>;

    /// Called once per batch before any message is handled, with the
    /// batch's new messages: reads (and on PostgreSQL locks, in a fixed
    /// order, so that two instances never deadlock) what they will need.
    fn prepare(&self, _tx: &mut Tx<'_>, _batch: &mut Self::Batch, _msgs: &[&Inbound]) -> DbResult<()> {
        Ok(())
    }

    /// Writes back what the batch changed, in the same transaction.
    fn store(&self, tx: &mut Tx<'_>, batch: Self::Batch) -> DbResult<()>;

    /// Called in the transaction that dead-letters a parked message whose
    /// dependency never arrived, for any compensation it calls for (the same
    /// rule: a `Poison` error only before any change).
    fn expired(&self, _tx: &mut Tx<'_>, _batch: &mut Self::Batch, _msg: &Inbound) -> Result<(), HandleError> {
        Ok(())
    }
}

/// How long parked messages wait.
#[derive(Debug, Clone, Copy)]
pub struct ParkingPolicy {
    /// First retry of a parked message by the timer.
    pub retry_ms: i64,
    /// After this, a parked message is dead-lettered (and `expired` runs).
    pub horizon_ms: i64,
}

/// Applies deliveries with one handler. Cheap to clone.
pub struct Consumer<H> {
    /// The node's name, for metrics labels and spans.
    node: &'static str,
    db: Db,
    prefix: String,
    handler: Arc<H>,
    wakeup: Wakeup,
    stats: Arc<Stats>,
    policy: ParkingPolicy,
    /// The orders that may have messages in the parked table (`None`: not
    /// known yet, look for every order), so applying a message can skip
    /// looking for what was parked for its order (one query per message,
    /// almost always empty). Never smaller than the truth: a park adds its
    /// order before its commit, and only the parking timer replaces the
    /// set, with what the table holds, inside a write transaction. Every
    /// write goes through the one writer connection, so no park can slip in
    /// between. (A std mutex: only the writer thread takes it.)
    maybe_parked: Arc<Mutex<Option<HashSet<OrderId>>>>,
}

impl<H> Clone for Consumer<H> {
    fn clone(&self) -> Self {
        Self {
            node: self.node,
            db: self.db.clone(),
            prefix: self.prefix.clone(),
            handler: self.handler.clone(),
            wakeup: self.wakeup.clone(),
            stats: self.stats.clone(),
            policy: self.policy,
            maybe_parked: self.maybe_parked.clone(),
        }
    }
}

impl<H: Handler> Consumer<H> {
    /// A consumer of messages under the topic `prefix`.
    pub fn new(
        node: &'static str,
        db: Db,
        prefix: &str,
        handler: H,
        wakeup: Wakeup,
        stats: Arc<Stats>,
        policy: ParkingPolicy,
    ) -> Self {
        Self {
            node,
            db,
            prefix: prefix.to_owned(),
            handler: Arc::new(handler),
            wakeup,
            stats,
            policy,
            // Unknown until the parking timer's first pass looks.
            maybe_parked: Arc::default(),
        }
    }

    /// Adds a transaction's message outcomes to `messages_total`, once per
    /// topic and outcome, after it committed.
    fn count(&self, counts: Counts) {
        for ((topic, outcome), n) in counts {
            let topic =
                topic.strip_prefix(self.prefix.as_str()).map(str::to_owned).unwrap_or_else(|| topic.into_owned());
            metrics::counter!("messages_total", "node" => self.node, "topic" => topic, "outcome" => outcome)
                .increment(n);
        }
    }

    /// Records what happened to `msg` on its order's timeline (written
    /// with the batch), and counts it.
    fn note(&self, pass: &mut Pass, msg: &Inbound, event: &'static str) {
        pass.count(msg.topic.suffix().into(), event);
        pass.notes.push(timeline::Note {
            order_id: msg.order_id(),
            at_ms: now_ms(),
            event,
            topic: msg.topic.suffix(),
            message_id: msg.message_id(),
        });
    }
}

/// A delivery's topic and payload, and its envelope if valid.
type Decoded = (String, Bytes, Result<Inbound, Poison>);

/// Messages per topic and outcome.
type Counts = HashMap<(Cow<'static, str>, &'static str), u64>;

/// What one transaction did: counts, timeline notes to write before its
/// commit, and the messages it parked, until the end of the batch.
#[derive(Default)]
struct Pass {
    tally: StatsSnapshot,
    counts: Counts,
    notes: Vec<timeline::Note>,
    /// Indexes into the batch's messages, and why each waits.
    held: Vec<(usize, String)>,
}

impl Pass {
    fn count(&mut self, topic: Cow<'static, str>, outcome: &'static str) {
        *self.counts.entry((topic, outcome)).or_default() += 1;
    }
}

enum Applied {
    Yes,
    No,
    /// Parked: written at the end of the batch unless a later message of
    /// the batch lets it apply first.
    Held(String),
}
