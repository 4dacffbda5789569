//! Identifiers and quantities, parsed once at the edge and never passed
//! around as bare strings or integers.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Namespace for deriving order ids from idempotency keys (UUIDv5).
const ORDER_NAMESPACE: Uuid = Uuid::from_u128(0x6f3a_1c2e_8b4d_4e5f_9a0b_1c2d_3e4f_5a6b);

/// Namespace for deriving checkout orders from a cart and a key.
const CHECKOUT_NAMESPACE: Uuid = Uuid::from_u128(0x2b7e_41a0_93c5_4d18_b6f2_0e9a_7c34_d581);

/// Why an identifier or quantity was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ParseError {
    #[error("`{0}` is not a valid order id (expected a UUID)")]
    OrderId(String),
    #[error("`{0}` is not a valid SKU (3-40 characters: A-Z, 0-9 and '-')")]
    Sku(String),
    #[error("quantity {0} is out of range (1..={max})", max = Quantity::MAX)]
    Quantity(i64),
    #[error("`{0}` is not a valid email address")]
    Email(String),
    #[error("the Idempotency-Key must be 1-200 visible ASCII characters")]
    IdempotencyKey,
    #[error("`{0}` is not a valid cart id (expected a UUID)")]
    CartId(String),
}

/// An order's identity. Derived from the client's idempotency key so every
/// retry of the same request maps to the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub Uuid);

impl OrderId {
    pub fn from_idempotency_key(key: &IdempotencyKey) -> Self {
        Self(Uuid::new_v5(&ORDER_NAMESPACE, key.0.as_bytes()))
    }
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        Uuid::parse_str(s).map(Self).map_err(|_| ParseError::OrderId(s.chars().take(64).collect()))
    }
}

impl OrderId {
    /// The order a cart's checkout with `key` makes: the same cart and key
    /// always make the same order, so a checkout retries safely. Its first
    /// 8 bytes are the cart's, so the order's messages share the cart's
    /// partition (`topics::Partitions::of_order`) and one consumer sees a
    /// cart and its order in order; the rest is a hash of cart and key (a
    /// UUIDv8, RFC 9562's custom layout).
    pub fn for_checkout(cart: CartId, key: &IdempotencyKey) -> Self {
        let digest = Uuid::new_v5(&CHECKOUT_NAMESPACE, &[cart.0.as_bytes().as_slice(), key.0.as_bytes()].concat());
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&cart.0.as_bytes()[..8]);
        bytes[8..].copy_from_slice(&digest.as_bytes()[8..]);
        Self(uuid::Builder::from_custom_bytes(bytes).into_uuid())
    }
}

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for OrderId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// A server-side cart's identity: random (UUIDv4), so knowing one cart's
/// id tells nothing about another's. On the bus a cart's messages carry it
/// in the envelope's `order_id` field (the subject the inbox, parking and
/// partitions key on), through [`CartId::subject`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CartId(pub Uuid);

impl CartId {
    pub fn new() -> Self {
        Self(Uuid::new_v4())
    }
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match Uuid::parse_str(s) {
            Ok(u) if !u.is_nil() => Ok(Self(u)),
            _ => Err(ParseError::CartId(s.chars().take(64).collect())),
        }
    }
    /// The envelope subject of the cart's messages.
    pub fn subject(self) -> OrderId {
        OrderId(self.0)
    }
    /// The cart a message's subject names.
    pub fn of_subject(id: OrderId) -> Self {
        Self(id.0)
    }
}

impl Default for CartId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for CartId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// The application-level identity of one bus message; the inbox dedups on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A fresh, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// A product's stock keeping unit: 3-40 characters of `A-Z`, `0-9`, `-`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Sku(String);

impl Sku {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = (3..=40).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::Sku(s.chars().take(64).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Sku {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Sku::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Sku {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// How many units of one product a line orders: 1 to [`Quantity::MAX`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Quantity(u32);

impl Quantity {
    pub const MAX: u32 = 1000;
    pub fn new(n: i64) -> Result<Self, ParseError> {
        if (1..=i64::from(Self::MAX)).contains(&n) {
            Ok(Self(n as u32))
        } else {
            Err(ParseError::Quantity(n))
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        /// Any JSON number with an integral value: `2` and `2.0` are the
        /// same integer to JSON Schema, so both are accepted.
        struct Integral;
        impl serde::de::Visitor<'_> for Integral {
            type Value = i64;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a whole number")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<i64, E> {
                Ok(v)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<i64, E> {
                Ok(i64::try_from(v).unwrap_or(i64::MAX))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<i64, E> {
                if v.fract() == 0.0 && v.abs() < 1e15 {
                    Ok(v as i64)
                } else {
                    Err(E::custom(format!("quantity {v} is not a whole number")))
                }
            }
        }
        let n = d.deserialize_any(Integral)?;
        Quantity::new(n).map_err(serde::de::Error::custom)
    }
}

/// A customer's email address, checked for a plausible shape only.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct Email(String);

impl Email {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        let ok = s.len() <= 254
            && s.split_once('@').is_some_and(|(local, domain)| {
                !local.is_empty() && domain.contains('.') && !domain.starts_with('.') && !domain.ends_with('.')
            })
            && !s.chars().any(|c| c.is_whitespace() || c.is_control());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::Email(s.chars().take(64).collect()))
        }
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for Email {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Email::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The client's `Idempotency-Key` header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if (1..=200).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic()) {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::IdempotencyKey)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_checkout_order_shares_its_carts_partition_and_is_the_same_for_a_retry() {
        let key = |k: &str| IdempotencyKey::parse(k).unwrap();
        for _ in 0..50 {
            let cart = CartId::new();
            let order = OrderId::for_checkout(cart, &key("k1"));
            assert_eq!(order, OrderId::for_checkout(cart, &key("k1")), "a retry makes the same order");
            assert_ne!(order, OrderId::for_checkout(cart, &key("k2")));
            assert_ne!(order, OrderId::for_checkout(CartId::new(), &key("k1")));
            assert_ne!(order, cart.subject(), "the order is not the cart");
            for n in [2, 8, 1024] {
                let p = crate::topics::Partitions::new(n).unwrap();
                assert_eq!(p.of_order(order), p.of_order(cart.subject()));
            }
        }
        assert!(CartId::parse("00000000-0000-0000-0000-000000000000").is_err(), "nil");
        assert!(CartId::parse("cart").is_err());
    }

    #[test]
    fn same_key_same_order() {
        let k = IdempotencyKey::parse("abc-123").unwrap();
        assert_eq!(OrderId::from_idempotency_key(&k), OrderId::from_idempotency_key(&k));
        let other = IdempotencyKey::parse("abc-124").unwrap();
        assert_ne!(OrderId::from_idempotency_key(&k), OrderId::from_idempotency_key(&other));
    }

    #[test]
    fn quantity_bounds() {
        assert!(Quantity::new(0).is_err());
        assert!(Quantity::new(-1).is_err());
        assert!(Quantity::new(1_000_000_000_000).is_err());
        assert_eq!(Quantity::new(3).unwrap().get(), 3);
    }

    proptest! {
        #[test]
        fn sku_parse_accepts_only_its_alphabet(s in "\\PC{0,50}") {
            if let Ok(sku) = Sku::parse(&s) {
                prop_assert!(sku.as_str().bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-'));
                prop_assert!((3..=40).contains(&sku.as_str().len()));
            }
        }
    }
}
