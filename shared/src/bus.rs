//! The MQTT connection every node uses: reconnect with backoff, subscribe
//! on every connect, publish at QoS 1 with a future that
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
//!
//! Progress, not only the socket, decides readiness. A broker (or a
//! network) can keep the connection open and answer pings while it holds
//! back PUBACKs, or while our acks can't be written. A watchdog looks at the
//! oldest publish waiting for its PUBACK and the oldest ack waiting to be
//! written: when one has waited [`STALL_AFTER`] with no PUBACK (or no ack
//! written) in that time, the bus is not ready; after [`RECONNECT_AFTER`]
//! it drops the connection and starts a new one.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
pub use rumqttc::QoS;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, SubscribeFilter};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::BusConfig;
use crate::ids::OrderId;
use crate::topics::{Partitions, Topic};

/// Most QoS 1 publishes a client has out before their PUBACKs, the same as
/// the embedded broker's window towards each client (`vendor/rumqttd`). The
/// services ack a batch only after it commits, so this window bounds how
/// many messages their commits can take at once (docs/PERFORMANCE.md).
pub const INFLIGHT: u16 = 500;

/// How long a publish waits for its PUBACK before it counts as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// A publish or an ack waiting this long, with no PUBACK received (no ack
/// written) meanwhile, makes the bus not ready.
pub const STALL_AFTER: Duration = Duration::from_secs(5);
/// A stall this long drops the connection; the next one starts afresh.
pub const RECONNECT_AFTER: Duration = Duration::from_secs(15);
/// How often the watchdog looks.
const WATCHDOG_PERIOD: Duration = Duration::from_millis(500);
/// Bytes a broker may add to a packet it accepted when it forwards it: a
/// QoS 0 publish forwarded at QoS 1 gains a 2-byte packet id, and its
/// remaining-length field may grow. The nodes accept the broker's packet
/// limit plus this, so every packet a broker took reaches them.
pub const FORWARD_HEADROOM: usize = 64;
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

/// A publish waiting for its PUBACK: the caller's future, when it was
/// queued, and its place in the window (given back with the PUBACK).
struct Waiter {
    tx: oneshot::Sender<Result<(), BusError>>,
    since: Instant,
    _slot: OwnedSemaphorePermit,
}

/// Asked before each reconnect: `false` ends the connection for good.
/// A partition's session asks whether this instance still owns the
/// partition, so an instance that lost it (it was stopped, and another took
/// over) never takes the session back from the new owner.
pub type Gate = Arc<dyn Fn() -> futures_util::future::BoxFuture<'static, bool> + Send + Sync>;

/// How a node uses the bus.
#[derive(Clone)]
pub struct BusOptions {
    pub config: BusConfig,
    /// Topic filters to subscribe to on every connect (full paths; see
    /// [`Partitions::filter`]).
    pub subscriptions: Vec<String>,
    /// The partition this session consumes, stamped on its deliveries.
    pub partition: Option<u16>,
    /// See [`Gate`]; `None`: always reconnect.
    pub gate: Option<Gate>,
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

impl BusOptions {
    /// A connection that subscribes to nothing, e.g. to publish only.
    pub fn publisher(config: BusConfig) -> BusOptions {
        BusOptions {
            config,
            subscriptions: Vec::new(),
            partition: None,
            gate: None,
            subscription_qos: QoS::AtMostOnce,
            manual_acks: false,
            clean_session: true,
        }
    }
}

/// A message received from the broker. Ack it with [`Delivery::ack`] once
/// its effect is committed (manual-ack buses only).
pub struct Delivery {
    pub topic: String,
    pub payload: Bytes,
    /// The partition of the session it came on.
    pub partition: Option<u16>,
    generation: u64,
    publish: Publish,
    bus: Bus,
}

impl Delivery {
    /// Acks it on the connection it came on, if that is still the current
    /// one. Call in receive order, after the effect is committed.
    pub fn ack(&self) {
        self.bus.ack(self);
    }
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery").field("topic", &self.topic).field("partition", &self.partition).finish()
    }
}

struct State {
    generation: u64,
    connected: bool,
    /// Publishes queued to rumqttc, not yet written (no pkid yet).
    queued: VecDeque<Waiter>,
    /// Publishes written, waiting for PUBACK. A waiter stays after its
    /// caller gave up: rumqttc keeps the packet id until the PUBACK too.
    inflight: HashMap<u16, Waiter>,
    /// When each manual ack not yet written was queued, oldest first.
    acks: VecDeque<Instant>,
    last_puback: Instant,
    last_ack_written: Instant,
}

impl State {
    fn fail_all(&mut self) {
        for w in self.queued.drain(..).chain(self.inflight.drain().map(|(_, w)| w)) {
            let _ = w.tx.send(Err(BusError::ConnectionLost));
        }
        self.acks.clear();
    }

    /// Why the connection makes no progress, if it doesn't.
    fn stall(&self, now: Instant) -> Option<Stall> {
        let oldest_publish = self.queued.iter().chain(self.inflight.values()).map(|w| w.since).min();
        let waited = |since: Option<Instant>| since.map_or(Duration::ZERO, |t| now.saturating_duration_since(t));
        let publish = waited(oldest_publish).min(now.saturating_duration_since(self.last_puback));
        let ack = waited(self.acks.front().copied()).min(now.saturating_duration_since(self.last_ack_written));
        if publish >= STALL_AFTER {
            Some(Stall { what: "no PUBACK from the MQTT broker", for_: publish })
        } else if ack >= STALL_AFTER {
            Some(Stall { what: "acks to the MQTT broker not written", for_: ack })
        } else {
            None
        }
    }
}

/// The connection is up but nothing moves.
#[derive(Clone, Copy, Debug)]
struct Stall {
    what: &'static str,
    for_: Duration,
}

struct Inner {
    client: AsyncClient,
    state: Mutex<State>,
    /// Connected and subscribed on the current session.
    session: watch::Sender<bool>,
    /// The watchdog's finding, while the connection makes no progress.
    stalled: Mutex<Option<Stall>>,
    /// Set by the watchdog: drop the connection at the next event.
    reconnect: AtomicBool,
    /// The publish window: one permit per publish out before its PUBACK.
    window: Arc<Semaphore>,
    prefix: String,
    partitions: Partitions,
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
        let partitions = Partitions::new(cfg.partitions)?;
        let mut mqtt = MqttOptions::new(cfg.client_id.clone(), cfg.host.clone(), cfg.port);
        // Loaded once here: rumqttc reuses it for every reconnect.
        mqtt.set_transport(crate::tls::bus_transport(cfg)?);
        mqtt.set_keep_alive(Duration::from_secs(cfg.keep_alive_secs.max(1)))
            .set_clean_session(opts.clean_session)
            .set_manual_acks(opts.manual_acks)
            // Incoming: what the broker accepts, plus what it may add when
            // forwarding (a packet it took must never break our connection).
            // Outgoing: the broker's limit.
            .set_max_packet_size(cfg.max_packet_bytes + FORWARD_HEADROOM, cfg.max_packet_bytes)
            // One id more than the bus ever has out (`window`): rumqttc's
            // window is never full, and a full one would hold back the
            // acks of received messages too.
            .set_inflight(INFLIGHT + 1);
        if let (Some(user), Some(pass)) = (&cfg.username, &cfg.password) {
            mqtt.set_credentials(user.clone(), pass.clone());
        }
        let (client, mut eventloop) = AsyncClient::new(mqtt, 1024);
        // Nagle's algorithm held every small MQTT packet ~40 ms per hop.
        let mut network = rumqttc::NetworkOptions::new();
        network.set_tcp_nodelay(true);
        eventloop.set_network_options(network);
        let (session, _) = watch::channel(false);
        let now = Instant::now();
        let inner = Arc::new(Inner {
            client,
            state: Mutex::new(State {
                generation: 0,
                connected: false,
                queued: VecDeque::new(),
                inflight: HashMap::new(),
                acks: VecDeque::new(),
                last_puback: now,
                last_ack_written: now,
            }),
            session,
            stalled: Mutex::new(None),
            reconnect: AtomicBool::new(false),
            window: Arc::new(Semaphore::new(INFLIGHT as usize)),
            prefix: cfg.topic_prefix.clone(),
            partitions,
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let bus = Bus { inner };
        tokio::spawn(watchdog(bus.clone(), opts.config.client_id.clone(), shutdown.clone()));
        let task = tokio::spawn(run(bus.clone(), eventloop, opts, tx, shutdown));
        Ok((bus, rx, task))
    }

    pub fn prefix(&self) -> &str {
        &self.inner.prefix
    }

    pub fn partitions(&self) -> Partitions {
        self.inner.partitions
    }

    /// The path a message about `order_id` on `topic` is published to.
    pub fn route(&self, topic: Topic, order_id: OrderId) -> String {
        topic.routed(&self.inner.prefix, self.inner.partitions, order_id)
    }

    /// [`Bus::route`] for an outbox row: the topic below the prefix and
    /// the order id as stored. Rows that don't name one of our topics and
    /// an order (none do) go to the plain path.
    pub fn route_stored(&self, suffix: &str, order_id: &str) -> String {
        if self.inner.partitions == Partitions::ONE {
            return format!("{}{suffix}", self.inner.prefix);
        }
        match (Topic::from_suffix(suffix), OrderId::parse(order_id)) {
            (Some(topic), Ok(id)) => self.route(topic, id),
            _ => format!("{}{suffix}", self.inner.prefix),
        }
    }

    /// Connected, subscribed on the current session, and making progress:
    /// the node can publish and ack.
    pub fn is_ready(&self) -> bool {
        self.not_ready_reason().is_none()
    }

    /// Connected and subscribed on the current session, whether or not
    /// the connection makes progress: what the outbox relay waits for (its
    /// publishes are what makes progress).
    pub fn is_connected(&self) -> bool {
        *self.inner.session.borrow()
    }

    /// Why the node can't use the bus now, if it can't.
    pub fn not_ready_reason(&self) -> Option<String> {
        if !*self.inner.session.borrow() {
            return Some("not connected and subscribed to the MQTT broker".into());
        }
        let stalled = *self.inner.stalled.lock().expect("bus stall lock");
        stalled.map(|s| format!("no progress on the MQTT connection: {} for {} s", s.what, s.for_.as_secs()))
    }

    /// Changes when a session starts (`true`) or ends (`false`): after each
    /// `true`, what is still unsent must be published again.
    pub fn session_watch(&self) -> watch::Receiver<bool> {
        self.inner.session.subscribe()
    }

    /// Publishes at QoS 1 and resolves once the broker has PUBACKed. Waits
    /// for a place in the window ([`INFLIGHT`] publishes out at once) first,
    /// all within the publish timeout.
    pub async fn publish(&self, topic: &str, payload: impl Into<Bytes>) -> Result<(), BusError> {
        let deadline = Instant::now() + PUBLISH_TIMEOUT;
        if !self.inner.state.lock().expect("bus state lock").connected {
            return Err(BusError::NotConnected);
        }
        let slot = match tokio::time::timeout_at(deadline, self.inner.window.clone().acquire_owned()).await {
            Ok(Ok(slot)) => slot,
            Ok(Err(_)) => return Err(BusError::NotConnected),
            Err(_) => return Err(BusError::Timeout(PUBLISH_TIMEOUT)),
        };
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
            st.queued.push_back(Waiter { tx, since: Instant::now(), _slot: slot });
            rx
        };
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(BusError::ConnectionLost),
            Err(_) => Err(BusError::Timeout(PUBLISH_TIMEOUT)),
        }
    }

    fn ack(&self, delivery: &Delivery) {
        let mut st = self.inner.state.lock().expect("bus state lock");
        if st.connected && st.generation == delivery.generation {
            match self.inner.client.try_ack(&delivery.publish) {
                Ok(()) => st.acks.push_back(Instant::now()),
                Err(e) => tracing::warn!(error = %e, "could not queue an ack; the broker will redeliver"),
            }
        }
    }
}

/// Looks for a connection that makes no progress (see the module docs):
/// marks the bus not ready, and asks for a new connection once the stall
/// lasts [`RECONNECT_AFTER`].
async fn watchdog(bus: Bus, client_id: String, shutdown: CancellationToken) {
    let inner = &bus.inner;
    let mut tick = tokio::time::interval(WATCHDOG_PERIOD);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let stall = inner.state.lock().expect("bus state lock").stall(Instant::now());
        let was = std::mem::replace(&mut *inner.stalled.lock().expect("bus stall lock"), stall);
        match (was, stall) {
            (None, Some(s)) => {
                metrics::counter!("bus_stalls_total", "client" => client_id.clone()).increment(1);
                tracing::warn!(client_id, problem = s.what, "no progress on the MQTT connection; not ready");
            }
            (Some(_), None) => tracing::info!(client_id, "the MQTT connection makes progress again"),
            _ => {}
        }
        if stall.is_some_and(|s| s.for_ >= RECONNECT_AFTER) && !inner.reconnect.swap(true, Ordering::Relaxed) {
            tracing::warn!(client_id, "dropping the stalled MQTT connection");
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
    let mut connected_at = Instant::now();
    let filters: Vec<SubscribeFilter> =
        opts.subscriptions.iter().map(|f| SubscribeFilter::new(f.clone(), opts.subscription_qos)).collect();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => break,
            event = eventloop.poll() => event,
        };
        // Checked between events, never by cancelling `poll` (a write cut
        // short would corrupt the stream); keep-alive pings bound the wait.
        let event = match event {
            // The event is dropped with the connection: a delivery in it is
            // redelivered, a PUBACK in it fails its publish (retried).
            Ok(_) if inner.reconnect.swap(false, Ordering::Relaxed) => {
                eventloop.clean();
                Err("the connection made no progress".to_owned())
            }
            Ok(event) => Ok(event),
            Err(e) => Err(e.to_string()),
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                connected_at = Instant::now();
                {
                    let mut st = inner.state.lock().expect("bus state lock");
                    st.connected = true;
                    (st.last_puback, st.last_ack_written) = (connected_at, connected_at);
                }
                tracing::info!(
                    client_id = %opts.config.client_id,
                    session_present = ack.session_present,
                    "connected to MQTT broker"
                );
                // Subscribed on every connect, also when the broker kept the
                // session: the list may have changed since (an upgrade), and
                // subscribing again to a filter the session has is harmless.
                if filters.is_empty() {
                    inner.session.send_replace(true);
                } else if let Err(e) = inner.client.try_subscribe_many(filters.clone()) {
                    tracing::error!(error = %e, "could not queue the subscription");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                let failed = ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure));
                if failed {
                    tracing::error!(
                        user = opts.config.username.as_deref().unwrap_or("(none)"),
                        "the broker refused a subscription (may this user subscribe to the node's topics? \
                         see the broker's roles); not ready"
                    );
                } else {
                    inner.session.send_replace(true);
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                let generation = inner.state.lock().expect("bus state lock").generation;
                let delivery = Delivery {
                    topic: publish.topic.clone(),
                    payload: publish.payload.clone(),
                    partition: opts.partition,
                    generation,
                    publish,
                    bus: bus.clone(),
                };
                if deliveries.send(delivery).is_err() {
                    // Nobody consumes any more: we are shutting down.
                    break;
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                let waiter = {
                    let mut st = inner.state.lock().expect("bus state lock");
                    st.last_puback = Instant::now();
                    st.inflight.remove(&ack.pkid)
                };
                if let Some(w) = waiter {
                    let _ = w.tx.send(Ok(()));
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut st = inner.state.lock().expect("bus state lock");
                if let Some(w) = st.queued.pop_front() {
                    st.inflight.insert(pkid, w);
                }
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_))) if opts.manual_acks => {
                let mut st = inner.state.lock().expect("bus state lock");
                st.acks.pop_front();
                st.last_ack_written = Instant::now();
            }
            Ok(_) => {}
            Err(error) => {
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
                // A stall seen just before the error is this connection's.
                inner.reconnect.store(false, Ordering::Relaxed);
                inner.session.send_replace(false);
                // Reset the backoff only after a connection that lasted: a
                // broker that drops us right after CONNACK (e.g. it keeps
                // sending a packet larger than we accept) must not make us spin.
                if connected_at.elapsed() > STABLE_AFTER {
                    backoff = Duration::from_millis(50);
                }
                metrics::counter!("bus_reconnects_total", "client" => opts.config.client_id.clone()).increment(1);
                tracing::warn!(error, retry_in = ?backoff, "MQTT connection lost");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                if let Some(gate) = &opts.gate {
                    if !gate().await {
                        tracing::info!(client_id = %opts.config.client_id, "not reconnecting: the session is no longer ours");
                        break;
                    }
                }
            }
        }
    }
    // Best effort: tell the broker we leave, within a bound.
    inner.session.send_replace(false);
    let was_connected = std::mem::replace(&mut inner.state.lock().expect("bus state lock").connected, false);
    // Only on a live connection: polling a lost one would connect again
    // (and take the session from whoever holds it now).
    if was_connected && inner.client.try_disconnect().is_ok() {
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
