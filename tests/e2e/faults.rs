//! Load under faults: concurrent customers place and cancel orders (every
//! fourth through a server cart, whose stock inventory holds for a second)
//! while a chaos proxy between the nodes and the broker duplicates, delays
//! and reorders their publishes and cuts connections. Afterwards every order
//! that got a 202 is settled and the audit passes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use webshop::tools::chaos::Faults;

use crate::helpers::*;

const CLIENTS: usize = 8;
const ORDERS_PER_CLIENT: usize = 40;
// Mostly well-stocked products, one low and one sold out: confirmations and rejections both.
const SKUS: [&str; 6] =
    ["FUEL-230G-001", "BOTL-STL-750", "TOOL-SPAT-001", "CAND-SOY-001", "HAMK-SGL-001", "COOK-TI-001"];

async fn cancel_until_done(shop: &Shop, id: &str, tally: &Tally) {
    for _ in 0..20 {
        let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
        match r.status().as_u16() {
            202 => {
                tally.cancels.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Already cancelled by an earlier attempt whose answer was lost.
            200 => {
                tally.cancels.fetch_add(1, Ordering::Relaxed);
                return;
            }
            // Rejected: nothing to cancel.
            409 => return,
            503 => tokio::time::sleep(Duration::from_millis(100)).await,
            other => panic!("unexpected {other} cancelling {id}"),
        }
    }
    panic!("cancel of {id} never went through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_orders_and_cancels_through_a_chaos_proxy() {
    let faults = Faults {
        duplicate: 0.2,
        delay: 0.2,
        max_delay: Duration::from_millis(300),
        reorder: 0.2,
        cut: 0.002,
        seed: 7,
        withhold_ack: None,
    };
    // Holds of one second: some run out before their cart's checkout.
    let shop = Arc::new(Shop::start_with_holding(BrokerKind::Embedded, faults, 1.0).await.unwrap());
    let tally = Arc::new(Tally::default());
    let mut clients = Vec::new();
    for c in 0..CLIENTS {
        let (shop, tally) = (shop.clone(), tally.clone());
        clients.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..ORDERS_PER_CLIENT {
                let sku = SKUS[(c + i) % SKUS.len()];
                let body = json!({"customer_email": format!("c{c}@example.com"),
                                  "items": [{"sku": sku, "quantity": 1 + (i % 3)}]});
                let key = format!("load-{c}-{i}");
                // Every fourth order goes through a server cart.
                let id = if i % 4 == 1 {
                    let base = shop.front_url("");
                    let quantity = 1 + (i % 3) as u32;
                    checkout_cart_until_accepted(&shop.http, &base, &key, sku, quantity, Duration::from_secs(60))
                        .await
                        .unwrap_or_else(|| panic!("cart checkout {key} never accepted"))
                } else {
                    place_until_accepted(&shop, &key, body, &tally).await
                };
                tally.accepted.fetch_add(1, Ordering::Relaxed);
                if i % 3 == 0 {
                    cancel_until_done(&shop, &id, &tally).await;
                }
                ids.push(id);
            }
            ids
        }));
    }
    let mut ids = Vec::new();
    for c in clients {
        ids.extend(c.await.unwrap());
    }
    for id in &ids {
        eventually(&format!("order {id} to settle"), || async {
            let (code, body) = shop.get(shop.front_url(&format!("/api/orders/{id}"))).await;
            (code == 200 && body["status"] != "pending").then_some(())
        })
        .await;
    }
    let report = shop.audit().await;
    let chaos = shop.chaos.as_ref().unwrap().stats.report();
    println!(
        "load under faults: {} orders accepted, {} cancelled, {} POSTs retried after 503; chaos: {chaos}; audit: {:?}",
        tally.accepted.load(Ordering::Relaxed),
        tally.cancels.load(Ordering::Relaxed),
        tally.retries_after_503.load(Ordering::Relaxed),
        report.orders_by_status
    );
    assert_eq!(ids.len(), CLIENTS * ORDERS_PER_CLIENT);
    assert!(chaos.duplicated > 0 && chaos.delayed > 0 && chaos.reordered > 0, "{chaos}");
}
