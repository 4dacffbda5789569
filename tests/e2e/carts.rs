//! Server-side carts through the public API, as a customer uses them:
//! create, fill, see the stock held, check out; bad requests get clear
//! errors; held stock is not sold to anyone else; holds run out.

use serde_json::{json, Value};

use crate::helpers::*;

const SKU: &str = "APRON-CNV-001";
const OTHER: &str = "FUEL-230G-001";

/// A customer's cart, through the front.
pub struct CartClient<'a> {
    pub shop: &'a Shop,
    pub id: String,
}

impl<'a> CartClient<'a> {
    /// A new cart (201, with its Location).
    pub async fn create(shop: &'a Shop) -> CartClient<'a> {
        let r = shop.http.post(shop.front_url("/api/carts")).send().await.unwrap();
        assert_eq!(r.status(), 201);
        let location = r.headers()["location"].to_str().unwrap().to_owned();
        let cart: Value = r.json().await.unwrap();
        let id = cart["cart_id"].as_str().unwrap().to_owned();
        assert_eq!(location, format!("/api/carts/{id}"));
        assert_eq!((cart["status"].as_str(), cart["version"].as_i64()), (Some("open"), Some(1)));
        CartClient { shop, id }
    }

    fn url(&self, path: &str) -> String {
        self.shop.front_url(&format!("/api/carts/{}{path}", self.id))
    }

    pub async fn set(&self, sku: &str, quantity: i64) -> (u16, Value) {
        let r = self.shop.http.put(self.url(&format!("/items/{sku}"))).json(&json!({ "quantity": quantity })).send();
        let r = r.await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }

    pub async fn get(&self) -> Value {
        let r = self.shop.http.get(self.url("")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        r.json().await.unwrap()
    }

    /// The cart once every line is settled by inventory (no `pending`).
    pub async fn settled(&self) -> Value {
        eventually("inventory to answer the cart's holds", || async {
            let cart = self.get().await;
            let lines = cart["lines"].as_array().unwrap();
            lines.iter().all(|l| l["hold"] != "pending").then_some(cart)
        })
        .await
    }

    pub async fn checkout(&self, key: &str) -> (u16, Value) {
        let r = self
            .shop
            .http
            .post(self.url("/checkout"))
            .header("Idempotency-Key", key)
            .json(&json!({"customer_email": "ada@example.com"}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

fn line<'v>(cart: &'v Value, sku: &str) -> &'v Value {
    cart["lines"].as_array().unwrap().iter().find(|l| l["sku"] == sku).unwrap_or_else(|| panic!("{sku} in {cart}"))
}

async fn a_cart_holds_stock_and_checks_out_into_a_confirmed_order(shop: Shop) {
    let before = shop.available(SKU).await;
    let cart = CartClient::create(&shop).await;
    let (code, body) = cart.set(SKU, 2).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!((body["version"].as_i64(), line(&body, SKU)["quantity"].as_i64()), (Some(2), Some(2)));
    let (code, body) = cart.set(OTHER, 1).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(cart.set(OTHER, 1).await.1["version"], 3, "the same quantity again changes nothing");

    let seen = cart.settled().await;
    assert_eq!((line(&seen, SKU)["hold"].as_str(), line(&seen, SKU)["held"].as_i64()), (Some("held"), Some(2)));
    assert_eq!(line(&seen, SKU)["unit_price_cents"], catalog_price(SKU));
    assert_eq!(seen["total_cents"], 2 * catalog_price(SKU) + catalog_price(OTHER));
    assert!(seen["holds_expire_at"].is_string(), "{seen}");
    assert_eq!(shop.available(SKU).await, before - 2, "held stock is not available to others");
    shop.audit().await;

    // Removing a line gives its stock back.
    let r = shop.http.delete(cart.url(&format!("/items/{OTHER}"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let seen = cart.settled().await;
    assert_eq!(seen["lines"].as_array().unwrap().len(), 1);

    let (code, accepted) = cart.checkout("cart-checkout-1").await;
    assert_eq!(code, 202, "{accepted}");
    let order_id = accepted["order_id"].as_str().unwrap().to_owned();
    let order = shop.wait_status(&order_id, "confirmed").await;
    assert_eq!((order["items"][0]["sku"].as_str(), order["items"][0]["quantity"].as_i64()), (Some(SKU), Some(2)));
    assert_eq!(shop.available(SKU).await, before - 2, "the hold became the reservation, not a second one");
    let (code, again) = cart.checkout("cart-checkout-1").await;
    assert_eq!((code, again["order_id"].as_str()), (202, Some(order_id.as_str())), "a retry: {again}");

    let done = cart.get().await;
    assert_eq!((done["status"].as_str(), done["order_id"].as_str()), (Some("checked_out"), Some(order_id.as_str())));
    assert_eq!(line(&done, SKU)["hold"], "ordered");
    let (code, body) = cart.set(SKU, 3).await;
    assert_eq!((code, body["code"].as_str()), (409, Some("cart_checked_out")), "{body}");
    let (code, body) = cart.checkout("cart-checkout-2").await;
    assert_eq!((code, body["code"].as_str()), (409, Some("cart_checked_out")), "{body}");
    eventually("the holds to be gone", || async {
        let stock: Value = shop.get(shop.node_url(shop.inventory.addr, &format!("/products/{SKU}"))).await.1;
        (stock["held"] == 0).then_some(())
    })
    .await;
    shop.audit().await;
}

async fn held_stock_is_not_sold_to_anyone_else(shop: Shop) {
    let stock = shop.available(OTHER).await;
    let cart = CartClient::create(&shop).await;
    assert_eq!(cart.set(OTHER, stock).await.0, 200);
    let seen = cart.settled().await;
    assert_eq!(line(&seen, OTHER)["held"], stock, "{seen}");
    assert_eq!(shop.available(OTHER).await, 0);

    // Someone else's order for the last unit is refused, and a second
    // cart holds nothing.
    let (code, body, _) = shop
        .place("cart-thief", json!({"customer_email": "b@example.com", "items": [{"sku": OTHER, "quantity": 1}]}))
        .await;
    assert_eq!(code, 202, "{body}");
    shop.wait_status(body["order_id"].as_str().unwrap(), "rejected").await;
    let other = CartClient::create(&shop).await;
    assert_eq!(other.set(OTHER, 1).await.0, 200);
    let short = other.settled().await;
    assert_eq!((line(&short, OTHER)["hold"].as_str(), line(&short, OTHER)["held"].as_i64()), (Some("short"), Some(0)));

    let (code, accepted) = cart.checkout("cart-all").await;
    assert_eq!(code, 202, "{accepted}");
    shop.wait_status(accepted["order_id"].as_str().unwrap(), "confirmed").await;
    // The short cart's checkout finds nothing to take.
    let (code, accepted) = other.checkout("cart-none").await;
    assert_eq!(code, 202, "{accepted}");
    let order = shop.wait_status(accepted["order_id"].as_str().unwrap(), "rejected").await;
    assert!(order["reason"].as_str().unwrap().contains("not enough stock"), "{order}");
    assert_eq!(shop.available(OTHER).await, 0);
    shop.audit().await;
}

async fn bad_cart_requests_get_clear_errors(shop: Shop) {
    let cart = CartClient::create(&shop).await;
    let send = |r: reqwest::RequestBuilder| async move {
        let r = r.send().await.unwrap();
        let code = r.status().as_u16();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        (code, body["code"].as_str().unwrap_or_default().to_owned())
    };
    let http = &shop.http;
    let cases = [
        (http.get(shop.front_url("/api/carts/not-a-cart")), 400, "invalid_cart_id"),
        (http.get(shop.front_url("/api/carts/6d0f3a52-7a43-4c1e-9a8e-2f1b9c4d5e6f")), 404, "unknown_cart"),
        (
            http.put(shop.front_url("/api/carts/6d0f3a52-7a43-4c1e-9a8e-2f1b9c4d5e6f/items/APRON-CNV-001"))
                .json(&json!({"quantity": 1})),
            404,
            "unknown_cart",
        ),
        (http.put(cart.url("/items/no_such")).json(&json!({"quantity": 1})), 400, "invalid_sku"),
        (http.put(cart.url("/items/NO-SUCH-SKU")).json(&json!({"quantity": 1})), 422, "unknown_sku"),
        (http.put(cart.url(&format!("/items/{SKU}"))).json(&json!({"quantity": 1001})), 422, "invalid_request"),
        (http.put(cart.url(&format!("/items/{SKU}"))).json(&json!({"quantity": -1})), 422, "invalid_request"),
        (http.put(cart.url(&format!("/items/{SKU}"))).json(&json!({"qty": 1})), 422, "invalid_request"),
        (
            http.put(cart.url(&format!("/items/{SKU}"))).header("content-type", "application/json").body("{"),
            400,
            "malformed_json",
        ),
        (
            http.post(cart.url("/checkout")).json(&json!({"customer_email": "a@example.com"})),
            400,
            "missing_idempotency_key",
        ),
        (
            http.post(cart.url("/checkout")).header("Idempotency-Key", "k").json(&json!({"customer_email": "nope"})),
            422,
            "invalid_order",
        ),
        (
            http.post(cart.url("/checkout"))
                .header("Idempotency-Key", "k")
                .json(&json!({"customer_email": "a@example.com"})),
            422,
            "empty_cart",
        ),
    ];
    for (request, status, code) in cases {
        assert_eq!(send(request).await, (status, code.to_owned()));
    }
    // Nothing above changed the cart.
    assert_eq!(cart.get().await["version"], 1);
}

/// Cart commands sent twice over the bus (the broker redelivering, a
/// client's retry) change the cart once, and inventory holds once.
async fn a_command_sent_twice_changes_the_cart_once(shop: Shop) {
    use shared::message::{CartCommand, Envelope};
    use shared::topics::Topic;
    let before = shop.available(SKU).await;
    let cart = CartClient::create(&shop).await;
    let id = shared::ids::CartId::parse(&cart.id).unwrap();
    let set = Envelope::new(
        Topic::CartsCommand,
        id.subject(),
        CartCommand::SetItem { sku: shared::ids::Sku::parse(SKU).unwrap(), quantity: 3 },
    );
    let tester = shop.tester().await;
    for _ in 0..3 {
        tester.publish(Topic::CartsCommand, &set).await;
    }
    eventually("the line to be held", || async {
        let c = cart.get().await;
        (c["lines"].as_array().unwrap().len() == 1 && line(&c, SKU)["hold"] == "held").then_some(())
    })
    .await;
    assert_eq!(cart.get().await["version"], 2, "one change");
    assert_eq!(shop.available(SKU).await, before - 3, "held once");
    shop.audit().await;
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(crate::helpers::Shop::start(crate::helpers::BrokerKind::Embedded).await.unwrap()).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(shop) = crate::helpers::Shop::start_postgres().await {
                        super::$name(shop).await
                    }
                }
            )*
        }
    };
}

on_both_stores!(
    a_cart_holds_stock_and_checks_out_into_a_confirmed_order,
    held_stock_is_not_sold_to_anyone_else,
    a_command_sent_twice_changes_the_cart_once,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_cart_requests_get_clear_errors_embedded() {
    bad_cart_requests_get_clear_errors(Shop::start(BrokerKind::Embedded).await.unwrap()).await;
}

/// With a broker login per role (as `webshop up` runs the shop), each role
/// may publish the cart topics its service sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_checks_out_with_a_login_per_role_embedded() {
    let shop = Shop::start_with_logins(BrokerKind::Embedded).await.unwrap();
    a_cart_holds_stock_and_checks_out_into_a_confirmed_order(shop).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cart_checks_out_with_a_login_per_role_mosquitto() {
    if let Some(shop) = Shop::start_with_logins(BrokerKind::Mosquitto).await {
        a_cart_holds_stock_and_checks_out_into_a_confirmed_order(shop).await;
    }
}
