//! The bus topics. Every topic carries exactly one message type; the
//! envelope's `type` field must name it.

use serde::{Deserialize, Serialize};

pub const DEFAULT_PREFIX: &str = "webshop/v1/";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Topic {
    /// front (and order re-requests) → order, inventory: place an order.
    OrdersSend,
    /// front → order: cancel an order.
    OrdersCancel,
    /// order → fronts: an order changed (not durable).
    OrdersStatus,
    /// inventory → order: every line reserved.
    InStock,
    /// inventory → order: rejected, nothing reserved.
    OutOfStock,
    /// order → inventory: release the order's reservation.
    OrdersCancelled,
    /// inventory → order: release done (or nothing was held).
    Released,
}

impl Topic {
    pub const ALL: [Topic; 7] = [
        Topic::OrdersSend,
        Topic::OrdersCancel,
        Topic::OrdersStatus,
        Topic::InStock,
        Topic::OutOfStock,
        Topic::OrdersCancelled,
        Topic::Released,
    ];

    /// The topic path below the prefix.
    pub fn suffix(self) -> &'static str {
        match self {
            Topic::OrdersSend => "orders/send",
            Topic::OrdersCancel => "orders/cancel",
            Topic::OrdersStatus => "orders/status",
            Topic::InStock => "inventory/in-stock",
            Topic::OutOfStock => "inventory/out-of-stock",
            Topic::OrdersCancelled => "orders/cancelled",
            Topic::Released => "inventory/released",
        }
    }

    /// The envelope `type` that this topic carries.
    pub fn message_type(self) -> &'static str {
        match self {
            Topic::OrdersSend => "order.send",
            Topic::OrdersCancel => "order.cancel",
            Topic::OrdersStatus => "order.status",
            Topic::InStock => "inventory.in_stock",
            Topic::OutOfStock => "inventory.out_of_stock",
            Topic::OrdersCancelled => "order.cancelled",
            Topic::Released => "inventory.released",
        }
    }

    pub fn path(self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix())
    }

    /// The topic of a full path, if it is one of ours under `prefix`.
    pub fn from_path(prefix: &str, path: &str) -> Option<Topic> {
        let suffix = path.strip_prefix(prefix)?;
        Topic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_round_trip() {
        for t in Topic::ALL {
            assert_eq!(Topic::from_path(DEFAULT_PREFIX, &t.path(DEFAULT_PREFIX)), Some(t));
        }
        assert_eq!(Topic::from_path(DEFAULT_PREFIX, "webshop/v1/nope"), None);
    }
}
