//! What one node answers and another reads: the JSON bodies of the nodes'
//! own HTTP APIs (catalog, orders, and the rows operators and the audit
//! look at), defined once for the node that writes them and the front that
//! reads them.

use serde::{Deserialize, Serialize};

use crate::ids::{CartId, Email, OrderId, Sku};
use crate::message::{OrderLine, OrderStatus};

/// A product as inventory returns it.
#[derive(Clone, Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Product {
    pub sku: String,
    pub name: String,
    pub description: String,
    pub price_cents: i64,
    pub currency: String,
    pub available: i64,
    /// Units held for customers' carts, not available until they are
    /// ordered or the holds run out (absent from nodes that predate
    /// carts).
    #[serde(default)]
    pub held: i64,
}

/// An order as the order service holds and returns it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    pub order_id: OrderId,
    pub status: OrderStatus,
    pub version: i64,
    /// Always set by the order service; absent in an order the front
    /// rebuilt from a status event, which doesn't carry it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_email: Option<Email>,
    pub items: Vec<OrderLine>,
    pub currency: String,
    pub total_cents: i64,
    pub fingerprint: String,
    pub reason: Option<String>,
    /// A release was requested from inventory and not yet confirmed.
    /// Absent in answers of order nodes that predate it.
    #[serde(default)]
    pub release_pending: bool,
    /// The cart this order checked out, if it came from one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<CartId>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Whether a cart still changes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CartStatus {
    Open,
    /// Turned into an order (`order_id`); it changes no more.
    CheckedOut,
}

impl CartStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CartStatus::Open => "open",
            CartStatus::CheckedOut => "checked_out",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "open" => Some(CartStatus::Open),
            "checked_out" => Some(CartStatus::CheckedOut),
            _ => None,
        }
    }
}

/// A cart as the order service holds and returns it: the lines the
/// customer chose, and what inventory last said it holds for them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cart {
    pub cart_id: CartId,
    pub status: CartStatus,
    /// Rises with every change of the lines (not of the holds).
    pub version: i64,
    pub lines: Vec<CartLine>,
    /// The cart version inventory's holds answer: below `version`, the
    /// newest lines are not held yet.
    pub holds_version: i64,
    /// Inventory's change counter for the cart's holds, as of `lines`.
    pub holds_seq: i64,
    /// When the holds run out, while some are left.
    pub holds_expire_at_ms: Option<i64>,
    /// The holds ran out (until the next change asks again).
    pub holds_expired: bool,
    /// The order a checkout made.
    pub order_id: Option<OrderId>,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One cart line: what the customer wants and what inventory holds for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub sku: Sku,
    pub quantity: u32,
    pub held: u32,
}

/// Stock bookkeeping of one product, for the audit.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct StockView {
    pub sku: String,
    pub available: i64,
    pub reserved: i64,
    /// Held for carts (absent from nodes that predate carts).
    #[serde(default)]
    pub held: i64,
    pub initial: i64,
    pub restocked: i64,
}

/// One SKU a cart holds, as operators and the audit see it (`GET /holds`
/// on the inventory node).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldView {
    pub cart_id: String,
    pub sku: String,
    pub quantity: i64,
    /// When the hold runs out (the expiry timer then gives the units back).
    pub expires_at_ms: i64,
}

/// A reservation as operators and the audit see it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReservationView {
    pub order_id: String,
    pub state: String,
    pub lines: Vec<ReservationLine>,
    pub reason: Option<String>,
    pub decided_at_ms: Option<i64>,
    pub released_at_ms: Option<i64>,
}

/// Units of one product a reservation holds (an order's lines summed per
/// SKU). Written `["SKU", quantity]`, in the reservations table as on the
/// wire.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "(Sku, i64)", into = "(Sku, i64)")]
pub struct ReservationLine {
    pub sku: Sku,
    pub quantity: i64,
}

impl From<(Sku, i64)> for ReservationLine {
    fn from((sku, quantity): (Sku, i64)) -> Self {
        Self { sku, quantity }
    }
}

impl From<ReservationLine> for (Sku, i64) {
    fn from(line: ReservationLine) -> Self {
        (line.sku, line.quantity)
    }
}

/// A release the order service chases for an order known only by its
/// tombstone, as operators and the audit see it (`GET /release-chases` on
/// the order node).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReleaseChase {
    pub order_id: String,
    /// When the chase started (the first `orders/cancelled`).
    pub since_ms: i64,
    /// `orders/cancelled` re-sent so far.
    pub follow_ups: i64,
    pub next_follow_up_at_ms: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_line_is_written_as_a_pair() {
        let line = ReservationLine { sku: Sku::parse("ABC-1").unwrap(), quantity: 3 };
        assert_eq!(serde_json::to_string(&line).unwrap(), r#"["ABC-1",3]"#);
        assert_eq!(serde_json::from_str::<ReservationLine>(r#"["ABC-1",3]"#).unwrap(), line);
    }
}
