//! Reservation and hold rules, pure and synchronous: state + message →
//! change + event. `store` loads the state and writes the change;
//! `handlers` wire it to the topics.

use std::collections::BTreeMap;

use shared::ids::Sku;
use shared::message::{HeldBecause, HoldLine, HoldRequest, LinePrice, OrderLine, SendOrder};
use shared::view::ReservationLine;

/// Stock of one product. `available + reserved + held` only moves with a
/// restock.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Level {
    pub available: i64,
    pub reserved: i64,
    /// Held for carts (`holds`), not yet ordered.
    pub held: i64,
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

// Carts: stock held for a cart between its `carts/hold` requests and its
// checkout, or until the holds run out.

/// What inventory holds for one cart.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct CartHolds {
    /// The version of the last hold request applied (0: none yet).
    pub version: i64,
    /// Rises with every change inventory makes to the cart's holds; the
    /// order service keeps the answer with the highest.
    pub seq: i64,
    /// Checked out: the cart holds nothing and no hold request applies.
    pub closed: bool,
    /// Units held per SKU; only SKUs holding some are listed.
    pub lines: BTreeMap<Sku, i64>,
    /// When the holds run out; `None` when nothing is held. Every applied
    /// request renews all of the cart's holds, so they share one deadline.
    pub expires_at_ms: Option<i64>,
}

/// A change to one cart's holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HoldChange {
    /// The cart afterwards.
    pub cart: CartHolds,
    /// Units moved from `available` to `held`, per SKU (negative: back).
    pub moved: BTreeMap<Sku, i64>,
    /// `inventory/held` for the order service.
    pub event: shared::message::Held,
}

impl CartHolds {
    /// The cart after `lines` replaced its holds at `seq` + 1, and what it
    /// tells the order service.
    fn next(&self, because: HeldBecause, lines: BTreeMap<Sku, i64>, expires_at_ms: Option<i64>) -> HoldChange {
        let mut moved: BTreeMap<Sku, i64> = BTreeMap::new();
        for (sku, &old) in &self.lines {
            *moved.entry(sku.clone()).or_default() -= old;
        }
        for (sku, &new) in &lines {
            *moved.entry(sku.clone()).or_default() += new;
        }
        moved.retain(|_, m| *m != 0);
        let expires_at_ms = expires_at_ms.filter(|_| !lines.is_empty());
        let cart = CartHolds {
            version: self.version,
            seq: self.seq + 1,
            closed: self.closed || because == HeldBecause::CheckedOut,
            lines,
            expires_at_ms,
        };
        let event = shared::message::Held {
            seq: cart.seq,
            version: cart.version,
            because,
            lines: cart
                .lines
                .iter()
                .map(|(sku, &q)| HoldLine { sku: sku.clone(), quantity: u32::try_from(q).unwrap_or(u32::MAX) })
                .collect(),
            expires_at_ms,
        };
        HoldChange { cart, moved, event }
    }
}

/// `carts/hold`: hold what the request asks for, as far as stock goes.
/// Applies only a request newer than the last one applied to an open cart
/// (`None`: a copy, a late request or a checked-out cart; nothing
/// changes). Per SKU of the cart's holds and the request, the cart holds
/// `min(requested, held now + available)`: never more than there is, and
/// an unknown SKU holds nothing. The holds left all run out `hold_ms` from
/// now.
pub fn on_hold(
    cart: Option<&CartHolds>,
    request: &HoldRequest,
    stock: &BTreeMap<Sku, Level>,
    now_ms: i64,
    hold_ms: i64,
) -> Option<HoldChange> {
    let current = cart.cloned().unwrap_or_default();
    if current.closed || request.version <= current.version {
        return None;
    }
    let mut wanted: BTreeMap<Sku, i64> = BTreeMap::new();
    for line in &request.lines {
        *wanted.entry(line.sku.clone()).or_default() += i64::from(line.quantity);
    }
    let mut lines = BTreeMap::new();
    for (sku, want) in wanted {
        let have = current.lines.get(&sku).copied().unwrap_or(0);
        let available = stock.get(&sku).map_or(0, |l| l.available);
        let hold = want.min(have + available);
        if hold > 0 {
            lines.insert(sku, hold);
        }
    }
    let mut change = current.next(HeldBecause::Hold, lines, Some(now_ms + hold_ms));
    change.cart.version = request.version;
    change.event.version = request.version;
    Some(change)
}

/// The expiry timer: a cart whose holds ran out (before `now_ms`) gives
/// them back. The cart stays open: a later request holds again.
pub fn on_expiry(cart: &CartHolds, now_ms: i64) -> Option<HoldChange> {
    match cart.expires_at_ms {
        Some(at) if at < now_ms && !cart.lines.is_empty() => {
            Some(cart.next(HeldBecause::Expired, BTreeMap::new(), None))
        }
        _ => None,
    }
}

/// The cart's checkout: whatever it still holds goes back, and it closes
/// for good. `None` for a cart already closed (an unknown cart is closed,
/// so a late hold request for it holds nothing).
pub fn close_cart(cart: Option<&CartHolds>) -> Option<HoldChange> {
    let current = cart.cloned().unwrap_or_default();
    (!current.closed).then(|| current.next(HeldBecause::CheckedOut, BTreeMap::new(), None))
}

/// `orders/send` for an order that checks out a cart (`cart_id`): on a
/// new decision, the cart's holds go back and the order is decided on
/// what is then available, in one step, so the order takes the held units
/// first and nobody else can take them in between; whether reserved or
/// refused, the cart closes. An order already decided (or without a cart)
/// is [`on_send`], and leaves the cart alone.
pub fn on_checkout(
    existing: Option<&Reservation>,
    order: &SendOrder,
    cart: Option<&CartHolds>,
    stock: &BTreeMap<Sku, Level>,
    pricing: &Pricing<'_>,
) -> (Option<Change>, Option<Event>, Option<HoldChange>) {
    if existing.is_some() || order.cart_id.is_none() {
        let (change, event) = on_send(existing, order, stock, pricing);
        return (change, event, None);
    }
    let closed = close_cart(cart);
    let mut levels = stock.clone();
    if let Some(c) = &closed {
        apply_holds(&mut levels, &c.moved);
    }
    let (change, event) = on_send(None, order, &levels, pricing);
    (change, event, closed)
}

/// Moves `moved` units per SKU from `available` to `held` (negative: back).
pub fn apply_holds(stock: &mut BTreeMap<Sku, Level>, moved: &BTreeMap<Sku, i64>) {
    for (sku, &m) in moved {
        if let Some(level) = stock.get_mut(sku) {
            level.available -= m;
            level.held += m;
        }
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
        let stock = BTreeMap::from([(sku(1), Level { available: 5, reserved: 0, held: 0 })]);
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
        stock.insert(sku(1), Level { available: 3, reserved: 0, held: 0 });
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
        let stock = BTreeMap::from([(sku(1), Level { available: 5, reserved: 0, held: 0 })]);
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
                .map(|(i, &n)| (sku(i as u8), Level { available: n, reserved: 0, held: 0 })).collect();
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

    // Carts.

    fn cart_of(i: u8) -> shared::ids::CartId {
        shared::ids::CartId(uuid::Uuid::from_u128(0xC0FFEE00 + u128::from(i)))
    }

    fn request(version: i64, lines: &[(u8, u32)]) -> HoldRequest {
        HoldRequest { version, lines: lines.iter().map(|&(s, quantity)| HoldLine { sku: sku(s), quantity }).collect() }
    }

    fn levels(available: &[(u8, i64)]) -> BTreeMap<Sku, Level> {
        available.iter().map(|&(s, a)| (sku(s), Level { available: a, ..Level::default() })).collect()
    }

    fn held(cart: &CartHolds) -> Vec<(Sku, i64)> {
        cart.lines.iter().map(|(s, &q)| (s.clone(), q)).collect()
    }

    const HOLD_MS: i64 = 900_000;

    #[test]
    fn a_hold_takes_what_there_is_and_renews_every_hold() {
        let mut stock = levels(&[(1, 5), (2, 1)]);
        // Wants 3 of SKU-1 and 4 of SKU-2 (only 1 there) and 2 of a SKU that doesn't exist.
        let first = on_hold(None, &request(1, &[(1, 3), (2, 4), (9, 2)]), &stock, 1000, HOLD_MS).unwrap();
        assert_eq!(held(&first.cart), vec![(sku(1), 3), (sku(2), 1)]);
        assert_eq!(first.moved, BTreeMap::from([(sku(1), 3), (sku(2), 1)]));
        assert_eq!((first.cart.version, first.cart.seq, first.cart.expires_at_ms), (1, 1, Some(1000 + HOLD_MS)));
        let e = &first.event;
        assert_eq!((e.seq, e.version, e.because, e.expires_at_ms), (1, 1, HeldBecause::Hold, Some(1000 + HOLD_MS)));
        assert_eq!(e.lines, vec![HoldLine { sku: sku(1), quantity: 3 }, HoldLine { sku: sku(2), quantity: 1 }]);
        apply_holds(&mut stock, &first.moved);
        assert_eq!(stock[&sku(1)], Level { available: 2, reserved: 0, held: 3 });
        assert_eq!(stock[&sku(2)], Level { available: 0, reserved: 0, held: 1 });

        // The whole cart again: SKU-1 down to 1, SKU-2 dropped, SKU-1's
        // deadline renewed although nothing else changed for it.
        let second = on_hold(Some(&first.cart), &request(2, &[(1, 1)]), &stock, 5000, HOLD_MS).unwrap();
        assert_eq!(held(&second.cart), vec![(sku(1), 1)]);
        assert_eq!(second.moved, BTreeMap::from([(sku(1), -2), (sku(2), -1)]));
        assert_eq!(second.cart.expires_at_ms, Some(5000 + HOLD_MS));
        apply_holds(&mut stock, &second.moved);
        // Growing a hold keeps what it has and adds what is available.
        let third = on_hold(Some(&second.cart), &request(3, &[(1, 10)]), &stock, 6000, HOLD_MS).unwrap();
        assert_eq!(held(&third.cart), vec![(sku(1), 5)]);

        // Nothing held: no deadline.
        let empty = on_hold(Some(&third.cart), &request(4, &[]), &stock, 7000, HOLD_MS).unwrap();
        assert!(empty.cart.lines.is_empty() && empty.cart.expires_at_ms.is_none() && empty.event.lines.is_empty());
        assert_eq!(empty.cart.seq, 4);
    }

    #[test]
    fn copies_late_requests_and_closed_carts_change_nothing() {
        let stock = levels(&[(1, 5)]);
        let cart = on_hold(None, &request(3, &[(1, 2)]), &stock, 0, HOLD_MS).unwrap().cart;
        assert_eq!(on_hold(Some(&cart), &request(3, &[(1, 4)]), &stock, 0, HOLD_MS), None, "a copy");
        assert_eq!(on_hold(Some(&cart), &request(2, &[(1, 1)]), &stock, 0, HOLD_MS), None, "an older request");
        assert_eq!(on_hold(None, &request(0, &[(1, 1)]), &stock, 0, HOLD_MS), None, "version 0 is no request");
        let closed = close_cart(Some(&cart)).unwrap();
        assert_eq!(closed.moved, BTreeMap::from([(sku(1), -2)]));
        assert!(closed.cart.closed && closed.cart.lines.is_empty());
        assert_eq!((closed.event.because, closed.event.seq, closed.event.version), (HeldBecause::CheckedOut, 2, 3));
        assert_eq!(on_hold(Some(&closed.cart), &request(9, &[(1, 1)]), &stock, 0, HOLD_MS), None);
        assert_eq!(close_cart(Some(&closed.cart)), None, "closes once");
    }

    #[test]
    fn holds_run_out_after_their_deadline_and_the_cart_stays_open() {
        let stock = levels(&[(1, 5)]);
        let cart = on_hold(None, &request(1, &[(1, 2)]), &stock, 0, 1000).unwrap().cart;
        assert_eq!(on_expiry(&cart, 1000), None, "not before the deadline");
        let expired = on_expiry(&cart, 1001).unwrap();
        assert_eq!(expired.moved, BTreeMap::from([(sku(1), -2)]));
        assert!(!expired.cart.closed && expired.cart.lines.is_empty() && expired.cart.expires_at_ms.is_none());
        assert_eq!((expired.event.because, expired.event.seq), (HeldBecause::Expired, 2));
        assert_eq!(on_expiry(&expired.cart, 5000), None, "nothing left to run out");
        assert!(on_hold(Some(&expired.cart), &request(2, &[(1, 1)]), &stock, 5000, 1000).is_some());
    }

    fn checkout(cart: u8, lines: &[(u8, i64)]) -> SendOrder {
        SendOrder { cart_id: Some(cart_of(cart)), ..order(lines) }
    }

    #[test]
    fn a_checkout_takes_the_held_units_first_and_gives_back_the_rest() {
        let mut stock = levels(&[(1, 3), (2, 2)]);
        let cart = on_hold(None, &request(1, &[(1, 3), (2, 2)]), &stock, 0, HOLD_MS).unwrap();
        apply_holds(&mut stock, &cart.moved);
        assert_eq!((stock[&sku(1)].available, stock[&sku(2)].available), (0, 0));
        let prices = priced([1, 2]);
        // Nothing is available, but the cart holds what the order needs;
        // SKU-2's second unit goes back.
        let (change, event, closed) =
            on_checkout(None, &checkout(0, &[(1, 3), (2, 1)]), Some(&cart.cart), &stock, &pricing(&prices));
        assert_eq!(
            change,
            Some(Change::Reserve { lines: vec![(sku(1), 3).into(), (sku(2), 1).into()], fingerprint: "fp".into() })
        );
        assert!(matches!(event, Some(Event::InStock { .. })));
        let closed = closed.unwrap();
        assert_eq!(closed.event.because, HeldBecause::CheckedOut);
        apply_holds(&mut stock, &closed.moved);
        apply(&mut stock, &change.unwrap());
        assert_eq!(stock[&sku(1)], Level { available: 0, reserved: 3, held: 0 });
        assert_eq!(stock[&sku(2)], Level { available: 1, reserved: 1, held: 0 });

        // Decided: a repeat says it again and leaves the (closed) cart alone.
        let reserved = Reservation::Reserved { lines: vec![(sku(1), 3).into()], fingerprint: "fp".into() };
        let (change, _, closed_again) =
            on_checkout(Some(&reserved), &checkout(0, &[(1, 3)]), Some(&closed.cart), &stock, &pricing(&prices));
        assert_eq!((change, closed_again), (None, None));
    }

    #[test]
    fn a_refused_checkout_still_gives_back_the_holds_and_closes_the_cart() {
        let mut stock = levels(&[(1, 3)]);
        let cart = on_hold(None, &request(1, &[(1, 2)]), &stock, 0, HOLD_MS).unwrap();
        apply_holds(&mut stock, &cart.moved);
        // 2 held + 1 available < 4.
        let (change, _, closed) =
            on_checkout(None, &checkout(0, &[(1, 4)]), Some(&cart.cart), &stock, &pricing(&priced([1])));
        assert!(matches!(&change, Some(Change::Reject { reason, .. }) if reason.contains("3 available")), "{change:?}");
        let closed = closed.unwrap();
        assert!(closed.cart.closed);
        apply_holds(&mut stock, &closed.moved);
        assert_eq!(stock[&sku(1)], Level { available: 3, reserved: 0, held: 0 });
        // An order for a cart inventory never saw closes it all the same.
        let (_, _, unseen) = on_checkout(None, &checkout(1, &[(1, 1)]), None, &stock, &pricing(&priced([1])));
        let unseen = unseen.unwrap();
        assert!(unseen.cart.closed && unseen.moved.is_empty() && unseen.cart.seq == 1);
    }

    #[derive(Debug, Clone)]
    enum CartStep {
        /// A hold request `bump` versions after the cart's last applied
        /// one (0 or less: a copy or a late request).
        Hold {
            cart: u8,
            bump: i64,
            lines: Vec<(u8, u32)>,
        },
        /// Time passes, then the expiry timer runs.
        Tick {
            ms: i64,
        },
        /// Order `order` checks out cart `order % 3` (sent again after the
        /// first time).
        Checkout {
            order: u8,
            lines: Vec<(u8, i64)>,
        },
        Cancel {
            order: u8,
        },
    }

    fn cart_step() -> impl Strategy<Value = CartStep> {
        prop_oneof![
            4 => (0u8..3, -1i64..3, prop::collection::vec((0u8..4, 0u32..6), 0..4))
                .prop_map(|(cart, bump, lines)| CartStep::Hold { cart, bump, lines }),
            2 => (0i64..1500).prop_map(|ms| CartStep::Tick { ms }),
            2 => (0u8..6, prop::collection::vec((0u8..4, 1i64..6), 1..4))
                .prop_map(|(order, lines)| CartStep::Checkout { order, lines }),
            1 => (0u8..6).prop_map(|order| CartStep::Cancel { order }),
        ]
    }

    proptest! {
        /// Holds, expiries, checkouts and cancellations in any order keep
        /// every unit of stock in exactly one place (available, reserved
        /// or held), never negative; `held` is what the carts' holds add up
        /// to; a checked-out cart holds nothing; each change of a cart
        /// raises its `seq`; and a checkout is reserved exactly when the
        /// cart's holds plus what is available cover it.
        #[test]
        fn stock_is_conserved_with_carts(
            initial in prop::collection::vec(0i64..10, 4),
            steps in prop::collection::vec(cart_step(), 0..80),
        ) {
            let mut stock: BTreeMap<Sku, Level> = initial.iter().enumerate()
                .map(|(i, &n)| (sku(i as u8), Level { available: n, ..Level::default() })).collect();
            let mut carts: HashMap<u8, CartHolds> = HashMap::new();
            let mut reservations: HashMap<u8, Reservation> = HashMap::new();
            let prices = priced(0..4);
            let hold_ms = 1000;
            let mut now = 0;
            for s in steps {
                let mut changes: Vec<(u8, HoldChange)> = Vec::new();
                match s {
                    CartStep::Hold { cart, bump, lines } => {
                        let version = carts.get(&cart).map_or(0, |c| c.version) + bump;
                        let before = carts.get(&cart).cloned();
                        match on_hold(carts.get(&cart), &request(version, &lines), &stock, now, hold_ms) {
                            Some(c) => {
                                for (s, &q) in &c.cart.lines {
                                    let want: i64 = lines.iter().filter(|l| sku(l.0) == *s).map(|l| i64::from(l.1)).sum();
                                    prop_assert!(q <= want);
                                }
                                changes.push((cart, c));
                            }
                            None => prop_assert!(bump <= 0 || before.is_some_and(|c| c.closed)),
                        }
                    }
                    CartStep::Tick { ms } => {
                        now += ms;
                        for (&id, cart) in &carts {
                            changes.extend(on_expiry(cart, now).map(|c| (id, c)));
                        }
                    }
                    CartStep::Checkout { order: id, lines } => {
                        let cart = id % 3;
                        let o = checkout(cart, &lines);
                        let cover = aggregate(&o.items).iter().all(|l| {
                            let held = carts.get(&cart).and_then(|c| c.lines.get(&l.sku)).copied().unwrap_or(0);
                            l.quantity <= held + stock[&l.sku].available
                        });
                        let existing = reservations.get(&id).cloned();
                        let (change, _, closed) = on_checkout(existing.as_ref(), &o, carts.get(&cart), &stock, &pricing(&prices));
                        if existing.is_none() {
                            prop_assert_eq!(matches!(change, Some(Change::Reserve { .. })), cover);
                        } else {
                            prop_assert!(change.is_none() && closed.is_none());
                        }
                        // The holds go back before the order takes its units.
                        if let Some(c) = closed {
                            apply_holds(&mut stock, &c.moved);
                            carts.insert(cart, c.cart);
                        }
                        if let Some(change) = change {
                            apply(&mut stock, &change);
                            let next = next_reservation(reservations.remove(&id), &change);
                            reservations.extend(next.map(|r| (id, r)));
                        }
                    }
                    CartStep::Cancel { order: id } => {
                        if let (Some(change), _) = on_cancelled(reservations.get(&id)) {
                            apply(&mut stock, &change);
                            let next = next_reservation(reservations.remove(&id), &change);
                            reservations.extend(next.map(|r| (id, r)));
                        }
                    }
                }
                for (id, c) in changes {
                    prop_assert_eq!(c.cart.seq, carts.get(&id).map_or(0, |c| c.seq) + 1);
                    apply_holds(&mut stock, &c.moved);
                    carts.insert(id, c.cart);
                }

                let mut held: BTreeMap<Sku, i64> = BTreeMap::new();
                for c in carts.values() {
                    prop_assert!(!c.closed || c.lines.is_empty());
                    for (s, &q) in &c.lines {
                        prop_assert!(q > 0);
                        *held.entry(s.clone()).or_default() += q;
                    }
                }
                let mut reserved: BTreeMap<Sku, i64> = BTreeMap::new();
                for r in reservations.values() {
                    if let Reservation::Reserved { lines, .. } = r {
                        for l in lines { *reserved.entry(l.sku.clone()).or_default() += l.quantity; }
                    }
                }
                for (i, &n) in initial.iter().enumerate() {
                    let s = sku(i as u8);
                    let level = stock[&s];
                    prop_assert!(level.available >= 0 && level.reserved >= 0 && level.held >= 0, "{:?}", level);
                    prop_assert_eq!(level.available + level.reserved + level.held, n);
                    prop_assert_eq!(level.held, held.get(&s).copied().unwrap_or(0));
                    prop_assert_eq!(level.reserved, reserved.get(&s).copied().unwrap_or(0));
                }
            }
        }
    }
}
