//! Every message a broker accepts reaches the nodes and is dead-lettered
//! (or the broker refuses it): sizes swept around the application's
//! envelope limit and the brokers' packet limit, at QoS 0 and QoS 1.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use shared::message::MAX_MESSAGE_BYTES;
use shared::topics::Topic;

use crate::helpers::*;

/// The packet limit the test shop's brokers and nodes share (the default).
const LIMIT: usize = shared::config::DEFAULT_MAX_PACKET_BYTES;

/// How a broker refuses an oversize publish.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    /// It closes the connection (the embedded broker, Mosquitto).
    Closes,
    /// It keeps the connection (answering pings) and never acks on it
    /// again: RabbitMQ 3.10, where the publish kills the connection's
    /// internal channel. No ack for this long is the refusal.
    Silence(Duration),
}

/// Publishes a payload whose PUBLISH packet has `remaining` bytes after its
/// fixed header, then a small QoS 1 marker on the same connection, and
/// tells whether the broker took the first (the marker's PUBACK came back)
/// or refused it (as `refusal` says).
async fn publish_probe(port: u16, prefix: &str, topic: &str, qos: QoS, remaining: usize, refusal: Refusal) -> bool {
    let id_bytes = if qos == QoS::AtMostOnce { 0 } else { 2 };
    let payload = vec![b'x'; remaining - 2 - topic.len() - id_bytes];
    let mut opts = MqttOptions::new(format!("probe-{}", uuid::Uuid::new_v4().simple()), "127.0.0.1", port);
    opts.set_max_packet_size(16 << 20, 16 << 20).set_keep_alive(Duration::from_secs(30));
    let (client, mut eventloop) = AsyncClient::new(opts, 10);
    client.publish(topic, qos, false, payload).await.unwrap();
    client.publish(format!("{prefix}test/marker"), QoS::AtLeastOnce, false, b"m".to_vec()).await.unwrap();
    let acks_wanted = if qos == QoS::AtMostOnce { 1 } else { 2 };
    let mut acks = 0;
    let mut connected = false;
    let wait = match refusal {
        Refusal::Closes => DEADLINE,
        Refusal::Silence(wait) => wait,
    };
    let outcome = tokio::time::timeout(wait, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => connected = true,
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks += 1;
                    if acks == acks_wanted {
                        return true;
                    }
                }
                Ok(_) => {}
                // Refused: the broker closed the connection after the publish.
                Err(_) if connected => return false,
                Err(e) => panic!("probe of {remaining} bytes at {qos:?} could not connect: {e}"),
            }
        }
    })
    .await;
    let outcome = match (outcome, refusal) {
        (Ok(took), _) => took,
        (Err(_), Refusal::Silence(_)) => false,
        (Err(_), Refusal::Closes) => panic!("the broker did not answer the probe of {remaining} bytes at {qos:?}"),
    };
    let _ = client.try_disconnect();
    outcome
}

/// The sweep on `shop`, whose broker must take every packet up to the
/// nodes' limit less a few bytes, or with `max_payload`, every payload up
/// to that many bytes, and may refuse larger ones.
async fn every_size_a_broker_accepts_is_dead_lettered_and_orders_go_on(
    shop: Shop,
    max_payload: Option<usize>,
    refusal: Refusal,
) {
    let topic = Topic::OrdersSend.path(&shop.bus_at.topic_prefix);
    let base = 2 + topic.len();
    let payloads = [MAX_MESSAGE_BYTES - 1, MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES + 1];
    let mut sizes: Vec<usize> = payloads.iter().map(|payload| base + payload).collect();
    match max_payload {
        None => sizes.extend((LIMIT - 8..=LIMIT + 2).filter(|r| r % 2 == 0 || *r >= LIMIT - 2)),
        // Around the payload limit: every packet it lets through is within
        // the nodes' limit.
        Some(max) => sizes.extend([max - 1, max, max + 1].map(|payload| base + payload)),
    }
    let must_take = |remaining: usize, qos: QoS| match max_payload {
        None => remaining <= LIMIT - 8,
        Some(max) => remaining - base - if qos == QoS::AtMostOnce { 0 } else { 2 } <= max,
    };
    let (mut accepted, mut refused) = (0, 0);
    for &remaining in &sizes {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce] {
            if publish_probe(shop.broker_port, &shop.bus_at.topic_prefix, &topic, qos, remaining, refusal).await {
                accepted += 1;
            } else {
                assert!(!must_take(remaining, qos), "a {remaining}-byte packet was refused at {qos:?}");
                refused += 1;
            }
        }
    }
    println!("{} sizes x 2 QoS: {accepted} accepted by the broker, {refused} refused", sizes.len());
    assert!(refused > 0, "the broker enforces a packet limit");
    // orders/send goes to both services: each dead-letters every copy the broker took.
    eventually("every accepted message to be dead-lettered by both services", || async {
        let i = shop.dead_letters(shop.inventory.addr).await.len();
        let o = shop.dead_letters(shop.order.addr).await.len();
        (i == accepted && o == accepted).then_some(())
    })
    .await;
    shop.wait_ready().await;
    let (code, body, _) = shop.place("after-sizes", crate::one_line(crate::SKU, 1)).await;
    assert_eq!(code, 202, "{body}");
    shop.wait_status(body["order_id"].as_str().unwrap(), "confirmed").await;
    shop.audit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_a_broker_accepts_is_dead_lettered_and_orders_go_on_embedded() {
    every_size_a_broker_accepts_is_dead_lettered_and_orders_go_on(
        Shop::start(BrokerKind::Embedded).await.unwrap(),
        None,
        Refusal::Closes,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_a_broker_accepts_is_dead_lettered_and_orders_go_on_mosquitto() {
    if let Some(shop) = Shop::start(BrokerKind::Mosquitto).await {
        every_size_a_broker_accepts_is_dead_lettered_and_orders_go_on(shop, None, Refusal::Closes).await
    }
}

/// RabbitMQ bounds payloads (`max_message_size`), not packets, and refuses
/// by silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_size_a_broker_accepts_is_dead_lettered_and_orders_go_on_rabbitmq() {
    if let Some(shop) = Shop::start(BrokerKind::RabbitMq).await {
        let (max, refusal) = (rabbitmq::MAX_MESSAGE_SIZE, Refusal::Silence(Duration::from_secs(5)));
        every_size_a_broker_accepts_is_dead_lettered_and_orders_go_on(shop, Some(max), refusal).await
    }
}
