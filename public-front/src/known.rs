//! What the front knows about recent orders, so `GET /api/orders/{id}` can
//! be answered from memory when that is provably fresh, and long polls can
//! wait for a newer version.
//!
//! Two sources feed it: the order node's answers to the front's reads, and
//! the `orders/status` events (each carries the order as customers see it,
//! see [`shared::message::OrderSnapshot`]). Either one proves that at some
//! moment the order was at a given version: a read, from the moment it was
//! sent; an event, from the moment the order node wrote it (its `sent_at`,
//! written in the transaction that made the change). Events come at QoS 0
//! and may be missed, so an entry only answers a read while that moment is
//! at most the configured age (`order_cache_secs`) old, except for a final
//! status (rejected, cancelled), which never changes.
//!
//! Versions only go up: an entry never takes a lower version than it has,
//! and an answer from a read is replaced by the entry when the entry is
//! newer, so one front never answers an older version after a newer one.
//! Memory is bounded: at most [`CAPACITY`] orders, each forgotten after
//! [`KEEP`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::policy::EvictionPolicy;
use moka::sync::Cache;
use shared::ids::OrderId;
use shared::message::StatusChanged;
use shared::view::Order;
use time::OffsetDateTime;

/// Most orders remembered (a few hundred bytes each).
pub const CAPACITY: u64 = 20_000;
/// How long an order is remembered after its last update.
pub const KEEP: Duration = Duration::from_secs(60);

/// What the front last learned about one order.
#[derive(Clone, Debug)]
pub struct Known {
    /// The highest version seen, from a read or an event.
    pub version: i64,
    /// The order at `version`, when it is known in full (an event of an
    /// older order node carries the status only).
    pub order: Option<Arc<Order>>,
    /// At this moment or later, `version` was the order's current version.
    pub current_at: Instant,
}

impl Known {
    /// `self` updated with `new`: the higher version wins; at the same
    /// version, the later proof and whichever carries the order.
    pub fn merge(self, new: Known) -> Known {
        use std::cmp::Ordering::*;
        match new.version.cmp(&self.version) {
            Greater => new,
            Less => self,
            Equal => Known {
                version: self.version,
                order: new.order.or(self.order),
                current_at: self.current_at.max(new.current_at),
            },
        }
    }

    /// The order, if it may be served without asking the order node: known
    /// in full at the highest version seen, and either final or proven
    /// current within `max_age` (as of `now`).
    pub fn fresh(&self, max_age: Duration, now: Instant) -> Option<Arc<Order>> {
        let order = self.order.as_ref().filter(|o| o.version == self.version)?;
        let age = now.saturating_duration_since(self.current_at);
        (order.status.is_terminal() || age <= max_age).then(|| order.clone())
    }
}

/// The front's memory of recent orders; cheap to clone (shared).
#[derive(Clone)]
pub struct KnownOrders {
    cache: Cache<OrderId, Known>,
}

impl Default for KnownOrders {
    fn default() -> Self {
        Self {
            cache: Cache::builder()
                .max_capacity(CAPACITY)
                .time_to_live(KEEP)
                // New orders are the ones polled: the least recently used
                // goes first (the default policy may refuse a new key).
                .eviction_policy(EvictionPolicy::lru())
                .build(),
        }
    }
}

impl KnownOrders {
    pub fn get(&self, id: OrderId) -> Option<Known> {
        self.cache.get(&id)
    }

    /// Records `new` for `id` (see [`Known::merge`]); the entry after it.
    pub fn record(&self, id: OrderId, new: Known) -> Known {
        self.cache
            .entry(id)
            .and_upsert_with(|old| match old {
                Some(old) => old.into_value().merge(new),
                None => new,
            })
            .into_value()
    }

    /// Records the order node's answer to a read sent at `sent`; the order
    /// to answer with: the read, or a newer one the front already knows.
    pub fn read(&self, order: Order, sent: Instant) -> Arc<Order> {
        let read = Arc::new(order);
        let id = read.order_id;
        let known = self.record(id, Known { version: read.version, order: Some(read.clone()), current_at: sent });
        match known.order {
            Some(o) if o.version > read.version => o,
            _ => read,
        }
    }

    /// Records a status event the order node wrote at `sent_at` (its clock)
    /// and the front received `now`.
    pub fn event(&self, id: OrderId, status: &StatusChanged, sent_at: OffsetDateTime, now: Instant) {
        let order = status.order.as_ref().map(|snap| {
            Arc::new(Order {
                order_id: id,
                status: status.status,
                version: status.version,
                customer_email: None,
                items: snap.items.clone(),
                currency: snap.currency.clone(),
                total_cents: snap.total_cents,
                fingerprint: status.fingerprint.clone(),
                reason: status.reason.clone(),
                release_pending: false,
                cart_id: None,
                created_at_ms: snap.created_at_ms,
                updated_at_ms: snap.updated_at_ms,
            })
        });
        self.record(id, Known { version: status.version, order, current_at: written_at(sent_at, now) });
    }
}

/// The front's instant for a wall-clock time of another node: `now` less
/// how long ago that was, never later than `now` (a clock ahead of the
/// front's counts as now; one behind only makes the entry look older).
fn written_at(sent_at: OffsetDateTime, now: Instant) -> Instant {
    let ago = OffsetDateTime::now_utc() - sent_at;
    let ago = Duration::try_from(ago).unwrap_or(Duration::ZERO);
    now.checked_sub(ago).unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use shared::message::OrderStatus;

    use super::*;

    fn order(version: i64, status: OrderStatus) -> Arc<Order> {
        Arc::new(Order {
            order_id: OrderId(uuid::Uuid::nil()),
            status,
            version,
            customer_email: None,
            items: Vec::new(),
            currency: "EUR".into(),
            total_cents: 0,
            fingerprint: "f".into(),
            reason: None,
            release_pending: false,
            cart_id: None,
            created_at_ms: 0,
            updated_at_ms: 0,
        })
    }

    fn known(version: i64, status: OrderStatus, at: Instant) -> Known {
        Known { version, order: Some(order(version, status)), current_at: at }
    }

    #[test]
    fn a_lower_version_never_replaces_a_higher_one() {
        let t = Instant::now();
        let newer = known(2, OrderStatus::Confirmed, t);
        let merged = newer.clone().merge(known(1, OrderStatus::Pending, t + Duration::from_secs(1)));
        assert_eq!(merged.version, 2);
        assert_eq!(merged.current_at, t);
        let merged = known(1, OrderStatus::Pending, t).merge(newer);
        assert_eq!(merged.version, 2);
    }

    #[test]
    fn the_same_version_keeps_the_later_proof_and_the_body() {
        let t = Instant::now();
        let later = Known { version: 1, order: None, current_at: t + Duration::from_millis(5) };
        let merged = known(1, OrderStatus::Pending, t).merge(later);
        assert!(merged.order.is_some());
        assert_eq!(merged.current_at, t + Duration::from_millis(5));
    }

    #[test]
    fn served_from_memory_only_while_fresh_unless_final() {
        let t = Instant::now();
        let max = Duration::from_millis(100);
        let pending = known(1, OrderStatus::Pending, t);
        assert!(pending.fresh(max, t + Duration::from_millis(100)).is_some());
        assert!(pending.fresh(max, t + Duration::from_millis(101)).is_none());
        let confirmed = known(2, OrderStatus::Confirmed, t);
        assert!(confirmed.fresh(max, t + Duration::from_secs(1)).is_none(), "confirmed can still be cancelled");
        let cancelled = known(3, OrderStatus::Cancelled, t);
        assert!(cancelled.fresh(max, t + Duration::from_secs(1)).is_some());
    }

    #[test]
    fn a_newer_version_without_the_order_is_not_served() {
        let t = Instant::now();
        let merged = known(1, OrderStatus::Pending, t).merge(Known { version: 2, order: None, current_at: t });
        assert!(merged.fresh(Duration::from_secs(1), t).is_none());
    }

    #[test]
    fn a_read_older_than_what_is_known_answers_with_the_newer_order() {
        let orders = KnownOrders::default();
        let t = Instant::now();
        orders.record(OrderId(uuid::Uuid::nil()), known(2, OrderStatus::Confirmed, t));
        let answer = orders.read((*order(1, OrderStatus::Pending)).clone(), t);
        assert_eq!(answer.version, 2);
    }

    #[test]
    fn a_clock_ahead_counts_as_now() {
        let now = Instant::now();
        assert_eq!(written_at(OffsetDateTime::now_utc() + Duration::from_secs(5), now), now);
        assert!(written_at(OffsetDateTime::now_utc() - Duration::from_secs(5), now) <= now - Duration::from_secs(4));
    }
}
