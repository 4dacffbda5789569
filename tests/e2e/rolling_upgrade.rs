//! A rolling upgrade: nodes of two versions share the bus for a while, and
//! a message from the newer one must not be poison to the older one.

use serde_json::json;
use shared::message::Envelope;
use shared::topics::Topic;

use crate::helpers::*;

/// A newer front sends `orders/send` with fields this build doesn't know
/// (in the envelope, the body and a line): order and inventory ignore them
/// and the order is confirmed; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_with_fields_from_a_newer_version_is_confirmed() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let sku = "CAND-SOY-001";
    let before = shop.available(sku).await;
    let id = new_order_id();
    let mut message: serde_json::Value =
        serde_json::from_slice(&Envelope::new(Topic::OrdersSend, id, send_body(sku, 2, "fp-newer")).to_json()).unwrap();
    message["tenant"] = json!("eu-1");
    message["body"]["gift_note"] = json!("Happy birthday!");
    message["body"]["delivery"] = json!({"window": "evening"});
    message["body"]["items"][0]["engraving"] = json!("A.L.");
    shop.tester().await.publish_raw(Topic::OrdersSend, serde_json::to_vec(&message).unwrap()).await;

    let order = shop.wait_status(&id.to_string(), "confirmed").await;
    assert_eq!(order["items"][0]["quantity"], 2, "{order}");
    assert_eq!(shop.available(sku).await, before - 2);
    for node in [shop.order.addr, shop.inventory.addr] {
        let stats = shop.stats(node).await;
        assert_eq!(stats["dead_letters"], 0, "{stats}");
        assert!(shop.dead_letters(node).await.is_empty());
    }
    shop.audit().await;
}
