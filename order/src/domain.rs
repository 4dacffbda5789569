//! The order lifecycle, pure and synchronous:
//!
//! ```text
//!             in-stock            cancel
//!  pending ───────────▶ confirmed ───────▶ cancelled
//!     │  out-of-stock                         ▲
//!     ├───────────────▶ rejected              │
//!     └───────────────────────────────────────┘ cancel
//! ```
//!
//! Statuses only move forward; every change bumps `version` and emits a
//! status event. `store` loads and saves, `handlers/` wire topics to here.

use serde::{Deserialize, Serialize};
use shared::ids::OrderId;
use shared::message::{OrderLine, OrderStatus, SendOrder};

/// An order as the order service holds it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub version: i64,
    pub customer_email: String,
    pub items: Vec<OrderLine>,
    pub currency: String,
    pub total_cents: i64,
    pub fingerprint: String,
    pub reason: Option<String>,
    /// A release was requested from inventory and not yet confirmed.
    pub release_pending: bool,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// A message, as the lifecycle sees it.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    Send(&'a SendOrder),
    InStock { fingerprint: &'a str },
    OutOfStock { fingerprint: &'a str, reason: &'a str },
    Cancel,
    Released,
}

/// What to do about an input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Save this order (new or changed). `emit_status` tells whether to
    /// publish a status event; `request_release` whether to ask inventory
    /// to release.
    Save {
        order: Order,
        emit_status: bool,
        request_release: bool,
    },
    /// Remember a cancellation for an order not seen yet.
    Tombstone,
    /// Nothing changed, but say the current status again (a retried send
    /// waits for it).
    RepeatStatus,
    /// The order isn't known yet: keep the message for later.
    Park(&'static str),
    Ignore(&'static str),
}

fn changed(order: &Order, now_ms: i64) -> Order {
    Order { version: order.version + 1, updated_at_ms: now_ms, ..order.clone() }
}

/// The lifecycle's single transition function.
pub fn decide(existing: Option<&Order>, tombstoned: bool, order_id: OrderId, input: Input<'_>, now_ms: i64) -> Step {
    match (existing, input) {
        (None, Input::Send(send)) => {
            let cancelled = tombstoned;
            let order = Order {
                order_id,
                status: if cancelled { OrderStatus::Cancelled } else { OrderStatus::Pending },
                version: 1,
                customer_email: send.customer_email.as_str().to_owned(),
                items: send.items.clone(),
                currency: send.currency.clone(),
                total_cents: send.total_cents(),
                fingerprint: send.fingerprint.clone(),
                reason: cancelled.then(|| "cancelled before the order arrived".to_owned()),
                // Inventory may have reserved from this same send: release.
                release_pending: cancelled,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
            };
            Step::Save { order, emit_status: true, request_release: cancelled }
        }
        (Some(_), Input::Send(_)) => Step::RepeatStatus,
        (None, Input::Cancel) => Step::Tombstone,
        (None, Input::InStock { .. } | Input::OutOfStock { .. }) => Step::Park("the order has not arrived yet"),
        (None, Input::Released) => Step::Ignore("release confirmed for an order never seen"),
        (Some(order), Input::InStock { fingerprint }) => match order.status {
            OrderStatus::Pending if fingerprint == order.fingerprint => Step::Save {
                order: Order { status: OrderStatus::Confirmed, ..changed(order, now_ms) },
                emit_status: true,
                request_release: false,
            },
            // Inventory reserved for another body sent under the same key
            // (two fronts raced): refuse and give the stock back.
            OrderStatus::Pending => Step::Save {
                order: Order {
                    status: OrderStatus::Rejected,
                    reason: Some("conflicting requests under the same idempotency key".into()),
                    release_pending: true,
                    ..changed(order, now_ms)
                },
                emit_status: true,
                request_release: true,
            },
            _ => Step::Ignore("stock decision for a settled order"),
        },
        (Some(order), Input::OutOfStock { reason, .. }) => match order.status {
            OrderStatus::Pending => Step::Save {
                order: Order {
                    status: OrderStatus::Rejected,
                    reason: Some(reason.to_owned()),
                    ..changed(order, now_ms)
                },
                emit_status: true,
                request_release: false,
            },
            _ => Step::Ignore("stock decision for a settled order"),
        },
        (Some(order), Input::Cancel) => match order.status {
            OrderStatus::Pending | OrderStatus::Confirmed => Step::Save {
                order: Order {
                    status: OrderStatus::Cancelled,
                    reason: Some("cancelled by the customer".into()),
                    release_pending: true,
                    ..changed(order, now_ms)
                },
                emit_status: true,
                request_release: true,
            },
            _ => Step::Ignore("cancel of a settled order"),
        },
        (Some(order), Input::Released) if order.release_pending => Step::Save {
            order: Order { release_pending: false, updated_at_ms: now_ms, ..order.clone() },
            emit_status: false,
            request_release: false,
        },
        (Some(_), Input::Released) => Step::Ignore("release already confirmed"),
    }
}

/// Whether the order still needs the service to chase inventory: a stock
/// decision (pending) or a release confirmation.
pub fn needs_follow_up(order: &Order) -> bool {
    order.status == OrderStatus::Pending || order.release_pending
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared::ids::{Email, Quantity, Sku};

    fn send(fp: &str) -> SendOrder {
        SendOrder {
            customer_email: Email::parse("a@b.example").unwrap(),
            items: vec![OrderLine {
                sku: Sku::parse("ABC").unwrap(),
                quantity: Quantity::new(2).unwrap(),
                unit_price_cents: 250,
            }],
            currency: "EUR".into(),
            fingerprint: fp.into(),
        }
    }

    #[derive(Clone, Debug)]
    enum Msg {
        Send,
        InStock,
        OutOfStock,
        Cancel,
        Released,
    }

    fn rank(s: OrderStatus) -> u8 {
        match s {
            OrderStatus::Pending => 0,
            OrderStatus::Confirmed => 1,
            OrderStatus::Rejected | OrderStatus::Cancelled => 2,
        }
    }

    #[test]
    fn cancel_before_send_creates_a_cancelled_order_that_releases() {
        let id = OrderId(uuid::Uuid::nil());
        assert_eq!(decide(None, false, id, Input::Cancel, 1), Step::Tombstone);
        let s = send("fp");
        match decide(None, true, id, Input::Send(&s), 2) {
            Step::Save { order, request_release, .. } => {
                assert_eq!(order.status, OrderStatus::Cancelled);
                assert!(request_release && order.release_pending);
            }
            other => panic!("{other:?}"),
        }
    }

    proptest! {
        /// Any delivery order, with duplicates: statuses only move forward,
        /// versions only grow, a settled order never changes status, and
        /// a cancelled order always asks for a release.
        #[test]
        fn statuses_only_move_forward(msgs in prop::collection::vec(prop_oneof![
            Just(Msg::Send), Just(Msg::InStock), Just(Msg::OutOfStock), Just(Msg::Cancel), Just(Msg::Released)
        ], 0..40)) {
            let id = OrderId(uuid::Uuid::nil());
            let s = send("fp");
            let mut order: Option<Order> = None;
            let mut tomb = false;
            let mut parked = 0;
            for (t, m) in msgs.iter().enumerate() {
                let input = match m {
                    Msg::Send => Input::Send(&s),
                    Msg::InStock => Input::InStock { fingerprint: "fp" },
                    Msg::OutOfStock => Input::OutOfStock { fingerprint: "fp", reason: "none left" },
                    Msg::Cancel => Input::Cancel,
                    Msg::Released => Input::Released,
                };
                match decide(order.as_ref(), tomb, id, input, t as i64) {
                    Step::Save { order: next, request_release, .. } => {
                        if let Some(prev) = &order {
                            prop_assert!(rank(next.status) >= rank(prev.status));
                            prop_assert!(next.version >= prev.version);
                            if prev.status.is_terminal() { prop_assert_eq!(next.status, prev.status); }
                        }
                        if next.status == OrderStatus::Cancelled && order.as_ref().map(|o| o.status) != Some(OrderStatus::Cancelled) {
                            prop_assert!(request_release);
                        }
                        order = Some(next);
                    }
                    Step::Tombstone => tomb = true,
                    Step::Park(_) => { prop_assert!(order.is_none()); parked += 1; }
                    Step::RepeatStatus | Step::Ignore(_) => {}
                }
            }
            let _ = parked;
        }
    }
}
