//! The tester and operator tools, run as a user would: the `webshop`
//! binary against a running shop.

use std::process::Command;

use serde_json::json;
use shared::message::Envelope;
use shared::topics::Topic;

use crate::helpers::*;

/// Runs `webshop ARGS` to completion; returns its exit code and output.
async fn webshop<S: AsRef<str>>(args: &[S]) -> (i32, String) {
    let args: Vec<String> = args.iter().map(|a| a.as_ref().to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let out = Command::new(env!("CARGO_BIN_EXE_webshop")).args(&args).env("RUST_LOG", "off").output().unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

fn audit_args(shop: &Shop) -> Vec<String> {
    vec![
        "audit".into(),
        "--inventory-url".into(),
        format!("http://{}", shop.inventory.addr),
        "--order-url".into(),
        format!("http://{}", shop.order.addr),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_passes_on_good_books_and_names_the_sku_when_they_break() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let (_, body, _) = shop
        .place(
            "audit-1",
            json!({"customer_email": "a@example.com",
        "items": [{"sku": "FUEL-230G-001", "quantity": 2}]}),
        )
        .await;
    shop.wait_status(body["order_id"].as_str().unwrap(), "confirmed").await;
    shop.audit().await;
    let (code, out) = webshop(&audit_args(&shop)).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("audit: PASS"), "{out}");

    // Cook the books behind the services' back: stock appears from nowhere.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", shop.dir.path().join("inventory.db").display()))
        .await
        .unwrap();
    sqlx::query("UPDATE products SET available = available + 5 WHERE sku = 'BOTL-STL-750'")
        .execute(&pool)
        .await
        .unwrap();
    let (code, out) = webshop(&audit_args(&shop)).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("audit: FAIL") && out.contains("stock_conserved BOTL-STL-750"), "{out}");

    // The same report over HTTP, for admins only.
    let r = shop.http.get(shop.front_url("/admin/audit")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = shop.http.get(shop.front_url("/admin/audit")).bearer_auth(ADMIN_TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let report: serde_json::Value = r.json().await.unwrap();
    assert_eq!(report["passed"], false);
    assert_eq!(report["failures"][0]["subject"], "BOTL-STL-750");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_five_copies_makes_one_order() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let before = shop.available("FUEL-230G-001").await;
    let id = new_order_id();
    let file = shop.dir.path().join("send.json");
    std::fs::write(&file, Envelope::new(Topic::OrdersSend, id, send_body("FUEL-230G-001", 3, "fp-inject")).to_json())
        .unwrap();
    let broker = format!("127.0.0.1:{}", shop.broker_port);
    for fresh in [false, true] {
        let file = file.display().to_string();
        let mut args = vec!["inject", "--broker", &broker, "--topic", "orders/send", "--file", &file, "--times", "5"];
        if fresh {
            args.push("--fresh-ids");
        }
        let (code, out) = webshop(&args).await;
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("published 5 message(s)"), "{out}");
    }
    shop.wait_status(&id.to_string(), "confirmed").await;
    eventually("all ten copies consumed", || async {
        let s = shop.stats(shop.inventory.addr).await;
        (s["messages"]["received"].as_u64()? >= 10).then_some(())
    })
    .await;
    assert_eq!(shop.available("FUEL-230G-001").await, before - 3);
    shop.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_traffic_replayed_shuffled_changes_nothing() {
    let shop = Shop::start(BrokerKind::Embedded).await.unwrap();
    let out = shop.dir.path().join("capture.jsonl");
    let mut capture = Command::new(env!("CARGO_BIN_EXE_webshop"))
        .args(["capture", "--broker", &format!("127.0.0.1:{}", shop.broker_port), "--seconds", "4", "--out"])
        .arg(&out)
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It prints its first line once the broker confirmed the subscription.
    let stdout = capture.stdout.take().unwrap();
    let (first, mut stdout) = tokio::task::spawn_blocking(move || {
        let mut reader = std::io::BufReader::new(stdout);
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
        (line, reader)
    })
    .await
    .unwrap();
    assert!(first.starts_with("capturing"), "{first}");
    let mut ids = Vec::new();
    for i in 0..6 {
        let (_, body, _) = shop
            .place(
                &format!("cap-{i}"),
                json!({"customer_email": "a@example.com",
                "items": [{"sku": "CAND-SOY-001", "quantity": 1}]}),
            )
            .await;
        let id = body["order_id"].as_str().unwrap().to_owned();
        shop.wait_status(&id, "confirmed").await;
        if i % 2 == 0 {
            let r = shop.http.post(shop.front_url(&format!("/api/orders/{id}/cancel"))).send().await.unwrap();
            assert_eq!(r.status(), 202);
        }
        ids.push(id);
    }
    eventually("the cancelled orders to be released", || async {
        for id in ids.iter().step_by(2) {
            if shop.reservation(id).await?["state"] != "released" {
                return None;
            }
        }
        Some(())
    })
    .await;
    let status = tokio::task::spawn_blocking(move || {
        std::io::Read::read_to_string(&mut stdout, &mut String::new()).unwrap();
        capture.wait().unwrap()
    })
    .await
    .unwrap();
    assert!(status.success());
    let captured = std::fs::read_to_string(&out).unwrap();
    let lines = captured.lines().count();
    let count = |suffixes: &[&str]| {
        captured.lines().filter(|l| suffixes.iter().any(|s| l.contains(&format!("\"webshop/v1/{s}\"")))).count() as u64
    };
    let for_inventory = count(&["orders/send", "orders/cancelled"]);
    let for_order =
        count(&["orders/send", "orders/cancel", "inventory/in-stock", "inventory/out-of-stock", "inventory/released"]);
    assert!(for_inventory >= 6 && for_order >= 12, "capture too small:\n{captured}");
    let dedup = |s: serde_json::Value| s["messages"]["deduplicated"].as_u64().unwrap();
    let inv_dedup = dedup(shop.stats(shop.inventory.addr).await);
    let ord_dedup = dedup(shop.stats(shop.order.addr).await);
    let before = shop.available("CAND-SOY-001").await;
    let report_before = shop.audit().await;

    let (broker, file) = (format!("127.0.0.1:{}", shop.broker_port), out.display().to_string());
    let (code, text) = webshop(&["replay", "--broker", &broker, "--file", &file, "--shuffle", "42"]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("replayed {lines} of {lines}")), "{text}");
    // Every replayed copy is recognised as a duplicate.
    eventually("the replay to be consumed", || async {
        let i = dedup(shop.stats(shop.inventory.addr).await);
        let o = dedup(shop.stats(shop.order.addr).await);
        (i >= inv_dedup + for_inventory && o >= ord_dedup + for_order).then_some(())
    })
    .await;
    let report_after = shop.audit().await;
    assert_eq!(report_after.orders_by_status, report_before.orders_by_status);
    assert_eq!(shop.available("CAND-SOY-001").await, before);
}
