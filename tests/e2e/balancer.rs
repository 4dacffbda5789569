//! Fronts behind a load balancer: a front that is shutting down leaves
//! the rotation before it stops serving.

use std::time::Duration;

use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::helpers::*;

/// Reads an SSE response until an event with `"status":"<want>"` arrives;
/// what it read so far.
async fn read_events_until(r: &mut reqwest::Response, seen: &mut String, want: &str) {
    let needle = format!("\"status\":\"{want}\"");
    tokio::time::timeout(DEADLINE, async {
        while !seen.contains(&needle) {
            match r.chunk().await {
                Ok(Some(bytes)) => seen.push_str(&String::from_utf8_lossy(&bytes)),
                other => panic!("the stream ended before {want}: {other:?}; read:\n{seen}"),
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {want} event within {DEADLINE:?}; read:\n{seen}"));
}

/// In process: after shutdown begins, a front answers `/readyz` with 503
/// and still serves for its grace; then it ends its status streams, stops
/// accepting and exits well before the drain timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_front_is_not_ready_but_serves_until_its_grace_ends() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let grace = Duration::from_secs(2);
    let shutdown = CancellationToken::new();
    let app = public_front::App::build(
        public_front::Config {
            listen: "127.0.0.1:0".parse().unwrap(),
            bus: shared::config::BusConfig { port: shop.node_port, ..Default::default() },
            inventory_url: shop.node_url(shop.inventory.addr, ""),
            order_url: shop.node_url(shop.order.addr, ""),
            drain_grace_secs: grace.as_secs_f64(),
            ..Default::default()
        },
        shutdown.clone(),
    )
    .await
    .expect("front starts");
    let addr = app.local_addr();
    let task = tokio::spawn(app.run());
    let url = |path: &str| format!("http://{addr}{path}");
    eventually("the front to be ready", || async {
        shop.http.get(url("/readyz")).send().await.ok()?.status().is_success().then_some(())
    })
    .await;
    let (code, body, _) = shop
        .place_at(
            addr,
            "drain-1",
            json!({"customer_email": "a@example.com",
        "items": [{"sku": "FUEL-230G-001", "quantity": 1}]}),
            "location",
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;
    let mut stream = shop.http.get(url(&format!("/api/orders/{id}/events"))).send().await.unwrap();
    let mut seen = String::new();
    read_events_until(&mut stream, &mut seen, "confirmed").await;

    let began = tokio::time::Instant::now();
    shutdown.cancel();
    let r = shop.http.get(url("/readyz")).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let problem: Value = r.json().await.unwrap();
    assert_eq!((problem["code"].as_str(), problem["detail"].as_str()), (Some("not_ready"), Some("shutting down")));
    // Still serving, on new connections too.
    let r = http_client(None).get(url("/api/catalog?limit=1")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(began.elapsed() < grace, "the checks took longer than the grace");

    // The stream ends when the grace does, and with it the drain.
    let ended = tokio::time::timeout(DEADLINE, async { while let Ok(Some(_)) = stream.chunk().await {} }).await;
    assert!(ended.is_ok(), "the status stream outlived the shutdown");
    assert!(began.elapsed() >= grace, "the stream ended after {:?}, before the grace", began.elapsed());
    tokio::time::timeout(DEADLINE, task).await.expect("the front stops").unwrap().unwrap();
    let stopped = began.elapsed();
    assert!(stopped < grace + Duration::from_secs(5), "stopped {stopped:?} after shutdown began");
    assert!(shop.http.get(url("/healthz")).send().await.is_err(), "still accepting after the drain");
}
