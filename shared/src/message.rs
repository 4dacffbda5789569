//! The message envelope and the body of each topic's message.
//!
//! Parsing is split from applying: [`Inbound::decode`] checks size, JSON,
//! schema version and type, so the consumer can dedup and dead-letter
//! without knowing the body; a handler then parses the body it expects.
//!
//! Envelopes and bodies ignore fields they don't know: during a rolling
//! upgrade a newer node may send a field an older one has never heard of,
//! and the older node must still apply the message. So a new field is
//! optional (`#[serde(default)]`) and means nothing to a node without it;
//! removing a field or changing what one means needs a new topic version
//! (docs/PROTOCOL.md, "Versions"). What stays strict: the size limit, the
//! envelope's `v` and `type`, the ids, and each body's `validate`.

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use time::OffsetDateTime;

use crate::ids::{CartId, Email, MessageId, OrderId, Quantity, Sku};
use crate::topics::Topic;

/// The only envelope version this build understands.
pub const SCHEMA_VERSION: u32 = 1;
/// Messages larger than this are poison: dead-lettered, never applied.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// Most lines one order may hold.
pub const MAX_LINES: usize = 100;

/// What every bus message looks like on the wire.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope<B> {
    pub message_id: MessageId,
    #[serde(rename = "type")]
    pub kind: String,
    /// Envelope schema version; see [`SCHEMA_VERSION`].
    pub v: u32,
    pub order_id: OrderId,
    #[serde(with = "time::serde::rfc3339")]
    pub sent_at: OffsetDateTime,
    /// W3C trace context of the request that caused this message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    pub body: B,
}

impl<B: Serialize> Envelope<B> {
    /// A fresh message of `topic`'s type about `order_id`.
    pub fn new(topic: Topic, order_id: OrderId, body: B) -> Self {
        Self {
            message_id: MessageId::new(),
            kind: topic.message_type().to_owned(),
            v: SCHEMA_VERSION,
            order_id,
            sent_at: OffsetDateTime::now_utc(),
            traceparent: None,
            body,
        }
    }

    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    pub fn to_json(&self) -> Vec<u8> {
        // Serializing our own types to a Vec cannot fail.
        serde_json::to_vec(self).expect("envelope serializes")
    }
}

/// A message received from the bus whose envelope is valid.
#[derive(Debug)]
pub struct Inbound {
    pub topic: Topic,
    pub envelope: Envelope<Box<RawValue>>,
    pub payload: Bytes,
}

/// Why a message can never be applied. It is dead-lettered and acked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Poison(pub String);

impl Inbound {
    /// Checks what every message must satisfy before it is deduplicated.
    pub fn decode(topic: Topic, payload: Bytes) -> Result<Inbound, Poison> {
        if payload.len() > MAX_MESSAGE_BYTES {
            return Err(Poison(format!(
                "payload of {} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit",
                payload.len()
            )));
        }
        let envelope: Envelope<Box<RawValue>> =
            serde_json::from_slice(&payload).map_err(|e| Poison(format!("invalid envelope: {e}")))?;
        if envelope.v != SCHEMA_VERSION {
            return Err(Poison(format!(
                "unsupported schema version {} (this build reads {SCHEMA_VERSION})",
                envelope.v
            )));
        }
        if envelope.kind != topic.message_type() {
            return Err(Poison(format!(
                "message type `{}` does not belong on {} (expected `{}`)",
                envelope.kind,
                topic.suffix(),
                topic.message_type()
            )));
        }
        // No sender of ours makes a nil id; applied, every such message
        // would share one order (or one inbox entry).
        if envelope.order_id.0.is_nil() {
            return Err(Poison("nil order_id".into()));
        }
        if envelope.message_id.0.is_nil() {
            return Err(Poison("nil message_id".into()));
        }
        Ok(Inbound { topic, envelope, payload })
    }

    pub fn message_id(&self) -> MessageId {
        self.envelope.message_id
    }

    pub fn order_id(&self) -> OrderId {
        self.envelope.order_id
    }

    /// Parses the body as the type this topic carries.
    pub fn body<T: DeserializeOwned>(&self) -> Result<T, Poison> {
        serde_json::from_str(self.envelope.body.get())
            .map_err(|e| Poison(format!("invalid {} body: {e}", self.envelope.kind)))
    }
}

/// One line of an order: a product, how many, and the unit price the
/// customer saw when ordering. The public API calls its schema `Line`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[schema(as = Line, description = "One order line, with the unit price at order time.")]
pub struct OrderLine {
    #[schema(value_type = String)]
    pub sku: Sku,
    #[schema(value_type = i64)]
    pub quantity: Quantity,
    pub unit_price_cents: i64,
}

/// `orders/send`: place an order. Fields it doesn't know are ignored (see
/// the module docs); the customer's request body, `PlaceOrder` in the
/// front, is the strict one.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendOrder {
    pub customer_email: Email,
    pub items: Vec<OrderLine>,
    pub currency: String,
    /// Hash of the customer's request body; the same idempotency key with a
    /// different body is a conflict.
    pub fingerprint: String,
    /// The cart this order checks out: inventory turns the cart's holds
    /// into the reservation (and releases what the order doesn't take).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart_id: Option<CartId>,
}

impl SendOrder {
    /// Structural checks that serde can't express.
    pub fn validate(&self) -> Result<(), Poison> {
        if self.items.is_empty() {
            return Err(Poison("an order needs at least one item".into()));
        }
        if self.items.len() > MAX_LINES {
            return Err(Poison(format!("an order holds at most {MAX_LINES} lines")));
        }
        if self.items.iter().any(|l| l.unit_price_cents < 0) {
            return Err(Poison("unit_price_cents must not be negative".into()));
        }
        Ok(())
    }

    pub fn total_cents(&self) -> i64 {
        self.items
            .iter()
            .map(|l| l.unit_price_cents.saturating_mul(i64::from(l.quantity.get())))
            .fold(0i64, i64::saturating_add)
    }
}

/// `orders/cancel`: the customer asks to cancel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelOrder {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// An order's lifecycle state. Only moves forward. The public API calls
/// its schema `Status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = Status, description = "An order's status: only moves forward.")]
pub enum OrderStatus {
    Pending,
    Confirmed,
    Rejected,
    Cancelled,
}

impl OrderStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Confirmed => "confirmed",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(OrderStatus::Pending),
            "confirmed" => Some(OrderStatus::Confirmed),
            "rejected" => Some(OrderStatus::Rejected),
            "cancelled" => Some(OrderStatus::Cancelled),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, OrderStatus::Rejected | OrderStatus::Cancelled)
    }
}

/// `orders/status`: an order changed (or was asked about again).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusChanged {
    pub status: OrderStatus,
    pub version: i64,
    pub fingerprint: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The rest of the order as customers see it, so a front can answer
    /// order reads from the events it receives. Absent in events of order
    /// nodes that predate it (a front then reads the order node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<OrderSnapshot>,
}

/// An order's lines, total and times, as of the status event carrying it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderSnapshot {
    pub items: Vec<OrderLine>,
    pub currency: String,
    pub total_cents: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// `inventory/in-stock`: every line of the order is reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InStock {
    /// Fingerprint of the `orders/send` the reservation was made for.
    pub fingerprint: String,
    /// The unit price of each line, as inventory accepted them. Empty when
    /// inventory announces a decision again (it keeps no prices per order)
    /// or comes from before prices were checked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub prices: Vec<LinePrice>,
}

/// The unit price of one order line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct LinePrice {
    pub sku: Sku,
    pub unit_price_cents: i64,
}

impl LinePrice {
    /// The prices of `lines`, in a canonical order (to compare two lists).
    pub fn of(lines: &[OrderLine]) -> Vec<LinePrice> {
        let mut prices: Vec<LinePrice> =
            lines.iter().map(|l| LinePrice { sku: l.sku.clone(), unit_price_cents: l.unit_price_cents }).collect();
        prices.sort();
        prices
    }
}

/// `inventory/out-of-stock`: the order was refused; nothing is reserved.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutOfStock {
    pub fingerprint: String,
    pub reason: String,
}

/// `orders/cancelled`: release whatever the order holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseRequested {}

/// `inventory/released`: the order holds nothing any more.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {}

/// `carts/command`: what a customer does to a cart (the envelope's subject
/// is the cart, [`CartId::subject`]). The front answers once `carts/status`
/// says the order service applied or refused it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum CartCommand {
    /// Start the cart; a repeat changes nothing.
    Create,
    /// Set a line's quantity (absolute, so a repeat changes nothing); 0
    /// removes the line.
    SetItem { sku: Sku, quantity: u32 },
    /// Turn the cart as of `version` into an order.
    Checkout(Checkout),
}

impl CartCommand {
    pub fn validate(&self) -> Result<(), Poison> {
        match self {
            CartCommand::Create => Ok(()),
            CartCommand::SetItem { quantity, .. } if *quantity > Quantity::MAX => {
                Err(Poison(format!("a cart line holds at most {} units", Quantity::MAX)))
            }
            CartCommand::SetItem { .. } => Ok(()),
            CartCommand::Checkout(c) if c.prices.len() > MAX_LINES => {
                Err(Poison(format!("a checkout prices at most {MAX_LINES} lines")))
            }
            CartCommand::Checkout(c) if c.prices.iter().any(|p| p.unit_price_cents < 0) => {
                Err(Poison("unit_price_cents must not be negative".into()))
            }
            CartCommand::Checkout(_) => Ok(()),
        }
    }
}

/// A cart's checkout, as the front asks for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkout {
    /// The cart version the customer saw and the prices are for: a cart
    /// changed since is refused (`cart_changed`), not ordered unseen.
    pub version: i64,
    /// The order to make ([`OrderId::for_checkout`]).
    pub order_id: OrderId,
    pub customer_email: Email,
    pub currency: String,
    /// The unit price of every SKU in the cart, at the front's prices.
    pub prices: Vec<LinePrice>,
    /// Identifies the customer's request, as [`SendOrder::fingerprint`].
    pub fingerprint: String,
}

/// Why the order service refused a cart command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CartRefusal {
    /// No cart with this id.
    UnknownCart,
    /// The cart was checked out; it changes no more.
    CheckedOut,
    /// The cart changed since the version the checkout names.
    CartChanged,
    /// The cart would hold more than [`MAX_LINES`] lines.
    TooManyLines,
    /// Nothing to check out.
    EmptyCart,
    /// The checkout has no price for one of the cart's SKUs.
    Unpriced,
}

/// `carts/status`: the order service applied or refused a cart command.
/// Sent to every front (not partitioned, not durable); the front that
/// published the command answers its customer with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartChanged {
    /// The `message_id` of the command this answers.
    pub command_id: MessageId,
    /// `None`: applied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<CartRefusal>,
    /// The cart after the command (absent for an unknown cart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cart: Option<crate::view::Cart>,
}

/// One line of a hold request or answer: a SKU and a number of units.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldLine {
    pub sku: Sku,
    pub quantity: u32,
}

/// `carts/hold`: hold these quantities for the cart (the whole cart, not
/// a change: SKUs not listed hold nothing). Inventory applies a request
/// only if its `version` is newer than the last one it applied, so copies
/// and reordered requests change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRequest {
    /// The cart's version this request is for (rises with every change).
    pub version: i64,
    pub lines: Vec<HoldLine>,
}

impl HoldRequest {
    pub fn validate(&self) -> Result<(), Poison> {
        if self.lines.len() > MAX_LINES {
            return Err(Poison(format!("a cart holds at most {MAX_LINES} lines")));
        }
        if self.lines.iter().any(|l| l.quantity > Quantity::MAX) {
            return Err(Poison(format!("a cart line holds at most {} units", Quantity::MAX)));
        }
        Ok(())
    }
}

/// Why inventory says what a cart holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HeldBecause {
    /// It applied a hold request.
    Hold,
    /// The holds ran out of time: the stock went back.
    Expired,
    /// The cart's order took the holds (or was refused): the cart holds
    /// nothing and never will again.
    CheckedOut,
}

/// `inventory/held`: what a cart holds now. `seq` rises with every change
/// inventory makes to the cart's holds; the order service keeps the
/// highest it has seen, so copies and reordered answers change nothing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Held {
    pub seq: i64,
    /// The last hold request's version inventory applied.
    pub version: i64,
    pub because: HeldBecause,
    /// Units held per SKU; a SKU not listed holds nothing.
    pub lines: Vec<HoldLine>,
    /// When the holds run out, if any are left.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SendOrder {
        SendOrder {
            customer_email: Email::parse("a@b.example").unwrap(),
            items: vec![OrderLine {
                sku: Sku::parse("TENT-1").unwrap(),
                quantity: Quantity::new(2).unwrap(),
                unit_price_cents: 1000,
            }],
            currency: "EUR".into(),
            fingerprint: "f".into(),
            cart_id: None,
        }
    }

    #[test]
    fn round_trip_and_typed_body() {
        let env = Envelope::new(Topic::OrdersSend, OrderId(uuid::Uuid::new_v4()), sample());
        let inbound = Inbound::decode(Topic::OrdersSend, env.to_json().into()).unwrap();
        assert_eq!(inbound.body::<SendOrder>().unwrap(), sample());
    }

    /// Nothing this shop sends has a nil id (order ids are UUIDv5 of the
    /// idempotency key, message ids UUIDv7): a nil one is a broken or
    /// forged sender, and every such message would share one order, or be
    /// dropped as a copy of the first.
    #[test]
    fn nil_ids_are_poison() {
        let mut env = Envelope::new(Topic::OrdersSend, OrderId(uuid::Uuid::nil()), sample());
        let err = Inbound::decode(Topic::OrdersSend, env.to_json().into()).unwrap_err();
        assert!(err.0.contains("nil order_id"), "{err}");
        env.order_id = OrderId(uuid::Uuid::new_v4());
        env.message_id = MessageId(uuid::Uuid::nil());
        let err = Inbound::decode(Topic::OrdersSend, env.to_json().into()).unwrap_err();
        assert!(err.0.contains("nil message_id"), "{err}");
    }

    /// A message from a newer node, with a field in the envelope, the body
    /// and an order line that this build doesn't know, is applied: the
    /// unknown fields are ignored, not poison.
    #[test]
    fn unknown_fields_from_a_newer_node_are_ignored() {
        let env = Envelope::new(Topic::OrdersSend, OrderId(uuid::Uuid::new_v4()), sample());
        let mut json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        json["priority"] = serde_json::json!("high");
        json["body"]["gift_wrap"] = serde_json::json!({"paper": "red"});
        json["body"]["items"][0]["engraving"] = serde_json::json!("A.L.");
        let inbound = Inbound::decode(Topic::OrdersSend, serde_json::to_vec(&json).unwrap().into()).unwrap();
        let body: SendOrder = inbound.body().unwrap();
        assert_eq!(body, sample());
        body.validate().unwrap();
    }

    /// Ignoring unknown fields loosens nothing else: a missing field, a bad
    /// value, another version or another topic's type is still poison.
    #[test]
    fn tolerant_bodies_keep_the_strict_checks() {
        let env = Envelope::new(Topic::OrdersSend, OrderId(uuid::Uuid::new_v4()), sample());
        let json: serde_json::Value = serde_json::from_slice(&env.to_json()).unwrap();
        let decode = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut j = json.clone();
            edit(&mut j);
            Inbound::decode(Topic::OrdersSend, serde_json::to_vec(&j).unwrap().into())
                .and_then(|m| m.body::<SendOrder>())
                .and_then(|b| b.validate())
        };
        let missing = decode(&|j| {
            j["body"].as_object_mut().unwrap().remove("fingerprint");
        })
        .unwrap_err();
        assert!(missing.0.contains("missing field `fingerprint`"), "{missing}");
        let bad = decode(&|j| j["body"]["items"][0]["quantity"] = serde_json::json!(0)).unwrap_err();
        assert!(bad.0.contains("invalid order.send body"), "{bad}");
        let empty = decode(&|j| j["body"]["items"] = serde_json::json!([])).unwrap_err();
        assert!(empty.0.contains("at least one item"), "{empty}");
        let version = decode(&|j| j["v"] = serde_json::json!(2)).unwrap_err();
        assert!(version.0.contains("schema version"), "{version}");
        let kind = decode(&|j| j["type"] = serde_json::json!("order.cancel")).unwrap_err();
        assert!(kind.0.contains("does not belong"), "{kind}");
    }

    #[test]
    fn poison_is_named() {
        assert!(Inbound::decode(Topic::OrdersSend, Bytes::from_static(b"not json"))
            .unwrap_err()
            .0
            .contains("invalid envelope"));
        let env = Envelope::new(Topic::OrdersCancel, OrderId(uuid::Uuid::nil()), CancelOrder::default());
        assert!(Inbound::decode(Topic::OrdersSend, env.to_json().into()).unwrap_err().0.contains("does not belong"));
        let big = Bytes::from(vec![b' '; MAX_MESSAGE_BYTES + 1]);
        assert!(Inbound::decode(Topic::OrdersSend, big).unwrap_err().0.contains("exceeds"));
    }
}
