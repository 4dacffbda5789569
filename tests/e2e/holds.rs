//! Inventory's side of server-side carts over the bus: `carts/hold`
//! requests published as the order service would, checked through
//! inventory's HTTP API (`/stock`, `/holds`, `/timeline`) and the audit.
//! Each scenario runs on SQLite and on PostgreSQL.

use serde_json::Value;
use shared::ids::CartId;
use shared::message::{Envelope, HoldLine, HoldRequest};
use shared::topics::Topic;

use crate::helpers::*;

/// 40 in the sample catalog.
const SKU: &str = "APRON-CNV-001";
/// 2 in the sample catalog.
const SCARCE: &str = "SLBAG-DWN-001";

/// `(available, reserved, held)` of `sku`, from inventory's `/stock`.
async fn stock(shop: &Shop, sku: &str) -> (i64, i64, i64) {
    let (_, rows) = shop.get(shop.node_url(shop.inventory.addr, "/stock")).await;
    let row = rows.as_array().and_then(|r| r.iter().find(|r| r["sku"] == sku).cloned()).expect("the SKU is stocked");
    let n = |k: &str| row[k].as_i64().expect("a number");
    (n("available"), n("reserved"), n("held"))
}

/// What inventory holds for `cart`: `(sku, quantity, expires_at_ms)`.
async fn holds(shop: &Shop, cart: CartId) -> Vec<(String, i64, i64)> {
    let (code, rows) = shop.get(shop.node_url(shop.inventory.addr, "/holds?limit=1000")).await;
    assert_eq!(code, 200, "{rows}");
    let rows = rows.as_array().cloned().unwrap_or_default();
    rows.iter()
        .filter(|r| r["cart_id"] == cart.to_string())
        .map(|r| {
            (
                r["sku"].as_str().unwrap().to_owned(),
                r["quantity"].as_i64().unwrap(),
                r["expires_at_ms"].as_i64().unwrap(),
            )
        })
        .collect()
}

fn request(cart: CartId, version: i64, lines: &[(&str, u32)]) -> Envelope<HoldRequest> {
    let lines = lines
        .iter()
        .map(|&(sku, quantity)| HoldLine { sku: shared::ids::Sku::parse(sku).unwrap(), quantity })
        .collect();
    Envelope::new(Topic::CartsHold, cart.subject(), HoldRequest { version, lines })
}

/// What inventory's timeline says about `cart`: `(event, topic)`.
async fn timeline(shop: &Shop, cart: CartId) -> Vec<(String, String)> {
    let (_, entries) = shop.get(shop.node_url(shop.inventory.addr, &format!("/timeline/{cart}"))).await;
    let entries = entries.as_array().cloned().unwrap_or_default();
    let s = |e: &Value, k: &str| e[k].as_str().unwrap_or_default().to_owned();
    entries.iter().map(|e| (s(e, "event"), s(e, "topic"))).collect()
}

/// How many `inventory/held` inventory published for `cart`.
async fn held_published(shop: &Shop, cart: CartId) -> usize {
    timeline(shop, cart).await.iter().filter(|(event, topic)| event == "published" && topic == "inventory/held").count()
}

/// How many `carts/hold` for `cart` inventory ignored.
async fn ignored(shop: &Shop, cart: CartId) -> usize {
    timeline(shop, cart).await.iter().filter(|(event, topic)| event == "ignored" && topic == "carts/hold").count()
}

async fn until_stock(shop: &Shop, sku: &str, want: (i64, i64, i64)) {
    eventually(&format!("{sku} to be (available, reserved, held) {want:?}"), || async {
        (stock(shop, sku).await == want).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_follow_the_cart_and_its_checkout_takes_them_sqlite() {
    holds_follow_the_cart_and_its_checkout_takes_them(Shop::start_holding(StoreAt::sqlite(), 900.0).await.unwrap())
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_follow_the_cart_and_its_checkout_takes_them_postgres() {
    let Some(store) = StoreAt::postgres().await else { return };
    holds_follow_the_cart_and_its_checkout_takes_them(Shop::start_holding(store, 900.0).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_run_out_and_the_stock_comes_back_sqlite() {
    holds_run_out_and_the_stock_comes_back(Shop::start_holding(StoreAt::sqlite(), 1.0).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holds_run_out_and_the_stock_comes_back_postgres() {
    let Some(store) = StoreAt::postgres().await else { return };
    holds_run_out_and_the_stock_comes_back(Shop::start_holding(store, 1.0).await.unwrap()).await
}

async fn holds_follow_the_cart_and_its_checkout_takes_them(shop: Shop) {
    let tester = shop.tester().await;
    let (available, reserved, held) = stock(&shop, SKU).await;
    assert_eq!(held, 0);

    // A hold moves units from available to held, until the deadline.
    let cart = CartId::new();
    let first = request(cart, 1, &[(SKU, 3)]);
    let sent_at = shared::clock::now_ms();
    tester.publish(Topic::CartsHold, &first).await;
    until_stock(&shop, SKU, (available - 3, reserved, 3)).await;
    let listed = holds(&shop, cart).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0].0.as_str(), listed[0].1), (SKU, 3));
    let expires = listed[0].2 - sent_at;
    assert!((899_000..=960_000).contains(&expires), "held for {expires} ms");
    let (_, product) = shop.get(shop.node_url(shop.inventory.addr, &format!("/products/{SKU}"))).await;
    assert_eq!((product["available"].as_i64(), product["held"].as_i64()), (Some(available - 3), Some(3)));
    eventually("inventory to say what the cart holds", || async {
        (held_published(&shop, cart).await == 1).then_some(())
    })
    .await;

    // The same message again, a copy under a new message id and an older
    // request change nothing and answer nothing.
    tester.publish(Topic::CartsHold, &first).await;
    tester.publish(Topic::CartsHold, &request(cart, 1, &[(SKU, 5)])).await;
    tester.publish(Topic::CartsHold, &request(cart, 0, &[(SKU, 1)])).await;
    eventually("the copy and the older request to be ignored", || async {
        (ignored(&shop, cart).await == 2).then_some(())
    })
    .await;
    eventually("the same message to be deduplicated", || async {
        let s = shop.stats(shop.inventory.addr).await;
        (s["messages"]["deduplicated"].as_u64()? >= 1).then_some(())
    })
    .await;
    assert_eq!(stock(&shop, SKU).await, (available - 3, reserved, 3));
    assert_eq!(held_published(&shop, cart).await, 1);
    shop.audit().await;

    // More than there is: the cart holds what there is; and its next
    // request replaces the whole cart (SKU dropped, back to available).
    let (scarce, scarce_reserved, _) = stock(&shop, SCARCE).await;
    assert!(scarce > 0);
    tester.publish(Topic::CartsHold, &request(cart, 2, &[(SKU, 2), (SCARCE, scarce as u32 + 5)])).await;
    until_stock(&shop, SCARCE, (0, scarce_reserved, scarce)).await;
    until_stock(&shop, SKU, (available - 2, reserved, 2)).await;
    let mut listed: Vec<(String, i64)> = holds(&shop, cart).await.into_iter().map(|(s, q, _)| (s, q)).collect();
    listed.sort();
    assert_eq!(listed, vec![(SKU.to_owned(), 2), (SCARCE.to_owned(), scarce)]);
    shop.audit().await;

    // Another customer can't have the held units.
    let other = new_order_id();
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, other, send_body(SCARCE, 1, "fp-other"))).await;
    let rejected = shop.wait_status(&other.to_string(), "rejected").await;
    assert!(rejected["reason"].as_str().unwrap().contains("not enough stock"), "{rejected}");

    // The checkout takes the held units although none is available, and
    // gives back what the order doesn't take: one SKU unit, one SCARCE.
    let order = new_order_id();
    let mut body = send_body(SKU, 1, "fp-cart");
    body.items.extend(send_body(SCARCE, scarce - 1, "fp-cart").items);
    body.cart_id = Some(cart);
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, order, body.clone())).await;
    shop.wait_status(&order.to_string(), "confirmed").await;
    assert_eq!(stock(&shop, SKU).await, (available - 1, reserved + 1, 0));
    assert_eq!(stock(&shop, SCARCE).await, (1, scarce_reserved + scarce - 1, 0));
    assert!(holds(&shop, cart).await.is_empty());
    eventually("inventory to say the cart is checked out", || async {
        (held_published(&shop, cart).await == 3).then_some(())
    })
    .await;

    // The order sent again (a re-request) changes nothing; the cart is
    // closed, so a later hold request holds nothing.
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, order, body)).await;
    tester.publish(Topic::CartsHold, &request(cart, 3, &[(SKU, 1)])).await;
    eventually("the hold request for the closed cart to be ignored", || async {
        (ignored(&shop, cart).await == 3).then_some(())
    })
    .await;
    assert_eq!(stock(&shop, SKU).await, (available - 1, reserved + 1, 0));
    assert!(holds(&shop, cart).await.is_empty());

    // A checkout the stock can't cover is refused and still gives the
    // holds back and closes the cart.
    let refused_cart = CartId::new();
    tester.publish(Topic::CartsHold, &request(refused_cart, 1, &[(SKU, 2)])).await;
    until_stock(&shop, SKU, (available - 3, reserved + 1, 2)).await;
    let refused = new_order_id();
    let mut body = send_body(SKU, 1, "fp-refused");
    body.items.extend(send_body(SCARCE, 2, "fp-refused").items);
    body.cart_id = Some(refused_cart);
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, refused, body)).await;
    shop.wait_status(&refused.to_string(), "rejected").await;
    assert_eq!(stock(&shop, SKU).await, (available - 1, reserved + 1, 0));
    assert!(holds(&shop, refused_cart).await.is_empty());
    tester.publish(Topic::CartsHold, &request(refused_cart, 2, &[(SKU, 1)])).await;
    eventually("the hold request for the refused cart to be ignored", || async {
        (ignored(&shop, refused_cart).await == 1).then_some(())
    })
    .await;
    assert_eq!(stock(&shop, SKU).await.2, 0);

    let report = shop.audit().await;
    assert_eq!((report.holds, report.held_units), (0, 0), "{report}");
}

async fn holds_run_out_and_the_stock_comes_back(shop: Shop) {
    let tester = shop.tester().await;
    let (available, reserved, _) = stock(&shop, SKU).await;
    let cart = CartId::new();
    tester.publish(Topic::CartsHold, &request(cart, 1, &[(SKU, 4)])).await;
    until_stock(&shop, SKU, (available - 4, reserved, 4)).await;
    // One second later the timer gives it back and says so.
    until_stock(&shop, SKU, (available, reserved, 0)).await;
    assert!(holds(&shop, cart).await.is_empty());
    eventually("inventory to say the holds ran out", || async {
        (held_published(&shop, cart).await == 2).then_some(())
    })
    .await;
    shop.audit().await;

    // The cart stays open: its next change holds again, and runs out again.
    tester.publish(Topic::CartsHold, &request(cart, 2, &[(SKU, 1)])).await;
    until_stock(&shop, SKU, (available - 1, reserved, 1)).await;
    until_stock(&shop, SKU, (available, reserved, 0)).await;
    eventually("inventory to say the holds ran out again", || async {
        (held_published(&shop, cart).await == 4).then_some(())
    })
    .await;

    // A checkout after the holds ran out takes from what is available.
    let order = new_order_id();
    let mut body = send_body(SKU, 2, "fp-late");
    body.cart_id = Some(cart);
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, order, body)).await;
    shop.wait_status(&order.to_string(), "confirmed").await;
    assert_eq!(stock(&shop, SKU).await, (available - 2, reserved + 2, 0));
    let report = shop.audit().await;
    assert_eq!(report.holds, 0, "{report}");
}
