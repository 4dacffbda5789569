//! The bus topics, and who may use them. Every topic carries exactly one
//! message type; the envelope's `type` field must name it. [`Role`] says
//! which topics each kind of client may publish and subscribe to: the
//! embedded broker enforces it per user, and [`mosquitto_acl`] writes the
//! same table for Mosquitto.

use serde::{Deserialize, Serialize};

use crate::ids::OrderId;

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
    /// front → order: change a cart (create, set a line, check out).
    CartsCommand,
    /// order → fronts: a cart command was applied or refused (not durable).
    CartsStatus,
    /// order → inventory: hold these quantities for the cart.
    CartsHold,
    /// inventory → order: what the cart holds now (after a hold, an
    /// expiry or the checkout).
    Held,
}

impl Topic {
    pub const ALL: [Topic; 11] = [
        Topic::OrdersSend,
        Topic::OrdersCancel,
        Topic::OrdersStatus,
        Topic::InStock,
        Topic::OutOfStock,
        Topic::OrdersCancelled,
        Topic::Released,
        Topic::CartsCommand,
        Topic::CartsStatus,
        Topic::CartsHold,
        Topic::Held,
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
            Topic::CartsCommand => "carts/command",
            Topic::CartsStatus => "carts/status",
            Topic::CartsHold => "carts/hold",
            Topic::Held => "inventory/held",
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
            Topic::CartsCommand => "cart.command",
            Topic::CartsStatus => "cart.status",
            Topic::CartsHold => "cart.hold",
            Topic::Held => "inventory.held",
        }
    }

    pub fn path(self, prefix: &str) -> String {
        format!("{prefix}{}", self.suffix())
    }

    /// The topic whose [`Topic::suffix`] is `suffix`.
    pub fn from_suffix(suffix: &str) -> Option<Topic> {
        Topic::ALL.into_iter().find(|t| t.suffix() == suffix)
    }

    /// Whether the topic is split into partitions when a deployment has
    /// more than one (see [`Partitions`]). Every topic a service consumes
    /// is; `orders/status` and `carts/status` go to every front and are not.
    pub fn partitioned(self) -> bool {
        !matches!(self, Topic::OrdersStatus | Topic::CartsStatus)
    }

    /// The path a message about `order_id` is published to: the topic's
    /// path, plus `/{partition}` when it is partitioned.
    pub fn routed(self, prefix: &str, partitions: Partitions, order_id: OrderId) -> String {
        match partitions.of(self, order_id) {
            Some(p) => format!("{prefix}{}/{p}", self.suffix()),
            None => self.path(prefix),
        }
    }

    /// The topic of a full path, if it is one of ours under `prefix`; a
    /// partitioned topic may carry its partition (`…/orders/send/7`).
    pub fn from_path(prefix: &str, path: &str) -> Option<Topic> {
        Topic::with_partition(prefix, path).map(|(t, _)| t)
    }

    /// The topic of a full path and the partition it names, if any.
    pub fn with_partition(prefix: &str, path: &str) -> Option<(Topic, Option<u16>)> {
        let suffix = path.strip_prefix(prefix)?;
        if let Some(t) = Topic::from_suffix(suffix) {
            return Some((t, None));
        }
        let (topic, partition) = suffix.rsplit_once('/')?;
        let t = Topic::from_suffix(topic).filter(|t| t.partitioned())?;
        // Digits only: `+`, `#` or a sign would reach other partitions.
        if partition.is_empty() || partition.len() > 5 || !partition.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((t, Some(partition.parse().ok()?)))
    }
}

/// How many partitions the services' topics are split into: the same
/// number on every node of a deployment (`bus.partitions`). Each partition
/// is one persistent MQTT session per service, consumed by one instance at
/// a time, so a service's work spreads over its instances partition by
/// partition while all of one order's messages stay on one consumer. With
/// one partition (the default) topics carry no partition and a service has
/// one session, as a single-instance shop needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Partitions(u16);

impl Partitions {
    /// The most a deployment may have: each is an MQTT session per service.
    pub const MAX: u16 = 1024;
    pub const ONE: Partitions = Partitions(1);

    pub fn new(count: u16) -> anyhow::Result<Partitions> {
        anyhow::ensure!(
            (1..=Self::MAX).contains(&count),
            "bus.partitions must be between 1 and {}, got {count}",
            Self::MAX
        );
        Ok(Partitions(count))
    }

    pub fn count(self) -> u16 {
        self.0
    }

    /// The partition of `order_id`'s messages on `topic`; `None` when the
    /// topic carries none (one partition, or `orders/status`).
    pub fn of(self, topic: Topic, order_id: OrderId) -> Option<u16> {
        (self.0 > 1 && topic.partitioned()).then(|| self.of_order(order_id))
    }

    /// The partition an order belongs to: the first 8 bytes of its id (a
    /// hash already: order ids are UUIDv5 of the idempotency key), modulo
    /// the count.
    pub fn of_order(self, order_id: OrderId) -> u16 {
        let bytes: [u8; 8] = order_id.0.as_bytes()[..8].try_into().expect("a UUID has 16 bytes");
        (u64::from_be_bytes(bytes) % u64::from(self.0)) as u16
    }

    /// The subscription filter of `topic` for `partition`.
    pub fn filter(self, prefix: &str, topic: Topic, partition: u16) -> String {
        if self.0 > 1 && topic.partitioned() {
            format!("{prefix}{}/{partition}", topic.suffix())
        } else {
            topic.path(prefix)
        }
    }
}

/// What one service consumes: a subset of [`Topic`] as an enum of its
/// own, declared with [`consumed_topics!`]. The service's dispatch matches
/// it exhaustively (a topic added here is a compile error until it is
/// handled), its subscriptions are [`Consumes::TOPICS`], and so is its
/// [`Role::subscribes`] entry: one list, three uses.
pub trait Consumes: Sized + Copy + 'static {
    /// Every topic consumed, as `Self`.
    const ALL: &'static [Self];
    /// The same topics, as [`Topic`]s: what the service subscribes to.
    const TOPICS: &'static [Topic];

    fn topic(self) -> Topic;

    /// The consumed topic `topic` is, if the service consumes it.
    fn from_topic(topic: Topic) -> Option<Self> {
        Self::ALL.iter().copied().find(|c| c.topic() == topic)
    }
}

/// Declares a [`Consumes`] enum whose variants are named after the
/// [`Topic`]s they stand for.
#[macro_export]
macro_rules! consumed_topics {
    ($(#[$meta:meta])* $vis:vis enum $name:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $($variant),+
        }

        impl $crate::topics::Consumes for $name {
            const ALL: &'static [Self] = &[$($name::$variant),+];
            const TOPICS: &'static [$crate::topics::Topic] = &[$($crate::topics::Topic::$variant),+];

            fn topic(self) -> $crate::topics::Topic {
                match self {
                    $($name::$variant => $crate::topics::Topic::$variant),+
                }
            }
        }
    };
}

consumed_topics! {
    /// What public-front consumes (`public-front/src/status.rs`).
    pub enum FrontConsumes { OrdersStatus, CartsStatus }
}

consumed_topics! {
    /// What the order service consumes (`order/src/handlers/`).
    pub enum OrderConsumes { OrdersSend, OrdersCancel, InStock, OutOfStock, Released, CartsCommand, Held }
}

consumed_topics! {
    /// What the inventory service consumes (`inventory/src/handlers/`).
    pub enum InventoryConsumes { OrdersSend, OrdersCancelled, CartsHold }
}

/// What a client on the bus is, and so what it may publish and subscribe
/// to. The table is the code's own: each node publishes what its outbox
/// enqueues and subscribes to what its handlers consume.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// public-front: places and cancels orders, follows their status.
    Front,
    /// The order service: owns orders, re-requests and releases.
    Order,
    /// The inventory service: decides stock, confirms releases.
    Inventory,
    /// Testers and their tools (`inject`, `replay`, `capture`, `fuzz`):
    /// every topic, since they inject and replay on all of them.
    Tester,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Front, Role::Order, Role::Inventory, Role::Tester];

    pub fn name(self) -> &'static str {
        match self {
            Role::Front => "front",
            Role::Order => "order",
            Role::Inventory => "inventory",
            Role::Tester => "tester",
        }
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.name() == name)
    }

    /// The topics this role may publish; `None`: any topic at all.
    pub fn publishes(self) -> Option<&'static [Topic]> {
        match self {
            Role::Front => Some(&[Topic::OrdersSend, Topic::OrdersCancel, Topic::CartsCommand]),
            // orders/send: the re-request of an order with no stock
            // decision, and a cart's checkout.
            Role::Order => Some(&[
                Topic::OrdersStatus,
                Topic::OrdersCancelled,
                Topic::OrdersSend,
                Topic::CartsStatus,
                Topic::CartsHold,
            ]),
            Role::Inventory => Some(&[Topic::InStock, Topic::OutOfStock, Topic::Released, Topic::Held]),
            Role::Tester => None,
        }
    }

    /// The topics this role may subscribe to (what its service consumes);
    /// `None`: any filter.
    pub fn subscribes(self) -> Option<&'static [Topic]> {
        match self {
            Role::Front => Some(FrontConsumes::TOPICS),
            Role::Order => Some(OrderConsumes::TOPICS),
            Role::Inventory => Some(InventoryConsumes::TOPICS),
            Role::Tester => None,
        }
    }

    /// Whether this role may publish to the topic `path` (full, with
    /// `prefix`).
    pub fn may_publish(self, prefix: &str, path: &str) -> bool {
        match self.publishes() {
            None => true,
            Some(topics) => Topic::from_path(prefix, path).is_some_and(|t| topics.contains(&t)),
        }
    }

    /// Whether this role may subscribe to `filter`: exactly one of its
    /// topics (also as a shared subscription, `$share/<group>/<topic>`);
    /// no wildcards, which would reach topics beyond its own.
    pub fn may_subscribe(self, prefix: &str, filter: &str) -> bool {
        let Some(topics) = self.subscribes() else { return true };
        let path = match filter.strip_prefix("$share/") {
            Some(rest) => match rest.split_once('/') {
                Some((group, path)) if !group.is_empty() => path,
                _ => return false,
            },
            None => filter,
        };
        Topic::from_path(prefix, path).is_some_and(|t| topics.contains(&t))
    }
}

/// A Mosquitto `acl_file` granting each `(user, role)` its topics under
/// `prefix`, and `anonymous` (if any) to clients without a login. Users
/// absent from it may do nothing once an `acl_file` is set.
pub fn mosquitto_acl(prefix: &str, users: &[(&str, Role)], anonymous: Option<Role>) -> String {
    fn grants(out: &mut String, prefix: &str, role: Role) {
        if role.publishes().is_none() && role.subscribes().is_none() {
            out.push_str("topic readwrite #\n");
            return;
        }
        for t in Topic::ALL {
            let write = role.publishes().is_none_or(|p| p.contains(&t));
            let read = role.subscribes().is_none_or(|s| s.contains(&t));
            let access = match (read, write) {
                (true, true) => "readwrite",
                (false, true) => "write",
                (true, false) => "read",
                (false, false) => continue,
            };
            out.push_str(&format!("topic {access} {}\n", t.path(prefix)));
            if t.partitioned() {
                // Its partitions (`bus.partitions` above 1).
                out.push_str(&format!("topic {access} {}/+\n", t.path(prefix)));
            }
        }
    }
    let mut out = String::from("# Generated from shared::topics::Role: what each user may publish (write) and\n");
    out.push_str("# subscribe to (read). Lines before the first `user` apply to anonymous clients.\n");
    if let Some(role) = anonymous {
        out.push_str(&format!("# anonymous: role {}\n", role.name()));
        grants(&mut out, prefix, role);
    }
    for (user, role) in users {
        out.push_str(&format!("\nuser {user}\n# role {}\n", role.name()));
        grants(&mut out, prefix, *role);
    }
    out
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

    #[test]
    fn partitioned_paths_name_their_partition() {
        let p = DEFAULT_PREFIX;
        let id = OrderId(uuid::Uuid::from_u128(0x0000_0000_0000_0011_ffff_ffff_ffff_ffff));
        let four = Partitions::new(4).unwrap();
        assert_eq!(four.of_order(id), 1, "0x11 mod 4");
        assert_eq!(Topic::OrdersSend.routed(p, four, id), "webshop/v1/orders/send/1");
        assert_eq!(Topic::OrdersStatus.routed(p, four, id), "webshop/v1/orders/status");
        assert_eq!(Topic::OrdersSend.routed(p, Partitions::ONE, id), "webshop/v1/orders/send");
        assert_eq!(Topic::with_partition(p, "webshop/v1/orders/send/1"), Some((Topic::OrdersSend, Some(1))));
        assert_eq!(Topic::with_partition(p, "webshop/v1/orders/send"), Some((Topic::OrdersSend, None)));
        for bad in [
            "webshop/v1/orders/send/+",
            "webshop/v1/orders/send/#",
            "webshop/v1/orders/send/",
            "webshop/v1/orders/status/1",
            "webshop/v1/orders/send/-1",
            "webshop/v1/orders/send/999999",
        ] {
            assert_eq!(Topic::from_path(p, bad), None, "{bad}");
        }
        assert_eq!(four.filter(p, Topic::InStock, 3), "webshop/v1/inventory/in-stock/3");
        assert_eq!(Partitions::ONE.filter(p, Topic::InStock, 0), "webshop/v1/inventory/in-stock");
        assert!(Role::Inventory.may_subscribe(p, "webshop/v1/orders/send/3"));
        assert!(Role::Front.may_publish(p, "webshop/v1/orders/send/3"));
        assert!(!Role::Front.may_subscribe(p, "webshop/v1/orders/status/3"));
        assert!(Partitions::new(0).is_err() && Partitions::new(Partitions::MAX + 1).is_err());
    }

    #[test]
    fn roles_publish_what_the_code_publishes_and_nothing_else() {
        let p = DEFAULT_PREFIX;
        let path = |t: Topic| t.path(p);
        assert!(Role::Front.may_publish(p, &path(Topic::OrdersSend)));
        assert!(Role::Front.may_publish(p, &path(Topic::OrdersCancel)));
        assert!(Role::Front.may_publish(p, &path(Topic::CartsCommand)));
        for t in [
            Topic::InStock,
            Topic::OutOfStock,
            Topic::Released,
            Topic::OrdersStatus,
            Topic::OrdersCancelled,
            Topic::CartsStatus,
            Topic::CartsHold,
            Topic::Held,
        ] {
            assert!(!Role::Front.may_publish(p, &path(t)), "front may publish {t:?}");
        }
        for t in
            [Topic::InStock, Topic::OutOfStock, Topic::Released, Topic::OrdersCancel, Topic::CartsCommand, Topic::Held]
        {
            assert!(!Role::Order.may_publish(p, &path(t)), "order may publish {t:?}");
        }
        for t in [
            Topic::OrdersSend,
            Topic::OrdersCancel,
            Topic::OrdersStatus,
            Topic::OrdersCancelled,
            Topic::CartsCommand,
            Topic::CartsStatus,
            Topic::CartsHold,
        ] {
            assert!(!Role::Inventory.may_publish(p, &path(t)), "inventory may publish {t:?}");
        }
        for r in [Role::Front, Role::Order, Role::Inventory] {
            assert!(!r.may_publish(p, "webshop/v1/nope"));
            assert!(!r.may_publish(p, "elsewhere/orders/send"));
        }
        assert!(Role::Tester.may_publish(p, "anything/at/all"));
    }

    #[test]
    fn consumed_topics_map_both_ways() {
        fn check<C: Consumes + std::fmt::Debug + PartialEq>() {
            assert_eq!(C::ALL.len(), C::TOPICS.len());
            for (c, t) in C::ALL.iter().zip(C::TOPICS) {
                assert_eq!(c.topic(), *t);
                assert_eq!(C::from_topic(*t), Some(*c));
            }
        }
        check::<FrontConsumes>();
        check::<OrderConsumes>();
        check::<InventoryConsumes>();
        assert_eq!(InventoryConsumes::from_topic(Topic::OrdersCancel), None);
    }

    #[test]
    fn subscriptions_are_exact_topics_of_the_role() {
        let p = DEFAULT_PREFIX;
        assert!(Role::Front.may_subscribe(p, "webshop/v1/orders/status"));
        assert!(Role::Front.may_subscribe(p, "$share/fronts/webshop/v1/orders/status"));
        for f in
            ["webshop/v1/#", "#", "webshop/v1/+/status", "webshop/v1/orders/send", "$share//webshop/v1/orders/status"]
        {
            assert!(!Role::Front.may_subscribe(p, f), "front may subscribe {f}");
        }
        assert!(Role::Inventory.may_subscribe(p, "webshop/v1/orders/cancelled"));
        assert!(!Role::Inventory.may_subscribe(p, "webshop/v1/orders/cancel"));
        assert!(Role::Tester.may_subscribe(p, "webshop/v1/#"));
        assert_eq!(Role::parse("inventory"), Some(Role::Inventory));
        assert_eq!(Role::parse("admin"), None);
    }

    #[test]
    fn mosquitto_acl_lists_each_users_topics() {
        let acl = mosquitto_acl(DEFAULT_PREFIX, &[("front", Role::Front), ("qa", Role::Tester)], Some(Role::Tester));
        let front = acl.split("user front\n").nth(1).unwrap().split("\nuser ").next().unwrap();
        assert!(front.contains("topic write webshop/v1/orders/send\n"), "{acl}");
        assert!(front.contains("topic read webshop/v1/orders/status\n"), "{acl}");
        assert!(!front.contains("in-stock"), "{acl}");
        assert!(acl.starts_with("#") && acl.contains("# anonymous: role tester\ntopic readwrite #\n"), "{acl}");
        assert!(acl.contains("user qa\n# role tester\ntopic readwrite #\n"), "{acl}");
    }
}
