//! End-to-end retry: the order service owns each order until it is
//! settled. A pending order with no stock decision is re-requested (a new
//! `orders/send`; inventory repeats a decision it already made), and a
//! cancellation is re-sent until inventory confirms the release, also for
//! an order known only by its tombstone (inventory reserved for an order
//! that never arrived here). Backs off per order up to a minute. Every
//! second it also forgets carts past `db.retention.carts_secs`.

use std::time::Duration;

use shared::clock::now_ms;
use shared::db::{Db, DbResult};
use shared::message::{OrderStatus, ReleaseRequested};
use shared::outbox::{self, Wakeup};
use shared::topics::Topic;
use tokio_util::sync::CancellationToken;

use crate::store;

pub async fn run(db: Db, wakeup: Wakeup, follow_up_ms: i64, shutdown: CancellationToken) {
    let period = Duration::from_millis((follow_up_ms / 4).clamp(20, 1000) as u64);
    let mut tick = tokio::time::interval(period);
    let mut last_prune = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if now_ms() - last_prune > PRUNE_EVERY_MS {
            last_prune = now_ms();
            if let Err(e) = prune_carts(&db).await {
                tracing::warn!(error = %e, "pruning old carts failed");
            }
        }
        match pass(&db, follow_up_ms).await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(orders = n, "chased inventory for unsettled orders");
                wakeup.wake();
            }
            Err(e) => tracing::warn!(error = %e, "follow-up pass failed"),
        }
    }
}

/// How often carts past `db.retention.carts_secs` are forgotten.
const PRUNE_EVERY_MS: i64 = 1_000;

/// Forgets carts past their retention, a chunk per transaction.
pub async fn prune_carts(db: &Db) -> DbResult<u64> {
    db.prune_in_chunks(db.retention().carts_secs, 1000, crate::carts::store::prune).await
}

/// The wait before the follow-up after `attempts` earlier ones.
fn backoff(follow_up_ms: i64, attempts: i64) -> i64 {
    (follow_up_ms << attempts.clamp(0, 4)).min(60_000)
}

/// One round: chase every order (and every tombstone's release) whose
/// follow-up is due; returns how many.
pub async fn pass(db: &Db, follow_up_ms: i64) -> DbResult<usize> {
    db.write(move |tx| {
        let chases = store::due_release_chases(tx, 200)?;
        for &(id, attempts) in &chases {
            tracing::info!(order_id = %id, attempts, "release for an order never seen not confirmed yet; asking inventory again");
            outbox::enqueue(tx, Topic::OrdersCancelled, id, ReleaseRequested {});
            store::reschedule_chase(tx, id, now_ms() + backoff(follow_up_ms, attempts))?;
        }
        let due = store::due_follow_ups(tx, 200)?;
        for (order, attempts) in &due {
            let id = order.order_id;
            if order.status == OrderStatus::Pending {
                if let Some(body) = store::send_body(order) {
                    tracing::info!(order_id = %id, attempts, "no stock decision yet; asking inventory again");
                    outbox::enqueue(tx, Topic::OrdersSend, id, body);
                }
            }
            if order.release_pending {
                tracing::info!(order_id = %id, attempts, "release not confirmed yet; asking inventory again");
                outbox::enqueue(tx, Topic::OrdersCancelled, id, ReleaseRequested {});
            }
            store::reschedule(tx, id, now_ms() + backoff(follow_up_ms, *attempts))?;
        }
        Ok(chases.len() + due.len())
    })
    .await
}
