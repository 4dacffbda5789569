//! Server-side carts, pure and synchronous: what a cart command or an
//! answer from inventory does to a cart. `store.rs` reads and writes the
//! `carts` table; `handlers/carts_command.rs` and `handlers/held.rs` wire
//! the topics to here.
//!
//! A cart is `open` until its checkout, then `checked_out` for good. Its
//! `version` rises with every change of its lines; each change asks
//! inventory to hold the whole cart again (`carts/hold`), which also
//! renews the holds' expiry. A checkout names the version the customer saw
//! and priced, so a cart changed in between is refused, never ordered
//! unseen; it turns the cart into an `orders/send` naming the cart, and
//! inventory moves the cart's holds into that order's reservation.

pub mod store;

use shared::ids::{CartId, OrderId, Sku};
use shared::message::{
    CartCommand, CartRefusal, Checkout, Held, HeldBecause, HoldLine, HoldRequest, OrderLine, SendOrder, MAX_LINES,
};
use shared::view::{Cart, CartLine, CartStatus};

/// What a command does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The cart to save, if it changed.
    pub save: Option<Cart>,
    /// Ask inventory to hold the cart as it is now.
    pub hold: Option<HoldRequest>,
    /// The checkout's order, to send as any order is sent.
    pub order: Option<(OrderId, SendOrder)>,
    /// Why the command was refused (nothing changed).
    pub refused: Option<CartRefusal>,
}

impl Step {
    fn unchanged() -> Step {
        Step { save: None, hold: None, order: None, refused: None }
    }
    fn refused(why: CartRefusal) -> Step {
        Step { refused: Some(why), ..Step::unchanged() }
    }
}

/// The cart's holds as one request: every line, at its quantity.
fn hold_request(cart: &Cart) -> HoldRequest {
    HoldRequest {
        version: cart.version,
        lines: cart.lines.iter().map(|l| HoldLine { sku: l.sku.clone(), quantity: l.quantity }).collect(),
    }
}

/// The commands' single transition function.
pub fn decide(existing: Option<&Cart>, cart_id: CartId, command: &CartCommand, now_ms: i64) -> Step {
    let cart = match (existing, command) {
        (None, CartCommand::Create) => {
            let cart = Cart {
                cart_id,
                status: CartStatus::Open,
                version: 1,
                lines: Vec::new(),
                holds_version: 0,
                holds_seq: 0,
                holds_expire_at_ms: None,
                holds_expired: false,
                order_id: None,
                created_at_ms: now_ms,
                updated_at_ms: now_ms,
            };
            return Step { save: Some(cart), ..Step::unchanged() };
        }
        (Some(_), CartCommand::Create) => return Step::unchanged(),
        (None, _) => return Step::refused(CartRefusal::UnknownCart),
        (Some(cart), _) => cart,
    };
    match command {
        CartCommand::Create => Step::unchanged(),
        CartCommand::SetItem { .. } | CartCommand::Checkout(_) if cart.status == CartStatus::CheckedOut => {
            match command {
                // A retried checkout of the order it made: the same answer.
                CartCommand::Checkout(c) if cart.order_id == Some(c.order_id) => Step::unchanged(),
                _ => Step::refused(CartRefusal::CheckedOut),
            }
        }
        CartCommand::SetItem { sku, quantity } => set_item(cart, sku, *quantity, now_ms),
        CartCommand::Checkout(c) => checkout(cart, c, now_ms),
    }
}

fn set_item(cart: &Cart, sku: &Sku, quantity: u32, now_ms: i64) -> Step {
    let at = cart.lines.iter().position(|l| &l.sku == sku);
    let mut lines = cart.lines.clone();
    match (at, quantity) {
        (None, 0) => return Step::unchanged(),
        (Some(i), q) if lines[i].quantity == q => return Step::unchanged(),
        (Some(i), 0) => {
            lines.remove(i);
        }
        (Some(i), q) => lines[i].quantity = q,
        (None, _) if lines.len() >= MAX_LINES => return Step::refused(CartRefusal::TooManyLines),
        (None, q) => lines.push(CartLine { sku: sku.clone(), quantity: q, held: 0 }),
    }
    let cart = Cart { lines, version: cart.version + 1, updated_at_ms: now_ms, ..cart.clone() };
    Step { hold: Some(hold_request(&cart)), save: Some(cart), ..Step::unchanged() }
}

fn checkout(cart: &Cart, c: &Checkout, now_ms: i64) -> Step {
    if c.version != cart.version {
        return Step::refused(CartRefusal::CartChanged);
    }
    if cart.lines.is_empty() {
        return Step::refused(CartRefusal::EmptyCart);
    }
    let mut items = Vec::with_capacity(cart.lines.len());
    for line in &cart.lines {
        let Some(price) = c.prices.iter().find(|p| p.sku == line.sku) else {
            return Step::refused(CartRefusal::Unpriced);
        };
        let Ok(quantity) = shared::ids::Quantity::new(i64::from(line.quantity)) else {
            return Step::refused(CartRefusal::Unpriced);
        };
        items.push(OrderLine { sku: line.sku.clone(), quantity, unit_price_cents: price.unit_price_cents });
    }
    let send = SendOrder {
        customer_email: c.customer_email.clone(),
        items,
        currency: c.currency.clone(),
        fingerprint: c.fingerprint.clone(),
        cart_id: Some(cart.cart_id),
    };
    let cart = Cart {
        status: CartStatus::CheckedOut,
        order_id: Some(c.order_id),
        version: cart.version + 1,
        updated_at_ms: now_ms,
        ..cart.clone()
    };
    Step { save: Some(cart), order: Some((c.order_id, send)), ..Step::unchanged() }
}

/// What inventory's answer does to the cart: the cart as inventory now
/// holds it, or `None` when the answer is older than what the cart has
/// (a copy, or overtaken) or the cart is unknown.
pub fn held(existing: Option<&Cart>, held: &Held, now_ms: i64) -> Option<Cart> {
    let cart = existing?;
    if held.seq <= cart.holds_seq {
        return None;
    }
    let lines = cart
        .lines
        .iter()
        .map(|l| CartLine { held: held.lines.iter().find(|h| h.sku == l.sku).map_or(0, |h| h.quantity), ..l.clone() })
        .collect();
    Some(Cart {
        lines,
        holds_version: held.version,
        holds_seq: held.seq,
        holds_expire_at_ms: held.expires_at_ms,
        holds_expired: held.because == HeldBecause::Expired,
        updated_at_ms: now_ms,
        ..cart.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::ids::{Email, IdempotencyKey};
    use shared::message::LinePrice;

    fn sku(s: &str) -> Sku {
        Sku::parse(s).unwrap()
    }

    fn created() -> Cart {
        decide(None, CartId::new(), &CartCommand::Create, 1).save.unwrap()
    }

    fn set(cart: &Cart, s: &str, quantity: u32) -> Step {
        decide(Some(cart), cart.cart_id, &CartCommand::SetItem { sku: sku(s), quantity }, 2)
    }

    fn checkout_of(cart: &Cart, version: i64) -> CartCommand {
        let prices = cart.lines.iter().map(|l| LinePrice { sku: l.sku.clone(), unit_price_cents: 250 }).collect();
        CartCommand::Checkout(Checkout {
            version,
            order_id: OrderId::for_checkout(cart.cart_id, &IdempotencyKey::parse("k").unwrap()),
            customer_email: Email::parse("a@b.example").unwrap(),
            currency: "EUR".into(),
            prices,
            fingerprint: "fp".into(),
        })
    }

    #[test]
    fn a_change_bumps_the_version_and_asks_to_hold_the_whole_cart() {
        let cart = created();
        assert_eq!(decide(Some(&cart), cart.cart_id, &CartCommand::Create, 2), Step::unchanged(), "a repeat");
        let step = set(&cart, "TENT-1", 2);
        let one = step.save.unwrap();
        assert_eq!(one.version, 2);
        let step = set(&one, "LAMP-1", 1);
        let two = step.save.unwrap();
        let hold = step.hold.unwrap();
        assert_eq!((hold.version, hold.lines.len()), (3, 2), "the whole cart, at its new version");
        assert_eq!(set(&two, "TENT-1", 2), Step::unchanged(), "setting the same quantity changes nothing");
        assert_eq!(set(&two, "NONE-1", 0), Step::unchanged(), "removing what isn't there changes nothing");
        let removed = set(&two, "TENT-1", 0);
        assert_eq!(removed.hold.unwrap().lines, [HoldLine { sku: sku("LAMP-1"), quantity: 1 }]);
    }

    #[test]
    fn a_cart_holds_at_most_a_hundred_lines() {
        let mut cart = created();
        for i in 0..MAX_LINES {
            cart = set(&cart, &format!("SKU-{i}"), 1).save.unwrap();
        }
        assert_eq!(set(&cart, "SKU-X", 1).refused, Some(CartRefusal::TooManyLines));
        assert!(set(&cart, "SKU-7", 3).save.is_some(), "an existing line still changes");
    }

    #[test]
    fn checkout_orders_exactly_the_version_seen_and_only_once() {
        let cart = set(&created(), "TENT-1", 2).save.unwrap();
        let stale = decide(Some(&cart), cart.cart_id, &checkout_of(&cart, cart.version - 1), 3);
        assert_eq!(stale.refused, Some(CartRefusal::CartChanged));
        let command = checkout_of(&cart, cart.version);
        let step = decide(Some(&cart), cart.cart_id, &command, 3);
        let (order_id, send) = step.order.unwrap();
        assert_eq!(send.cart_id, Some(cart.cart_id));
        assert_eq!((send.items.len(), send.total_cents()), (1, 500));
        let done = step.save.unwrap();
        assert_eq!((done.status, done.order_id), (CartStatus::CheckedOut, Some(order_id)));
        assert_eq!(decide(Some(&done), done.cart_id, &command, 4), Step::unchanged(), "a retry");
        assert_eq!(set(&done, "TENT-1", 1).refused, Some(CartRefusal::CheckedOut));
        let other = checkout_of(&done, done.version);
        let CartCommand::Checkout(mut other) = other else { unreachable!() };
        other.order_id = OrderId(uuid::Uuid::new_v4());
        assert_eq!(
            decide(Some(&done), done.cart_id, &CartCommand::Checkout(other), 4).refused,
            Some(CartRefusal::CheckedOut)
        );
        let empty = created();
        assert_eq!(
            decide(Some(&empty), empty.cart_id, &checkout_of(&empty, 1), 3).refused,
            Some(CartRefusal::EmptyCart)
        );
        let unknown = decide(None, CartId::new(), &checkout_of(&cart, 1), 3);
        assert_eq!(unknown.refused, Some(CartRefusal::UnknownCart));
    }

    #[test]
    fn inventory_answers_apply_only_in_seq_order() {
        let cart = set(&set(&created(), "TENT-1", 2).save.unwrap(), "LAMP-1", 3).save.unwrap();
        let answer =
            |seq, because, lines: Vec<HoldLine>| Held { seq, version: 3, because, lines, expires_at_ms: Some(9) };
        let held =
            held(Some(&cart), &answer(2, HeldBecause::Hold, vec![HoldLine { sku: sku("TENT-1"), quantity: 2 }]), 5)
                .unwrap();
        assert_eq!(held.lines.iter().map(|l| l.held).collect::<Vec<_>>(), [2, 0], "LAMP-1 had no stock");
        assert_eq!((held.holds_seq, held.holds_version, held.holds_expire_at_ms), (2, 3, Some(9)));
        assert_eq!(super::held(Some(&held), &answer(1, HeldBecause::Hold, vec![]), 6), None, "older");
        assert_eq!(super::held(Some(&held), &answer(2, HeldBecause::Hold, vec![]), 6), None, "a copy");
        let expired = super::held(Some(&held), &answer(3, HeldBecause::Expired, vec![]), 7).unwrap();
        assert!(expired.holds_expired && expired.lines.iter().all(|l| l.held == 0));
        assert_eq!(super::held(None, &answer(3, HeldBecause::Hold, vec![]), 7), None, "unknown cart");
    }
}
