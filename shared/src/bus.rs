//! The MQTT connection every node uses: reconnect with backoff, subscribe
//! again on every fresh session, publish at QoS 1 with a future that
//! resolves on the broker's PUBACK, and manual acks in receive order.
//!
//! rumqttc has no per-publish PUBACK handle, so the event loop maps each
//! `Outgoing::Publish(pkid)` to the oldest waiting publish (requests leave
//! in the order they were queued) and resolves it on `Incoming::PubAck`.
//! That mapping, and the acks, are only sound within one connection. On a
//! connection error the event loop therefore, under the same lock that
//! publish and ack take: bumps the connection generation, drops every
//! request still queued for the old connection (stale acks would make
//! rumqttd drop a message; stale publishes would shift the mapping), and
//! fails the waiting publishes, which the outbox retries. Deliveries of an
//! old generation are never acked: the broker redelivers them and the
//! inbox drops the copy.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
pub use rumqttc::QoS;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::BusConfig;
use crate::topics::Topic;

/// Most QoS 1 publishes a client has out before their PUBACKs, the same as
/// the embedded broker's window towards each client (`vendor/rumqttd`). At
/// 100, the front's publishes queued behind the window at a few hundred
/// concurrent orders, and the services' batches stayed small.
pub const INFLIGHT: u16 = 500;

/// How long a publish waits for its PUBACK before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A connection that lived this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("not connected to the MQTT broker")]
    NotConnected,
    #[error("the connection to the MQTT broker was lost before the broker acknowledged")]
    ConnectionLost,
    #[error("the MQTT broker did not acknowledge within {0:?}")]
    Timeout(Duration),
    #[error("the MQTT client queue is full")]
    Backpressure,
}

/// How a node uses the bus.
#[derive(Clone, Debug)]
pub struct BusOptions {
    pub config: BusConfig,
    /// Topics to subscribe to on every fresh session.
    pub subscriptions: Vec<Topic>,
    /// QoS of those subscriptions. Consumers take QoS 1 (acked after their
    /// commit, redelivered otherwise). A clean session keeps nothing across
    /// connections, so QoS 1 would only add a PUBACK per message: the front
    /// takes QoS 0 and reads through to the order service when it misses one.
    pub subscription_qos: QoS,
    /// Consumers ack manually after their commit; the front auto-acks.
    pub manual_acks: bool,
    /// A persistent session (`false`) lets the broker queue messages while
    /// the node restarts. The front, which keeps nothing, uses a clean one.
    pub clean_session: bool,
}

/// A message received from the broker. Ack it with [`Bus::ack`] once its
/// effect is committed (manual-ack buses only).
#[derive(Debug)]
pub struct Delivery {
    pub topic: String,
    pub payload: Bytes,
    generation: u64,
    publish: Publish,
}

struct State {
    generation: u64,
    connected: bool,
    /// Publishes queued to rumqttc, not yet written (no pkid yet).
    queued: VecDeque<oneshot::Sender<Result<(), BusError>>>,
    /// Publishes written, waiting for PUBACK.
    inflight: HashMap<u16, oneshot::Sender<Result<(), BusError>>>,
}

impl State {
    fn fail_all(&mut self) {
        for tx in self.queued.drain(..).chain(self.inflight.drain().map(|(_, tx)| tx)) {
            let _ = tx.send(Err(BusError::ConnectionLost));
        }
    }
}

struct Inner {
    client: AsyncClient,
    state: Mutex<State>,
    ready: watch::Sender<bool>,
    prefix: String,
}

/// A cloneable handle on the node's MQTT connection.
#[derive(Clone)]
pub struct Bus {
    inner: Arc<Inner>,
}

impl Bus {
    /// Starts the connection's event loop. Deliveries arrive on the returned
    /// receiver in broker order; the task ends after `shutdown`, sending a
    /// DISCONNECT first. Fails only on bad TLS settings (`bus.ca_path`).
    pub fn start(
        opts: BusOptions,
        shutdown: CancellationToken,
    ) -> anyhow::Result<(Bus, mpsc::UnboundedReceiver<Delivery>, JoinHandle<()>)> {
        let cfg = &opts.config;
        let mut mqtt = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        // Loaded once here: rumqttc reuses it for every reconnect.
        mqtt.set_transport(crate::tls::bus_transport(cfg)?);
        mqtt.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(1)))
            .set_clean_session(opts.clean_session)
            .set_manual_acks(opts.manual_acks)
            .set_max_packet_size(cfg.max_packet_bytes, cfg.max_packet_bytes)
            .set_inflight(INFLIGHT);
        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            mqtt.set_credentials(user.clone(), pass.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
        // Nagle's algorithm held every small MQTT packet ~40 ms per hop.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (ready, _) = watch::channel(false);
        let inner = Arc::new(Inner {
            client,
            state: Mutex::new(State {
                generation: 0,
                connected: false,
                queued: VecDeque::new(),
                inflight: HashMap::new(),
            }),
            ready,
            prefix: cfg.topic_prefix.clone(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = Bus { inner };
        let task = tokio::spawn(run(bus.clone(), eventloop, opts, tx, shutdown));
        Ok((bus, rx, task))
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    /// Connected, and subscribed on the current session.
    pub fn is_ready(&self) -> bool {
        *self.inner.ready.borrow()
    }

    pub fn ready_watch(&self) -> watch::Receiver<bool> {
        self.inner.ready.subscribe()
    }

    /// Publishes at QoS 1 and resolves once the broker has PUBACKed.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        let rx = {
            // std Mutex: never held across an await.
            let mut st = self.inner.state.lock().expect("bus state lock");
            if !st.connected {
                return Err(BusError::NotConnected);
            }
            self.inner
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload.into())
                .map_err(|_| BusError::Backpressure)?;
            let (tx, rx) = oneshot::channel();
            st.queued.push_back(tx);
            rx
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BusError::ConnectionLost),
            Err(_) => Err(BusError::Timeout(PUBLISH_TIMEOUT)),
        }
    }

    /// Acks a delivery if it came on the current connection. Call in
    /// receive order, after the effect is committed.
    pub fn ack(&self, delivery: &Delivery) {
        let st = self.inner.state.lock().expect("bus state lock");
        if st.connected && st.generation == delivery.generation {
            if let Err(e) = self.inner.client.try_ack(&delivery.publish) {
                tracing::warn!(error = %e, "could not queue an ack; the broker will redeliver");
            }
        }
    }
}

async fn run(
    bus: Bus,
    mut eventloop: EventLoop,
    opts: BusOptions,
    deliveries: mpsc::UnboundedSender<Delivery>,
    shutdown: CancellationToken,
) {
    let inner = &bus.inner;
    let mut backoff = Duration::from_millis(50);
    let mut connected_at = tokio::time::Instant::now();
    let filters: Vec<SubscribeFilter> =
        opts.subscriptions.iter().map(|t| SubscribeFilter::new(t.path(&inner.prefix), opts.subscription_qos)).collect();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = tokio::time::Instant::now();
                inner.state.lock().expect("bus state lock").connected = true;
                tracing::info!(
                    client_id = %opts.config.client_id,
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                if filters.is_empty() || ack.session_present {
                    inner.ready.send_replace(true);
                } else if let Err(e) = inner.client.try_subscribe_many(filters.clone()) {
                    tracing::error!(error = %e, "could not queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let failed = ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if failed {
                    tracing::error!("the broker refused a subscription; not ready");
                } else {
                    inner.ready.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let generation = inner.state.lock().expect("bus state lock").generation;
                let delivery =
                    Delivery { topic: publish.topic.clone(), payload: publish.payload.clone(), generation, publish };
                if deliveries.send(delivery).is_err() {
                    // Nobody consumes any more: we are shutting down.
                    break;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let waiter = inner.state.lock().expect("bus state lock").inflight.remove(&ack.pkid);
                if let Some(tx) = waiter {
                    let _ = tx.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut st = inner.state.lock().expect("bus state lock");
                if let Some(tx) = st.queued.pop_front() {
                    st.inflight.insert(pkid, tx);
                }
            }
            Ok(_) => {}
            Err(e) => {
                {
                    let mut st = inner.state.lock().expect("bus state lock");
                    st.generation += 1;
                    st.connected = false;
                    // Requests queued for the old connection must not reach
                    // the new one (see the module docs).
                    eventloop.clean();
                    eventloop.pending.clear();
                    // Events of the old connection not yet handed out (the
                    // `Outgoing::Publish` of packets written before the error,
                    // publishes read in the same burst) would be matched
                    // against the new connection's waiters and packet ids.
                    eventloop.state.events.clear();
                    st.fail_all();
                }
                inner.ready.send_replace(false);
                // Reset the backoff only after a connection that lasted: a
                // broker that drops us right after CONNACK (e.g. it keeps
                // sending a packet larger than we accept) must not make us spin.
                if connected_at.elapsed() > STABLE_AFTER {
                    backoff = Duration::from_millis(50);
                }
                metrics::counter!("bus_reconnects_total", "client" => opts.config.client_id.clone()).increment(1);
                tracing::warn!(error = %e, retry_in = ?backoff, "MQTT connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    // Best effort: tell the broker we leave, within a bound.
    inner.ready.send_replace(false);
    inner.state.lock().expect("bus state lock").connected = false;
    if inner.client.try_disconnect().is_ok() {
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
    }
    inner.state.lock().expect("bus state lock").fail_all();
}
