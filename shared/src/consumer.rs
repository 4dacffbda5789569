//! The consuming side of every service, written once: take a batch of
//! deliveries, apply each inside one write transaction (inbox
//! dedup, handler, parking, dead letters), commit, then ack in receive
//! order and wake the outbox relay. Nothing is acked before its commit, and
//! nothing is held unacked: a message that can't be applied yet is parked,
//! one that can never be applied is dead-lettered.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, Delivery};
use crate::clock::now_ms;
use crate::db::{Db, DbError, DbResult, Tx};
use crate::ids::OrderId;
use crate::message::{Inbound, Poison};
use crate::outbox::Wakeup;
use crate::parking::{self, Parked};
use crate::topics::Topic;
use crate::{dead_letter, inbox, timeline, trace};

/// Most deliveries applied in one transaction (group commit).
pub const MAX_BATCH: usize = 100;

/// A batch handed to the writer and not yet acked.
struct Applying {
    deliveries: Vec<Delivery>,
    task: tokio::task::JoinHandle<DbResult<StatsSnapshot>>,
    started: std::time::Instant,
}

fn payloads(batch: &[Delivery]) -> Vec<(String, Bytes)> {
    batch.iter().map(|d| (d.topic.clone(), d.payload.clone())).collect()
}

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

    /// Consumes `bus` deliveries until `shutdown`; a batch already taken is
    /// finished (and acked) first.
    ///
    /// Up to two batches are out at once: while one commits on the writer,
    /// the next is taken, decoded and queued behind it, so the writer goes
    /// from one commit straight into the next transaction instead of
    /// waiting for this task to ack and gather. Batches are acked in
    /// delivery order, each after its own commit. If one fails, the one
    /// behind it may commit first; nothing is acked until the failed one is
    /// retried and committed (a reordering the handlers tolerate, as any
    /// broker reordering).
    pub async fn run(self, bus: Bus, mut rx: mpsc::UnboundedReceiver<Delivery>, shutdown: CancellationToken) {
        let mut out: VecDeque<Applying> = VecDeque::with_capacity(2);
        let mut closed = false;
        loop {
            let taking = out.len() < 2 && !closed && !shutdown.is_cancelled();
            tokio::select! {
                biased;
                done = async { (&mut out.front_mut().expect("a batch is out").task).await }, if !out.is_empty() => {
                    let batch = out.pop_front().expect("a batch is out");
                    if !self.settle(&bus, batch, done, &shutdown).await {
                        return;
                    }
                }
                _ = shutdown.cancelled(), if out.is_empty() => return,
                first = rx.recv(), if taking => {
                    // Closed: the bus is gone; finish what is out.
                    let Some(first) = first else {
                        closed = true;
                        if out.is_empty() {
                            return;
                        }
                        continue;
                    };
                    let mut batch = Vec::with_capacity(MAX_BATCH);
                    batch.push(first);
                    while batch.len() < MAX_BATCH {
                        match rx.try_recv() {
                            Ok(d) => batch.push(d),
                            Err(_) => break,
                        }
                    }
                    let this = self.clone();
                    let msgs = payloads(&batch);
                    let task = tokio::spawn(async move { this.apply(msgs).await });
                    out.push_back(Applying { deliveries: batch, task, started: std::time::Instant::now() });
                }
            }
        }
    }

    /// Finishes a batch that was out: retried until it commits (nothing
    /// was acked, so that is safe), then acked. `false`: stopped first.
    async fn settle(
        &self,
        bus: &Bus,
        batch: Applying,
        mut done: Result<DbResult<StatsSnapshot>, tokio::task::JoinError>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (e, transient) = match done {
                Ok(Ok(_)) => break,
                Ok(Err(e)) => (e.to_string(), e.is_transient()),
                Err(e) => (e.to_string(), false),
            };
            if transient {
                // A serialization failure or deadlock against another
                // instance: retry soon, with jitter so the two don't meet
                // again.
                backoff = Duration::from_millis(5 + rand_jitter_ms());
                tracing::info!(error = %e, batch = batch.deliveries.len(), "batch conflicted; retrying it");
            } else {
                tracing::error!(error = %e, batch = batch.deliveries.len(), retry_in = ?backoff, "applying a batch failed");
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
            done = Ok(self.apply(payloads(&batch.deliveries)).await);
        }
        metrics::histogram!("consumer_batch_messages", "node" => self.node).record(batch.deliveries.len() as f64);
        metrics::histogram!("consumer_batch_seconds", "node" => self.node)
            .record(batch.started.elapsed().as_secs_f64());
        crate::crash_point!("consumer::before_ack");
        for d in &batch.deliveries {
            bus.ack(d);
        }
        self.wakeup.wake();
        true
    }

    /// Applies `(topic, payload)` messages in one transaction on the writer
    /// thread, exactly as deliveries from the bus are (the consumer loop
    /// acks after this returns). Public so tests can drive the real
    /// handlers with a fake bus.
    pub async fn apply(&self, batch: Vec<(String, Bytes)>) -> DbResult<StatsSnapshot> {
        // Decoded here, off the writer thread (the one serial stage).
        let decoded = batch
            .into_iter()
            .map(|(topic, payload)| {
                let msg = match Topic::from_path(&self.prefix, &topic) {
                    Some(t) => Inbound::decode(t, payload.clone()),
                    None => Err(Poison(format!("no handler for topic {topic}"))),
                };
                (topic, payload, msg)
            })
            .collect();
        let this = self.clone();
        let pass = self.db.write(move |tx| this.apply_batch(tx, decoded)).await?;
        self.stats.add(&pass.tally);
        self.count(pass.counts);
        Ok(pass.tally)
    }

    fn apply_batch(&self, tx: &mut Tx<'_>, batch: Vec<Decoded>) -> DbResult<Pass> {
        let mut pass = Pass::default();
        let mut msgs = Vec::with_capacity(batch.len());
        for (topic, payload, decoded) in batch {
            pass.tally.received += 1;
            match decoded {
                Ok(msg) => {
                    pass.count(msg.topic.suffix().into(), "received");
                    msgs.push(msg);
                }
                Err(poison) => {
                    tracing::warn!(%topic, bytes = payload.len(), reason = %poison, "dead-lettering a malformed message");
                    dead_letter::record(tx, &topic, None, None, &payload, &poison.0)?;
                    pass.count(topic.clone().into(), "received");
                    pass.count(topic.into(), "dead_lettered");
                    pass.tally.dead_lettered += 1;
                }
            }
        }
        let mut work_set = H::Batch::default();
        self.handler.prepare(tx, &mut work_set, &msgs.iter().collect::<Vec<_>>())?;
        for (i, msg) in msgs.iter().enumerate() {
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
            // span as the parent of the next hop). Linked before the span
            // is entered: its parent can't change once it has started.
            tx.traceparent = trace::link(&span, traceparent);
            let _entered = span.enter();
            if !inbox::record(tx, msg)? {
                tracing::debug!("duplicate message dropped");
                self.note(&mut pass, msg, "deduplicated");
                pass.tally.deduplicated += 1;
                continue;
            }
            match self.apply_one(tx, &mut work_set, msg, &mut pass)? {
                Applied::Yes => self.unpark(tx, &mut work_set, &msgs, msg.order_id(), &mut pass)?,
                Applied::Held(reason) => pass.held.push((i, reason)),
                Applied::No => {}
            }
        }
        tx.traceparent = None;
        // What a later message of the batch did not let apply is parked
        // for good (a message that arrives ahead of its order in the same
        // batch, common under load, never touches the parked table).
        for (i, reason) in std::mem::take(&mut pass.held) {
            if let Some(orders) = self.maybe_parked.lock().expect("parked orders lock").as_mut() {
                orders.insert(msgs[i].order_id());
            }
            parking::park(tx, &msgs[i], &reason, self.policy.retry_ms)?;
        }
        self.handler.store(tx, work_set)?;
        timeline::record_all(tx, &pass.notes)?;
        crate::crash_point!("consumer::before_commit");
        Ok(pass)
    }

    /// Runs the handler. Debug builds check that a message it parks or
    /// refuses left nothing written (see [`Handler::handle`]).
    fn decide(&self, tx: &mut Tx<'_>, batch: &mut H::Batch, msg: &Inbound) -> Result<Outcome, HandleError> {
        let before = cfg!(debug_assertions).then(|| (tx.changes(), tx.events.len()));
        let outcome = self.handler.handle(tx, batch, msg);
        if let (Some(before), Ok(Outcome::Park(_)) | Err(HandleError::Poison(_))) = (before, &outcome) {
            // The inbox row just written is the one change allowed.
            if (tx.changes(), tx.events.len()) != before {
                tracing::error!(topic = msg.topic.suffix(), "a handler wrote before parking or refusing a message");
                return Err(HandleError::Db(DbError::Misuse(
                    "a handler wrote before parking or refusing a message".into(),
                )));
            }
        }
        outcome
    }

    /// Dead-letters `msg`, which was recorded in the inbox: forgotten
    /// there, so a replay after a fix is applied.
    fn refuse(&self, tx: &mut Tx<'_>, msg: &Inbound, poison: &Poison, pass: &mut Pass) -> DbResult<()> {
        tracing::warn!(reason = %poison, "dead-lettering a message that can't be applied");
        inbox::forget(tx, &msg.message_id().to_string())?;
        dead_letter::record(
            tx,
            &msg.topic.path(&self.prefix),
            Some(msg.message_id().to_string()),
            Some(msg.order_id().to_string()),
            &msg.payload,
            &poison.0,
        )?;
        self.note(pass, msg, "dead_lettered");
        pass.tally.dead_lettered += 1;
        Ok(())
    }

    /// Runs the handler; parks or dead-letters per outcome.
    fn apply_one(&self, tx: &mut Tx<'_>, batch: &mut H::Batch, msg: &Inbound, pass: &mut Pass) -> DbResult<Applied> {
        match self.decide(tx, batch, msg) {
            Ok(Outcome::Applied) => {
                // No note: its inbox row already says when it came, and
                // the timeline reads it as applied (`timeline::for_order`).
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
                self.note(pass, msg, "parked");
                pass.tally.parked += 1;
                Ok(Applied::Held(reason))
            }
            Err(HandleError::Poison(p)) => {
                self.refuse(tx, msg, &p, pass)?;
                Ok(Applied::No)
            }
            Err(HandleError::Db(e)) => Err(e),
        }
    }

    /// After a message for `order_id` was applied, retries what was parked
    /// waiting for it: first what earlier batches parked, then what this
    /// batch holds (`msgs[pass.held]`).
    fn unpark(
        &self,
        tx: &mut Tx<'_>,
        batch: &mut H::Batch,
        msgs: &[Inbound],
        order_id: OrderId,
        pass: &mut Pass,
    ) -> DbResult<()> {
        // On PostgreSQL other instances park too: always look.
        let stored = tx.backend() == crate::db::Backend::Postgres
            || self.maybe_parked.lock().expect("parked orders lock").as_ref().is_none_or(|o| o.contains(&order_id));
        if stored {
            for p in parking::for_order(tx, &order_id.to_string())? {
                self.retry_parked(tx, batch, p, pass)?;
            }
        }
        let mut k = 0;
        while k < pass.held.len() {
            let msg = &msgs[pass.held[k].0];
            if msg.order_id() != order_id {
                k += 1;
                continue;
            }
            let (span, traceparent) = self.parked_context(msg);
            let _entered = span.enter();
            let outer = std::mem::replace(&mut tx.traceparent, traceparent);
            let outcome = self.decide(tx, batch, msg);
            tx.traceparent = outer;
            match outcome {
                Ok(Outcome::Park(_)) => {
                    k += 1;
                    continue;
                }
                Ok(_) => self.unparked(pass, msg),
                Err(HandleError::Poison(p)) => self.refuse(tx, msg, &p, pass)?,
                Err(HandleError::Db(e)) => return Err(e),
            }
            pass.held.remove(k);
        }
        Ok(())
    }

    fn retry_parked(&self, tx: &mut Tx<'_>, batch: &mut H::Batch, mut p: Parked, pass: &mut Pass) -> DbResult<()> {
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
                parking::remove(tx, &p.message_id)?;
                dead_letter::record(tx, &p.topic, Some(p.message_id), Some(p.order_id), &p.payload, &poison.0)?;
                pass.tally.dead_lettered += 1;
                return Ok(());
            }
        };
        let (span, traceparent) = self.parked_context(&msg);
        let _entered = span.enter();
        // The message that unparked this one gets its context back after.
        let outer = std::mem::replace(&mut tx.traceparent, traceparent);
        let result = self.settle_parked(tx, batch, &msg, p, pass);
        tx.traceparent = outer;
        result
    }

    /// The span and trace context a parked message is retried under. With
    /// export, a span of its own, continuing the message's trace; without,
    /// none (the log lines name the message) and the message's own context.
    fn parked_context(&self, msg: &Inbound) -> (tracing::Span, Option<String>) {
        if crate::telemetry::exporting() {
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
        }
    }

    /// A parked message was applied.
    fn unparked(&self, pass: &mut Pass, msg: &Inbound) {
        tracing::info!(message_id = %msg.message_id(), order_id = %msg.order_id(), "parked message applied");
        self.note(pass, msg, "unparked");
        pass.tally.unparked += 1;
    }

    fn settle_parked(
        &self,
        tx: &mut Tx<'_>,
        batch: &mut H::Batch,
        msg: &Inbound,
        p: Parked,
        pass: &mut Pass,
    ) -> DbResult<()> {
        if now_ms() - p.parked_at_ms > self.policy.horizon_ms {
            match self.handler.expired(tx, batch, msg) {
                Ok(()) | Err(HandleError::Poison(_)) => {}
                Err(HandleError::Db(e)) => return Err(e),
            }
            parking::remove(tx, &p.message_id)?;
            inbox::forget(tx, &p.message_id)?;
            let reason = format!("parked for {} s and what it waits for never came", self.policy.horizon_ms / 1000);
            tracing::warn!(message_id = %p.message_id, order_id = %p.order_id, %reason, "dead-lettering a parked message");
            dead_letter::record(tx, &p.topic, Some(p.message_id), Some(p.order_id), &p.payload, &reason)?;
            self.note(pass, msg, "dead_lettered");
            pass.tally.dead_lettered += 1;
            return Ok(());
        }
        match self.decide(tx, batch, msg) {
            Ok(Outcome::Park(_)) => {
                parking::postpone(tx, &p.message_id, p.attempts)?;
            }
            Ok(_) => {
                parking::remove(tx, &p.message_id)?;
                self.unparked(pass, msg);
            }
            Err(HandleError::Poison(poison)) => {
                parking::remove(tx, &p.message_id)?;
                self.refuse(tx, msg, &poison, pass)?;
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
    pub async fn retry_due_parked(&self) -> DbResult<()> {
        let this = self.clone();
        let (pass, retried) = self
            .db
            .write(move |tx| -> DbResult<(Pass, bool)> {
                let mut pass = Pass::default();
                // Every write goes through this one thread: no park can slip
                // in between this read and the replacement.
                *this.maybe_parked.lock().expect("parked orders lock") = Some(parking::orders(tx)?);
                let due = parking::due(tx, 100)?;
                if due.is_empty() {
                    return Ok((pass, false));
                }
                let mut batch = H::Batch::default();
                for p in due {
                    this.retry_parked(tx, &mut batch, p, &mut pass)?;
                }
                this.handler.store(tx, batch)?;
                timeline::record_all(tx, &pass.notes)?;
                Ok((pass, true))
            })
            .await?;
        if retried {
            self.stats.add(&pass.tally);
            self.count(pass.counts);
            self.wakeup.wake();
        }
        Ok(())
    }
}

/// 0–15 ms, from the clock's low bits (no generator to share or seed).
fn rand_jitter_ms() -> u64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 16)
        as u64
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
