//! Least privilege on the bus: on a broker with a user per role, each
//! node's login may publish only its role's topics (a forbidden publish is
//! refused and changes nothing), inventory is the price authority, and the
//! tester tools work with the tester's login. Every scenario runs on the
//! embedded broker and on Mosquitto (with the `acl_file` written from
//! `shared::topics::Role`).

use serde_json::{json, Value};
use shared::ids::OrderId;
use shared::message::{
    CancelOrder, CartChanged, CartCommand, Envelope, Held, HeldBecause, HoldLine, HoldRequest, InStock, OutOfStock,
    ReleaseRequested, Released, StatusChanged,
};
use shared::topics::{Role, Topic};

use crate::helpers::*;

/// Stocked only for these tests' sentinels, so `SKU`'s stock stays exact.
const SKU: &str = "APRON-CNV-001";
const SENTINEL_SKU: &str = "CAND-SOY-001";

macro_rules! on_both_brokers_with_logins {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let kind = super::BrokerKind::Embedded;
                    super::$name(super::Shop::start_with_logins(kind).await.unwrap(), kind).await
                }
            )*
        }
        mod mosquitto {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let kind = super::BrokerKind::Mosquitto;
                    if let Some(shop) = super::Shop::start_with_logins(kind).await {
                        super::$name(shop, kind).await
                    }
                }
            )*
        }
    };
}

on_both_brokers_with_logins!(
    every_forbidden_publish_is_refused_and_changes_nothing,
    a_forged_cheap_order_is_rejected_and_reserves_nothing,
    tester_tools_and_hand_publishing_work_with_the_tester_login,
);

/// A message on `topic` that would change something if a node applied it.
fn forged(topic: Topic, confirmed: OrderId, fingerprint: &str) -> Vec<u8> {
    let fresh = new_order_id();
    match topic {
        Topic::OrdersSend => Envelope::new(topic, fresh, send_body(SKU, 1, "forged")).to_json(),
        Topic::OrdersCancel => Envelope::new(topic, confirmed, CancelOrder::default()).to_json(),
        Topic::OrdersStatus => {
            let status = StatusChanged {
                status: shared::message::OrderStatus::Cancelled,
                version: 99,
                fingerprint: fingerprint.into(),
                reason: None,
                order: None,
            };
            Envelope::new(topic, confirmed, status).to_json()
        }
        Topic::InStock => {
            Envelope::new(topic, fresh, InStock { fingerprint: "forged".into(), prices: vec![] }).to_json()
        }
        Topic::OutOfStock => {
            Envelope::new(topic, fresh, OutOfStock { fingerprint: "forged".into(), reason: "forged".into() }).to_json()
        }
        Topic::OrdersCancelled => Envelope::new(topic, confirmed, ReleaseRequested {}).to_json(),
        Topic::Released => Envelope::new(topic, confirmed, Released {}).to_json(),
        Topic::CartsCommand => Envelope::new(topic, fresh, CartCommand::Create).to_json(),
        Topic::CartsStatus => {
            let answer = CartChanged { command_id: shared::ids::MessageId::new(), refused: None, cart: None };
            Envelope::new(topic, fresh, answer).to_json()
        }
        Topic::CartsHold => {
            let lines = vec![HoldLine { sku: shared::ids::Sku::parse(SKU).unwrap(), quantity: 1 }];
            Envelope::new(topic, fresh, HoldRequest { version: 1, lines }).to_json()
        }
        Topic::Held => {
            let held = Held { seq: 1, version: 1, because: HeldBecause::Expired, lines: vec![], expires_at_ms: None };
            Envelope::new(topic, fresh, held).to_json()
        }
    }
}

async fn received(shop: &Shop, node: std::net::SocketAddr) -> u64 {
    shop.stats(node).await["messages"]["received"].as_u64().expect("received")
}

async fn every_forbidden_publish_is_refused_and_changes_nothing(shop: Shop, kind: BrokerKind) {
    // The nodes' own logins carry the shop (an order through the front).
    let (code, body, _) = shop
        .place(
            "acl-confirmed",
            json!({"customer_email": "ada@example.com",
        "items": [{"sku": SKU, "quantity": 2}]}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let confirmed: OrderId = OrderId::parse(body["order_id"].as_str().unwrap()).unwrap();
    let order = shop.wait_status(&confirmed.to_string(), "confirmed").await;
    let fingerprint = order["fingerprint"].as_str().unwrap_or_default().to_owned();
    let stock = shop.available(SKU).await;

    for role in [Role::Front, Role::Order, Role::Inventory] {
        let (order_before, inventory_before) =
            (received(&shop, shop.order.addr).await, received(&shop, shop.inventory.addr).await);
        let client = shop.client_as(role).await;
        let allowed = role.publishes().unwrap();
        for topic in Topic::ALL.into_iter().filter(|t| !allowed.contains(t)) {
            client.publish_raw(topic, forged(topic, confirmed, &fingerprint)).await;
        }
        // A sentinel on the same connection, which the nodes must apply;
        // `expect` is what the nodes receive for it (order, inventory).
        let expect = match role {
            Role::Front | Role::Order => {
                let id = new_order_id();
                let env = Envelope::new(Topic::OrdersSend, id, send_body(SENTINEL_SKU, 1, "sentinel"));
                client.publish(Topic::OrdersSend, &env).await;
                shop.wait_status(&id.to_string(), "confirmed").await;
                (2, 1) // order: the send and the in-stock; inventory: the send
            }
            _ => {
                // Released for the confirmed order: order ignores it.
                client.publish(Topic::Released, &Envelope::new(Topic::Released, confirmed, Released {})).await;
                (1, 0)
            }
        };
        let (order_got, inventory_got) = eventually(&format!("{role:?}'s sentinel to be counted"), || async {
            let got = (
                received(&shop, shop.order.addr).await - order_before,
                received(&shop, shop.inventory.addr).await - inventory_before,
            );
            (got.0 >= expect.0 && got.1 >= expect.1).then_some(got)
        })
        .await;
        assert_eq!((order_got, inventory_got), expect, "{role:?}: a forbidden publish reached a node");

        assert_eq!(shop.get(shop.front_url(&format!("/api/orders/{confirmed}"))).await.1["status"], "confirmed");
        assert_eq!(shop.reservation(&confirmed.to_string()).await.unwrap()["state"], "reserved");
        assert_eq!(shop.available(SKU).await, stock, "{role:?} moved stock");
        let (_, parked) = shop.get(shop.node_url(shop.order.addr, "/parked")).await;
        assert_eq!(parked.as_array().map(Vec::len), Some(0), "{parked}");
        if matches!(kind, BrokerKind::Embedded) {
            let metrics = shared::metrics::render();
            for topic in Topic::ALL.into_iter().filter(|t| !allowed.contains(t)) {
                let series = format!(
                    "broker_refused_total{{user=\"{}\",action=\"publish\",topic=\"{}\"}}",
                    role.name(),
                    topic.suffix()
                );
                assert!(metrics.contains(&series), "{series} missing:\n{metrics}");
            }
        }
    }
    shop.audit().await;
}

async fn a_forged_cheap_order_is_rejected_and_reserves_nothing(shop: Shop, _kind: BrokerKind) {
    let front = shop.client_as(Role::Front).await;
    let before = shop.available(SKU).await;
    let cheap = new_order_id();
    front.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, cheap, send_body_at(SKU, 2, "cheap", 1))).await;
    let order = shop.wait_status(&cheap.to_string(), "rejected").await;
    let reason = order["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("unit price 1 cents for APRON-CNV-001"), "{order}");
    assert_eq!(shop.reservation(&cheap.to_string()).await.unwrap()["state"], "rejected");
    assert_eq!(shop.available(SKU).await, before);

    // A price change: the old price stays good for the grace window (the
    // front may quote from its cache), a made-up one never is.
    let old = catalog_price(SKU);
    let r = shop
        .http
        .patch(shop.node_url(shop.inventory.addr, &format!("/admin/products/{SKU}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({"price_cents": old + 500}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let at_old = new_order_id();
    front.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, at_old, send_body_at(SKU, 1, "old", old))).await;
    shop.wait_status(&at_old.to_string(), "confirmed").await;
    let made_up = new_order_id();
    let body = send_body_at(SKU, 1, "made-up", old + 1);
    front.publish(Topic::OrdersSend, &Envelope::new(Topic::OrdersSend, made_up, body)).await;
    shop.wait_status(&made_up.to_string(), "rejected").await;
    // The front quotes the new price.
    let (code, body, _) = shop
        .place(
            "acl-new-price",
            json!({"customer_email": "ada@example.com",
        "items": [{"sku": SKU, "quantity": 1}]}),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let order = shop.wait_status(body["order_id"].as_str().unwrap(), "confirmed").await;
    assert_eq!(order["items"][0]["unit_price_cents"], old + 500, "{order}");
    assert_eq!(shop.available(SKU).await, before - 2);
    shop.audit().await;
}

/// Runs `webshop ARGS` to completion; returns its exit code and output.
async fn webshop(args: Vec<String>) -> (i32, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_webshop"))
            .args(&args)
            .env("RUST_LOG", "off")
            .env_remove("WEBSHOP_MQTT_USERNAME")
            .env_remove("WEBSHOP_MQTT_PASSWORD")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code().unwrap_or(-1), text)
    })
    .await
    .unwrap()
}

async fn tester_tools_and_hand_publishing_work_with_the_tester_login(shop: Shop, _kind: BrokerKind) {
    let logins = shop.logins.clone().unwrap();
    let broker = format!("127.0.0.1:{}", shop.broker_port);
    // The hand-published order of docs/PROTOCOL.md ("Publishing by hand"),
    // with a fresh id.
    let id = new_order_id();
    let hand_published: Value = json!({"message_id": uuid::Uuid::now_v7(), "type": "order.send", "v": 1,
        "order_id": id, "sent_at": "2026-11-23T17:00:00Z",
        "body": {"customer_email": "tester@example.com",
                 "items": [{"sku": SKU, "quantity": 1, "unit_price_cents": 3999}],
                 "currency": "EUR", "fingerprint": "hand-1"}});
    let file = shop.dir.path().join("hand.json");
    std::fs::write(&file, hand_published.to_string()).unwrap();
    let inject = |login: Option<(&str, &str)>| {
        let mut args: Vec<String> = ["inject", "--broker", &broker, "--topic", "orders/send", "--file"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        args.push(file.display().to_string());
        if let Some((user, password)) = login {
            args.extend(["--username".into(), user.to_owned(), "--password".into(), password.to_owned()]);
        }
        args
    };
    // No anonymous access on this broker.
    let (code, out) = webshop(inject(None)).await;
    assert_ne!(code, 0, "{out}");
    let (code, out) = webshop(inject(Some(("tester", logins.password(Role::Tester))))).await;
    assert_eq!(code, 0, "{out}");
    shop.wait_status(&id.to_string(), "confirmed").await;

    // A node replays its dead letters itself: inventory may not publish
    // orders/cancelled, which its poison arrived on.
    let tester = shop.tester().await;
    // A type that doesn't belong on the topic.
    let poison = json!({"message_id": uuid::Uuid::now_v7(), "type": "order.cancel", "v": 1,
        "order_id": new_order_id(), "sent_at": "2026-11-23T17:00:00Z", "body": {}});
    tester.publish_raw(Topic::OrdersCancelled, poison.to_string().into_bytes()).await;
    let first = eventually("the poison to be dead-lettered", || async {
        let letters = shop.dead_letters(shop.inventory.addr).await;
        letters.first().and_then(|l| l["id"].as_i64())
    })
    .await;
    let r = shop
        .http
        .post(shop.node_url(shop.inventory.addr, &format!("/dead-letters/{first}/replay")))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    eventually("the replayed poison to be dead again", || async {
        let letters = shop.dead_letters(shop.inventory.addr).await;
        (letters.len() == 1 && letters[0]["id"].as_i64()? != first).then_some(())
    })
    .await;
    shop.audit().await;
}
