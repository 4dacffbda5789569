//! One batch in one write transaction: inbox dedup, the handler, parking
//! of what can't apply yet, dead letters, the timeline.

use std::collections::HashSet;

use bytes::Bytes;

use super::{Applied, Consumer, Decoded, HandleError, Handler, Outcome, Pass, StatsSnapshot};
use crate::db::{DbError, DbResult, Tx};
use crate::ids::OrderId;
use crate::message::{Inbound, Poison};
use crate::topics::Topic;
use crate::{dead_letter, inbox, parking, timeline, trace};

impl<H: Handler> Consumer<H> {
    /// Applies `(topic, payload)` messages in one transaction on the writer
    /// thread, exactly as deliveries from the bus are (the consumer loop
    /// acks after this returns). Public so tests can drive the real
    /// handlers with a fake bus.
    pub async fn apply(&self, batch: Vec<(String, Bytes)>) -> DbResult<StatsSnapshot> {
        self.apply_owned(batch, Vec::new()).await
    }

    /// [`Consumer::apply`] for messages from the sessions of `partitions`:
    /// on PostgreSQL the transaction first checks they are still this
    /// instance's ([`crate::ownership::check`]).
    pub(super) async fn apply_owned(
        &self,
        batch: Vec<(String, Bytes)>,
        partitions: Vec<u16>,
    ) -> DbResult<StatsSnapshot> {
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
        let fenced = self.db.backend() == crate::db::Backend::Postgres && !partitions.is_empty();
        let pass = self
            .db
            .write(move |tx| {
                if fenced {
                    crate::ownership::check(tx, &partitions)?;
                }
                this.apply_batch(tx, decoded)
            })
            .await?;
        self.stats.add(&pass.tally);
        self.count(pass.counts);
        Ok(pass.tally)
    }

    pub(super) fn apply_batch(&self, tx: &mut Tx<'_>, batch: Vec<Decoded>) -> DbResult<Pass> {
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
        let fresh = inbox::record_all(tx, &msgs)?;
        let parked = self.parked_among(tx, &msgs)?;
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
            if !fresh[i] {
                tracing::debug!("duplicate message dropped");
                self.note(&mut pass, msg, "deduplicated");
                pass.tally.deduplicated += 1;
                continue;
            }
            match self.apply_one(tx, &mut work_set, msg, &mut pass)? {
                Applied::Yes => self.unpark(tx, &mut work_set, &msgs, msg.order_id(), &parked, &mut pass)?,
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
    pub(super) fn decide(&self, tx: &mut Tx<'_>, batch: &mut H::Batch, msg: &Inbound) -> Result<Outcome, HandleError> {
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
    pub(super) fn refuse(&self, tx: &mut Tx<'_>, msg: &Inbound, poison: &Poison, pass: &mut Pass) -> DbResult<()> {
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
    pub(super) fn apply_one(
        &self,
        tx: &mut Tx<'_>,
        batch: &mut H::Batch,
        msg: &Inbound,
        pass: &mut Pass,
    ) -> DbResult<Applied> {
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

    /// The orders of `msgs` that earlier batches parked messages for. On
    /// SQLite the writer knows them ([`Consumer::maybe_parked`], refreshed by
    /// the parking timer); on PostgreSQL, where another instance may have
    /// parked, one query per batch.
    pub(super) fn parked_among(&self, tx: &mut Tx<'_>, msgs: &[Inbound]) -> DbResult<Option<HashSet<OrderId>>> {
        if tx.backend() != crate::db::Backend::Postgres {
            return Ok(None);
        }
        let ids: Vec<String> = msgs.iter().map(|m| m.order_id().to_string()).collect();
        parking::orders_among(tx, &ids).map(Some)
    }

    /// After a message for `order_id` was applied, retries what was parked
    /// waiting for it: first what earlier batches parked (`parked`: see
    /// [`Self::parked_among`]), then what this batch holds
    /// (`msgs[pass.held]`).
    pub(super) fn unpark(
        &self,
        tx: &mut Tx<'_>,
        batch: &mut H::Batch,
        msgs: &[Inbound],
        order_id: OrderId,
        parked: &Option<HashSet<OrderId>>,
        pass: &mut Pass,
    ) -> DbResult<()> {
        let stored = match parked {
            Some(orders) => orders.contains(&order_id),
            None => {
                self.maybe_parked.lock().expect("parked orders lock").as_ref().is_none_or(|o| o.contains(&order_id))
            }
        };
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
}
