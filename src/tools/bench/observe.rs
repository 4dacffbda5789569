//! Seeing an order reach a status, the way the front sees it: a subscriber
//! on the bus receives the order service's `orders/status` events (the
//! same events that answer `POST /api/orders` and drive the order page's
//! live stream), so "confirmed observed" is the moment a customer's page
//! could show it, without adding polling load to the shop. With per-stage
//! timings on, it also stamps `orders/send`, `orders/cancel`,
//! `inventory/in-stock` and `inventory/released` as they pass.
//!
//! A client registers an order before it sends the request, so no event
//! can slip past; events for orders nobody registered are dropped.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS, SubscribeFilter};
use serde::Deserialize;
use shared::ids::OrderId;
use shared::message::OrderStatus;
use shared::topics::Topic;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// When the observer saw each message about one order.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stamps {
    pub send: Option<Instant>,
    pub cancel: Option<Instant>,
    pub in_stock: Option<Instant>,
    pub released: Option<Instant>,
    pub pending: Option<Instant>,
    pub confirmed: Option<Instant>,
    pub rejected: Option<Instant>,
    pub cancelled: Option<Instant>,
}

/// What a client waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    /// Confirmed, rejected or cancelled: whichever comes first.
    Settled,
    Cancelled,
    Released,
}

impl Want {
    /// The moment `s` satisfies this, and the status reached.
    fn met(self, s: &Stamps) -> Option<(Instant, Option<OrderStatus>)> {
        match self {
            Want::Settled => s
                .confirmed
                .map(|t| (t, Some(OrderStatus::Confirmed)))
                .or(s.rejected.map(|t| (t, Some(OrderStatus::Rejected))))
                .or(s.cancelled.map(|t| (t, Some(OrderStatus::Cancelled)))),
            Want::Cancelled => s.cancelled.map(|t| (t, Some(OrderStatus::Cancelled))),
            Want::Released => s.released.map(|t| (t, None)),
        }
    }
}

type Waiter = (Want, oneshot::Sender<(Instant, Option<OrderStatus>)>);

#[derive(Default)]
struct Track {
    stamps: Stamps,
    waiters: Vec<Waiter>,
}

/// A bus subscriber that stamps the messages about registered orders.
pub struct Observer {
    // std Mutex: never held across an await.
    orders: Arc<Mutex<HashMap<OrderId, Track>>>,
    task: JoinHandle<()>,
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Observer {
    /// Connects to `broker` and subscribes; returns once subscribed.
    /// `stages` adds the topics needed for per-stage timings.
    pub async fn start(broker: &str, prefix: &str, stages: bool) -> anyhow::Result<Observer> {
        let (host, port) = broker.rsplit_once(':').context("broker must be host:port")?;
        let id = format!("bench-observer-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut opts = MqttOptions::new(id, host, port.parse::<u16>().context("broker port must be a number")?);
        opts.set_keep_alive(Duration::from_secs(10)).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);
        // Without TCP_NODELAY, Nagle's algorithm and delayed ACKs hold small
        // packets back up to 40 ms: the stamps would measure that.
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        eventloop.set_network_options(net);
        let mut topics = vec![Topic::OrdersStatus];
        if stages {
            topics.extend([Topic::OrdersSend, Topic::OrdersCancel, Topic::InStock, Topic::Released]);
        }
        let filters: Vec<SubscribeFilter> =
            topics.iter().map(|t| SubscribeFilter::new(t.path(prefix), QoS::AtMostOnce)).collect();
        client.subscribe_many(filters).await.context("subscribing the observer")?;
        loop {
            match tokio::time::timeout(Duration::from_secs(5), eventloop.poll()).await {
                Ok(Ok(Event::Incoming(Packet::SubAck(_)))) => break,
                Ok(Ok(_)) => {}
                Ok(Err(e)) => bail!("observer connection failed: {e}"),
                Err(_) => bail!("the broker did not acknowledge the observer's subscription within 5 s"),
            }
        }
        let orders: Arc<Mutex<HashMap<OrderId, Track>>> = Arc::default();
        let map = orders.clone();
        let prefix = prefix.to_owned();
        let task = tokio::spawn(async move {
            // The client must live as long as the event loop, or it ends.
            let _client = client;
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let at = Instant::now();
                        if let Some((id, seen)) = decode(&prefix, &p.topic, &p.payload) {
                            stamp(&map, id, seen, at);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "bench observer lost the broker; reconnecting");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        Ok(Observer { orders, task })
    }

    /// Resolves when `id` meets `want` (at once if it already has). Call
    /// before sending the request, so the event can't slip past.
    pub fn wait(&self, id: OrderId, want: Want) -> oneshot::Receiver<(Instant, Option<OrderStatus>)> {
        let (tx, rx) = oneshot::channel();
        let mut map = self.orders.lock().expect("observer lock");
        let track = map.entry(id).or_default();
        match want.met(&track.stamps) {
            Some(hit) => {
                let _ = tx.send(hit);
            }
            None => track.waiters.push((want, tx)),
        }
        rx
    }

    /// Stops tracking `id` and returns what was seen.
    pub fn forget(&self, id: OrderId) -> Stamps {
        self.orders.lock().expect("observer lock").remove(&id).map(|t| t.stamps).unwrap_or_default()
    }
}

/// What a message says happened to which order.
enum Seen {
    Send,
    Cancel,
    InStock,
    Released,
    Status(OrderStatus),
}

/// The two fields of a message the observer reads; serde skips the rest
/// (no timestamp parsed, no string copied).
#[derive(Deserialize)]
struct Glimpse {
    order_id: OrderId,
    #[serde(default)]
    body: Option<GlimpseBody>,
}

#[derive(Deserialize)]
struct GlimpseBody {
    #[serde(default)]
    status: Option<OrderStatus>,
}

fn decode(prefix: &str, topic: &str, payload: &[u8]) -> Option<(OrderId, Seen)> {
    let topic = Topic::from_path(prefix, topic)?;
    let msg: Glimpse = serde_json::from_slice(payload).ok()?;
    let seen = match topic {
        Topic::OrdersSend => Seen::Send,
        Topic::OrdersCancel => Seen::Cancel,
        Topic::InStock => Seen::InStock,
        Topic::Released => Seen::Released,
        Topic::OrdersStatus => Seen::Status(msg.body?.status?),
        _ => return None,
    };
    Some((msg.order_id, seen))
}

fn stamp(map: &Mutex<HashMap<OrderId, Track>>, id: OrderId, seen: Seen, at: Instant) {
    let mut map = map.lock().expect("observer lock");
    let Some(track) = map.get_mut(&id) else { return };
    let s = &mut track.stamps;
    // The first sighting counts: the bus may deliver a message twice.
    let slot = match seen {
        Seen::Send => &mut s.send,
        Seen::Cancel => &mut s.cancel,
        Seen::InStock => &mut s.in_stock,
        Seen::Released => &mut s.released,
        Seen::Status(OrderStatus::Pending) => &mut s.pending,
        Seen::Status(OrderStatus::Confirmed) => &mut s.confirmed,
        Seen::Status(OrderStatus::Rejected) => &mut s.rejected,
        Seen::Status(OrderStatus::Cancelled) => &mut s.cancelled,
    };
    slot.get_or_insert(at);
    let stamps = track.stamps;
    let mut i = 0;
    while i < track.waiters.len() {
        match track.waiters[i].0.met(&stamps) {
            Some(hit) => {
                let (_, tx) = track.waiters.swap_remove(i);
                let _ = tx.send(hit);
            }
            None => i += 1,
        }
    }
}
