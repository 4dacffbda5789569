//! A release the order service wants is re-sent until inventory confirms
//! it, also for an order it never saw (known only by its tombstone), and
//! the audit names stock held for an order nobody knows.
//!
//! Messages are lost deterministically by restarting a node under a new
//! MQTT client id: what the broker queued for its old persistent session
//! (and what it published before the new session subscribed) never reaches
//! it, as after a broker restart or a session's queue overflow.

use std::time::Duration;

use serde_json::Value;
use shared::message::{Envelope, InStock};
use shared::topics::Topic;

use crate::helpers::*;

const SKU: &str = "APRON-CNV-001";

async fn available(shop: &Shop, sku: &str) -> Option<i64> {
    let (_, stock) = shop.get(shop.node_url(shop.inventory.addr, "/stock")).await;
    stock.as_array()?.iter().find(|r| r["sku"] == sku)?["available"].as_i64()
}

/// How many `orders/cancelled` the order node published for `id`.
async fn releases_sent(shop: &Shop, id: &str) -> usize {
    let (_, timeline) = shop.get(shop.node_url(shop.order.addr, &format!("/timeline/{id}"))).await;
    let entries = timeline.as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .filter(|e| e["event"] == "published" && e["topic"].as_str().is_some_and(|t| t.ends_with("orders/cancelled")))
        .count()
}

async fn release_chases(shop: &Shop) -> Vec<Value> {
    let (_, chases) = shop.get(shop.node_url(shop.order.addr, "/release-chases")).await;
    chases.as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_release_for_an_order_never_seen_is_resent_until_inventory_confirms() {
    let mut shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let tester = shop.tester().await;
    let before = available(&shop, SKU).await.expect("the SKU is stocked");

    // Inventory reserves for an order the order service never sees: the
    // send (and inventory's in-stock) go to the order node's old session.
    shop.order.stop().await;
    let id = new_order_id();
    let id_str = id.to_string();
    tester.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, id, send_body(SKU, 2, "fp-lost"))).await;
    eventually("inventory to reserve", || async {
        (shop.reservation(&id_str).await?["state"] == "reserved").then_some(())
    })
    .await;
    assert_eq!(available(&shop, SKU).await, Some(before - 2));
    let mut order_cfg = order_config(&shop.store, shop.dir.path(), shop.node_port);
    order_cfg.bus.client_id = "test-order-fresh".into();
    order_cfg.parked_horizon_secs = 0.3;
    order_cfg.follow_up_secs = 0.2;
    shop.order = start_order(order_cfg).await;

    // The audit names the reservation nobody will release.
    let down = public_front::downstream::Downstream::new(
        &shop.node_url(shop.inventory.addr, ""),
        &shop.node_url(shop.order.addr, ""),
        Duration::from_secs(10),
    )
    .unwrap();
    let report = eventually("the audit to read both nodes", || async {
        public_front::audit::run(&down, Duration::ZERO).await.ok()
    })
    .await;
    assert!(
        report.failures.iter().any(|f| f.check == "reservation_has_order"
            && f.subject == id_str
            && f.detail.contains("nothing is releasing it")),
        "{report}"
    );

    // Inventory goes away; a late in-stock parks at the order node and
    // expires, and the order service releases. That release reaches only
    // inventory's old session.
    shop.inventory.stop().await;
    tester
        .publish(
            Topic::InStock,
            &Envelope::new(Topic::InStock, id, InStock { fingerprint: "fp-lost".into(), prices: vec![] }),
        )
        .await;
    eventually("the order service to re-send the release", || async {
        (releases_sent(&shop, &id_str).await >= 3).then_some(())
    })
    .await;
    let chases = release_chases(&shop).await;
    assert!(chases.len() == 1 && chases[0]["order_id"] == id_str.as_str(), "{chases:?}");

    // Inventory comes back under a new session: only a re-sent release
    // can reach it.
    let mut inventory_cfg = inventory_config(&shop.store, shop.dir.path(), shop.node_port);
    inventory_cfg.bus.client_id = "test-inventory-fresh".into();
    shop.inventory = start_inventory(inventory_cfg).await;
    eventually("inventory to release", || async {
        (shop.reservation(&id_str).await?["state"] == "released").then_some(())
    })
    .await;
    assert_eq!(available(&shop, SKU).await, Some(before));
    eventually("the order service to stop chasing", || async { release_chases(&shop).await.is_empty().then_some(()) })
        .await;
    let (code, _) = shop.get(shop.node_url(shop.order.addr, &format!("/orders/{id_str}"))).await;
    assert_eq!(code, 404, "the order itself never arrived");
    shop.audit().await;
}
