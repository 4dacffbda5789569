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
//!
//! An order the service has no row for can still be remembered by a
//! [`Tombstone`]: a cancel came first, or inventory reserved for an order
//! that never arrived and the service chases that release until inventory
//! confirms it.

use shared::ids::OrderId;
use shared::message::{LinePrice, OrderStatus, SendOrder};
use shared::view::Order;

/// What the service remembers of an order it may have no row for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tombstone {
    /// Nothing.
    #[default]
    Absent,
    /// The order is to be created cancelled if it arrives (a cancel came
    /// first, or its stock decision waited for it in vain).
    Cancelled,
    /// Cancelled, and inventory reserved for it: `orders/cancelled` is
    /// re-sent until inventory confirms the release. Only while the order
    /// has no row; once it has one, the row's `release_pending` takes over.
    ReleaseChased,
}

/// A message, as the lifecycle sees it.
#[derive(Clone, Debug)]
pub enum Input<'a> {
    Send(&'a SendOrder),
    InStock {
        fingerprint: &'a str,
        /// The prices inventory accepted (empty: not said).
        prices: &'a [LinePrice],
    },
    OutOfStock {
        fingerprint: &'a str,
        reason: &'a str,
    },
    Cancel,
    Released,
    /// An `in-stock` stayed parked past the horizon: its order never came,
    /// and inventory holds stock for it that nobody would cancel.
    InStockExpired,
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
    /// Remember a cancellation for an order not seen yet; with
    /// `chase_release`, also ask inventory to release and keep asking until
    /// it confirms.
    Tombstone {
        chase_release: bool,
    },
    /// Inventory confirmed the release of an order known only by its
    /// tombstone: stop chasing it.
    ReleaseConfirmed,
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
pub fn decide(
    existing: Option<&Order>,
    tombstone: Tombstone,
    order_id: OrderId,
    input: Input<'_>,
    now_ms: i64,
) -> Step {
    match (existing, input) {
        (None, Input::Send(send)) => {
            // With a release chased, the new row (release pending) takes the
            // chase over: the store drops the tombstone's.
            let cancelled = tombstone != Tombstone::Absent;
            let order = Order {
                order_id,
                status: if cancelled { OrderStatus::Cancelled } else { OrderStatus::Pending },
                version: 1,
                customer_email: Some(send.customer_email.clone()),
                items: send.items.clone(),
                currency: send.currency.clone(),
                total_cents: send.total_cents(),
                fingerprint: send.fingerprint.clone(),
                reason: cancelled.then(|| "cancelled before the order arrived".to_owned()),
                // Inventory may have reserved from this same send: release.
                release_pending: cancelled,
                cart_id: send.cart_id,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
            };
            Step::Save { order, emit_status: true, request_release: cancelled }
        }
        (Some(_), Input::Send(_)) => Step::RepeatStatus,
        (None, Input::Cancel) => Step::Tombstone { chase_release: false },
        (None, Input::InStock { .. } | Input::OutOfStock { .. }) => Step::Park("the order has not arrived yet"),
        (None, Input::InStockExpired) => match tombstone {
            Tombstone::ReleaseChased => Step::Ignore("the release is already being chased"),
            Tombstone::Absent | Tombstone::Cancelled => Step::Tombstone { chase_release: true },
        },
        (Some(_), Input::InStockExpired) => Step::Ignore("the order arrived; its lifecycle settles the stock"),
        (None, Input::Released) => match tombstone {
            Tombstone::ReleaseChased => Step::ReleaseConfirmed,
            Tombstone::Absent | Tombstone::Cancelled => Step::Ignore("release confirmed for an order never seen"),
        },
        (Some(order), Input::InStock { fingerprint, prices }) => match order.status {
            // Inventory accepted other prices than this order holds (two
            // bodies under one order id, with the same fingerprint, reached
            // the two services first): a confirmed order carries only
            // prices inventory accepted, so refuse and give the stock back.
            OrderStatus::Pending
                if fingerprint == order.fingerprint
                    && !prices.is_empty()
                    && prices != LinePrice::of(&order.items).as_slice() =>
            {
                Step::Save {
                    order: Order {
                        status: OrderStatus::Rejected,
                        reason: Some("inventory accepted other prices than this order holds".into()),
                        release_pending: true,
                        ..changed(order, now_ms)
                    },
                    emit_status: true,
                    request_release: true,
                }
            }
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
    use shared::message::OrderLine;

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
            cart_id: None,
        }
    }

    #[derive(Clone, Debug)]
    enum Msg {
        Send,
        InStock,
        OutOfStock,
        Cancel,
        Released,
        Expired,
    }

    fn rank(s: OrderStatus) -> u8 {
        match s {
            OrderStatus::Pending => 0,
            OrderStatus::Confirmed => 1,
            OrderStatus::Rejected | OrderStatus::Cancelled => 2,
        }
    }

    #[test]
    fn a_confirmed_order_holds_the_prices_inventory_accepted() {
        let id = OrderId(uuid::Uuid::nil());
        let s = send("fp");
        let Step::Save { order, .. } = decide(None, Tombstone::Absent, id, Input::Send(&s), 1) else { panic!() };
        let same = LinePrice::of(&s.items);
        for prices in [&same[..], &[]] {
            match decide(Some(&order), Tombstone::Absent, id, Input::InStock { fingerprint: "fp", prices }, 2) {
                Step::Save { order, .. } => assert_eq!(order.status, OrderStatus::Confirmed),
                other => panic!("{other:?}"),
            }
        }
        let cheaper = [LinePrice { sku: Sku::parse("ABC").unwrap(), unit_price_cents: 1 }];
        match decide(Some(&order), Tombstone::Absent, id, Input::InStock { fingerprint: "fp", prices: &cheaper }, 2) {
            Step::Save { order, request_release, .. } => {
                assert_eq!(order.status, OrderStatus::Rejected);
                assert!(request_release && order.release_pending, "the reserved stock goes back");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn cancel_before_send_creates_a_cancelled_order_that_releases() {
        let id = OrderId(uuid::Uuid::nil());
        assert_eq!(decide(None, Tombstone::Absent, id, Input::Cancel, 1), Step::Tombstone { chase_release: false });
        let s = send("fp");
        match decide(None, Tombstone::Cancelled, id, Input::Send(&s), 2) {
            Step::Save { order, request_release, .. } => {
                assert_eq!(order.status, OrderStatus::Cancelled);
                assert!(request_release && order.release_pending);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_in_stock_for_an_unseen_order_chases_its_release_until_confirmed() {
        let id = OrderId(uuid::Uuid::nil());
        for before in [Tombstone::Absent, Tombstone::Cancelled] {
            assert_eq!(
                decide(None, before, id, Input::InStockExpired, 1),
                Step::Tombstone { chase_release: true },
                "after {before:?}"
            );
        }
        // A second expired in-stock (inventory repeated its decision) adds
        // no second chase.
        assert!(matches!(decide(None, Tombstone::ReleaseChased, id, Input::InStockExpired, 2), Step::Ignore(_)));
        // A repeated cancel leaves the chase alone.
        assert_eq!(
            decide(None, Tombstone::ReleaseChased, id, Input::Cancel, 2),
            Step::Tombstone { chase_release: false }
        );
        assert_eq!(decide(None, Tombstone::ReleaseChased, id, Input::Released, 3), Step::ReleaseConfirmed);
        assert!(matches!(decide(None, Tombstone::Cancelled, id, Input::Released, 3), Step::Ignore(_)));
        assert!(matches!(decide(None, Tombstone::Absent, id, Input::Released, 3), Step::Ignore(_)));
    }

    #[test]
    fn an_order_arriving_while_its_release_is_chased_takes_the_chase_over() {
        let id = OrderId(uuid::Uuid::nil());
        let s = send("fp");
        let Step::Save { order, request_release, emit_status } =
            decide(None, Tombstone::ReleaseChased, id, Input::Send(&s), 2)
        else {
            panic!("the order is created");
        };
        assert_eq!(order.status, OrderStatus::Cancelled);
        assert!(order.release_pending && request_release && emit_status);
        assert!(needs_follow_up(&order), "the row chases the release from now on");
        // Its release confirmation ends the row's chase.
        match decide(Some(&order), Tombstone::ReleaseChased, id, Input::Released, 3) {
            Step::Save { order, .. } => assert!(!order.release_pending && !needs_follow_up(&order)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_expired_in_stock_for_an_order_that_arrived_changes_nothing() {
        let id = OrderId(uuid::Uuid::nil());
        let s = send("fp");
        let Step::Save { order, .. } = decide(None, Tombstone::Absent, id, Input::Send(&s), 1) else {
            panic!("the order is created");
        };
        assert!(matches!(decide(Some(&order), Tombstone::Absent, id, Input::InStockExpired, 2), Step::Ignore(_)));
    }

    /// Where a release is chased: by the order's row when there is one,
    /// else by its tombstone (the store moves the chase to a new row).
    fn chasing(order: Option<&Order>, tomb: Tombstone) -> bool {
        order.map_or(tomb == Tombstone::ReleaseChased, |o| o.release_pending)
    }

    proptest! {
        /// Any delivery order, with duplicates: statuses only move forward,
        /// versions only grow, a settled order never changes status, a
        /// cancelled order always asks for a release, and a release asked
        /// for is chased (in exactly one place) until inventory confirms it.
        #[test]
        fn statuses_only_move_forward(msgs in prop::collection::vec(prop_oneof![
            Just(Msg::Send), Just(Msg::InStock), Just(Msg::OutOfStock), Just(Msg::Cancel), Just(Msg::Released),
            Just(Msg::Expired)
        ], 0..40)) {
            let id = OrderId(uuid::Uuid::nil());
            let s = send("fp");
            let mut order: Option<Order> = None;
            let mut tomb = Tombstone::Absent;
            // A release was asked for and inventory has not confirmed one
            // since (a confirmation is final: inventory never reserves for
            // that order again).
            let mut unconfirmed = false;
            for (t, m) in msgs.iter().enumerate() {
                let input = match m {
                    Msg::Send => Input::Send(&s),
                    Msg::InStock => Input::InStock { fingerprint: "fp", prices: &[] },
                    Msg::OutOfStock => Input::OutOfStock { fingerprint: "fp", reason: "none left" },
                    Msg::Cancel => Input::Cancel,
                    Msg::Released => Input::Released,
                    Msg::Expired => Input::InStockExpired,
                };
                if matches!(m, Msg::Released) {
                    unconfirmed = false;
                }
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
                        unconfirmed |= request_release;
                        if order.is_none() && tomb == Tombstone::ReleaseChased {
                            // The store hands the chase to the new row.
                            tomb = Tombstone::Cancelled;
                        }
                        order = Some(next);
                    }
                    Step::Tombstone { chase_release } => {
                        prop_assert!(order.is_none());
                        if chase_release {
                            tomb = Tombstone::ReleaseChased;
                            unconfirmed = true;
                        } else if tomb == Tombstone::Absent {
                            tomb = Tombstone::Cancelled;
                        }
                    }
                    Step::ReleaseConfirmed => {
                        prop_assert!(order.is_none());
                        tomb = Tombstone::Cancelled;
                    }
                    Step::Park(_) => prop_assert!(order.is_none()),
                    Step::RepeatStatus | Step::Ignore(_) => {}
                }
                prop_assert_eq!(chasing(order.as_ref(), tomb), unconfirmed, "after {:?}", m);
            }
        }
    }
}
