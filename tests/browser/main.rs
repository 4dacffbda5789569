//! Browser tests: the whole shop in-process (embedded broker, temp-dir
//! databases, free ports) and a headless Chromium using the storefront and
//! the operator dashboard as a person would. Every wait polls the page
//! against a deadline; screenshots go to `target/screenshots/`.
//!
//! Without Chromium and chromedriver installed the browser tests print a
//! note and pass, unless `WEBSHOP_REQUIRE_BROWSER=1` (CI sets it).

mod browser;
#[path = "../e2e/helpers.rs"]
#[allow(dead_code)] // shared with the e2e suite, which uses all of it
mod helpers;
mod sse;

use browser::Browser;
use helpers::{BrokerKind, Shop};
use serde_json::{json, Value};

/// 35 in stock in the sample catalog.
const TENT: &str = "TENT-2P-001";
/// 1 in stock.
const LAST_PACK: &str = "PACK-65L-002";
/// 0 in stock.
const SOLD_OUT: &str = "COOK-TI-001";

async fn shop() -> Shop {
    Shop::start(BrokerKind::Embedded).await.expect("the embedded broker is always there")
}

/// The order id of the order page the browser is on.
async fn order_page_id(b: &Browser) -> String {
    let id = b
        .wait_until(
            "the order page",
            "const m = location.pathname.match(/^\\/orders\\/([0-9a-f-]{36})$/); \
             return m && document.getElementById('order-id').textContent === m[1] ? m[1] : null;",
            vec![],
        )
        .await;
    id.as_str().expect("an order id").to_owned()
}

/// The cart line of `sku` in the storefront's cart, as a CSS selector.
fn cart_line(sku: &str) -> String {
    format!("#cart-lines .cart-line[data-sku='{sku}']")
}

/// Waits for the cart line of `sku` to show its hold as `hold`.
async fn wait_hold(b: &Browser, sku: &str, hold: &str) {
    b.wait_until(
        &format!("the cart line of {sku} to show its hold {hold}"),
        "return document.querySelector(arguments[0] + ' .hold')?.dataset.hold === arguments[1]",
        vec![json!(cart_line(sku)), json!(hold)],
    )
    .await;
}

/// What a product card says about `available` units.
fn stock_text(available: i64) -> String {
    match available {
        n if n <= 0 => "Out of stock".to_owned(),
        n if n <= 5 => format!("Only {n} left"),
        n => format!("{n} in stock"),
    }
}

/// Waits for the product card of `sku` to show `available` units.
async fn wait_card_stock(b: &Browser, sku: &str, available: i64) {
    let want = stock_text(available);
    b.wait_until(
        &format!("the card of {sku} to say {want}"),
        "return document.querySelector(`#products [data-sku='${arguments[0]}'] .stock`)?.textContent === arguments[1]",
        vec![json!(sku), json!(want)],
    )
    .await;
}

async fn wait_status(b: &Browser, status: &str) {
    b.wait_until(
        &format!("the order page to show {status}"),
        "return document.getElementById('status').dataset.status === arguments[0]",
        vec![json!(status)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_add_to_cart_check_out_see_confirmed_then_cancel() {
    let Some(b) = Browser::start("storefront").await else { return };
    let shop = shop().await;
    let before = shop.available(TENT).await;

    b.goto(&shop.front_url("/")).await;
    b.wait_until("the catalog", "return document.querySelectorAll('#products .product').length >= 20", vec![]).await;
    assert_eq!(b.text("#cart-count").await, "0");
    b.screenshot_page("catalog").await;

    // Search.
    b.fill("#q", "tent").await;
    b.click("#search button").await;
    b.wait_until(
        "search results for 'tent'",
        "const cards = [...document.querySelectorAll('#products .product')]; \
         return cards.length > 0 && cards.length < 20 && cards.every(c => /tent/i.test(c.textContent)) \
           && cards.some(c => c.dataset.sku === arguments[0]);",
        vec![json!(TENT)],
    )
    .await;
    let card = format!("#products [data-sku='{TENT}']");
    let price = b.text(&format!("{card} .price")).await;
    assert!(price.contains("249"), "the tent's price is shown: {price}");
    let stock = b.text(&format!("{card} .stock")).await;
    assert!(stock.contains(&before.to_string()), "availability is shown: {stock}");

    // Add two to the cart.
    b.fill(&format!("{card} .qty"), "2").await;
    b.click(&format!("{card} .add")).await;
    b.wait_until("the cart to hold 2", "return document.getElementById('cart-count').textContent === '2'", vec![])
        .await;
    let total = b.text("#cart-total").await;
    assert!(total.contains("498"), "the cart total is 2 x 249: {total}");
    // The cart survives a reload (the shop keeps it).
    b.client.refresh().await.expect("reload");
    b.wait_until(
        "the cart to survive a reload",
        "return document.getElementById('cart-count').textContent === '2'",
        vec![],
    )
    .await;

    // Check out.
    b.fill("#email", "ada@example.com").await;
    b.screenshot("cart").await;
    b.click("#place-order").await;
    let id = order_page_id(&b).await;
    wait_status(&b, "confirmed").await;
    // The status arrives over Server-Sent Events, not polling.
    b.wait_until("the live status stream", "return document.getElementById('live').dataset.mode === 'sse'", vec![])
        .await;
    let (code, order) = shop.get(shop.front_url(&format!("/api/orders/{id}"))).await;
    assert_eq!(code, 200);
    assert_eq!(order["status"], "confirmed");
    assert_eq!(order["items"][0]["sku"], TENT);
    assert_eq!(order["items"][0]["quantity"], 2);
    assert!(b.text("#total").await.contains("498"));
    assert_eq!(shop.available(TENT).await, before - 2);
    b.screenshot_page("order-confirmed").await;

    // Cancel; the page follows.
    b.click("#cancel").await;
    wait_status(&b, "cancelled").await;
    b.wait_until("the cancel button to go", "return document.getElementById('cancel').hidden", vec![]).await;
    b.wait_until("the stream to finish", "return document.getElementById('live').dataset.mode === 'done'", vec![])
        .await;
    shop.wait_status(&id, "cancelled").await;
    helpers::eventually("the stock to come back", || async { (shop.available(TENT).await == before).then_some(()) })
        .await;
    b.screenshot_page("order-cancelled").await;
    b.resize(390, 844).await;
    let overflow = b.js("return document.documentElement.scrollWidth - window.innerWidth", vec![]).await;
    assert!(overflow.as_i64().unwrap_or(0) <= 0, "the order page fits a phone's width (overflow {overflow})");
    b.screenshot_page("order-phone").await;

    // Back in the shop: the cart is empty and the order is listed.
    b.goto(&shop.front_url("/")).await;
    b.wait_until(
        "the order under 'your recent orders'",
        "return [...document.querySelectorAll('#recent-list a')].some(a => a.getAttribute('href') === '/orders/' + arguments[0])",
        vec![json!(id)],
    )
    .await;
    assert_eq!(b.text("#cart-count").await, "0");

    // Still at phone width.
    b.wait_until(
        "the catalog on a phone",
        "return document.querySelectorAll('#products .product').length >= 20",
        vec![],
    )
    .await;
    let overflow = b.js("return document.documentElement.scrollWidth - window.innerWidth", vec![]).await;
    assert!(overflow.as_i64().unwrap_or(0) <= 0, "the storefront fits a phone's width (overflow {overflow})");
    b.screenshot("phone").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cart_is_kept_by_the_shop_holds_its_stock_and_checks_out() {
    let Some(b) = Browser::start("server-cart").await else { return };
    let shop = shop().await;
    let before = shop.available(TENT).await;

    b.goto(&shop.front_url("/?q=Ridgeline")).await;
    let card = format!("#products [data-sku='{TENT}']");
    b.fill(&format!("{card} .qty"), "2").await;
    b.click(&format!("{card} .add")).await;
    b.wait_until("the cart to hold 2", "return document.getElementById('cart-count').textContent === '2'", vec![])
        .await;
    // The browser keeps only the cart's id; the lines are the shop's.
    let saved = b.js("return JSON.parse(localStorage.getItem('webshop.cart.v2'))", vec![]).await;
    let cart_id = saved["id"].as_str().expect("the cart's id is kept in the browser").to_owned();
    assert!(saved.get("lines").is_none(), "no lines in the browser: {saved}");

    b.client.refresh().await.expect("reload");
    let qty = format!("{} .qty", cart_line(TENT));
    b.wait_until(
        "the cart, read from the shop, after a reload",
        "return document.querySelector(arguments[0])?.textContent === '2'",
        vec![json!(qty)],
    )
    .await;
    wait_hold(&b, TENT, "held").await;
    assert_eq!(b.text(&format!("{} .hold", cart_line(TENT))).await, "Held for you");
    let countdown = b.text("#holds-countdown").await;
    let (minutes, seconds) = countdown.split_once(':').unwrap_or_else(|| panic!("a m:ss countdown: {countdown:?}"));
    assert!(
        minutes.parse::<u32>().is_ok_and(|m| m <= 15) && seconds.len() == 2,
        "the default hold lasts 15 minutes: {countdown:?}"
    );
    assert!(b.text("#cart-total").await.contains("498"));
    let (code, cart) = shop.get(shop.front_url(&format!("/api/carts/{cart_id}"))).await;
    assert_eq!(code, 200, "{cart}");
    assert_eq!((cart["lines"][0]["quantity"].as_i64(), cart["lines"][0]["hold"].as_str()), (Some(2), Some("held")));
    // Held stock is not available to others; the card says so too.
    assert_eq!(shop.available(TENT).await, before - 2);
    wait_card_stock(&b, TENT, before - 2).await;
    b.screenshot("held").await;

    // A second tab shows the same cart, and a change there reaches the first.
    let first = b.client.window().await.expect("this tab");
    let second = b.client.new_window(true).await.expect("a second tab").handle;
    b.client.switch_to_window(second).await.expect("to the second tab");
    b.goto(&shop.front_url("/?q=Ridgeline")).await;
    b.wait_until(
        "the same cart in the second tab",
        "return document.querySelector(arguments[0])?.textContent === '2'",
        vec![json!(qty)],
    )
    .await;
    b.click(&format!("{} .stepper button[aria-label^='One more']", cart_line(TENT))).await;
    b.wait_until(
        "the second tab's cart to hold 3",
        "return document.getElementById('cart-count').textContent === '3'",
        vec![],
    )
    .await;
    b.client.close_window().await.expect("closing the second tab");
    b.client.switch_to_window(first).await.expect("back to the first tab");
    b.wait_until("the first tab to follow", "return document.getElementById('cart-count').textContent === '3'", vec![])
        .await;
    wait_hold(&b, TENT, "held").await;

    // Check out the cart the shop has.
    b.fill("#email", "ada@example.com").await;
    b.click("#place-order").await;
    let id = order_page_id(&b).await;
    wait_status(&b, "confirmed").await;
    let order = shop.wait_status(&id, "confirmed").await;
    assert_eq!((order["items"][0]["sku"].as_str(), order["items"][0]["quantity"].as_i64()), (Some(TENT), Some(3)));
    assert_eq!(shop.available(TENT).await, before - 3, "the hold became the reservation");
    // The order is the cart's.
    let (_, cart) = shop.get(shop.front_url(&format!("/api/carts/{cart_id}"))).await;
    assert_eq!((cart["status"].as_str(), cart["order_id"].as_str()), (Some("checked_out"), Some(id.as_str())));

    // Back in the shop: the checked-out cart is forgotten.
    b.goto(&shop.front_url("/")).await;
    b.wait_until(
        "the order under 'your recent orders'",
        "return [...document.querySelectorAll('#recent-list a')].some(a => a.getAttribute('href') === '/orders/' + arguments[0])",
        vec![json!(id)],
    )
    .await;
    assert_eq!(b.text("#cart-count").await, "0");
    let saved = b.js("return JSON.parse(localStorage.getItem('webshop.cart.v2'))", vec![]).await;
    assert_eq!(saved["id"], Value::Null, "{saved}");
    shop.audit().await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hold_that_runs_out_shows_expired_and_the_stock_comes_back() {
    let Some(b) = Browser::start("hold-expiry").await else { return };
    let mut shop = shop().await;
    // Inventory again, on the same address and data, with holds of a few seconds.
    let addr = shop.inventory.addr;
    shop.inventory.stop().await;
    let mut cfg = shop.inventory_config();
    cfg.listen = addr;
    cfg.hold_secs = 5.0;
    shop.inventory = helpers::start_inventory(cfg).await;
    shop.wait_ready().await;
    let before = shop.available(TENT).await;

    b.goto(&shop.front_url("/?q=Ridgeline")).await;
    wait_card_stock(&b, TENT, before).await;
    b.click(&format!("#products [data-sku='{TENT}'] .add")).await;
    wait_hold(&b, TENT, "held").await;
    wait_card_stock(&b, TENT, before - 1).await;

    // The hold runs out: the line says so and the stock is on sale again.
    wait_hold(&b, TENT, "expired").await;
    assert_eq!(b.text(&format!("{} .hold", cart_line(TENT))).await, "Hold expired");
    assert!(b.text("#holds").await.contains("ran out"));
    wait_card_stock(&b, TENT, before).await;
    assert_eq!(shop.available(TENT).await, before);
    assert_eq!(b.text("#cart-count").await, "1", "the line stays in the cart");
    b.screenshot("expired").await;

    // A change of the cart holds again.
    b.click(&format!("{} .stepper button[aria-label^='One more']", cart_line(TENT))).await;
    wait_hold(&b, TENT, "held").await;
    wait_card_stock(&b, TENT, before - 2).await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_open_carts_and_their_held_stock() {
    let Some(b) = Browser::start("dashboard-carts").await else { return };
    let shop = shop().await;
    let r = shop.http.post(shop.front_url("/api/carts")).send().await.expect("request");
    assert_eq!(r.status(), 201);
    let cart: Value = r.json().await.expect("a cart");
    let cart_id = cart["cart_id"].as_str().expect("its id").to_owned();
    let r = shop
        .http
        .put(shop.front_url(&format!("/api/carts/{cart_id}/items/{TENT}")))
        .json(&json!({"quantity": 2}))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    helpers::eventually("the cart's stock to be held", || async {
        let (_, cart) = shop.get(shop.front_url(&format!("/api/carts/{cart_id}"))).await;
        (cart["lines"][0]["hold"] == "held").then_some(())
    })
    .await;

    b.goto(&shop.front_url("/admin")).await;
    b.fill("#token", helpers::ADMIN_TOKEN).await;
    b.click("#login-button").await;
    b.wait_visible("#dash").await;
    b.wait_until(
        "the cart among the open carts, with its line",
        "const row = document.querySelector(`#carts tr.cart-row[data-cart-id='${arguments[0]}']`); \
         const line = row?.querySelector(`.cart-line-row[data-sku='${arguments[1]}']`); \
         return !!line && /^2 ×/.test(line.textContent) && /\\(2 held\\)/.test(line.textContent) \
           && !!row.querySelector('.badge.confirmed');",
        vec![json!(cart_id), json!(TENT)],
    )
    .await;
    b.wait_until(
        "the held stock of the tent",
        "const row = document.querySelector(`#held tr[data-sku='${arguments[0]}']`); \
         return row?.querySelector('.held').textContent === '2' && row.children[2].textContent === '1' \
           && /^in \\d+ (s|min)$/.test(row.children[3].textContent);",
        vec![json!(TENT)],
    )
    .await;
    b.wait_until(
        "one open cart",
        "return document.querySelector(\"#cart-tiles [data-key='open'] .n\")?.textContent === '1'",
        vec![],
    )
    .await;
    b.wait_until(
        "the hold among those running out first",
        "return !!document.querySelector(`#expiring li[data-cart-id='${arguments[0]}'][data-sku='${arguments[1]}']`)",
        vec![json!(cart_id), json!(TENT)],
    )
    .await;
    b.screenshot_page("desktop").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkout_retries_with_the_same_key_while_the_order_service_is_down() {
    let Some(b) = Browser::start("retry").await else { return };
    let mut shop = shop().await;
    let before = shop.available(TENT).await;

    b.goto(&shop.front_url("/?q=Ridgeline")).await;
    let card = format!("#products [data-sku='{TENT}']");
    b.click(&format!("{card} .add")).await;
    b.fill("#email", "retry@example.com").await;

    // The front can't get the order committed: 503 after its commit timeout.
    let addr = shop.order.addr;
    shop.order.stop().await;
    b.click("#place-order").await;
    b.wait_until(
        "the page to say it is retrying",
        "return /Trying again/.test(document.getElementById('checkout-msg').textContent)",
        vec![],
    )
    .await;
    let saved = b.js("return JSON.parse(localStorage.getItem('webshop.cart.v2'))", vec![]).await;
    let key =
        saved["attempt"]["key"].as_str().expect("the checkout's Idempotency-Key is kept with the cart").to_owned();
    let cart = shared::ids::CartId::parse(saved["id"].as_str().expect("the cart's id")).expect("a cart id");
    b.screenshot("retrying").await;

    let mut cfg = shop.order_config();
    cfg.listen = addr;
    shop.order = helpers::start_order(cfg).await;

    let id = order_page_id(&b).await;
    wait_status(&b, "confirmed").await;
    let key = shared::ids::IdempotencyKey::parse(&key).expect("a valid key");
    assert_eq!(id, shared::ids::OrderId::for_checkout(cart, &key).to_string(), "every attempt used the same key");
    // One order, one reservation, however many attempts.
    shop.audit().await;
    assert_eq!(shop.available(TENT).await, before - 1);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_than_available_is_rejected_with_the_reason_and_sold_out_cannot_be_added() {
    let Some(b) = Browser::start("out-of-stock").await else { return };
    let shop = shop().await;

    // A product with nothing left can't be added.
    b.goto(&shop.front_url("/?q=Titanium%20Cook%20Pot")).await;
    let sold_out = format!("#products [data-sku='{SOLD_OUT}']");
    b.wait_visible(&sold_out).await;
    assert_eq!(b.text(&format!("{sold_out} .stock")).await, "Out of stock");
    let disabled = b
        .js("return document.querySelector(arguments[0] + ' .add').disabled && document.querySelector(arguments[0] + ' .qty').disabled", vec![json!(sold_out)])
        .await;
    assert_eq!(disabled, json!(true), "the add button of a sold-out product is disabled");

    // One left; ask for three.
    let available = shop.available(LAST_PACK).await;
    assert_eq!(available, 1);
    b.fill("#q", "Expedition").await;
    b.click("#search button").await;
    let card = format!("#products [data-sku='{LAST_PACK}']");
    b.wait_visible(&card).await;
    assert_eq!(b.text(&format!("{card} .stock")).await, "Only 1 left");
    b.fill(&format!("{card} .qty"), "3").await;
    let hint = b.text(&format!("{card} .hint")).await;
    assert!(hint.contains("Only 1 in stock"), "choosing more than available warns: {hint}");
    b.click(&format!("{card} .add")).await;
    b.wait_until("the cart to hold 3", "return document.getElementById('cart-count').textContent === '3'", vec![])
        .await;
    // Inventory holds the one there is.
    wait_hold(&b, LAST_PACK, "short").await;
    assert_eq!(b.text(&format!("{} .hold", cart_line(LAST_PACK))).await, "Only 1 held: 2 short");
    b.fill("#email", "grace@example.com").await;
    b.screenshot("cart").await;
    b.click("#place-order").await;

    let id = order_page_id(&b).await;
    wait_status(&b, "rejected").await;
    let reason = b.text("#reason").await;
    let order = shop.wait_status(&id, "rejected").await;
    let api_reason = order["reason"].as_str().expect("a rejected order has a reason");
    assert!(!api_reason.is_empty());
    assert!(reason.contains(api_reason), "the page shows the reason {api_reason:?}: {reason:?}");
    b.wait_until("no cancel button", "return document.getElementById('cancel').hidden", vec![]).await;
    assert_eq!(shop.available(LAST_PACK).await, 1, "a rejected order reserves nothing");
    b.screenshot_page("order-rejected").await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_orders_just_placed() {
    let Some(b) = Browser::start("dashboard").await else { return };
    let shop = shop().await;
    let mut placed = Vec::new();
    for (key, sku, qty) in [("dash-1", TENT, 1), ("dash-2", "MUG-TI-450", 2), ("dash-3", LAST_PACK, 4)] {
        let body = json!({"customer_email": "ops@example.com", "items": [{"sku": sku, "quantity": qty}]});
        let (code, body, _) = shop.place(key, body).await;
        assert_eq!(code, 202, "{body}");
        placed.push(body["order_id"].as_str().unwrap().to_owned());
    }
    shop.wait_status(&placed[0], "confirmed").await;
    shop.wait_status(&placed[1], "confirmed").await;
    shop.wait_status(&placed[2], "rejected").await;

    b.goto(&shop.front_url("/admin")).await;
    b.wait_visible("#login").await;
    // A wrong token is refused with a clear message.
    b.fill("#token", "not-the-token").await;
    b.click("#login-button").await;
    let refused = b.text("#login-msg").await;
    assert!(refused.contains("not accepted"), "{refused}");

    b.fill("#token", helpers::ADMIN_TOKEN).await;
    b.click("#login-button").await;
    b.wait_visible("#dash").await;
    for id in &placed {
        b.wait_until(
            &format!("order {id} among the recent orders"),
            "return !!document.querySelector(`#recent tr.order-row[data-order-id='${arguments[0]}']`)",
            vec![json!(id)],
        )
        .await;
    }
    let tile = "return Number(document.querySelector(`#order-tiles [data-key='${arguments[0]}'] .n`)?.textContent)";
    b.wait_until("2 confirmed orders", &format!("{tile} >= 2"), vec![json!("confirmed")]).await;
    b.wait_until("1 rejected order", &format!("{tile} >= 1"), vec![json!("rejected")]).await;
    b.wait_until(
        "both nodes ready",
        "return ['inventory', 'order'].every(n => document.querySelector(`#nodes [data-node='${n}'] .badge.ready`))",
        vec![],
    )
    .await;
    b.wait_until("low stock marked", "return document.querySelectorAll('#stock tr.low .badge.low').length > 0", vec![])
        .await;
    let low = b
        .js(
            "return [...document.querySelectorAll('#stock tr')].every(tr => \
               (Number(tr.children[1].textContent) <= 5) === tr.classList.contains('low'))",
            vec![],
        )
        .await;
    assert_eq!(low, json!(true), "exactly the SKUs with available <= 5 are marked low");
    b.wait_until(
        "message counters",
        "return document.querySelector('#messages tbody tr td')?.textContent === 'received'",
        vec![],
    )
    .await;
    // Two polls make a rate; the chart draws it.
    b.wait_until("the orders-per-second chart", "return !!document.querySelector('#chart polyline')", vec![]).await;

    // An order's message timeline.
    let row = format!("#recent tr.order-row[data-order-id='{}']", placed[0]);
    b.click(&row).await;
    b.wait_until(
        "the order's timeline",
        "const tl = document.querySelector(`#recent tr.timeline-row[data-order-id='${arguments[0]}']`); \
         return tl && tl.querySelectorAll(\".timeline li[data-event='applied']\").length > 0",
        vec![json!(placed[0])],
    )
    .await;
    b.screenshot_page("desktop").await;

    // The token is kept for the tab: a reload stays signed in.
    b.client.refresh().await.expect("reload");
    b.wait_visible("#dash").await;
    b.wait_until(
        "the dashboard after a reload",
        "return document.querySelectorAll('#recent tr.order-row').length >= 3",
        vec![],
    )
    .await;
    b.resize(390, 844).await;
    b.wait_until("the chart redrawn for a phone", "return !!document.querySelector('#chart polyline')", vec![]).await;
    b.screenshot_page("phone").await;

    // Signing out forgets the token.
    b.click("#signout").await;
    b.wait_visible("#login").await;
    let stored = b.js("return sessionStorage.getItem('webshop.admin.token')", vec![]).await;
    assert_eq!(stored, Value::Null);
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_order_page_follows_the_order_with_long_polls() {
    let Some(b) = Browser::start("long-poll").await else { return };
    let shop = shop().await;
    let (code, body, _) = shop
        .place(
            "browser-long-poll",
            json!({"customer_email": "lp@example.com", "items": [{"sku": TENT, "quantity": 1}]}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;

    // `?poll`: no event stream, long polls only.
    b.goto(&shop.front_url(&format!("/orders/{id}?poll"))).await;
    wait_status(&b, "confirmed").await;
    b.wait_until("long polling", "return document.getElementById('live').dataset.mode === 'polling'", vec![]).await;

    // A change reaches the page through the long poll that is waiting.
    let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 202);
    wait_status(&b, "cancelled").await;
    b.wait_until("the polling to finish", "return document.getElementById('live').dataset.mode === 'done'", vec![])
        .await;
    b.close().await;
}
