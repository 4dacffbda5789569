//! Polling an order the way clients do: `ETag`/`If-None-Match`, long polls
//! (`?wait=&version=`, `Prefer: wait=`), reads answered from the front's
//! memory, and versions that never go back.

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use shared::ids::OrderId;
use shared::message::{Envelope, OrderLine, OrderSnapshot, OrderStatus, StatusChanged};
use shared::topics::Topic;

use crate::helpers::*;

const APRON: &str = "APRON-CNV-001";

fn line(qty: i64) -> Value {
    json!({"customer_email": "ada@example.com", "items": [{"sku": APRON, "quantity": qty}]})
}

/// An order placed and confirmed (version 2); its id.
async fn confirmed_order(shop: &Shop, key: &str) -> String {
    let (code, body, _) = shop.place(key, line(1)).await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    let order = shop.wait_status(&id, "confirmed").await;
    assert_eq!(order["version"], 2, "{order}");
    id
}

/// GET `path` on the front with `headers`: status, ETag, body.
async fn get(shop: &Shop, path: &str, headers: &[(&str, &str)]) -> (u16, Option<String>, Value) {
    let mut req = shop.http.get(shop.front_url(path));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let r = req.send().await.expect("request");
    let status = r.status().as_u16();
    let etag = r.headers().get("etag").map(|v| v.to_str().unwrap().to_owned());
    (status, etag, r.json().await.unwrap_or(Value::Null))
}

async fn cancel(shop: &Shop, id: &str) {
    let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 202);
}

/// Long polls the front is holding right now (all fronts of this process).
async fn long_polls_waiting(shop: &Shop) -> f64 {
    let text = shop.http.get(shop.front_url("/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("order_long_polls_waiting{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_reads_carry_the_version_as_etag_and_304_when_unchanged() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let id = confirmed_order(&shop, "poll-etag").await;
    let path = format!("/api/orders/{id}");

    let (code, etag, body) = get(&shop, &path, &[]).await;
    assert_eq!((code, etag.as_deref()), (200, Some("W/\"2\"")), "{body}");

    let (code, etag, _) = get(&shop, &path, &[("if-none-match", "W/\"2\"")]).await;
    assert_eq!((code, etag.as_deref()), (304, Some("W/\"2\"")));
    let (code, _, _) = get(&shop, &path, &[("if-none-match", "\"1\", \"2\"")]).await;
    assert_eq!(code, 304, "a strong tag compares weakly");

    let (code, _, body) = get(&shop, &path, &[("if-none-match", "W/\"1\"")]).await;
    assert_eq!((code, body["status"].as_str()), (200, Some("confirmed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_answers_as_soon_as_the_version_passes() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let id = confirmed_order(&shop, "poll-wake").await;
    let before = long_polls_waiting(&shop).await;

    let started = Instant::now();
    let poll = {
        let (http, url) = (shop.http.clone(), shop.front_url(&format!("/api/orders/{id}?wait=25s&version=2")));
        tokio::spawn(async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap(), started.elapsed())
        })
    };
    eventually("the long poll to be waiting", || async { (long_polls_waiting(&shop).await > before).then_some(()) })
        .await;
    cancel(&shop, &id).await;

    let (code, body, took) = tokio::time::timeout(DEADLINE, poll).await.expect("answered").unwrap();
    assert_eq!((code, body["status"].as_str(), body["version"].as_i64()), (200, Some("cancelled"), Some(3)));
    assert!(took < Duration::from_secs(20), "answered at the change, not at the end of the wait: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_with_nothing_new_answers_after_the_wait() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let id = confirmed_order(&shop, "poll-timeout").await;
    let path = format!("/api/orders/{id}");

    let started = Instant::now();
    let (code, etag, body) = get(&shop, &format!("{path}?wait=1s&version=2"), &[]).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "waited: {:?}", started.elapsed());
    assert_eq!((code, etag.as_deref(), body["status"].as_str()), (200, Some("W/\"2\""), Some("confirmed")));

    // With the ETag and RFC 7240's preference instead: 304 after the wait.
    let started = Instant::now();
    let (code, _, _) = get(&shop, &path, &[("if-none-match", "W/\"2\""), ("prefer", "wait=1")]).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "waited: {:?}", started.elapsed());
    assert_eq!(code, 304);

    // A version the client doesn't have yet... is already passed: at once.
    let (code, _, body) = get(&shop, &format!("{path}?wait=25s&version=1"), &[]).await;
    assert_eq!((code, body["version"].as_i64()), (200, Some(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_prefer_wait_answers_with_the_settled_status() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    for n in 0..5 {
        let r = shop
            .http
            .post(shop.front_url("/api/orders"))
            .header("Idempotency-Key", format!("poll-prefer-{n}"))
            .header("Prefer", "wait=10")
            .json(&line(1))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "confirmed", "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_front_never_answers_an_older_version_than_it_saw() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let id = confirmed_order(&shop, "poll-monotonic").await;
    let path = format!("/api/orders/{id}");
    let (_, _, order) = get(&shop, &path, &[]).await;

    // A newer version reaches the front on the bus; the order node still
    // says 2 (here because the event is made up, in real life because a
    // read raced the change). Written 10 s ago, the event is too old to
    // answer from by itself: every read below asks the order node.
    let items: Vec<OrderLine> = serde_json::from_value(order["items"].clone()).unwrap();
    let newer = StatusChanged {
        status: OrderStatus::Confirmed,
        version: 7,
        fingerprint: "f".into(),
        reason: None,
        order: Some(OrderSnapshot {
            items,
            currency: "EUR".into(),
            total_cents: order["total_cents"].as_i64().unwrap(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }),
    };
    let order_id = OrderId(id.parse().unwrap());
    let mut event = Envelope::new(Topic::OrdersStatus, order_id, newer);
    event.sent_at -= Duration::from_secs(10);
    shop.tester().await.publish(Topic::OrdersStatus, &event).await;
    eventually("the front to answer version 7", || async {
        let (code, _, body) = get(&shop, &path, &[]).await;
        (code == 200 && body["version"] == 7).then_some(())
    })
    .await;
    let (code, etag, body) = get(&shop, &path, &[]).await;
    assert_eq!((code, etag.as_deref(), body["version"].as_i64()), (200, Some("W/\"7\""), Some(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_status_is_answered_from_memory_without_the_order_node() {
    let mut shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let id = confirmed_order(&shop, "poll-final").await;
    cancel(&shop, &id).await;
    shop.wait_status(&id, "cancelled").await;
    shop.order.stop().await;
    let (code, etag, body) = get(&shop, &format!("/api/orders/{id}"), &[]).await;
    assert_eq!((code, etag.as_deref(), body["status"].as_str()), (200, Some("W/\"3\""), Some("cancelled")), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_long_poll_parameters_get_a_400_with_a_code() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let id = confirmed_order(&shop, "poll-bad").await;
    for (query, code) in [
        ("wait=soon&version=1", "invalid_wait"),
        ("wait=26s&version=1", "invalid_wait"),
        ("wait=-1&version=1", "invalid_wait"),
        ("wait=5s&version=-1", "invalid_version"),
        ("wait=5s&version=two", "invalid_version"),
        ("wait=5s", "missing_version"),
    ] {
        let (status, _, body) = get(&shop, &format!("/api/orders/{id}?{query}"), &[]).await;
        assert_eq!((status, body["code"].as_str()), (400, Some(code)), "{query}: {body}");
    }
}
