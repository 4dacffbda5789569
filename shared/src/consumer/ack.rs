//! The ack loop: batches from the bus, applied on the writer, acked in
//! delivery order after their commit.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Consumer, Handler, StatsSnapshot, MAX_BATCH};
use crate::bus::Delivery;
use crate::db::{DbError, DbResult};

/// A batch handed to the writer and not yet acked.
struct Applying {
    deliveries: Vec<Delivery>,
    task: tokio::task::JoinHandle<DbResult<StatsSnapshot>>,
    started: std::time::Instant,
}

fn payloads(batch: &[Delivery]) -> Vec<(String, Bytes)> {
    batch.iter().map(|d| (d.topic.clone(), d.payload.clone())).collect()
}

/// The partitions a batch came from, each once.
fn partitions(batch: &[Delivery]) -> Vec<u16> {
    let mut ps: Vec<u16> = batch.iter().filter_map(|d| d.partition).collect();
    ps.sort_unstable();
    ps.dedup();
    ps
}

impl<H: Handler> Consumer<H> {
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
    pub async fn run(self, mut rx: mpsc::UnboundedReceiver<Delivery>, shutdown: CancellationToken) {
        let mut out: VecDeque<Applying> = VecDeque::with_capacity(2);
        let mut closed = false;
        loop {
            let taking = out.len() < 2 && !closed && !shutdown.is_cancelled();
            tokio::select! {
                biased;
                done = async { (&mut out.front_mut().expect("a batch is out").task).await }, if !out.is_empty() => {
                    let batch = out.pop_front().expect("a batch is out");
                    if !self.settle(batch, done, &shutdown).await {
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
                    let (msgs, parts) = (payloads(&batch), partitions(&batch));
                    let task = tokio::spawn(async move { this.apply_owned(msgs, parts).await });
                    out.push_back(Applying { deliveries: batch, task, started: std::time::Instant::now() });
                }
            }
        }
    }

    /// Finishes a batch that was out: retried until it commits (nothing
    /// was acked, so that is safe), then acked. `false`: stopped first.
    async fn settle(
        &self,
        mut batch: Applying,
        mut done: Result<DbResult<StatsSnapshot>, tokio::task::JoinError>,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut backoff = Duration::from_millis(100);
        loop {
            let (e, transient) = match done {
                Ok(Ok(_)) => break,
                Ok(Err(DbError::NotOwner(lost))) => {
                    // Another instance owns these now and gets them again
                    // from the broker: leave them unacked, apply the rest.
                    tracing::info!(
                        node = self.node,
                        ?lost,
                        "partitions taken over; leaving their messages to the new owner"
                    );
                    batch.deliveries.retain(|d| !d.partition.is_some_and(|p| lost.contains(&p)));
                    if batch.deliveries.is_empty() {
                        return true;
                    }
                    done = Ok(self.apply_owned(payloads(&batch.deliveries), partitions(&batch.deliveries)).await);
                    continue;
                }
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
            done = Ok(self.apply_owned(payloads(&batch.deliveries), partitions(&batch.deliveries)).await);
        }
        metrics::histogram!("consumer_batch_messages", "node" => self.node).record(batch.deliveries.len() as f64);
        metrics::histogram!("consumer_batch_seconds", "node" => self.node)
            .record(batch.started.elapsed().as_secs_f64());
        crate::crash_point!("consumer::before_ack");
        for d in &batch.deliveries {
            d.ack();
        }
        self.wakeup.wake();
        true
    }
}

/// 0–15 ms, from the clock's low bits (no generator to share or seed).
fn rand_jitter_ms() -> u64 {
    (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0) % 16)
        as u64
}
