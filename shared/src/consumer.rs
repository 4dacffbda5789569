//! The consuming side of every service, written once: take a batch of
//! deliveries, apply each inside one `BEGIN IMMEDIATE` transaction (inbox
//! dedup, handler, parking, dead letters), commit, then ack in receive
//! order and wake the outbox relay. Nothing is acked before its commit, and
//! nothing is held unacked: a message that can't be applied yet is parked,
//! one that can never be applied is dead-lettered.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use sqlx::SqliteConnection;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::bus::{Bus, Delivery};
use crate::db::{now_ms, Db};
use crate::ids::OrderId;
use crate::message::{Inbound, Poison};
use crate::outbox::Wakeup;
use crate::parking::{self, Parked};
use crate::topics::Topic;
use crate::{dead_letter, inbox, outbox, timeline, trace};

/// Most deliveries applied in one transaction (group commit).
const MAX_BATCH: usize = 100;

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
    Db(#[from] sqlx::Error),
}

/// A service's message handling: pure decisions wrapped in SQL.
///
/// A transaction's messages share a [`Handler::Batch`], a unit of work:
/// [`Handler::load`] reads what the messages will need in a few statements,
/// [`Handler::handle`] decides and changes it in memory (reading what it
/// lacks), and [`Handler::store`] writes the changes back before the commit.
/// Every statement is a round trip to sqlx's database thread, and the
/// writer connection is the node's one serial resource, so one read and one
/// write per batch instead of per message is what lets a node keep up.
pub trait Handler: Send + Sync + 'static {
    type Batch: Send;

    /// Reads ahead what `msgs` will need (may be empty: the parking timer).
    fn load(
        &self,
        conn: &mut SqliteConnection,
        msgs: &[Inbound],
    ) -> impl Future<Output = sqlx::Result<Self::Batch>> + Send;

    /// Applies `msg` to `batch` (and, for what isn't batched, on `conn`),
    /// inside the batch transaction. A handler decides before it changes
    /// anything: it returns `Park` or a `Poison` error only before its first
    /// change, because the consumer does not roll a message back (a
    /// savepoint per message cost two statements on the hot path). Debug
    /// builds check that no row was written and fail the batch otherwise.
    fn handle(
        &self,
        conn: &mut SqliteConnection,
        batch: &mut Self::Batch,
        msg: &Inbound,
    ) -> impl Future<Output = Result<Outcome, HandleError>> + Send;

    /// Writes back what the batch changed, in the same transaction.
    fn store(&self, conn: &mut SqliteConnection, batch: Self::Batch) -> impl Future<Output = sqlx::Result<()>> + Send;

    /// Called in the transaction that dead-letters a parked message whose
    /// dependency never arrived, for any compensation it calls for (the same
    /// rule: a `Poison` error only before any change).
    fn expired(
        &self,
        _conn: &mut SqliteConnection,
        _batch: &mut Self::Batch,
        _msg: &Inbound,
    ) -> impl Future<Output = Result<(), HandleError>> + Send {
        async { Ok(()) }
    }
}

/// Counters of what the consumer did, since start.
#[derive(Debug, Default)]
pub struct Stats {
    pub received: AtomicU64,
    pub applied: AtomicU64,
    pub deduplicated: AtomicU64,
    pub parked: AtomicU64,
    pub unparked: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub ignored: AtomicU64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct StatsSnapshot {
    pub received: u64,
    pub applied: u64,
    pub deduplicated: u64,
    pub parked: u64,
    pub unparked: u64,
    pub dead_lettered: u64,
    pub ignored: u64,
}

impl Stats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        StatsSnapshot {
            received: g(&self.received),
            applied: g(&self.applied),
            deduplicated: g(&self.deduplicated),
            parked: g(&self.parked),
            unparked: g(&self.unparked),
            dead_lettered: g(&self.dead_lettered),
            ignored: g(&self.ignored),
        }
    }

    fn add(&self, t: &StatsSnapshot) {
        let a = |c: &AtomicU64, v: u64| c.fetch_add(v, Ordering::Relaxed);
        a(&self.received, t.received);
        a(&self.applied, t.applied);
        a(&self.deduplicated, t.deduplicated);
        a(&self.parked, t.parked);
        a(&self.unparked, t.unparked);
        a(&self.dead_lettered, t.dead_lettered);
        a(&self.ignored, t.ignored);
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
    /// `false` only when the parked table is known to be empty, so applying
    /// a message can skip looking for what was parked for its order (one
    /// query per message, almost always empty). Set before a park's commit;
    /// cleared only by the parking timer inside a write transaction that saw
    /// the table empty. Every write goes through the one writer connection,
    /// so no park can slip in between that check and the clear.
    maybe_parked: Arc<AtomicBool>,
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
            maybe_parked: Arc::new(AtomicBool::new(true)),
        }
    }

    /// Counts a message outcome per topic. Counted when it happens: a batch
    /// that fails and is retried counts its messages again.
    fn count(&self, topic: &str, outcome: &'static str) {
        let topic = topic.strip_prefix(self.prefix.as_str()).unwrap_or(topic).to_owned();
        metrics::counter!("messages_total", "node" => self.node, "topic" => topic, "outcome" => outcome).increment(1);
    }

    /// Records what happened to `msg` on its order's timeline (written
    /// with the batch), and counts it.
    fn note(&self, pass: &mut Pass, msg: &Inbound, event: &'static str) {
        self.count(msg.topic.suffix(), event);
        pass.notes.push(timeline::Note {
            order_id: msg.order_id(),
            at_ms: now_ms(),
            event,
            topic: msg.topic.suffix(),
            message_id: msg.message_id(),
        });
    }

    /// Consumes `bus` deliveries until `shutdown`; a batch already taken is
    /// finished (and acked) first.
    pub async fn run(self, bus: Bus, mut rx: mpsc::UnboundedReceiver<Delivery>, shutdown: CancellationToken) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = rx.recv() => match d { Some(d) => d, None => return },
            };
            batch.clear();
            batch.push(first);
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(d) => batch.push(d),
                    Err(_) => break,
                }
            }
            let mut backoff = Duration::from_millis(100);
            let started = std::time::Instant::now();
            loop {
                let mut msgs = Vec::with_capacity(batch.len());
                for d in &batch {
                    msgs.push((d.topic.as_str(), &d.payload));
                }
                match self.apply(&msgs).await {
                    Ok(_) => break,
                    Err(e) => {
                        // Nothing was acked: retrying the batch is safe.
                        tracing::error!(error = %e, batch = batch.len(), retry_in = ?backoff, "applying a batch failed");
                        tokio::select! {
                            _ = shutdown.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
            metrics::histogram!("consumer_batch_messages", "node" => self.node).record(batch.len() as f64);
            metrics::histogram!("consumer_batch_seconds", "node" => self.node).record(started.elapsed().as_secs_f64());
            crate::crash_point!("consumer::before_ack");
            for d in &batch {
                bus.ack(d);
            }
            self.wakeup.wake();
        }
    }

    /// Applies `(topic, payload)` messages in one transaction, exactly as
    /// deliveries from the bus are (the consumer loop acks after this
    /// returns). Public so tests can drive the real handlers with a fake bus.
    ///
    /// The batch's inbox rows, outbox events and timeline notes are each
    /// written with a few multi-row statements rather than one per message:
    /// every statement is a round trip to sqlx's database thread, and the
    /// writer connection is the node's one serial resource.
    pub async fn apply(&self, batch: &[(&str, &Bytes)]) -> Result<StatsSnapshot, sqlx::Error> {
        let mut pass = Pass::default();
        let mut tx = self.db.begin().await?;
        let mut msgs = Vec::with_capacity(batch.len());
        for &(topic, payload) in batch {
            pass.tally.received += 1;
            self.count(topic, "received");
            let decoded = match Topic::from_path(&self.prefix, topic) {
                Some(t) => Inbound::decode(t, payload.clone()),
                None => Err(Poison(format!("no handler for topic {topic}"))),
            };
            match decoded {
                Ok(msg) => msgs.push(msg),
                Err(poison) => {
                    tracing::warn!(%topic, bytes = payload.len(), reason = %poison, "dead-lettering a malformed message");
                    dead_letter::record(&mut tx, topic, None, None, payload, &poison.0).await?;
                    self.count(topic, "dead_lettered");
                    pass.tally.dead_lettered += 1;
                }
            }
        }
        let mut fresh = inbox::record_all(&mut tx, &msgs).await?;
        let mut work_set = self.handler.load(&mut tx, &msgs).await?;
        let (applied, events) = outbox::collect(async {
            for msg in &msgs {
                let traceparent = msg.envelope.traceparent.as_deref().and_then(trace::parse).map(str::to_owned);
                let span = tracing::info_span!(
                    "message",
                    node = self.node,
                    topic = msg.topic.suffix(),
                    message_id = %msg.message_id(),
                    order_id = %msg.order_id(),
                    trace_id = trace::trace_id(traceparent.as_deref()),
                    otel.name = tracing::field::Empty,
                );
                if crate::telemetry::exporting() {
                    span.record("otel.name", format!("{} {}", self.node, msg.topic.suffix()));
                }
                // What the handler enqueues carries this (with export: this
                // span as the parent of the next hop).
                let traceparent = trace::link(&span, traceparent);
                let work = async {
                    // The first copy of a new id takes it out of `fresh`.
                    if !fresh.remove(&msg.message_id()) {
                        tracing::debug!("duplicate message dropped");
                        self.note(&mut pass, msg, "deduplicated");
                        pass.tally.deduplicated += 1;
                        return Ok(());
                    }
                    match self.apply_one(&mut tx, &mut work_set, msg, &mut pass).await? {
                        Applied::Yes => self.unpark(&mut tx, &mut work_set, msg.order_id(), &mut pass).await,
                        Applied::No => Ok(()),
                    }
                };
                trace::scope(traceparent, work.instrument(span)).await?;
            }
            Ok::<(), sqlx::Error>(())
        })
        .await;
        applied?;
        self.handler.store(&mut tx, work_set).await?;
        outbox::write_all(&mut tx, events).await?;
        timeline::record_all(&mut tx, &pass.notes).await?;
        crate::crash_point!("consumer::before_commit");
        tx.commit().await?;
        self.stats.add(&pass.tally);
        Ok(pass.tally)
    }

    /// Runs the handler; parks or dead-letters per outcome.
    async fn apply_one(
        &self,
        conn: &mut SqliteConnection,
        batch: &mut H::Batch,
        msg: &Inbound,
        pass: &mut Pass,
    ) -> Result<Applied, sqlx::Error> {
        let before = if cfg!(debug_assertions) { Some(total_changes(conn).await?) } else { None };
        let outcome = self.handler.handle(conn, batch, msg).await;
        if let (Some(before), Ok(Outcome::Park(_)) | Err(HandleError::Poison(_))) = (before, &outcome) {
            if total_changes(conn).await? != before {
                tracing::error!(topic = msg.topic.suffix(), "a handler wrote before parking or refusing a message");
                return Err(sqlx::Error::Protocol("a handler wrote before parking or refusing a message".into()));
            }
        }
        match outcome {
            Ok(Outcome::Applied) => {
                self.note(pass, msg, "applied");
                pass.tally.applied += 1;
                Ok(Applied::Yes)
            }
            Ok(Outcome::Ignored(why)) => {
                tracing::debug!(why, "message ignored");
                self.note(pass, msg, "ignored");
                pass.tally.ignored += 1;
                Ok(Applied::No)
            }
            Ok(Outcome::Park(reason)) => {
                tracing::info!(%reason, "message parked");
                self.maybe_parked.store(true, Ordering::SeqCst);
                parking::park(conn, msg, &reason, self.policy.retry_ms).await?;
                self.note(pass, msg, "parked");
                pass.tally.parked += 1;
                Ok(Applied::No)
            }
            Err(HandleError::Poison(p)) => {
                tracing::warn!(reason = %p, "dead-lettering a message that can't be applied");
                inbox::forget(conn, &msg.message_id().to_string()).await?;
                dead_letter::record(
                    conn,
                    &msg.topic.path(&self.prefix),
                    Some(msg.message_id().to_string()),
                    Some(msg.order_id().to_string()),
                    &msg.payload,
                    &p.0,
                )
                .await?;
                self.note(pass, msg, "dead_lettered");
                pass.tally.dead_lettered += 1;
                Ok(Applied::No)
            }
            Err(HandleError::Db(e)) => Err(e),
        }
    }

    /// After a message for `order_id` was applied, retries what was parked
    /// waiting for it.
    async fn unpark(
        &self,
        conn: &mut SqliteConnection,
        batch: &mut H::Batch,
        order_id: OrderId,
        pass: &mut Pass,
    ) -> sqlx::Result<()> {
        if !self.maybe_parked.load(Ordering::SeqCst) {
            return Ok(());
        }
        for p in parking::for_order(conn, &order_id.to_string()).await? {
            self.retry_parked(conn, batch, p, pass).await?;
        }
        Ok(())
    }

    async fn retry_parked(
        &self,
        conn: &mut SqliteConnection,
        batch: &mut H::Batch,
        mut p: Parked,
        pass: &mut Pass,
    ) -> sqlx::Result<()> {
        let msg = Topic::ALL
            .into_iter()
            .find(|t| t.suffix() == p.topic)
            .ok_or_else(|| Poison(format!("unknown topic {}", p.topic)))
            .and_then(|t| Inbound::decode(t, p.payload.clone().into()));
        // Dead letters name the full topic, so they can be replayed as is.
        p.topic = format!("{}{}", self.prefix, p.topic);
        let msg = match msg {
            Ok(msg) => msg,
            Err(poison) => {
                parking::remove(conn, &p.message_id).await?;
                dead_letter::record(conn, &p.topic, Some(p.message_id), Some(p.order_id), &p.payload, &poison.0)
                    .await?;
                pass.tally.dead_lettered += 1;
                return Ok(());
            }
        };
        if now_ms() - p.parked_at_ms > self.policy.horizon_ms {
            match self.handler.expired(conn, batch, &msg).await {
                Ok(()) | Err(HandleError::Poison(_)) => {}
                Err(HandleError::Db(e)) => return Err(e),
            }
            parking::remove(conn, &p.message_id).await?;
            inbox::forget(conn, &p.message_id).await?;
            let reason = format!("parked for {} s and what it waits for never came", self.policy.horizon_ms / 1000);
            tracing::warn!(message_id = %p.message_id, order_id = %p.order_id, %reason, "dead-lettering a parked message");
            dead_letter::record(conn, &p.topic, Some(p.message_id), Some(p.order_id), &p.payload, &reason).await?;
            self.note(pass, &msg, "dead_lettered");
            pass.tally.dead_lettered += 1;
            return Ok(());
        }
        // With export, a span of its own, continuing the parked message's
        // trace; without, none (the log lines below name the message).
        let (span, traceparent) = if crate::telemetry::exporting() {
            let span = tracing::info_span!(
                "parked message",
                node = self.node,
                topic = msg.topic.suffix(),
                message_id = %msg.message_id(),
                order_id = %msg.order_id(),
                otel.name = format!("{} {} (unparked)", self.node, msg.topic.suffix()),
            );
            let traceparent = trace::link(&span, msg.envelope.traceparent.clone());
            (span, traceparent)
        } else {
            (tracing::Span::none(), msg.envelope.traceparent.clone())
        };
        let outcome = trace::scope(traceparent, self.handler.handle(conn, batch, &msg).instrument(span)).await;
        match outcome {
            Ok(Outcome::Park(_)) => {
                parking::postpone(conn, &p.message_id, p.attempts).await?;
            }
            Ok(_) => {
                parking::remove(conn, &p.message_id).await?;
                tracing::info!(message_id = %p.message_id, order_id = %p.order_id, "parked message applied");
                self.note(pass, &msg, "unparked");
                pass.tally.unparked += 1;
            }
            Err(HandleError::Poison(poison)) => {
                parking::remove(conn, &p.message_id).await?;
                inbox::forget(conn, &p.message_id).await?;
                dead_letter::record(conn, &p.topic, Some(p.message_id), Some(p.order_id), &p.payload, &poison.0)
                    .await?;
                pass.tally.dead_lettered += 1;
            }
            Err(HandleError::Db(e)) => return Err(e),
        }
        Ok(())
    }

    /// The parking timer: retries due parked messages and dead-letters
    /// those past the horizon.
    pub async fn run_parking_timer(self, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_millis(self.policy.retry_ms.clamp(50, 1000) as u64));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            if let Err(e) = self.retry_due_parked().await {
                tracing::warn!(error = %e, "parking timer pass failed");
            }
        }
    }
}

impl<H: Handler> Consumer<H> {
    /// One pass of the parking timer.
    pub async fn retry_due_parked(&self) -> sqlx::Result<()> {
        let mut pass = Pass::default();
        let mut tx = self.db.begin().await?;
        let due = parking::due(&mut tx, 100).await?;
        if due.is_empty() {
            if self.maybe_parked.load(Ordering::SeqCst) && parking::count(&mut *tx).await? == 0 {
                self.maybe_parked.store(false, Ordering::SeqCst);
            }
            return Ok(());
        }
        let mut batch = self.handler.load(&mut tx, &[]).await?;
        for p in due {
            self.retry_parked(&mut tx, &mut batch, p, &mut pass).await?;
        }
        self.handler.store(&mut tx, batch).await?;
        timeline::record_all(&mut tx, &pass.notes).await?;
        tx.commit().await?;
        self.stats.add(&pass.tally);
        self.wakeup.wake();
        Ok(())
    }
}

/// Rows changed on this connection so far (SQLite's `total_changes()`).
async fn total_changes(conn: &mut SqliteConnection) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT total_changes()").fetch_one(conn).await
}

/// What one transaction did: counts, and timeline notes to write before
/// its commit.
#[derive(Default)]
struct Pass {
    tally: StatsSnapshot,
    notes: Vec<timeline::Note>,
}

enum Applied {
    Yes,
    No,
}
