//! End-to-end tests: the real broker, the real nodes, real HTTP and MQTT,
//! temp-dir SQLite, free ports. Every wait has a deadline.

mod acl;
mod admin;
mod balancer;
mod bench;
mod carts;
mod cluster;
mod crash;
mod database_crash;
mod faults;
mod front_robust;
mod fuzz;
mod helpers;
mod holds;
mod limits;
mod model;
mod otlp;
mod polls;
mod release;
mod retention;
mod rolling_upgrade;
mod scaleout;
mod stalls;
mod tls;
mod tools;

use front_robust::*;
use helpers::*;
use serde_json::json;
use shared::message::{CancelOrder, Envelope, InStock, ReleaseRequested};
use shared::topics::Topic;

/// Every scenario runs twice: on the embedded rumqttd broker and on a real
/// Mosquitto (started by the test on a free port), since any standard
/// broker must work in rumqttd's place.
macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Shop::start(super::BrokerKind::Embedded).await.unwrap()).await
                }
            )*
        }
        mod mosquitto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(shop) = super::Shop::start(super::BrokerKind::Mosquitto).await {
                        super::$name(shop).await
                    }
                }
            )*
        }
    };
}

/// The core scenarios on RabbitMQ's MQTT plugin: one node for the test
/// process (it takes seconds to boot), each shop on it with its own topic
/// prefix and client ids. Skipped when RabbitMQ isn't installed, unless
/// `WEBSHOP_REQUIRE_RABBITMQ=1`.
macro_rules! on_rabbitmq {
    ($($name:ident),* $(,)?) => {
        mod rabbitmq {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(shop) = super::Shop::start(super::BrokerKind::RabbitMq).await {
                        super::$name(shop).await
                    }
                }
            )*
        }
    };
}

/// The same scenarios with the services' data on PostgreSQL (embedded
/// broker); skipped when PostgreSQL isn't installed, unless
/// `WEBSHOP_REQUIRE_POSTGRES=1`.
macro_rules! on_postgres {
    ($($name:ident),* $(,)?) => {
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    if let Some(shop) = super::Shop::start_postgres().await {
                        super::$name(shop).await
                    }
                }
            )*
        }
    };
}

on_both_brokers!(
    happy_path_place_confirm_cancel_restores_stock,
    out_of_stock_is_rejected_and_reserves_nothing,
    the_same_send_five_times_makes_one_order_and_one_reservation,
    in_stock_before_send_is_parked_then_confirms,
    cancel_before_send_at_the_order_service,
    cancel_before_send_at_inventory,
    retried_post_is_the_same_order_and_a_different_body_conflicts,
    malformed_and_oversize_messages_are_dead_lettered_and_the_shop_goes_on,
    bad_http_input_gets_a_clear_4xx,
    catalog_search_and_paging,
    a_node_that_is_down_is_a_503_not_a_500,
    orders_sent_while_the_order_service_restarts_are_not_lost,
    a_repeated_cancel_answers_with_the_cancelled_order,
    orders_are_taken_at_last_known_prices_while_inventory_is_down,
    subscriptions_follow_the_code_when_the_broker_kept_the_session,
);

on_rabbitmq!(
    happy_path_place_confirm_cancel_restores_stock,
    out_of_stock_is_rejected_and_reserves_nothing,
    the_same_send_five_times_makes_one_order_and_one_reservation,
    in_stock_before_send_is_parked_then_confirms,
    cancel_before_send_at_the_order_service,
    cancel_before_send_at_inventory,
    retried_post_is_the_same_order_and_a_different_body_conflicts,
    malformed_and_oversize_messages_are_dead_lettered_and_the_shop_goes_on,
    orders_sent_while_the_order_service_restarts_are_not_lost,
    orders_are_taken_at_last_known_prices_while_inventory_is_down,
    subscriptions_follow_the_code_when_the_broker_kept_the_session,
);

on_postgres!(
    happy_path_place_confirm_cancel_restores_stock,
    out_of_stock_is_rejected_and_reserves_nothing,
    the_same_send_five_times_makes_one_order_and_one_reservation,
    in_stock_before_send_is_parked_then_confirms,
    cancel_before_send_at_the_order_service,
    cancel_before_send_at_inventory,
    retried_post_is_the_same_order_and_a_different_body_conflicts,
    malformed_and_oversize_messages_are_dead_lettered_and_the_shop_goes_on,
    a_node_that_is_down_is_a_503_not_a_500,
    orders_sent_while_the_order_service_restarts_are_not_lost,
    a_repeated_cancel_answers_with_the_cancelled_order,
);

const SKU: &str = "APRON-CNV-001";

fn one_line(sku: &str, qty: i64) -> serde_json::Value {
    json!({"customer_email": "ada@example.com", "items": [{"sku": sku, "quantity": qty}]})
}

async fn happy_path_place_confirm_cancel_restores_stock(shop: Shop) {
    let before = shop.available(SKU).await;
    let (code, body, location) = shop.place("happy-1", one_line(SKU, 3)).await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    assert_eq!(location.as_deref(), Some(format!("/api/orders/{id}").as_str()));
    assert!(["pending", "confirmed"].contains(&body["status"].as_str().unwrap()));

    let order = shop.wait_status(&id, "confirmed").await;
    assert_eq!(order["total_cents"], 3 * 3999);
    assert_eq!(order["items"][0]["quantity"], 3);
    assert_eq!(shop.available(SKU).await, before - 3);

    let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 202);
    shop.wait_status(&id, "cancelled").await;
    eventually("stock to come back", || async { (shop.available(SKU).await == before).then_some(()) }).await;
    assert_eq!(shop.reservation(&id).await.unwrap()["state"], "released");

    // Cancelling again (a retry) answers with the cancelled order.
    let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let order: serde_json::Value = r.json().await.unwrap();
    assert_eq!((order["order_id"].as_str(), order["status"].as_str()), (Some(id.as_str()), Some("cancelled")));
    shop.audit().await;
}

async fn out_of_stock_is_rejected_and_reserves_nothing(shop: Shop) {
    let before = shop.available(SKU).await;
    // Two lines of the same SKU count together: each alone would fit.
    let body = json!({"customer_email": "ada@example.com", "items": [
        {"sku": SKU, "quantity": before}, {"sku": SKU, "quantity": 1}
    ]});
    let (code, body, _) = shop.place("oos-1", body).await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    let order = shop.wait_status(&id, "rejected").await;
    assert!(order["reason"].as_str().unwrap().contains("not enough stock"), "{order}");
    assert_eq!(shop.available(SKU).await, before);
    assert_eq!(shop.reservation(&id).await.unwrap()["state"], "rejected");

    let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 409);
    shop.audit().await;
}

async fn the_same_send_five_times_makes_one_order_and_one_reservation(shop: Shop) {
    let before = shop.available(SKU).await;
    let tester = shop.tester().await;
    let id = new_order_id();
    let env = Envelope::new(Topic::OrdersSend, id, send_body(SKU, 2, "fp-dup"));
    for _ in 0..5 {
        tester.publish(Topic::OrdersSend, &env).await;
    }
    // And five more copies under fresh message ids: business keys hold too.
    for _ in 0..5 {
        tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, id, send_body(SKU, 2, "fp-dup"))).await;
    }
    shop.wait_status(&id.to_string(), "confirmed").await;
    eventually("all copies to be consumed", || async {
        let s = shop.stats(shop.order.addr).await;
        (s["messages"]["received"].as_u64()? >= 11).then_some(())
    })
    .await;
    assert_eq!(shop.available(SKU).await, before - 2);
    let inv = shop.stats(shop.inventory.addr).await;
    assert!(inv["messages"]["deduplicated"].as_u64().unwrap() >= 4, "{inv}");
    let order = shop.get(shop.front_url(&format!("/api/orders/{id}"))).await.1;
    assert_eq!(order["version"], 2, "one creation, one confirmation: {order}");
    shop.audit().await;
}

async fn in_stock_before_send_is_parked_then_confirms(shop: Shop) {
    let tester = shop.tester().await;
    let id = new_order_id();
    tester
        .publish(
            Topic::InStock,
            &Envelope::new(Topic::InStock, id, InStock { fingerprint: "fp-early".into(), prices: vec![] }),
        )
        .await;
    eventually("the early in-stock to be parked", || async {
        let s = shop.stats(shop.order.addr).await;
        (s["parked"].as_i64()? == 1).then_some(())
    })
    .await;
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, id, send_body(SKU, 1, "fp-early"))).await;
    shop.wait_status(&id.to_string(), "confirmed").await;
    let s = shop.stats(shop.order.addr).await;
    assert_eq!(s["parked"], 0, "{s}");
    assert!(s["messages"]["unparked"].as_u64().unwrap() >= 1, "{s}");
    shop.audit().await;
}

async fn cancel_before_send_at_the_order_service(shop: Shop) {
    let before = shop.available(SKU).await;
    let tester = shop.tester().await;
    let id = new_order_id();
    tester.publish(Topic::OrdersCancel, &Envelope::new(Topic::OrdersCancel, id, CancelOrder::default())).await;
    eventually("the cancel to be applied", || async {
        let s = shop.stats(shop.order.addr).await;
        (s["messages"]["applied"].as_u64()? >= 1).then_some(())
    })
    .await;
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, id, send_body(SKU, 4, "fp-c"))).await;
    let order = shop.wait_status(&id.to_string(), "cancelled").await;
    assert_eq!(order["version"], 1, "created cancelled: {order}");
    // Inventory may have reserved from the same send; the order service
    // releases it.
    eventually("inventory to hold nothing", || async {
        let r = shop.reservation(&id.to_string()).await?;
        (r["state"] == "released" && shop.available(SKU).await == before).then_some(())
    })
    .await;
    shop.audit().await;
}

async fn cancel_before_send_at_inventory(shop: Shop) {
    let before = shop.available(SKU).await;
    let tester = shop.tester().await;
    let id = new_order_id();
    tester.publish(Topic::OrdersCancelled, &Envelope::new(Topic::OrdersCancelled, id, ReleaseRequested {})).await;
    eventually("inventory to tombstone the order", || async {
        let r = shop.reservation(&id.to_string()).await?;
        (r["state"] == "released").then_some(())
    })
    .await;
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, id, send_body(SKU, 4, "fp-i"))).await;
    // The late send reserves nothing; the order settles without stock.
    let order = shop.wait_status(&id.to_string(), "rejected").await;
    assert!(order["reason"].as_str().unwrap().contains("cancelled"), "{order}");
    assert_eq!(shop.available(SKU).await, before);
    shop.audit().await;
}

async fn retried_post_is_the_same_order_and_a_different_body_conflicts(shop: Shop) {
    let before = shop.available(SKU).await;
    let (c1, b1, _) = shop.place("retry-1", one_line(SKU, 2)).await;
    let (c2, b2, _) = shop.place("retry-1", one_line(SKU, 2)).await;
    assert_eq!((c1, c2), (202, 202), "{b1} {b2}");
    assert_eq!(b1["order_id"], b2["order_id"]);
    let id = b1["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;
    let (c3, b3, _) = shop.place("retry-1", one_line(SKU, 5)).await;
    assert_eq!(c3, 409, "{b3}");
    assert_eq!(b3["code"], "idempotency_key_reused");
    // Concurrent retries too.
    let (a, b) = tokio::join!(shop.place("retry-2", one_line(SKU, 1)), shop.place("retry-2", one_line(SKU, 1)));
    assert_eq!((a.0, b.0), (202, 202));
    assert_eq!(a.1["order_id"], b.1["order_id"]);
    shop.wait_status(a.1["order_id"].as_str().unwrap(), "confirmed").await;
    assert_eq!(shop.available(SKU).await, before - 3);
    shop.audit().await;
}

async fn malformed_and_oversize_messages_are_dead_lettered_and_the_shop_goes_on(shop: Shop) {
    let tester = shop.tester().await;
    let consumed = [
        (Topic::OrdersSend, 2),
        (Topic::OrdersCancel, 1),
        (Topic::InStock, 1),
        (Topic::OutOfStock, 1),
        (Topic::OrdersCancelled, 1),
        (Topic::Released, 1),
    ];
    for (topic, _) in consumed {
        tester.publish_raw(topic, b"this is not json".to_vec()).await;
        tester.publish_raw(topic, vec![b'x'; 1024 * 1024]).await;
    }
    // A wrong schema version and a wrong type are poison too.
    let mut wrong_version: serde_json::Value =
        serde_json::from_slice(&Envelope::new(Topic::OrdersCancel, new_order_id(), CancelOrder::default()).to_json())
            .unwrap();
    wrong_version["v"] = json!(99);
    tester.publish_raw(Topic::OrdersCancel, serde_json::to_vec(&wrong_version).unwrap()).await;
    tester
        .publish_raw(
            Topic::OrdersSend,
            Envelope::new(Topic::OrdersCancel, new_order_id(), CancelOrder::default()).to_json(),
        )
        .await;

    // inventory consumes send and cancelled; order consumes five topics.
    let expect_inventory = 2 * 2 + 1;
    let expect_order = 2 * 5 + 2;
    eventually("poison to be dead-lettered", || async {
        let i = shop.dead_letters(shop.inventory.addr).await.len();
        let o = shop.dead_letters(shop.order.addr).await.len();
        (i == expect_inventory && o == expect_order).then_some(())
    })
    .await;
    let dl = shop.dead_letters(shop.order.addr).await;
    assert!(dl.iter().any(|d| d["reason"].as_str().unwrap().contains("exceeds")), "{dl:?}");
    assert!(dl.iter().any(|d| d["reason"].as_str().unwrap().contains("invalid envelope")), "{dl:?}");
    assert!(dl.iter().any(|d| d["reason"].as_str().unwrap().contains("schema version")), "{dl:?}");
    assert!(dl.iter().all(|d| d["payload_bytes"].as_i64().unwrap() > 0));

    // Still working.
    let (code, body, _) = shop.place("after-poison", one_line(SKU, 1)).await;
    assert_eq!(code, 202, "{body}");
    shop.wait_status(body["order_id"].as_str().unwrap(), "confirmed").await;
    shop.audit().await;
}

async fn bad_http_input_gets_a_clear_4xx(shop: Shop) {
    let post = |key: Option<&'static str>, body: String| {
        let mut r = shop.http.post(shop.front_url("/api/orders")).header("content-type", "application/json").body(body);
        if let Some(k) = key {
            r = r.header("Idempotency-Key", k);
        }
        async move {
            let r = r.send().await.unwrap();
            let code = r.status().as_u16();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            (code, body["code"].as_str().unwrap_or("").to_owned(), body["detail"].as_str().unwrap_or("").to_owned())
        }
    };
    let ok = one_line(SKU, 1).to_string();
    let cases: Vec<(Option<&'static str>, String, u16, &str)> = vec![
        (None, ok.clone(), 400, "missing_idempotency_key"),
        (Some("k"), "{not json".into(), 400, "malformed_json"),
        (Some("k"), json!({"items": []}).to_string(), 422, "invalid_order"),
        (Some("k"), json!({"customer_email": "ada@example.com", "items": []}).to_string(), 422, "empty_order"),
        (Some("k"), one_line(SKU, 0).to_string(), 422, "invalid_order"),
        (Some("k"), one_line(SKU, -3).to_string(), 422, "invalid_order"),
        (Some("k"), one_line(SKU, 10_000_000_000).to_string(), 422, "invalid_order"),
        (Some("k"), one_line("NO-SUCH-SKU", 1).to_string(), 422, "unknown_sku"),
        (Some("k"), one_line("bad sku!", 1).to_string(), 422, "invalid_order"),
        (
            Some("k"),
            json!({"customer_email": "nope", "items": [{"sku": SKU, "quantity": 1}]}).to_string(),
            422,
            "invalid_order",
        ),
        (Some("k"), format!("{{\"customer_email\": \"{}\"}}", "a".repeat(100_000)), 413, "body_too_large"),
    ];
    for (key, body, want_code, want) in cases {
        let (code, got, detail) = post(key, body).await;
        assert_eq!((code, got.as_str()), (want_code, want), "detail: {detail}");
        assert!(!detail.is_empty());
    }
    let (code, body) = shop.get(shop.front_url("/api/orders/not-a-uuid")).await;
    assert_eq!((code, body["code"].as_str()), (400, Some("invalid_order_id")));
    let (code, body) = shop.get(shop.front_url(&format!("/api/orders/{}", new_order_id()))).await;
    assert_eq!((code, body["code"].as_str()), (404, Some("unknown_order")));
    let (code, body) = shop.get(shop.front_url("/api/catalog/NOPE-404")).await;
    assert_eq!((code, body["code"].as_str()), (404, Some("unknown_product")));
    let (code, _) = shop.get(shop.front_url("/api/catalog?limit=0")).await;
    assert_eq!(code, 400);
    let r = shop.http.post(shop.front_url(&format!("/api/orders/{}/cancel", new_order_id()))).send().await.unwrap();
    assert_eq!(r.status(), 404);
}

async fn catalog_search_and_paging(shop: Shop) {
    let (code, page) = shop.get(shop.front_url("/api/catalog?limit=10")).await;
    assert_eq!(code, 200);
    assert_eq!(page["items"].as_array().unwrap().len(), 10);
    let mut seen = 10;
    let mut cursor = page["next_cursor"].as_str().map(str::to_owned);
    while let Some(c) = cursor {
        let (_, p) = shop.get(shop.front_url(&format!("/api/catalog?limit=10&cursor={c}"))).await;
        seen += p["items"].as_array().unwrap().len();
        cursor = p["next_cursor"].as_str().map(str::to_owned);
    }
    assert!(seen >= 50, "catalog has {seen} products");
    let (_, found) = shop.get(shop.front_url("/api/catalog?q=apron")).await;
    let items = found["items"].as_array().unwrap();
    assert!(!items.is_empty());
    for p in items {
        let text = format!("{} {}", p["name"], p["description"]).to_lowercase();
        assert!(text.contains("apron"));
        for field in ["sku", "name", "description", "price_cents", "currency", "available"] {
            assert!(!p[field].is_null(), "{field} missing in {p}");
        }
    }
}

async fn a_node_that_is_down_is_a_503_not_a_500(shop: Shop) {
    let (_, body, _) = shop.place("down-1", one_line(SKU, 1)).await;
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;
    shop.order.shutdown.cancel();
    eventually("order node to stop answering", || async {
        let r = shop.http.get(format!("http://{}/healthz", shop.order.addr)).send().await;
        r.is_err().then_some(())
    })
    .await;
    // The front answers from what it knows while that is provably fresh
    // (`order_cache_secs`), then says the order node is unavailable.
    let r = eventually("the front to answer 503 for the order", || async {
        let r = shop.http.get(shop.front_url(&format!("/api/orders/{id}"))).send().await.unwrap();
        match r.status().as_u16() {
            503 => Some(r),
            200 => None,
            other => panic!("{other} while the order node is down"),
        }
    })
    .await;
    assert!(r.headers().contains_key("retry-after"));
    let problem: serde_json::Value = r.json().await.unwrap();
    assert_eq!(problem["code"], "order_service_unavailable");
    let (code, body) = shop.get(shop.front_url("/readyz")).await;
    assert_eq!(code, 503, "{body}");
    // Placing an order can't be confirmed: a 503 with Retry-After, not a hang.
    let (code, body, _) = shop.place("down-2", one_line(SKU, 1)).await;
    assert_eq!(code, 503, "{body}");
}

async fn orders_sent_while_the_order_service_restarts_are_not_lost(mut shop: Shop) {
    let before = shop.available(SKU).await;
    let tester = shop.tester().await;
    let addr = shop.order.addr;
    // While no order service runs, its persistent session queues messages.
    shop.order.stop().await;
    let ids: Vec<_> = (0..5).map(|_| new_order_id()).collect();
    for (i, id) in ids.iter().enumerate() {
        tester
            .publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, *id, send_body(SKU, 1, &format!("fp-r{i}"))))
            .await;
    }
    let mut cfg = shop.order_config();
    cfg.listen = addr;
    shop.order = start_order(cfg).await;
    for id in &ids {
        shop.wait_status(&id.to_string(), "confirmed").await;
    }
    assert_eq!(shop.available(SKU).await, before - 5);
    shop.audit().await;
}

/// The broker kept the order service's session from a version that
/// subscribed to fewer topics: the node subscribes again on connect, so
/// the topics it handles now reach it (an upgrade needs no session reset).
async fn subscriptions_follow_the_code_when_the_broker_kept_the_session(mut shop: Shop) {
    let addr = shop.order.addr;
    shop.order.stop().await;
    // An "older" order service: the same client id, a persistent session
    // subscribed to orders/send only.
    let bus = shop.order_config().bus;
    let mut opts = rumqttc::MqttOptions::new(bus.client_id, "127.0.0.1", shop.node_port);
    opts.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(opts.clone(), 10);
    drop(client);
    let _ = tokio::time::timeout(DEADLINE, async {
        while !matches!(events.poll().await, Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_)))) {}
    })
    .await;
    drop(events);
    opts.set_clean_session(false);
    let (client, mut events) = rumqttc::AsyncClient::new(opts, 10);
    client.subscribe(Topic::OrdersSend.path(&bus.topic_prefix), rumqttc::QoS::AtLeastOnce).await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        while !matches!(events.poll().await, Ok(rumqttc::Event::Incoming(rumqttc::Packet::SubAck(_)))) {}
    })
    .await
    .expect("the old session subscribes");
    client.disconnect().await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        while !matches!(events.poll().await, Ok(rumqttc::Event::Outgoing(rumqttc::Outgoing::Disconnect)) | Err(_)) {}
    })
    .await
    .expect("the old session disconnects");

    let mut cfg = shop.order_config();
    cfg.listen = addr;
    shop.order = start_order(cfg).await;
    shop.wait_ready().await;
    // Confirming needs inventory/in-stock, which the old session lacked.
    let (code, body, _) = shop.place("after-upgrade", one_line(SKU, 1)).await;
    assert_eq!(code, 202, "{body}");
    shop.wait_status(body["order_id"].as_str().unwrap(), "confirmed").await;
    shop.audit().await;
}
