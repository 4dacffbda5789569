//! `GET /api/orders/{id}/events` as a plain HTTP client sees it: the
//! current status first, then each change, then the end of the stream once
//! the status is final; clear 4xx for bad ids. No browser needed.

use serde_json::{json, Value};

use crate::helpers::{BrokerKind, Shop, DEADLINE};

/// Reads one Server-Sent Events stream, event by event.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    /// The next `(event, data)`, skipping comments; `None` when the stream
    /// ends. Panics if nothing comes within the deadline.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = String::from("message");
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        event = v.trim().to_owned();
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data.push_str(v.trim());
                    }
                }
                if data.is_empty() {
                    continue; // a keep-alive comment or a bare retry hint
                }
                return Some((event, serde_json::from_str(&data).expect("event data is JSON")));
            }
            let chunk = tokio::time::timeout(DEADLINE, self.resp.chunk())
                .await
                .expect("an event within the deadline")
                .expect("reading the stream")?;
            self.buf.push_str(std::str::from_utf8(&chunk).expect("UTF-8 stream"));
        }
    }
}

async fn open(shop: &Shop, id: &str) -> Events {
    let resp = shop.http.get(shop.front_url(&format!("/api/orders/{id}/events"))).send().await.expect("request");
    assert_eq!(resp.status(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/event-stream"), "{ct}");
    Events { resp, buf: String::new() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_send_the_current_status_then_each_change_then_end() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let body = json!({"customer_email": "ada@example.com", "items": [{"sku": "TENT-2P-001", "quantity": 1}]});
    let (code, placed, _) = shop.place("sse-1", body).await;
    assert_eq!(code, 202, "{placed}");
    let id = placed["order_id"].as_str().unwrap().to_owned();
    let confirmed = shop.wait_status(&id, "confirmed").await;

    let mut events = open(&shop, &id).await;
    let (name, first) = events.next().await.expect("the current status");
    assert_eq!(name, "status");
    assert_eq!(first, json!({"order_id": id, "status": "confirmed", "version": confirmed["version"], "reason": null}));

    let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
    assert_eq!(r.status(), 202);
    let (name, change) = events.next().await.expect("the cancellation");
    assert_eq!(name, "status");
    assert_eq!(change["status"], "cancelled");
    assert!(change["version"].as_i64() > first["version"].as_i64(), "versions only grow: {change}");
    assert!(events.next().await.is_none(), "the stream ends after a final status");

    // A final order's stream: its status, then the end.
    let mut again = open(&shop, &id).await;
    assert_eq!(again.next().await.expect("the status").1["status"], "cancelled");
    assert!(again.next().await.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_events_for_a_bad_or_unknown_order_are_a_clear_4xx() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let (code, body) = shop.get(shop.front_url("/api/orders/not-an-id/events")).await;
    assert_eq!(code, 400);
    assert_eq!(body["code"], "invalid_order_id");
    let unknown = uuid::Uuid::new_v4();
    let (code, body) = shop.get(shop.front_url(&format!("/api/orders/{unknown}/events"))).await;
    assert_eq!(code, 404);
    assert_eq!(body["code"], "unknown_order");
    assert!(body["detail"].as_str().unwrap().contains(&unknown.to_string()));
    // The pages are served with their types.
    for (path, ty) in [("/", "text/html"), ("/admin", "text/html"), ("/assets/shop.js", "text/javascript")] {
        let r = shop.http.get(shop.front_url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(ty), "{path}");
        assert!(r.headers().contains_key("content-security-policy"), "{path}");
    }
    let r = shop.http.get(shop.front_url(&format!("/orders/{unknown}"))).send().await.unwrap();
    assert_eq!(r.status(), 200, "the order page is served for any id; it reports unknown orders itself");
}
