//! A minimal MQTT client for the tools: connect, publish a batch at QoS 1
//! and wait for every PUBACK, or subscribe and stream.

use std::time::Duration;

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

/// Connects to `host:port` (with a user name and password when the broker
/// wants them) and waits for the CONNACK.
pub async fn connect_as(
    broker: &str,
    name: &str,
    credentials: Option<(String, String)>,
) -> anyhow::Result<(AsyncClient, EventLoop)> {
    let (host, port) = broker.rsplit_once(':').context("broker must be host:port")?;
    let port: u16 = port.parse().context("broker port must be a number")?;
    let id = format!("webshop-{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let mut opts = MqttOptions::new(id, host, port);
    opts.set_max_packet_size(8 << 20, 8 << 20).set_keep_alive(Duration::from_secs(10));
    if let Some((user, password)) = credentials {
        opts.set_credentials(user, password);
    }
    let (client, mut eventloop) = AsyncClient::new(opts, 1000);
    loop {
        match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => return Ok((client, eventloop)),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("cannot connect to the broker at {broker}: {e}"),
            Err(_) => bail!("the broker at {broker} did not answer within 5 s"),
        }
    }
}

/// Publishes every `(topic, payload)` at QoS 1, in order, and returns once
/// the broker has acknowledged them all (a broker acks a publish the user
/// may not make, and drops it: use a tester login where there are users).
pub async fn publish_all(
    broker: &str,
    credentials: Option<(String, String)>,
    messages: Vec<(String, Vec<u8>)>,
) -> anyhow::Result<usize> {
    let (client, mut eventloop) = connect_as(broker, "tool", credentials).await?;
    let total = messages.len();
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            client.publish(topic, QoS::AtLeastOnce, false, payload).await?;
        }
        Ok::<_, rumqttc::ClientError>(client)
    });
    let (mut sent, mut acked) = (0, 0);
    while acked < total {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Outgoing(Outgoing::Publish(_)))) => sent += 1,
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("connection lost after {acked} of {total} acknowledged: {e}"),
            Err(_) => bail!("no acknowledgement for 10 s ({sent} sent, {acked} of {total} acknowledged)"),
        }
    }
    let client = sender.await??;
    let _ = client.disconnect().await;
    let _ = tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await;
    Ok(acked)
}
