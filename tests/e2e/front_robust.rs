//! The front under retries and with inventory down: a request repeated
//! after it took effect gets the result, not an error; orders keep being
//! taken at the last known prices while inventory is unreachable.

use std::net::SocketAddr;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

const APRON: &str = "APRON-CNV-001";

fn line(sku: &str, qty: i64) -> Value {
    json!({"customer_email": "ada@example.com", "items": [{"sku": sku, "quantity": qty}]})
}

/// POST /api/orders to the front at `front`: status, body, `X-Price-Source`.
async fn place_at(shop: &Shop, front: SocketAddr, key: &str, body: Value) -> (u16, Value, Option<String>) {
    shop.place_at(front, key, body, "x-price-source").await
}

async fn cancel(shop: &Shop, id: &str) -> (u16, Value, Option<String>) {
    let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
    let status = r.status().as_u16();
    let location = r.headers().get("location").map(|v| v.to_str().unwrap().to_owned());
    (status, r.json().await.unwrap_or(Value::Null), location)
}

/// A second front on the same nodes and broker (as behind a load
/// balancer): it has seen no prices yet.
async fn start_another_front(shop: &Shop) -> Running {
    let shutdown = CancellationToken::new();
    let app = public_front::App::build(
        public_front::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            bus: shared::config::BusConfig { port: shop.node_port, ..Default::default() },
            inventory_url: shop.node_url(shop.inventory.addr, ""),
            order_url: shop.node_url(shop.order.addr, ""),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("front starts");
    Running { addr: app.local_addr(), shutdown, task: Some(tokio::spawn(app.run())) }
}

pub(crate) async fn a_repeated_cancel_answers_with_the_cancelled_order(shop: Shop) {
    let before = shop.available(APRON).await;
    let (code, body, _) = shop.place("cancel-twice-1", line(APRON, 2)).await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;

    let (code, body, _) = cancel(&shop, &id).await;
    assert_eq!((code, body["status"].as_str()), (202, Some("cancelled")), "{body}");
    // The same cancel again, as a client whose first answer was lost (or
    // was a 503 although the cancellation took effect) sends it: the order.
    for _ in 0..2 {
        let (code, order, location) = cancel(&shop, &id).await;
        assert_eq!(code, 200, "{order}");
        assert_eq!(location.as_deref(), Some(format!("/api/orders/{id}").as_str()));
        assert_eq!((order["order_id"].as_str(), order["status"].as_str()), (Some(id.as_str()), Some("cancelled")));
        assert_eq!(order["items"][0]["sku"], APRON, "{order}");
        assert_eq!(order["total_cents"], 2 * 3999, "{order}");
    }
    eventually("stock to come back", || async { (shop.available(APRON).await == before).then_some(()) }).await;

    // A rejected order has nothing to cancel: still a conflict.
    let (code, body, _) = shop.place("cancel-rejected-1", line(APRON, 1000)).await;
    assert_eq!(code, 202, "{body}");
    let rejected = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&rejected, "rejected").await;
    let (code, problem, _) = cancel(&shop, &rejected).await;
    assert_eq!((code, problem["code"].as_str()), (409, Some("order_rejected")), "{problem}");
    shop.audit().await;
}

pub(crate) async fn orders_are_taken_at_last_known_prices_while_inventory_is_down(mut shop: Shop) {
    let before = shop.available(APRON).await;
    let front = shop.front.addr;
    // The front learns APRON's price, and that NO-SUCH-SKU is unknown.
    let (code, body, source) = place_at(&shop, front, "stale-a", line(APRON, 1)).await;
    assert_eq!((code, source), (202, None), "{body}");
    let first = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&first, "confirmed").await;
    let (code, body, _) = place_at(&shop, front, "stale-unknown", line("NO-SUCH-SKU", 1)).await;
    assert_eq!((code, body["code"].as_str()), (422, Some("unknown_sku")), "{body}");
    // A catalog page read after those prices, cached as long: once it has
    // expired, so have they.
    let (code, _) = shop.get(shop.front_url("/api/catalog?limit=1")).await;
    assert_eq!(code, 200);

    let inventory_addr = shop.inventory.addr;
    shop.inventory.stop().await;
    eventually("the front's cached catalog page to expire", || async {
        (shop.get(shop.front_url("/api/catalog?limit=1")).await.0 == 503).then_some(())
    })
    .await;

    // A new order is taken at the last known price, and says so.
    let (code, body, source) = place_at(&shop, front, "stale-b", line(APRON, 2)).await;
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["status"], "pending", "{body}");
    let source = source.expect("an X-Price-Source header");
    assert!(source.starts_with("stale; age="), "{source}");
    let stale = body["order_id"].as_str().unwrap().to_owned();

    // Never priced, or remembered as unknown: no order without inventory.
    for (key, sku) in [("stale-never-seen", "BASKET-SEA-L"), ("stale-unknown-2", "NO-SUCH-SKU")] {
        let (code, body, _) = place_at(&shop, front, key, line(sku, 1)).await;
        assert_eq!((code, body["code"].as_str()), (503, Some("inventory_unavailable")), "{sku}: {body}");
    }

    // A retry that reaches a front which has seen no prices (another one
    // behind the load balancer) gets the order it placed, not a 503.
    let mut other = start_another_front(&shop).await;
    let (code, body, source) = place_at(&shop, other.addr, "stale-a", line(APRON, 1)).await;
    assert_eq!((code, body["order_id"].as_str(), source), (202, Some(first.as_str()), None), "{body}");
    assert_eq!(body["status"], "confirmed", "{body}");
    // The same key with another body is still a conflict.
    let (code, body, _) = place_at(&shop, other.addr, "stale-a", line(APRON, 3)).await;
    assert_eq!((code, body["code"].as_str()), (409, Some("idempotency_key_reused")), "{body}");
    // A new order there has no price to go by.
    let (code, body, _) = place_at(&shop, other.addr, "stale-other-front", line(APRON, 1)).await;
    assert_eq!((code, body["code"].as_str()), (503, Some("inventory_unavailable")), "{body}");
    other.stop().await;

    let metrics = shop.http.get(shop.front_url("/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("orders_stale_priced_total{node=\"public-front\"}"), "{metrics}");

    // Inventory comes back on its address and reserves the order.
    let mut cfg = shop.inventory_config();
    cfg.listen = inventory_addr;
    shop.inventory = start_inventory(cfg).await;
    let order = shop.wait_status(&stale, "confirmed").await;
    assert_eq!(order["items"][0]["unit_price_cents"], 3999, "{order}");
    assert_eq!(shop.available(APRON).await, before - 3);
    shop.audit().await;
}

/// Adding a product is safe to retry: the same product again is a 200 with
/// it (the first answer may have been lost), a different one under the
/// same SKU a 409, and the stock is booked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_add_product_answers_with_the_product() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let add = |body: Value| {
        let r = shop.http.post(shop.front_url("/admin/api/products")).bearer_auth(ADMIN_TOKEN).json(&body).send();
        async move {
            let r = r.await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let product = json!({"sku": "RETRY-THING-1", "name": "Retry thing", "description": "Added twice.",
                         "price_cents": 1234, "currency": "EUR", "stock": 5});
    let (code, first) = add(product.clone()).await;
    assert_eq!(code, 201, "{first}");
    let (code, again) = add(product.clone()).await;
    assert_eq!(code, 200, "{again}");
    assert_eq!(again, first);
    let mut other = product.clone();
    other["price_cents"] = json!(999);
    let (code, problem) = add(other).await;
    assert_eq!((code, problem["code"].as_str()), (409, Some("product_exists")), "{problem}");
    assert_eq!(shop.available("RETRY-THING-1").await, 5);
    shop.audit().await;
}
