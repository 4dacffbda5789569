//! The bus fuzzer under order load, on both brokers: while customers place
//! and cancel orders through the front, `webshop::tools::fuzz` publishes
//! random and malformed messages, oversize ones, and copies of the real
//! traffic at every topic. Afterwards no node is stuck, every order that
//! got a 202 has settled, the poison was dead-lettered and the audit
//! passes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use shared::ids::{IdempotencyKey, OrderId};
use shared::message::{Envelope, OrderStatus, StatusChanged};
use shared::topics::Topic;
use tokio_util::sync::CancellationToken;
use webshop::tools::fuzz::{self, Fuzz, Kind};

use crate::helpers::*;

const CLIENTS: usize = 4;
/// What the load orders; the fuzzer learns these SKUs from the bus.
const SKUS: [&str; 4] = ["FUEL-230G-001", "BOTL-STL-750", "TOOL-SPAT-001", "CAND-SOY-001"];
/// Never ordered by the load, so the fuzzer can't know it: the order
/// placed at the end finds stock.
const FRESH_SKU: &str = "APRON-CNV-001";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_the_bus_under_load_on_the_embedded_broker() {
    fuzzing_the_bus_under_load(Shop::start(BrokerKind::Embedded).await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fuzzing_the_bus_under_load_on_mosquitto() {
    if let Some(shop) = Shop::start(BrokerKind::Mosquitto).await {
        fuzzing_the_bus_under_load(shop).await
    }
}

/// POSTs with the same key until accepted (a 503 is retried, as the API
/// asks); any other answer fails the test. Returns the order id.
async fn place_until_accepted(shop: &Shop, key: &str, body: serde_json::Value) -> String {
    for _ in 0..20 {
        let (code, resp, _) = shop.place(key, body.clone()).await;
        match code {
            202 => return resp["order_id"].as_str().unwrap().to_owned(),
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("placing {key}: unexpected {other}: {resp}"),
        }
    }
    panic!("order {key} never accepted");
}

async fn cancel(shop: &Shop, id: &str) {
    for _ in 0..20 {
        let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
        match r.status().as_u16() {
            // 409: rejected, or cancelled by an attempt whose answer was lost.
            202 | 409 => return,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("unexpected {other} cancelling {id}"),
        }
    }
    panic!("cancel of {id} never went through");
}

async fn fuzzing_the_bus_under_load(shop: Shop) {
    let shop = Arc::new(shop);
    let fuzzing = Arc::new(AtomicBool::new(true));
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (shop, fuzzing) = (shop.clone(), fuzzing.clone());
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            let mut i = 0;
            while fuzzing.load(Ordering::Relaxed) {
                let body = json!({"customer_email": format!("c{c}@example.com"),
                                  "items": [{"sku": SKUS[(c + i) % SKUS.len()], "quantity": 1 + (i % 2)}]});
                let id = place_until_accepted(&shop, &format!("fuzz-{c}-{i}"), body).await;
                if i % 3 == 0 {
                    cancel(&shop, &id).await;
                }
                ids.push(id);
                i += 1;
            }
            ids
        }));
    }

    let cfg = Fuzz {
        broker: format!("127.0.0.1:{}", shop.broker_port),
        prefix: shared::topics::DEFAULT_PREFIX.into(),
        credentials: None,
        seed: 42,
        duration: Some(Duration::from_secs(5)),
        count: None,
        rate: 150.0,
        max_bytes: fuzz::DEFAULT_MAX_BYTES,
    };
    let report = fuzz::run(cfg, CancellationToken::new()).await.expect("the fuzzer runs");
    fuzzing.store(false, Ordering::Relaxed);
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.unwrap());
    }
    println!("fuzz: {report}load: {} orders accepted", ids.len());
    assert!(report.total() >= 500, "{report}");
    assert_eq!(report.acked, report.qos1, "{report}");
    for kind in [Kind::Copy, Kind::MutatedCopy, Kind::SwappedOrderId, Kind::Large, Kind::NearLimit] {
        assert!(report.count(kind) > 0, "no {kind:?} sent: {report}");
    }
    assert!(!ids.is_empty());

    // No node stuck: all ready, every accepted order settles, and a fresh
    // order still goes all the way through.
    shop.wait_ready().await;
    for id in &ids {
        eventually(&format!("order {id} to settle"), || async {
            let (code, body) = shop.get(shop.front_url(&format!("/api/orders/{id}"))).await;
            (code == 200 && body["status"] != "pending").then_some(())
        })
        .await;
    }
    let body = json!({"customer_email": "after@example.com", "items": [{"sku": FRESH_SKU, "quantity": 1}]});
    let id = place_until_accepted(&shop, "after-fuzz", body).await;
    shop.wait_status(&id, "confirmed").await;

    // The poison was dead-lettered by both services, for what it was.
    for addr in [shop.inventory.addr, shop.order.addr] {
        let stats = shop.stats(addr).await;
        assert!(stats["dead_letters"].as_i64().unwrap() > 0, "{stats}");
        let reasons: Vec<String> =
            shop.dead_letters(addr).await.iter().map(|d| d["reason"].as_str().unwrap_or("").to_owned()).collect();
        assert!(reasons.iter().any(|r| r.contains("invalid envelope")), "{reasons:?}");
    }
    let report = shop.audit().await;
    println!("audit: {:?}, {} parked, {} dead letters", report.orders_by_status, report.parked, report.dead_letters);
}

/// What the fuzzer's `swapped_order_id` copies aim at: a status event
/// about the order a request waits for, but carrying another order's
/// fingerprint. Anyone who can publish on the bus can send one, so it is
/// not proof that the key was used for a different order: the front asks
/// the order service before it answers 409.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stray_status_event_with_another_fingerprint_is_not_a_409() {
    let mut shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let tester = shop.tester().await;
    // With the order service down, the only status event the front can get
    // is the stray one.
    let addr = shop.order.addr;
    shop.order.stop().await;
    let key = "stray-status-1";
    let order_id = OrderId::from_idempotency_key(&IdempotencyKey::parse(key).unwrap());
    let body = json!({"customer_email": "ada@example.com", "items": [{"sku": FRESH_SKU, "quantity": 1}]});
    let request = shop.http.post(shop.front_url("/api/orders")).header("Idempotency-Key", key).json(&body);
    let mut post = tokio::spawn(async move {
        let r = request.send().await.unwrap();
        (r.status().as_u16(), r.json::<serde_json::Value>().await.unwrap_or_default())
    });
    let stray = Envelope::new(
        Topic::OrdersStatus,
        order_id,
        StatusChanged {
            status: OrderStatus::Confirmed,
            version: 2,
            fingerprint: "another order".into(),
            reason: None,
            order: None,
        },
    );
    // Published until the front answers: one must arrive while it waits.
    let (code, problem) = loop {
        tester.publish(Topic::OrdersStatus, &stray).await;
        tokio::select! {
            r = &mut post => break r.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
        }
    };
    assert_eq!((code, problem["code"].as_str()), (503, Some("not_committed")), "{problem}");

    // The retry the 503 asks for, once the order service is back, is the order.
    let mut cfg = shop.order_config();
    cfg.listen = addr;
    shop.order = start_order(cfg).await;
    shop.wait_ready().await;
    let id = place_until_accepted(&shop, key, body).await;
    assert_eq!(id, order_id.to_string());
    shop.wait_status(&id, "confirmed").await;
    shop.audit().await;
}
