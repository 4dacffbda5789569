//! Parked messages retried: right after a message for their order is
//! applied (`apply`), and by a timer; dead-lettered past the horizon.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Consumer, HandleError, Handler, Outcome, Pass};
use crate::clock::now_ms;
use crate::db::{DbResult, Tx};
use crate::message::{Inbound, Poison};
use crate::parking::{self, Parked};
use crate::topics::Topic;
use crate::{dead_letter, inbox, timeline, trace};

impl<H: Handler> Consumer<H> {
    pub(super) fn retry_parked(
        &self,
        tx: &mut Tx<'_>,
        batch: &mut H::Batch,
        mut p: Parked,
        pass: &mut Pass,
    ) -> DbResult<()> {
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
    pub(super) fn parked_context(&self, msg: &Inbound) -> (tracing::Span, Option<String>) {
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
    pub(super) fn unparked(&self, pass: &mut Pass, msg: &Inbound) {
        tracing::info!(message_id = %msg.message_id(), order_id = %msg.order_id(), "parked message applied");
        self.note(pass, msg, "unparked");
        pass.tally.unparked += 1;
    }

    pub(super) fn settle_parked(
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
