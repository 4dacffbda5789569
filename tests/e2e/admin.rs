//! The operator API through the front, and the nodes' metrics.

use serde_json::{json, Value};
use shared::topics::Topic;

use crate::helpers::*;

async fn admin(shop: &Shop, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = shop.http.request(method, shop.front_url(path)).bearer_auth(ADMIN_TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overview_timeline_restock_and_metrics() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let (code, _) = shop.get(shop.front_url("/admin/api/overview")).await;
    assert_eq!(code, 401, "admin routes need the token");

    let (_, body, _) = shop
        .place("admin-1", json!({"customer_email": "a@example.com", "items": [{"sku": "PACK-DAY-003", "quantity": 2}]}))
        .await;
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;

    let (code, o) = admin(&shop, reqwest::Method::GET, "/admin/api/overview", None).await;
    assert_eq!(code, 200, "{o}");
    assert!(o["nodes"].as_array().unwrap().iter().all(|n| n["ready"] == true), "{o}");
    assert_eq!(o["orders"]["confirmed"], 1);
    assert_eq!(o["recent_orders"][0]["order_id"], id.as_str());
    assert!(o["messages"]["order"]["applied"].as_u64().unwrap() >= 2);
    assert!(o["stock"].as_array().unwrap().len() >= 50);

    // The order's path through both nodes, in time order (the last
    // "published" marks land just after the broker's PUBACK).
    let wanted = [
        ("order", "applied", "orders/send"),
        ("inventory", "applied", "orders/send"),
        ("inventory", "published", "inventory/in-stock"),
        ("order", "applied", "inventory/in-stock"),
        ("order", "published", "orders/status"),
    ];
    eventually("the whole timeline", || async {
        let (code, t) = admin(&shop, reqwest::Method::GET, &format!("/admin/api/orders/{id}/timeline"), None).await;
        assert_eq!(code, 200, "{t}");
        let events: Vec<(String, String, String)> = t
            .as_array()?
            .iter()
            .map(|e| {
                (
                    e["node"].as_str().unwrap().into(),
                    e["event"].as_str().unwrap().into(),
                    e["topic"].as_str().unwrap().into(),
                )
            })
            .collect();
        wanted.iter().all(|w| events.iter().any(|(n, e, tp)| (n.as_str(), e.as_str(), tp.as_str()) == *w)).then_some(())
    })
    .await;

    // Restock and reprice; the books still balance (restocks count).
    let before = shop.available("PACK-DAY-003").await;
    let (code, p) = admin(
        &shop,
        reqwest::Method::PATCH,
        "/admin/api/products/PACK-DAY-003",
        Some(json!({"available": before + 10, "price_cents": 4242})),
    )
    .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!((p["available"].as_i64(), p["price_cents"].as_i64()), (Some(before + 10), Some(4242)));
    let (code, p) = admin(
        &shop,
        reqwest::Method::POST,
        "/admin/api/products",
        Some(json!({"sku": "NEW-THING-1", "name": "New thing", "description": "Brand new.",
                    "price_cents": 999, "currency": "EUR", "stock": 7})),
    )
    .await;
    assert_eq!(code, 201, "{p}");
    let (code, _) = admin(
        &shop,
        reqwest::Method::POST,
        "/admin/api/products",
        Some(json!({"sku": "NEW-THING-1", "name": "x", "description": "x", "price_cents": 1, "currency": "EUR", "stock": 1})),
    )
    .await;
    assert_eq!(code, 409);
    assert_eq!(shop.available("NEW-THING-1").await, 7);
    shop.audit().await;

    // Poison is listed and can be replayed (it comes back dead, as it should).
    let tester = shop.tester().await;
    // A valid envelope whose body can't be applied (no items): replaying it
    // must run it again, not drop it as already seen.
    let mut empty = send_body("FUEL-230G-001", 1, "fp-empty");
    empty.items.clear();
    tester.publish(Topic::OrdersSend, &shared::message::Envelope::new(Topic::OrdersSend, new_order_id(), empty)).await;
    let letters = eventually("the poison to be dead-lettered", || async {
        let (_, l) = admin(&shop, reqwest::Method::GET, "/admin/api/order/dead-letters", None).await;
        (!l.as_array()?.is_empty()).then_some(l)
    })
    .await;
    let dl_id = letters[0]["id"].as_i64().unwrap();
    let (code, r) =
        admin(&shop, reqwest::Method::POST, &format!("/admin/api/order/dead-letters/{dl_id}/replay"), None).await;
    assert_eq!(code, 200, "{r}");
    eventually("the replayed poison to be dead again", || async {
        let (_, l) = admin(&shop, reqwest::Method::GET, "/admin/api/order/dead-letters", None).await;
        let l = l.as_array()?.clone();
        (l.len() == 1 && l[0]["id"].as_i64()? != dl_id).then_some(())
    })
    .await;

    // Prometheus metrics on the nodes.
    let text = shop.http.get(format!("http://{}/metrics", shop.order.addr)).send().await.unwrap().text().await.unwrap();
    for series in ["messages_total{", "outbox_unsent{", "orders{", "http_requests_total{"] {
        assert!(text.contains(series), "{series} missing from /metrics:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_client_is_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let mut conn = tokio::net::TcpStream::connect(shop.front.addr).await.unwrap();
    // Headers that never end.
    conn.write_all(b"GET /api/catalog HTTP/1.1\r\nHost: x\r\nX-Slow: ").await.unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(
        shared::http::HEADER_READ_TIMEOUT + std::time::Duration::from_secs(5),
        conn.read_to_end(&mut buf),
    )
    .await;
    assert!(read.is_ok(), "the server kept a connection with unfinished headers open");
    // Meanwhile the shop serves others.
    let (code, _) = shop.get(shop.front_url("/api/catalog?limit=1")).await;
    assert_eq!(code, 200);
}
