//! Reservation rules, pure and synchronous: state + message → change +
//! event. `store` loads the state and writes the change; `bus` wires it to
//! the topics.

use std::collections::BTreeMap;

use shared::ids::Sku;
use shared::message::{LinePrice, OrderLine, SendOrder};
use shared::view::ReservationLine;

/// Stock of one product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Level {
    pub available: i64,
    pub reserved: i64,
}

/// What inventory remembers per order id. At most one per order: one
/// reservation (or rejection) and one release, ever.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reservation {
    /// Holds `lines` (aggregated per SKU).
    Reserved { lines: Vec<ReservationLine>, fingerprint: String },
    /// Refused; held nothing.
    Rejected { fingerprint: String, reason: String },
    /// Held `lines` until the order was cancelled; holds nothing now.
    Released { lines: Vec<ReservationLine>, fingerprint: Option<String> },
}

/// A state change to persist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Reserve {
        lines: Vec<ReservationLine>,
        fingerprint: String,
    },
    Reject {
        fingerprint: String,
        reason: String,
    },
    /// Give back what a reservation held (may be nothing).
    Release {
        lines: Vec<ReservationLine>,
    },
    /// Cancelled before we saw the order: remember, so a later send
    /// reserves nothing.
    Tombstone,
}

/// An event to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// `prices`: the lines' unit prices inventory accepted (empty when a
    /// decision is only announced again).
    InStock {
        fingerprint: String,
        prices: Vec<LinePrice>,
    },
    OutOfStock {
        fingerprint: String,
        reason: String,
    },
    Released,
}

/// Sums the lines per SKU: two lines of the same product count together.
pub fn aggregate(items: &[OrderLine]) -> Vec<ReservationLine> {
    let mut by_sku: BTreeMap<Sku, i64> = BTreeMap::new();
    for l in items {
        *by_sku.entry(l.sku.clone()).or_default() += i64::from(l.quantity.get());
    }
    by_sku.into_iter().map(|(sku, quantity)| ReservationLine { sku, quantity }).collect()
}

/// The prices a product had lately: what it costs now, and the prices it
/// had until a recent change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PriceHistory {
    pub currency: String,
    pub current_cents: i64,
    /// `(price_cents, replaced_at_ms)`: a price the product had until then.
    pub replaced: Vec<(i64, i64)>,
}

/// What inventory knows of prices when it decides an order.
#[derive(Clone, Copy, Debug)]
pub struct Pricing<'a> {
    /// The history of each SKU the order names that exists.
    pub prices: &'a BTreeMap<Sku, PriceHistory>,
    pub now_ms: i64,
    /// How long a replaced price is still honoured: the front quotes from
    /// a cache and, while inventory is down, from prices up to
    /// `stale_price_max_secs` old.
    pub grace_ms: i64,
}

/// Inventory is the price authority: an order may carry, for each SKU, its
/// current price or a price it had within the grace window, in its
/// currency. Returns why not, for the first line that breaks the rule.
/// Unknown SKUs are left to the stock check.
pub fn price_refusal(order: &SendOrder, pricing: &Pricing<'_>) -> Option<String> {
    let since = pricing.now_ms - pricing.grace_ms;
    for line in &order.items {
        let Some(history) = pricing.prices.get(&line.sku) else { continue };
        if order.currency != history.currency {
            return Some(format!(
                "currency {} is not the currency of {} ({})",
                order.currency, line.sku, history.currency
            ));
        }
        let price = line.unit_price_cents;
        let recent = history.replaced.iter().any(|&(old, until)| old == price && until >= since);
        if price != history.current_cents && !recent {
            return Some(format!(
                "unit price {price} cents for {} is not a price it had in the last {} s (it costs {} cents)",
                line.sku,
                pricing.grace_ms / 1000,
                history.current_cents
            ));
        }
    }
    None
}

/// `orders/send`: reserve every line or none. `stock` holds the level of
/// each SKU the order names that exists; an order whose prices inventory
/// never charged ([`price_refusal`]) is rejected and reserves nothing.
pub fn on_send(
    existing: Option<&Reservation>,
    order: &SendOrder,
    stock: &BTreeMap<Sku, Level>,
    pricing: &Pricing<'_>,
) -> (Option<Change>, Option<Event>) {
    match existing {
        // Already decided: say it again (the order service re-requests
        // when it lost our answer), change nothing.
        Some(Reservation::Reserved { fingerprint, .. }) => {
            (None, Some(Event::InStock { fingerprint: fingerprint.clone(), prices: Vec::new() }))
        }
        Some(Reservation::Rejected { fingerprint, reason }) => {
            (None, Some(Event::OutOfStock { fingerprint: fingerprint.clone(), reason: reason.clone() }))
        }
        // Cancelled (and released, or tombstoned): never reserve again. Say
        // no, so an order service that still waits settles it as rejected.
        Some(Reservation::Released { .. }) => (
            None,
            Some(Event::OutOfStock {
                fingerprint: order.fingerprint.clone(),
                reason: "the order was cancelled before stock was reserved".into(),
            }),
        ),
        None => {
            let lines = aggregate(&order.items);
            let fingerprint = order.fingerprint.clone();
            if let Some(reason) = price_refusal(order, pricing) {
                return (
                    Some(Change::Reject { fingerprint: fingerprint.clone(), reason: reason.clone() }),
                    Some(Event::OutOfStock { fingerprint, reason }),
                );
            }
            for ReservationLine { sku, quantity: qty } in &lines {
                let reason = match stock.get(sku) {
                    None => format!("unknown product {sku}"),
                    Some(level) if level.available < *qty => {
                        format!("not enough stock for {sku}: {qty} requested, {} available", level.available)
                    }
                    Some(_) => continue,
                };
                return (
                    Some(Change::Reject { fingerprint: fingerprint.clone(), reason: reason.clone() }),
                    Some(Event::OutOfStock { fingerprint, reason }),
                );
            }
            let prices = LinePrice::of(&order.items);
            (
                Some(Change::Reserve { lines, fingerprint: fingerprint.clone() }),
                Some(Event::InStock { fingerprint, prices }),
            )
        }
    }
}

/// `orders/cancelled`: release whatever the order holds; always confirm.
pub fn on_cancelled(existing: Option<&Reservation>) -> (Option<Change>, Event) {
    match existing {
        None => (Some(Change::Tombstone), Event::Released),
        Some(Reservation::Reserved { lines, .. }) => (Some(Change::Release { lines: lines.clone() }), Event::Released),
        // Nothing held: confirm again so the order service stops asking.
        Some(Reservation::Rejected { .. }) | Some(Reservation::Released { .. }) => (None, Event::Released),
    }
}

/// Applies a change to in-memory levels (the model the store mirrors in
/// SQL, and what the property tests check).
pub fn apply(stock: &mut BTreeMap<Sku, Level>, change: &Change) {
    match change {
        Change::Reserve { lines, .. } => {
            for ReservationLine { sku, quantity: qty } in lines {
                let level = stock.get_mut(sku).expect("reserve only names known SKUs");
                level.available -= qty;
                level.reserved += qty;
            }
        }
        Change::Release { lines } => {
            for ReservationLine { sku, quantity: qty } in lines {
                if let Some(level) = stock.get_mut(sku) {
                    level.available += qty;
                    level.reserved -= qty;
                }
            }
        }
        Change::Reject { .. } | Change::Tombstone => {}
    }
}

/// The reservation an order has after `change`.
pub fn next_reservation(existing: Option<Reservation>, change: &Change) -> Option<Reservation> {
    match change {
        Change::Reserve { lines, fingerprint } => {
            Some(Reservation::Reserved { lines: lines.clone(), fingerprint: fingerprint.clone() })
        }
        Change::Reject { fingerprint, reason } => {
            Some(Reservation::Rejected { fingerprint: fingerprint.clone(), reason: reason.clone() })
        }
        Change::Release { lines } => Some(Reservation::Released {
            lines: lines.clone(),
            fingerprint: match existing {
                Some(Reservation::Reserved { fingerprint, .. }) => Some(fingerprint),
                _ => None,
            },
        }),
        Change::Tombstone => Some(Reservation::Released { lines: vec![], fingerprint: None }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use shared::ids::{Email, Quantity};
    use std::collections::HashMap;

    fn sku(i: u8) -> Sku {
        Sku::parse(&format!("SKU-{i}")).unwrap()
    }

    fn order(lines: &[(u8, i64)]) -> SendOrder {
        SendOrder {
            customer_email: Email::parse("a@b.example").unwrap(),
            items: lines
                .iter()
                .map(|(s, q)| OrderLine { sku: sku(*s), quantity: Quantity::new(*q).unwrap(), unit_price_cents: 100 })
                .collect(),
            currency: "EUR".into(),
            fingerprint: "fp".into(),
            cart_id: None,
        }
    }

    /// Every SKU costs 100 EUR cents, as `order` quotes.
    fn priced(skus: impl IntoIterator<Item = u8>) -> BTreeMap<Sku, PriceHistory> {
        skus.into_iter()
            .map(|i| (sku(i), PriceHistory { currency: "EUR".into(), current_cents: 100, replaced: vec![] }))
            .collect()
    }

    fn pricing(prices: &BTreeMap<Sku, PriceHistory>) -> Pricing<'_> {
        Pricing { prices, now_ms: 1_000_000, grace_ms: 600_000 }
    }

    #[test]
    fn prices_must_be_current_or_replaced_within_the_grace_window() {
        let now = 1_000_000;
        let mut prices = priced([1]);
        let history = prices.get_mut(&sku(1)).unwrap();
        history.current_cents = 150;
        // 120 until 10 s ago, 80 until 700 s ago (beyond the 600 s window).
        history.replaced = vec![(120, now - 10_000), (80, now - 700_000)];
        let p = pricing(&prices);
        let at = |cents: i64| {
            let mut o = order(&[(1, 1)]);
            o.items[0].unit_price_cents = cents;
            o
        };
        assert_eq!(price_refusal(&at(150), &p), None);
        assert_eq!(price_refusal(&at(120), &p), None);
        let reason = price_refusal(&at(80), &p).expect("an old price is refused");
        assert!(reason.contains("unit price 80 cents for SKU-1") && reason.contains("600 s"), "{reason}");
        assert!(price_refusal(&at(1), &p).is_some());
        let mut yen = at(150);
        yen.currency = "JPY".into();
        assert!(price_refusal(&yen, &p).unwrap().contains("currency JPY"));
        // Unknown SKUs are the stock check's to refuse.
        assert_eq!(price_refusal(&order(&[(9, 1)]), &p), None);
    }

    #[test]
    fn a_cheap_order_reserves_nothing() {
        let stock = BTreeMap::from([(sku(1), Level { available: 5, reserved: 0 })]);
        let prices = priced([1]);
        let mut cheap = order(&[(1, 2)]);
        cheap.items[0].unit_price_cents = 1;
        let (change, event) = on_send(None, &cheap, &stock, &pricing(&prices));
        assert!(matches!(&change, Some(Change::Reject { reason, .. }) if reason.contains("unit price 1 cents")));
        assert!(matches!(event, Some(Event::OutOfStock { .. })));
        // A decided order is answered the same way again, whatever it says.
        let reserved = Reservation::Reserved { lines: vec![(sku(1), 2).into()], fingerprint: "fp".into() };
        let (change, event) = on_send(Some(&reserved), &cheap, &stock, &pricing(&prices));
        assert_eq!((change, event), (None, Some(Event::InStock { fingerprint: "fp".into(), prices: vec![] })));
    }

    #[test]
    fn two_lines_of_one_sku_count_together() {
        let mut stock = BTreeMap::new();
        stock.insert(sku(1), Level { available: 3, reserved: 0 });
        let (change, event) = on_send(None, &order(&[(1, 2), (1, 2)]), &stock, &pricing(&priced([1])));
        assert!(matches!(change, Some(Change::Reject { .. })));
        assert!(matches!(event, Some(Event::OutOfStock { .. })));
        let (change, event) = on_send(None, &order(&[(1, 2), (1, 1)]), &stock, &pricing(&priced([1])));
        assert_eq!(change, Some(Change::Reserve { lines: vec![(sku(1), 3).into()], fingerprint: "fp".into() }));
        // The in-stock names the price of each line it accepted.
        let price = LinePrice { sku: sku(1), unit_price_cents: 100 };
        assert_eq!(event, Some(Event::InStock { fingerprint: "fp".into(), prices: vec![price.clone(), price] }));
    }

    #[test]
    fn cancelled_before_send_never_reserves() {
        let stock = BTreeMap::from([(sku(1), Level { available: 5, reserved: 0 })]);
        let (change, event) = on_cancelled(None);
        assert_eq!(event, Event::Released);
        let res = next_reservation(None, &change.unwrap());
        let (change, _) = on_send(res.as_ref(), &order(&[(1, 1)]), &stock, &pricing(&priced([1])));
        assert_eq!(change, None);
    }

    #[test]
    fn unknown_sku_is_rejected() {
        let (change, _) = on_send(None, &order(&[(9, 1)]), &BTreeMap::new(), &pricing(&BTreeMap::new()));
        match change {
            Some(Change::Reject { reason, .. }) => {
                assert!(reason.contains("unknown product SKU-9"))
            }
            other => panic!("expected a rejection, got {other:?}"),
        }
    }

    #[derive(Debug, Clone)]
    enum Step {
        Send { order: u8, lines: Vec<(u8, i64)> },
        Cancel { order: u8 },
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            (0u8..8, prop::collection::vec((0u8..4, 1i64..6), 1..4))
                .prop_map(|(order, lines)| Step::Send { order, lines }),
            (0u8..8).prop_map(|order| Step::Cancel { order }),
        ]
    }

    proptest! {
        /// Any sequence of sends and cancels, duplicated and in any order,
        /// conserves stock, never goes negative, and reserves at most once
        /// per order.
        #[test]
        fn stock_is_conserved(initial in prop::collection::vec(0i64..10, 4), steps in prop::collection::vec(step(), 0..60)) {
            let mut stock: BTreeMap<Sku, Level> = initial.iter().enumerate()
                .map(|(i, &n)| (sku(i as u8), Level { available: n, reserved: 0 })).collect();
            let mut reservations: HashMap<u8, Reservation> = HashMap::new();
            let mut reserve_count: HashMap<u8, u32> = HashMap::new();
            let prices = priced(0..4);
            for s in steps {
                let (id, change) = match s {
                    Step::Send { order: id, lines } => (id, on_send(reservations.get(&id), &order(&lines), &stock, &pricing(&prices)).0),
                    Step::Cancel { order: id } => (id, on_cancelled(reservations.get(&id)).0),
                };
                if let Some(change) = change {
                    if matches!(change, Change::Reserve { .. }) {
                        *reserve_count.entry(id).or_default() += 1;
                    }
                    apply(&mut stock, &change);
                    let next = next_reservation(reservations.remove(&id), &change);
                    reservations.extend(next.map(|r| (id, r)));
                }
                let held: BTreeMap<Sku, i64> = reservations.values().fold(BTreeMap::new(), |mut acc, r| {
                    if let Reservation::Reserved { lines, .. } = r {
                        for ReservationLine { sku: s, quantity: q } in lines { *acc.entry(s.clone()).or_default() += q; }
                    }
                    acc
                });
                for (i, &n) in initial.iter().enumerate() {
                    let level = stock[&sku(i as u8)];
                    prop_assert!(level.available >= 0);
                    prop_assert_eq!(level.available + level.reserved, n);
                    prop_assert_eq!(level.reserved, held.get(&sku(i as u8)).copied().unwrap_or(0));
                }
                prop_assert!(reserve_count.values().all(|&c| c <= 1));
            }
        }
    }
}
