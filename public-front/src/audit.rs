//! The books audit: reads both services and checks the invariants of the
//! design. Used by `webshop audit` and `GET /admin/audit`.
//!
//! - per SKU: `available`, `reserved` and `held` never negative,
//!   `initial + restocked == available + reserved + held`, `reserved`
//!   equals what live reservations hold and `held` what carts' holds add
//!   up to;
//! - each order id has at most one reservation and one release (the
//!   reservations table is keyed by order id; a release is a state);
//! - order and inventory agree: confirmed ⇔ reserved; rejected or
//!   cancelled (release confirmed) ⇔ nothing held;
//! - every reservation inventory holds belongs to an order the order
//!   service knows (a release it chases for an order it never saw counts
//!   as in flight until the horizon);
//! - nothing is stuck: no order pending, no release unconfirmed (an order's
//!   or a tombstone's), no outbox event unsent past the horizon; parked and
//!   dead letters are reported; a hold past its deadline is given back
//!   within the horizon.
//!
//! Work in flight (a pending order, a release on its way) is not a failure
//! until it is older than the horizon.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shared::clock::now_ms;
use shared::message::OrderStatus;
use shared::node::NodeStats;
use shared::view::{HoldView, Order, ReleaseChase, ReservationView, StockView};

use crate::downstream::Downstream;

/// One broken invariant (or one piece of work in flight).
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub subject: String,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub passed: bool,
    pub skus: usize,
    pub orders: usize,
    pub reservations: usize,
    /// Hold rows (one per cart and SKU), and the units they hold.
    pub holds: usize,
    pub held_units: i64,
    pub orders_by_status: BTreeMap<&'static str, usize>,
    pub failures: Vec<Finding>,
    pub in_flight: Vec<Finding>,
    pub parked: i64,
    pub dead_letters: i64,
}

/// Everything the audit reads.
pub struct Books {
    pub stock: Vec<StockView>,
    pub orders: Vec<Order>,
    pub reservations: Vec<ReservationView>,
    pub release_chases: Vec<ReleaseChase>,
    pub holds: Vec<HoldView>,
    pub inventory: NodeStatsLite,
    pub order: NodeStatsLite,
}

/// The parts of a node's `/stats` the audit looks at.
#[derive(Debug, Deserialize)]
pub struct NodeStatsLite {
    pub outbox: OutboxLite,
    pub parked: i64,
    pub dead_letters: i64,
}

#[derive(Debug, Deserialize)]
pub struct OutboxLite {
    pub unsent: i64,
    pub oldest_unsent_age_ms: Option<i64>,
}

impl From<NodeStats> for NodeStatsLite {
    fn from(s: NodeStats) -> Self {
        Self {
            outbox: OutboxLite { unsent: s.outbox.unsent, oldest_unsent_age_ms: s.outbox.oldest_unsent_age_ms },
            parked: s.parked,
            dead_letters: s.dead_letters,
        }
    }
}

/// Checks the invariants on `books`; pure, so it is tested without I/O.
pub fn check(books: &Books, now_ms: i64, horizon: Duration) -> Report {
    let horizon_ms = horizon.as_millis() as i64;
    let mut failures = Vec::new();
    let mut fail = |check, subject: String, detail: String| failures.push(Finding { check, subject, detail });

    let reservations: HashMap<&str, &ReservationView> =
        books.reservations.iter().map(|r| (r.order_id.as_str(), r)).collect();
    if reservations.len() != books.reservations.len() {
        fail("one_reservation_per_order", "reservations".into(), "an order id appears twice".into());
    }
    let mut held: BTreeMap<&str, i64> = BTreeMap::new();
    for r in &books.reservations {
        if r.state == "reserved" {
            for line in &r.lines {
                *held.entry(line.sku.as_str()).or_default() += line.quantity;
            }
        }
        if r.state == "released" && r.released_at_ms.is_none() {
            fail("one_release_per_order", r.order_id.clone(), "released without a release time".into());
        }
    }
    let mut carts_hold: BTreeMap<&str, i64> = BTreeMap::new();
    for h in &books.holds {
        *carts_hold.entry(h.sku.as_str()).or_default() += h.quantity;
        if h.quantity <= 0 {
            fail("held_matches_holds", format!("{}/{}", h.cart_id, h.sku), format!("holds {} units", h.quantity));
        }
    }
    for s in &books.stock {
        if s.available < 0 || s.reserved < 0 || s.held < 0 {
            fail(
                "stock_non_negative",
                s.sku.clone(),
                format!("available {} reserved {} held {}", s.available, s.reserved, s.held),
            );
        }
        if s.initial + s.restocked != s.available + s.reserved + s.held {
            fail(
                "stock_conserved",
                s.sku.clone(),
                format!(
                    "initial {} + restocked {} != available {} + reserved {} + held {}",
                    s.initial, s.restocked, s.available, s.reserved, s.held
                ),
            );
        }
        let in_carts = carts_hold.remove(s.sku.as_str()).unwrap_or(0);
        if in_carts != s.held {
            fail("held_matches_holds", s.sku.clone(), format!("held {} but carts' holds add up to {in_carts}", s.held));
        }
        let live = held.get(s.sku.as_str()).copied().unwrap_or(0);
        if live != s.reserved {
            fail(
                "reserved_matches_reservations",
                s.sku.clone(),
                format!("reserved {} but live reservations hold {live}", s.reserved),
            );
        }
    }

    for (sku, units) in carts_hold {
        fail(
            "held_matches_holds",
            sku.to_owned(),
            format!("carts hold {units} units of a SKU inventory doesn't stock"),
        );
    }

    let orders: HashMap<String, &Order> = books.orders.iter().map(|o| (o.order_id.to_string(), o)).collect();
    let mut by_status: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut stuck_or_in_flight = Vec::new();
    for o in &books.orders {
        *by_status.entry(o.status.as_str()).or_default() += 1;
        let id = o.order_id.to_string();
        let state = reservations.get(id.as_str()).map(|r| r.state.as_str());
        let age = now_ms - o.updated_at_ms;
        let waiting = |what: &str| Finding {
            check: "settled_in_time",
            subject: id.clone(),
            detail: format!("{what} for {} s", age / 1000),
        };
        match o.status {
            OrderStatus::Confirmed if state != Some("reserved") => fail(
                "confirmed_is_reserved",
                id.clone(),
                format!("confirmed, but inventory says {}", state.unwrap_or("nothing")),
            ),
            OrderStatus::Rejected | OrderStatus::Cancelled if !o.release_pending && state == Some("reserved") => fail(
                "settled_holds_nothing",
                id.clone(),
                format!("{} but inventory still holds stock", o.status.as_str()),
            ),
            OrderStatus::Pending => stuck_or_in_flight.push((age, waiting("pending without a stock decision"))),
            _ if o.release_pending => {
                stuck_or_in_flight.push((age, waiting("waiting for inventory to confirm the release")))
            }
            _ => {}
        }
    }
    let chased: HashMap<&str, &ReleaseChase> = books.release_chases.iter().map(|c| (c.order_id.as_str(), c)).collect();
    for c in &books.release_chases {
        let age = now_ms - c.since_ms;
        stuck_or_in_flight.push((
            age,
            Finding {
                check: "settled_in_time",
                subject: c.order_id.clone(),
                detail: format!(
                    "release of stock reserved for an order never seen unconfirmed for {} s ({} re-sends)",
                    age / 1000,
                    c.follow_ups
                ),
            },
        ));
    }
    for h in books.holds.iter().filter(|h| h.expires_at_ms < now_ms) {
        let age = now_ms - h.expires_at_ms;
        stuck_or_in_flight.push((
            age,
            Finding {
                check: "holds_run_out",
                subject: format!("{}/{}", h.cart_id, h.sku),
                detail: format!("{} units held {} s past the hold's deadline", h.quantity, age / 1000),
            },
        ));
    }
    let mut in_flight = Vec::new();
    for (age, f) in stuck_or_in_flight {
        if age > horizon_ms {
            failures.push(f);
        } else {
            in_flight.push(f);
        }
    }

    for r in &books.reservations {
        if r.state == "reserved" && !orders.contains_key(&r.order_id) {
            let age = now_ms - r.decided_at_ms.unwrap_or(now_ms);
            let releasing = if chased.contains_key(r.order_id.as_str()) {
                "the order service is chasing its release"
            } else {
                "nothing is releasing it"
            };
            let f = Finding {
                check: "reservation_has_order",
                subject: r.order_id.clone(),
                detail: format!(
                    "stock reserved for an order the order service doesn't know, for {} s; {releasing}",
                    age / 1000
                ),
            };
            if age > horizon_ms {
                failures.push(f);
            } else {
                in_flight.push(f);
            }
        }
        if let (Some(o), "reserved") = (orders.get(&r.order_id), r.state.as_str()) {
            if o.status == OrderStatus::Pending {
                in_flight.push(Finding {
                    check: "confirmed_is_reserved",
                    subject: r.order_id.clone(),
                    detail: "reserved; the order service hasn't applied in-stock yet".into(),
                });
            }
        }
    }
    for (name, stats) in [("inventory", &books.inventory), ("order", &books.order)] {
        if let Some(age) = stats.outbox.oldest_unsent_age_ms {
            let f = Finding {
                check: "outbox_drains",
                subject: name.into(),
                detail: format!("{} events unsent, oldest {} s", stats.outbox.unsent, age / 1000),
            };
            if age > horizon_ms {
                failures.push(f);
            } else {
                in_flight.push(f);
            }
        }
    }
    Report {
        passed: failures.is_empty(),
        skus: books.stock.len(),
        orders: books.orders.len(),
        reservations: books.reservations.len(),
        holds: books.holds.len(),
        held_units: books.holds.iter().map(|h| h.quantity).sum(),
        orders_by_status: by_status,
        failures,
        in_flight,
        parked: books.inventory.parked + books.order.parked,
        dead_letters: books.inventory.dead_letters + books.order.dead_letters,
    }
}

/// Reads both services' books over HTTP.
pub async fn fetch(down: &Downstream) -> Result<Books, shared::http::ApiError> {
    let stock = down.node_json("inventory", "/stock").await?;
    let mut orders: Vec<Order> = Vec::new();
    loop {
        let after = orders.last().map(|o| format!("&after={}", o.order_id)).unwrap_or_default();
        let page: Vec<Order> = down.node_json("order", &format!("/orders?limit=1000{after}")).await?;
        let done = page.len() < 1000;
        orders.extend(page);
        if done {
            break;
        }
    }
    let mut reservations: Vec<ReservationView> = Vec::new();
    loop {
        let after = reservations.last().map(|r| format!("&after={}", r.order_id)).unwrap_or_default();
        let page: Vec<ReservationView> =
            down.node_json("inventory", &format!("/reservations?limit=1000{after}")).await?;
        let done = page.len() < 1000;
        reservations.extend(page);
        if done {
            break;
        }
    }
    let mut release_chases: Vec<ReleaseChase> = Vec::new();
    loop {
        let after = release_chases.last().map(|c| format!("&after={}", c.order_id)).unwrap_or_default();
        let page: Vec<ReleaseChase> = down.node_json("order", &format!("/release-chases?limit=1000{after}")).await?;
        let done = page.len() < 1000;
        release_chases.extend(page);
        if done {
            break;
        }
    }
    let mut holds: Vec<HoldView> = Vec::new();
    loop {
        let after = holds.last().map(|h| format!("&after={}/{}", h.cart_id, h.sku)).unwrap_or_default();
        let page: Vec<HoldView> = down.node_json("inventory", &format!("/holds?limit=1000{after}")).await?;
        let done = page.len() < 1000;
        holds.extend(page);
        if done {
            break;
        }
    }
    let inventory = down.node_json("inventory", "/stats").await?;
    let order = down.node_json("order", "/stats").await?;
    Ok(Books { stock, orders, reservations, release_chases, holds, inventory, order })
}

/// Fetches and checks.
pub async fn run(down: &Downstream, horizon: Duration) -> Result<Report, shared::http::ApiError> {
    let books = fetch(down).await?;
    Ok(check(&books, now_ms(), horizon))
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "audit: {}", if self.passed { "PASS" } else { "FAIL" })?;
        writeln!(
            f,
            "  {} SKUs, {} orders, {} reservations, {} holds ({} units)",
            self.skus, self.orders, self.reservations, self.holds, self.held_units
        )?;
        let statuses: Vec<String> = self.orders_by_status.iter().map(|(s, n)| format!("{s} {n}")).collect();
        writeln!(f, "  orders: {}", if statuses.is_empty() { "none".into() } else { statuses.join(", ") })?;
        writeln!(f, "  parked events: {}, dead letters: {}", self.parked, self.dead_letters)?;
        if !self.in_flight.is_empty() {
            writeln!(f, "  in flight ({}):", self.in_flight.len())?;
            for x in self.in_flight.iter().take(20) {
                writeln!(f, "    {} {}: {}", x.check, x.subject, x.detail)?;
            }
        }
        if !self.failures.is_empty() {
            writeln!(f, "  FAILURES ({}):", self.failures.len())?;
            for x in &self.failures {
                writeln!(f, "    {} {}: {}", x.check, x.subject, x.detail)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::Sku;
    use shared::view::ReservationLine;

    const NOW: i64 = 1_000_000;
    const ID: &str = "00000000-0000-0000-0000-000000000007";

    fn stats() -> NodeStatsLite {
        NodeStatsLite { outbox: OutboxLite { unsent: 0, oldest_unsent_age_ms: None }, parked: 0, dead_letters: 0 }
    }

    /// Inventory holds 2 of one SKU for `ID`, reserved `held_ms` ago (or
    /// released), and the order service has no order at all.
    fn books(state: &str, held_ms: i64, chased_ms: Option<i64>) -> Books {
        let reserved = if state == "reserved" { 2 } else { 0 };
        Books {
            stock: vec![StockView {
                sku: "ABC".into(),
                available: 10 - reserved,
                reserved,
                held: 0,
                initial: 10,
                restocked: 0,
            }],
            orders: Vec::new(),
            reservations: vec![ReservationView {
                order_id: ID.into(),
                state: state.into(),
                lines: vec![ReservationLine { sku: Sku::parse("ABC").unwrap(), quantity: 2 }],
                reason: None,
                decided_at_ms: Some(NOW - held_ms),
                released_at_ms: (state == "released").then_some(NOW - 1),
            }],
            release_chases: chased_ms
                .map(|ms| ReleaseChase {
                    order_id: ID.into(),
                    since_ms: NOW - ms,
                    follow_ups: 3,
                    next_follow_up_at_ms: NOW,
                })
                .into_iter()
                .collect(),
            holds: Vec::new(),
            inventory: stats(),
            order: stats(),
        }
    }

    fn named<'a>(findings: &'a [Finding], check: &str) -> Vec<&'a Finding> {
        findings.iter().filter(|f| f.check == check && f.subject == ID).collect()
    }

    #[test]
    fn a_reservation_for_an_order_nobody_knows_fails_past_the_horizon() {
        let horizon = Duration::from_secs(60);
        let young = check(&books("reserved", 10_000, None), NOW, horizon);
        assert!(young.passed, "{young}");
        assert_eq!(named(&young.in_flight, "reservation_has_order").len(), 1, "{young}");

        let old = check(&books("reserved", 120_000, None), NOW, horizon);
        assert!(!old.passed);
        let f = named(&old.failures, "reservation_has_order");
        assert!(f.len() == 1 && f[0].detail.contains("nothing is releasing it"), "{old}");
    }

    #[test]
    fn a_release_chased_for_an_order_never_seen_is_in_flight_until_the_horizon() {
        let horizon = Duration::from_secs(60);
        let chasing = check(&books("reserved", 10_000, Some(9_000)), NOW, horizon);
        assert!(chasing.passed, "{chasing}");
        let held = named(&chasing.in_flight, "reservation_has_order");
        assert!(held.len() == 1 && held[0].detail.contains("chasing its release"), "{chasing}");
        assert_eq!(named(&chasing.in_flight, "settled_in_time").len(), 1, "{chasing}");

        // Released by inventory, but the confirmation never reached the
        // order service: its chase is still work in flight, then stuck.
        let unconfirmed = check(&books("released", 10_000, Some(9_000)), NOW, horizon);
        assert!(unconfirmed.passed && named(&unconfirmed.in_flight, "settled_in_time").len() == 1, "{unconfirmed}");
        let stuck = check(&books("released", 120_000, Some(119_000)), NOW, horizon);
        assert!(!stuck.passed);
        let f = named(&stuck.failures, "settled_in_time");
        assert!(f.len() == 1 && f[0].detail.contains("never seen"), "{stuck}");

        let settled = check(&books("released", 120_000, None), NOW, horizon);
        assert!(settled.passed && settled.in_flight.is_empty(), "{settled}");
    }

    #[test]
    fn held_stock_is_conserved_and_matches_the_holds() {
        let horizon = Duration::from_secs(60);
        let hold = |cart: &str, quantity, expires_at_ms| HoldView {
            cart_id: cart.into(),
            sku: "ABC".into(),
            quantity,
            expires_at_ms,
        };
        let mut b = books("released", 120_000, None);
        b.stock[0].available = 7;
        b.stock[0].held = 3;
        b.holds = vec![hold("c1", 1, NOW + 1000), hold("c2", 2, NOW + 1000)];
        let ok = check(&b, NOW, horizon);
        assert!(ok.passed && ok.in_flight.is_empty(), "{ok}");
        assert_eq!((ok.holds, ok.held_units), (2, 3));
        assert!(ok.to_string().contains("2 holds (3 units)"), "{ok}");

        // One unit counted twice: held but also available.
        b.stock[0].available = 8;
        let r = check(&b, NOW, horizon);
        assert!(r.failures.iter().any(|f| f.check == "stock_conserved" && f.detail.contains("held 3")), "{r}");
        // Held, but no cart holds it.
        b.stock[0].available = 7;
        b.holds.pop();
        let r = check(&b, NOW, horizon);
        assert!(r.failures.iter().any(|f| f.check == "held_matches_holds" && f.subject == "ABC"), "{r}");

        // Past its deadline: in flight until the horizon, then stuck.
        b.holds = vec![hold("c1", 1, NOW - 5_000), hold("c2", 2, NOW + 1000)];
        let r = check(&b, NOW, horizon);
        assert!(r.passed && r.in_flight.iter().any(|f| f.check == "holds_run_out" && f.subject == "c1/ABC"), "{r}");
        b.holds[0].expires_at_ms = NOW - 120_000;
        let r = check(&b, NOW, horizon);
        assert!(!r.passed && r.failures.iter().any(|f| f.check == "holds_run_out"), "{r}");
    }
}
