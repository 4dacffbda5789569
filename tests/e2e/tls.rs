//! TLS everywhere, from a throwaway CA: the broker speaks MQTT over TLS
//! (the embedded one, and Mosquitto), every node serves HTTPS, the front
//! calls inventory and order over HTTPS trusting that CA. An order placed
//! over HTTPS is confirmed; plain HTTP and plain MQTT get nowhere; a
//! client that never starts its handshake is cut off and blocks no one.

use std::time::Duration;

use rumqttc::{Event, MqttOptions, Packet};
use serde_json::json;
use tokio::io::AsyncReadExt;

use crate::helpers::*;

async fn an_order_over_tls_is_confirmed(mut shop: Shop) {
    assert_eq!(shop.scheme, "https");
    // Connects and never sends a ClientHello.
    let mut silent = tokio::net::TcpStream::connect(shop.front.addr).await.unwrap();

    let body = json!({"customer_email": "ada@example.com", "items": [{"sku": "APRON-CNV-001", "quantity": 1}]});
    let (code, body, _) = shop.place("tls-1", body).await;
    assert_eq!(code, 202, "{body}");
    let id = body["order_id"].as_str().unwrap().to_owned();
    shop.wait_status(&id, "confirmed").await;
    assert_eq!(shop.reservation(&id).await.expect("inventory read over HTTPS")["state"], "reserved");

    // Plain HTTP on an HTTPS port: no answer.
    let plain = reqwest::Client::new().get(format!("http://{}/healthz", shop.front.addr)).send().await;
    assert!(plain.is_err(), "plain HTTP answered on the HTTPS port: {plain:?}");
    // A client that doesn't trust the CA refuses the certificate.
    let untrusting = http_client(None).get(shop.front_url("/healthz")).send().await;
    assert!(untrusting.is_err(), "a certificate from an unknown CA was accepted: {untrusting:?}");
    plain_mqtt_is_refused(shop.broker_port).await;

    // The silent client was cut off by the handshake timeout.
    let mut buf = Vec::new();
    let read =
        tokio::time::timeout(shared::http::HEADER_READ_TIMEOUT + Duration::from_secs(5), silent.read_to_end(&mut buf))
            .await;
    assert!(read.is_ok(), "a connection that never started TLS was kept open");

    // The TLS servers drain and stop like the plain ones.
    for node in [&mut shop.front, &mut shop.order, &mut shop.inventory] {
        node.stop().await;
    }
}

/// Plain MQTT on the TLS port gets no CONNACK.
async fn plain_mqtt_is_refused(port: u16) {
    let opts = MqttOptions::new(format!("plain-{}", uuid::Uuid::new_v4().simple()), "127.0.0.1", port);
    let (_client, mut eventloop) = rumqttc::AsyncClient::new(opts, 10);
    let outcome = tokio::time::timeout(DEADLINE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => return Ok(ack),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
    })
    .await
    .expect("the TLS port neither answered nor dropped a plain MQTT client");
    assert!(outcome.is_err(), "plain MQTT accepted on the TLS port: {outcome:?}");
}

mod embedded {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_over_tls_is_confirmed() {
        let shop = super::Shop::start_tls(super::BrokerKind::Embedded).await.unwrap();
        super::an_order_over_tls_is_confirmed(shop).await
    }
}

mod mosquitto {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_order_over_tls_is_confirmed() {
        if let Some(shop) = super::Shop::start_tls(super::BrokerKind::Mosquitto).await {
            super::an_order_over_tls_is_confirmed(shop).await
        }
    }
}
