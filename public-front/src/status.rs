//! Waiting for `orders/status` and `carts/status`, the front's
//! subscriptions. A request registers interest in an order (or in the
//! answer to its cart command) before it publishes, then awaits the order
//! service's event (the proof that the change is committed). Nothing here
//! is durable: a missed event falls back to a synchronous read.
//!
//! Every status event is first recorded in the front's memory of recent
//! orders (`known.rs`), then wakes the waiters, so a waiter that registers
//! and then looks at that memory misses no change. It is also broadcast to
//! live subscribers (the
//! storefront's Server-Sent Events stream, `web/sse.rs`), which filter by
//! order id themselves.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use shared::bus::Delivery;
use shared::ids::{MessageId, OrderId};
use shared::message::{CartChanged, Inbound, OrderStatus, StatusChanged};
use shared::topics::{Consumes, FrontConsumes, Topic};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::known::KnownOrders;

type Waiter = (Option<OrderStatus>, oneshot::Sender<StatusChanged>);

/// How many status events a slow live subscriber may fall behind before it
/// is told it lagged (it then re-reads the order).
const LIVE_CAPACITY: usize = 1024;

/// Who waits for which order's status.
#[derive(Clone)]
pub struct StatusWaiters {
    // std Mutex: never held across an await.
    inner: Arc<Mutex<HashMap<OrderId, Vec<Waiter>>>>,
    live: broadcast::Sender<(OrderId, StatusChanged)>,
    /// Cart commands waiting for their answer, by the command's message id.
    carts: Arc<Mutex<HashMap<MessageId, oneshot::Sender<CartChanged>>>>,
    known: KnownOrders,
    /// Cancelled when live subscribers should stop (see `close_live`).
    closing: CancellationToken,
}

impl Default for StatusWaiters {
    fn default() -> Self {
        Self {
            inner: Arc::default(),
            live: broadcast::channel(LIVE_CAPACITY).0,
            carts: Arc::default(),
            known: KnownOrders::default(),
            closing: CancellationToken::new(),
        }
    }
}

/// A registration; dropping it forgets the waiter.
pub struct Waiting {
    waiters: StatusWaiters,
    order_id: OrderId,
    rx: Option<oneshot::Receiver<StatusChanged>>,
}

impl Waiting {
    /// The next status event for the order (matching the wanted status).
    pub async fn recv(&mut self) -> Option<StatusChanged> {
        self.rx.take()?.await.ok()
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.rx = None;
        let mut map = self.waiters.inner.lock().expect("waiters lock");
        if let Some(list) = map.get_mut(&self.order_id) {
            list.retain(|(_, tx)| !tx.is_closed());
            if list.is_empty() {
                map.remove(&self.order_id);
            }
        }
    }
}

/// A cart command's registration; dropping it forgets the waiter.
pub struct CartWaiting {
    waiters: StatusWaiters,
    command_id: MessageId,
    rx: Option<oneshot::Receiver<CartChanged>>,
}

impl CartWaiting {
    /// The order service's answer to the command.
    pub async fn recv(&mut self) -> Option<CartChanged> {
        self.rx.take()?.await.ok()
    }
}

impl Drop for CartWaiting {
    fn drop(&mut self) {
        self.waiters.carts.lock().expect("cart waiters lock").remove(&self.command_id);
    }
}

impl StatusWaiters {
    /// Waits for the answer to the cart command `command_id`.
    pub fn register_cart(&self, command_id: MessageId) -> CartWaiting {
        let (tx, rx) = oneshot::channel();
        self.carts.lock().expect("cart waiters lock").insert(command_id, tx);
        CartWaiting { waiters: self.clone(), command_id, rx: Some(rx) }
    }

    /// Waits for a status event of `order_id`; with `want`, only for that
    /// status.
    pub fn register(&self, order_id: OrderId, want: Option<OrderStatus>) -> Waiting {
        let (tx, rx) = oneshot::channel();
        self.inner.lock().expect("waiters lock").entry(order_id).or_default().push((want, tx));
        Waiting { waiters: self.clone(), order_id, rx: Some(rx) }
    }

    /// What the front knows about recent orders, kept up to date by every
    /// status event.
    pub fn known(&self) -> &KnownOrders {
        &self.known
    }

    /// Every status event from now on, for every order. Nothing is replayed:
    /// subscribe first, then read the current status, so no change falls in
    /// between.
    pub fn subscribe(&self) -> broadcast::Receiver<(OrderId, StatusChanged)> {
        self.live.subscribe()
    }

    /// Cancelled once live subscribers should end their streams: the HTTP
    /// server's graceful shutdown waits for open responses, and a live
    /// stream would otherwise never end.
    pub fn closing(&self) -> CancellationToken {
        self.closing.clone()
    }

    /// Ends every live stream (call when the server starts shutting down).
    pub fn close_live(&self) {
        self.closing.cancel();
    }

    fn answer_cart(&self, answer: CartChanged) {
        if let Some(tx) = self.carts.lock().expect("cart waiters lock").remove(&answer.command_id) {
            let _ = tx.send(answer);
        }
    }

    fn dispatch(&self, order_id: OrderId, status: &StatusChanged) {
        let mut map = self.inner.lock().expect("waiters lock");
        let Some(list) = map.get_mut(&order_id) else {
            return;
        };
        let mut keep = Vec::new();
        for (want, tx) in list.drain(..) {
            if want.is_none_or(|w| w == status.status) {
                let _ = tx.send(status.clone());
            } else {
                keep.push((want, tx));
            }
        }
        if keep.is_empty() {
            map.remove(&order_id);
        } else {
            *list = keep;
        }
    }

    /// Feeds status events from the bus to the waiters until shutdown.
    pub async fn run(self, prefix: String, mut rx: mpsc::UnboundedReceiver<Delivery>, shutdown: CancellationToken) {
        // However `run` ends, live streams end with it.
        let _close = self.closing.clone().drop_guard();
        loop {
            let d = tokio::select! {
                _ = shutdown.cancelled() => return,
                d = rx.recv() => match d { Some(d) => d, None => return },
            };
            let topic = Topic::from_path(&prefix, &d.topic).and_then(FrontConsumes::from_topic);
            let parsed = match topic {
                Some(FrontConsumes::OrdersStatus) => Inbound::decode(Topic::OrdersStatus, d.payload.clone())
                    .and_then(|m| m.body::<StatusChanged>().map(|b| (m, b))),
                Some(FrontConsumes::CartsStatus) => {
                    match Inbound::decode(Topic::CartsStatus, d.payload.clone()).and_then(|m| m.body::<CartChanged>()) {
                        Ok(answer) => self.answer_cart(answer),
                        Err(e) => tracing::warn!(reason = %e, "ignoring a malformed cart status event"),
                    }
                    continue;
                }
                None => continue,
            };
            match parsed {
                Ok((msg, status)) => {
                    let order_id = msg.order_id();
                    // With span export: the last hop of the order's trace,
                    // as a span that ends once the waiters are told.
                    let _span = shared::telemetry::exporting().then(|| {
                        let span = tracing::info_span!(
                            "message",
                            node = "public-front",
                            topic = Topic::OrdersStatus.suffix(),
                            %order_id,
                            status = status.status.as_str(),
                            otel.name = "public-front orders/status",
                        );
                        shared::trace::link(&span, msg.envelope.traceparent.clone());
                        span
                    });
                    self.known.event(order_id, &status, msg.envelope.sent_at, std::time::Instant::now());
                    self.dispatch(order_id, &status);
                    // An error only means nobody is listening live.
                    let _ = self.live.send((order_id, status));
                }
                Err(e) => tracing::warn!(reason = %e, "ignoring a malformed status event"),
            }
        }
    }
}
