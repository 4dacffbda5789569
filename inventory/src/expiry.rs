//! Holds run out: every second, the carts whose holds passed their
//! deadline give the units back to `available` and tell the order service
//! (`inventory/held`, because `expired`). The cart stays open; its next
//! hold request holds again.
//!
//! Every second it also forgets carts that hold nothing and are past
//! `db.retention.carts_secs`.
//!
//! Any instance may run it on a shared PostgreSQL database: a round claims
//! carts with `FOR UPDATE SKIP LOCKED` (a cart another instance's consumer
//! or timer has is left for later), then locks product rows in SKU order
//! like the consumer. A round that fails (a deadlock, a lost connection)
//! changes nothing and the next tick tries again.

use std::time::Duration;

use shared::clock::now_ms;
use shared::db::{Db, DbResult};
use shared::ids::Sku;
use shared::outbox::{self, Wakeup};
use shared::topics::Topic;
use tokio_util::sync::CancellationToken;

use crate::domain;
use crate::store::{self, Stock};

/// Most carts one transaction expires: bounds how long a round holds the
/// writer (and, on PostgreSQL, its locks).
pub const CHUNK: i64 = 200;
/// Most transactions one tick runs before it lets the consumer in again.
const CHUNKS_PER_TICK: usize = 10;

pub async fn run(db: Db, wakeup: Wakeup, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = prune_carts(&db).await {
            tracing::warn!(error = %e, "pruning old carts failed; trying again on the next tick");
        }
        for _ in 0..CHUNKS_PER_TICK {
            match pass(&db, now_ms(), CHUNK).await {
                Ok(0) => break,
                Ok(n) => {
                    tracing::info!(carts = n, "holds ran out; stock given back");
                    wakeup.wake();
                    if (n as i64) < CHUNK {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "expiring holds failed; trying again on the next tick");
                    break;
                }
            }
        }
    }
}

/// Forgets the carts that hold nothing and are past their retention, a
/// chunk per transaction.
pub async fn prune_carts(db: &Db) -> DbResult<u64> {
    db.prune_in_chunks(db.retention().carts_secs, 1000, store::prune_carts).await
}

/// One transaction: gives back the holds of up to `limit` carts whose
/// holds ran out before `now_ms`; returns how many carts.
pub async fn pass(db: &Db, now_ms: i64, limit: i64) -> DbResult<usize> {
    db.write(move |tx| {
        let carts = store::claim_expired_carts(tx, now_ms, limit)?;
        if carts.is_empty() {
            return Ok(0);
        }
        let mut stock = Stock::default();
        stock.read_carts(tx, carts.iter().copied())?;
        let skus: Vec<Sku> = carts.iter().flat_map(|&c| stock.held_skus(c)).collect();
        stock.lock(tx, skus.iter())?;
        let mut expired = 0;
        for &cart_id in &carts {
            // Read under the cart's lock: a request applied since the
            // claim may have renewed it.
            let Some(cart) = stock.cart(tx, cart_id)? else { continue };
            if let Some(change) = domain::on_expiry(&cart, now_ms) {
                tracing::info!(cart_id = %cart_id, seq = change.cart.seq, "holds ran out");
                stock.apply_holds(cart_id, &change);
                outbox::enqueue(tx, Topic::Held, cart_id.subject(), change.event);
                expired += 1;
            }
        }
        stock.write(tx)?;
        Ok(expired)
    })
    .await
}
