//! The load: what one client request is (a catalog read, an order placed
//! until confirmed, a cancel until cancelled) and the two ways to offer it.
//!
//! - Closed loop: N clients, each sends its next request when the last one
//!   finished. Measures capacity, but a slow response also delays the
//!   requests behind it, so it hides latency (coordinated omission).
//! - Open loop: requests start on a fixed schedule whatever happens, and
//!   latency counts from the *scheduled* start, so a stall shows up in
//!   every request it delays.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use serde::Serialize;
use shared::ids::{IdempotencyKey, OrderId};
use shared::message::OrderStatus;
use tokio::task::JoinSet;

use super::http::{Failure, Http};
use super::observe::{Observer, Want};
use super::record::{Measured, Recorder};

/// How long a client waits for an order to settle before it counts it lost.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most confirmed orders kept for the cancel phase.
const KEEP_CONFIRMED: usize = 200_000;

/// How long a long-polling client asks the front to wait per request.
const LONG_POLL_WAIT: &str = "5";

/// What one client request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Work {
    /// `GET /api/catalog?limit=20` through the front.
    Catalog,
    /// `POST /api/orders`, then wait until the order is observed confirmed.
    Order,
    /// `POST /api/orders`, then `GET /api/orders/{id}` every interval until
    /// it is settled, as a polling client sees it (not the bus).
    PollOrder(Duration),
    /// `POST /api/orders` with `Prefer: wait=5`, then long polls
    /// (`?wait=5s&version=N`) while it is still pending.
    LongPollOrder,
    /// `POST /api/orders/{id}/cancel` on a confirmed order, then wait until
    /// it is observed cancelled.
    Cancel,
    /// A customer with a server cart: `POST /api/carts`, `PUT` one line,
    /// `POST .../checkout` with `Prefer: wait=5`, then long polls while the
    /// order is pending.
    Cart,
}

/// How a client learns an order's status.
pub enum Watch {
    /// A bus subscriber (see `observe.rs`).
    Bus(Observer),
    /// `GET /api/orders/{id}` every interval: for a shop whose broker the
    /// bench can't reach. Adds read load, and quantizes latency.
    Poll(Duration),
}

/// Everything clients share.
pub struct Load {
    http: Http,
    watch: Watch,
    skus: Vec<String>,
    /// Confirmed orders, cancelled by the cancel phase.
    confirmed: Mutex<Vec<OrderId>>,
}

/// One phase's shared state.
struct Phase {
    rec: Mutex<Recorder>,
    /// Stage timings still being waited for after a request completed.
    background: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl Load {
    pub fn new(front: &str, watch: Watch, skus: Vec<String>) -> anyhow::Result<Load> {
        Ok(Load { http: Http::new(front)?, watch, skus, confirmed: Mutex::new(Vec::new()) })
    }

    pub fn confirmed_count(&self) -> usize {
        self.confirmed.lock().expect("confirmed lock").len()
    }

    /// Runs one request started (or scheduled) at `t0`; `false` when there
    /// is no work left (the cancel phase ran out of confirmed orders).
    async fn one(self: &Arc<Self>, work: Work, t0: Instant, phase: &Arc<Phase>) -> bool {
        let result = match work {
            Work::Catalog => self.catalog(t0, phase).await,
            Work::Order => self.order(t0, phase, None).await,
            Work::PollOrder(every) => self.order(t0, phase, Some(Client::Poll(every))).await,
            Work::LongPollOrder => self.order(t0, phase, Some(Client::LongPoll)).await,
            Work::Cart => self.cart(t0, phase).await,
            Work::Cancel => {
                let Some(id) = self.confirmed.lock().expect("confirmed lock").pop() else {
                    return false;
                };
                self.cancel(id, t0, phase).await
            }
        };
        if let Err(kind) = result {
            phase.rec.lock().expect("recorder lock").error(t0, kind);
        }
        true
    }

    async fn catalog(&self, t0: Instant, phase: &Phase) -> Result<(), String> {
        let r = self.http.send(Method::GET, "/api/catalog?limit=20", &[], Bytes::new()).await.map_err(Failure::kind)?;
        if r.status != StatusCode::OK {
            return Err(http_error(r.status, &r.body));
        }
        phase.rec.lock().expect("recorder lock").ok(t0, Instant::now());
        Ok(())
    }

    /// One order until settled: seen as `client` does, or (`None`) as the
    /// bench's `Watch` does.
    async fn order(self: &Arc<Self>, t0: Instant, phase: &Phase, client: Option<Client>) -> Result<(), String> {
        let key = format!("bench-{}", uuid::Uuid::new_v4().simple());
        let id = OrderId::from_idempotency_key(&IdempotencyKey::parse(&key).expect("a valid key"));
        let sku = &self.skus[(id.0.as_u128() % self.skus.len() as u128) as usize];
        let client = client.unwrap_or(match &self.watch {
            Watch::Bus(_) => Client::Bus,
            Watch::Poll(every) => Client::Poll(*every),
        });
        let settled = match (&self.watch, client) {
            (Watch::Bus(o), Client::Bus) => Some(o.wait(id, Want::Settled)),
            _ => None,
        };
        let body =
            serde_json::to_vec(&PlaceOrder { customer_email: "b@example.com", items: [Line { sku, quantity: 1 }] })
                .expect("an order serializes");
        let mut headers = vec![("idempotency-key", key.as_str()), ("content-type", "application/json")];
        let prefer = format!("wait={LONG_POLL_WAIT}");
        if client == Client::LongPoll {
            headers.push(("prefer", &prefer));
        }
        let sent = Instant::now();
        let r = self
            .http
            .send(Method::POST, "/api/orders", &headers, body.into())
            .await
            .map_err(|e| self.forget(id, e.kind()))?;
        let accepted = Instant::now();
        if r.status != StatusCode::ACCEPTED {
            return Err(self.forget(id, http_error(r.status, &r.body)));
        }
        let settle = [OrderStatus::Confirmed, OrderStatus::Rejected];
        let (done, status) = match (settled, client) {
            (Some(rx), _) => match tokio::time::timeout(SETTLE_TIMEOUT, rx).await {
                Ok(Ok(hit)) => hit,
                _ => return Err(self.forget(id, "not settled within 30 s".into())),
            },
            (None, Client::LongPoll) => {
                let (status, version) = status_of(&r.body)?;
                if status.is_some_and(|s| settle.contains(&s)) {
                    (accepted, status)
                } else {
                    self.long_poll(id, version, &settle).await?
                }
            }
            (None, Client::Poll(every)) => self.poll(id, every, &settle).await?,
            (None, Client::Bus) => unreachable!("a bus client always has an observer"),
        };
        let stamps = match (&self.watch, client) {
            (Watch::Bus(o), Client::Bus) => o.forget(id),
            _ => Default::default(),
        };
        if status != Some(OrderStatus::Confirmed) {
            return Err(format!("order {}", status.map_or("?", |s| s.as_str())));
        }
        let mut rec = phase.rec.lock().expect("recorder lock");
        rec.ok(t0, done);
        let mut stage = |name, from: Option<Instant>, to: Option<Instant>| {
            if let (Some(a), Some(b)) = (from, to) {
                rec.stage(t0, name, b.saturating_duration_since(a));
            }
        };
        stage("0 client: scheduled → sent", Some(t0), Some(sent));
        stage("1 POST → 202", Some(sent), Some(accepted));
        stage("2 202 → confirmed seen", Some(accepted), Some(done));
        stage("3 front: POST → orders/send on bus", Some(sent), stamps.send);
        stage("4 order: send → status pending", stamps.send, stamps.pending);
        stage("5 front: pending → 202 at client", stamps.pending, Some(accepted));
        stage("6 inventory: send → in-stock", stamps.send, stamps.in_stock);
        stage("7 order: in-stock → status confirmed", stamps.in_stock, stamps.confirmed);
        drop(rec);
        let mut kept = self.confirmed.lock().expect("confirmed lock");
        if kept.len() < KEEP_CONFIRMED {
            kept.push(id);
        }
        Ok(())
    }

    async fn cancel(self: &Arc<Self>, id: OrderId, t0: Instant, phase: &Arc<Phase>) -> Result<(), String> {
        let waits = match &self.watch {
            Watch::Bus(o) => Some((o.wait(id, Want::Cancelled), o.wait(id, Want::Released))),
            Watch::Poll(_) => None,
        };
        let path = format!("/api/orders/{id}/cancel");
        let sent = Instant::now();
        let r = self.http.send(Method::POST, &path, &[], Bytes::new()).await.map_err(|e| self.forget(id, e.kind()))?;
        let accepted = Instant::now();
        if r.status != StatusCode::ACCEPTED {
            return Err(self.forget(id, http_error(r.status, &r.body)));
        }
        let Some((cancelled, released)) = waits else {
            // The front answers 202 only once the cancellation is committed.
            phase.rec.lock().expect("recorder lock").ok(t0, accepted);
            return Ok(());
        };
        let done = match tokio::time::timeout(SETTLE_TIMEOUT, cancelled).await {
            Ok(Ok((at, _))) => at,
            _ => return Err(self.forget(id, "not cancelled within 30 s".into())),
        };
        phase.rec.lock().expect("recorder lock").ok(t0, done);
        // The release is inventory's business and the customer doesn't wait
        // for it: time it in the background, not in the client's loop.
        let (load, ph) = (self.clone(), phase.clone());
        let tail = tokio::spawn(async move {
            let released = tokio::time::timeout(SETTLE_TIMEOUT, released).await.ok().and_then(Result::ok);
            let stamps = match &load.watch {
                Watch::Bus(o) => o.forget(id),
                Watch::Poll(_) => return,
            };
            let mut rec = ph.rec.lock().expect("recorder lock");
            let mut stage = |name, from: Option<Instant>, to: Option<Instant>| {
                if let (Some(a), Some(b)) = (from, to) {
                    rec.stage(t0, name, b.saturating_duration_since(a));
                }
            };
            stage("1 POST cancel → 202", Some(sent), Some(accepted));
            stage("2 front: POST → orders/cancel on bus", Some(sent), stamps.cancel);
            stage("3 order: cancel → status cancelled", stamps.cancel, stamps.cancelled);
            stage("4 cancelled → inventory/released", stamps.cancelled, released.map(|r| r.0));
        });
        phase.background.lock().expect("background lock").push(tail);
        Ok(())
    }

    /// One cart filled with a line and checked out, until the order is
    /// confirmed as a long-polling client sees it.
    async fn cart(&self, t0: Instant, phase: &Phase) -> Result<(), String> {
        let json = [("content-type", "application/json")];
        let r = self.http.send(Method::POST, "/api/carts", &[], Bytes::new()).await.map_err(Failure::kind)?;
        if r.status != StatusCode::CREATED {
            return Err(http_error(r.status, &r.body));
        }
        let created = Instant::now();
        let cart: serde_json::Value = serde_json::from_slice(&r.body).map_err(|_| "malformed cart JSON".to_owned())?;
        let id = cart["cart_id"].as_str().ok_or("a cart without an id")?.to_owned();
        let sku = &self.skus[(uuid::Uuid::new_v4().as_u128() % self.skus.len() as u128) as usize];
        let body = Bytes::from_static(br#"{"quantity":1}"#);
        let path = format!("/api/carts/{id}/items/{sku}");
        let r = self.http.send(Method::PUT, &path, &json, body).await.map_err(Failure::kind)?;
        if r.status != StatusCode::OK {
            return Err(http_error(r.status, &r.body));
        }
        let filled = Instant::now();
        let key = format!("bench-cart-{}", uuid::Uuid::new_v4().simple());
        let prefer = format!("wait={LONG_POLL_WAIT}");
        let headers = [json[0], ("idempotency-key", key.as_str()), ("prefer", prefer.as_str())];
        let body = Bytes::from_static(br#"{"customer_email":"b@example.com"}"#);
        let path = format!("/api/carts/{id}/checkout");
        let r = self.http.send(Method::POST, &path, &headers, body).await.map_err(Failure::kind)?;
        if r.status != StatusCode::ACCEPTED {
            return Err(http_error(r.status, &r.body));
        }
        let accepted = Instant::now();
        let (status, version) = status_of(&r.body)?;
        let settle = [OrderStatus::Confirmed, OrderStatus::Rejected];
        let (done, status) = match status {
            Some(s) if settle.contains(&s) => (accepted, Some(s)),
            _ => {
                let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|_| "malformed 202".to_owned())?;
                let order =
                    v["order_id"].as_str().and_then(|o| OrderId::parse(o).ok()).ok_or("a 202 without an order")?;
                self.long_poll(order, version, &settle).await?
            }
        };
        if status != Some(OrderStatus::Confirmed) {
            return Err(format!("order {}", status.map_or("?", |s| s.as_str())));
        }
        let mut rec = phase.rec.lock().expect("recorder lock");
        rec.ok(t0, done);
        rec.stage(t0, "1 POST /api/carts → 201", created.saturating_duration_since(t0));
        rec.stage(t0, "2 PUT line → 200", filled.saturating_duration_since(created));
        rec.stage(t0, "3 POST checkout → 202", accepted.saturating_duration_since(filled));
        rec.stage(t0, "4 202 → confirmed seen", done.saturating_duration_since(accepted));
        Ok(())
    }

    /// Stops tracking an order that failed; passes the error through.
    fn forget(&self, id: OrderId, e: String) -> String {
        if let Watch::Bus(o) = &self.watch {
            o.forget(id);
        }
        e
    }

    /// Long polls the order, from `version`, until it reaches one of `until`.
    async fn long_poll(
        &self,
        id: OrderId,
        mut version: i64,
        until: &[OrderStatus],
    ) -> Result<(Instant, Option<OrderStatus>), String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let path = format!("/api/orders/{id}?wait={LONG_POLL_WAIT}s&version={version}");
            let r = self.http.send(Method::GET, &path, &[], Bytes::new()).await.map_err(Failure::kind)?;
            if r.status != StatusCode::OK {
                return Err(http_error(r.status, &r.body));
            }
            let (status, v) = status_of(&r.body)?;
            if status.is_some_and(|s| until.contains(&s)) {
                return Ok((Instant::now(), status));
            }
            version = v;
            if Instant::now() > deadline {
                return Err("not settled within 30 s".into());
            }
        }
    }

    /// Polls the order every `every` until it reaches one of `until`.
    async fn poll(
        &self,
        id: OrderId,
        every: Duration,
        until: &[OrderStatus],
    ) -> Result<(Instant, Option<OrderStatus>), String> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        let path = format!("/api/orders/{id}");
        loop {
            let r = self.http.send(Method::GET, &path, &[], Bytes::new()).await.map_err(Failure::kind)?;
            if r.status.is_success() {
                let v: serde_json::Value =
                    serde_json::from_slice(&r.body).map_err(|_| "malformed order JSON".to_owned())?;
                let status = v["status"].as_str().and_then(OrderStatus::parse);
                if status.is_some_and(|s| until.contains(&s)) {
                    return Ok((Instant::now(), status));
                }
            }
            if Instant::now() > deadline {
                return Err("not settled within 30 s".into());
            }
            tokio::time::sleep(every).await;
        }
    }
}

/// How a client learns that its order settled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Client {
    /// The bench's bus observer.
    Bus,
    /// `GET /api/orders/{id}` every interval.
    Poll(Duration),
    /// `Prefer: wait` on the POST, then long polls.
    LongPoll,
}

/// `status` and `version` of a 202 or an order.
fn status_of(body: &[u8]) -> Result<(Option<OrderStatus>, i64), String> {
    let v: serde_json::Value = serde_json::from_slice(body).map_err(|_| "malformed order JSON".to_owned())?;
    Ok((v["status"].as_str().and_then(OrderStatus::parse), v["version"].as_i64().unwrap_or(0)))
}

/// The body of `POST /api/orders`: one line, quantity 1.
#[derive(Serialize)]
struct PlaceOrder<'a> {
    customer_email: &'static str,
    items: [Line<'a>; 1],
}

#[derive(Serialize)]
struct Line<'a> {
    sku: &'a str,
    quantity: u32,
}

/// An error kind from a problem+json answer: `503 overloaded`.
fn http_error(code: StatusCode, body: &[u8]) -> String {
    let problem: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match problem.as_ref().and_then(|p| p["code"].as_str()) {
        Some(c) => format!("{} {c}", code.as_u16()),
        None => code.as_u16().to_string(),
    }
}

/// Where a phase's measurements end up.
impl Phase {
    fn new(origin: Instant) -> Arc<Phase> {
        Arc::new(Phase { rec: Mutex::new(Recorder::new(origin)), background: Mutex::new(Vec::new()) })
    }

    async fn finish(&self, window: Duration) -> Measured {
        let tails: Vec<_> = self.background.lock().expect("background lock").drain(..).collect();
        for t in tails {
            let _ = tokio::time::timeout(SETTLE_TIMEOUT, t).await;
        }
        self.rec.lock().expect("recorder lock").summarize(window)
    }
}

/// `concurrency` clients, each sending its next request when the last one
/// completed, for `warmup` (not counted) then `duration`.
pub async fn closed(
    load: &Arc<Load>,
    work: Work,
    concurrency: usize,
    warmup: Duration,
    duration: Duration,
) -> Measured {
    let origin = Instant::now() + warmup;
    let end = origin + duration;
    let phase = Phase::new(origin);
    let mut clients = JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (load, phase) = (load.clone(), phase.clone());
        clients.spawn(async move {
            loop {
                let t0 = Instant::now();
                if t0 >= end {
                    return false;
                }
                if !load.one(work, t0, &phase).await {
                    return true;
                }
            }
        });
    }
    let mut ran_out = false;
    while let Some(r) = clients.join_next().await {
        ran_out |= r.unwrap_or(false);
    }
    // Out of work early (no confirmed orders left to cancel): throughput
    // counts up to the last completion, not over the whole window.
    phase.finish(if ran_out { Duration::ZERO } else { duration }).await
}

/// Requests started at `rate` per second on a fixed schedule, each timed
/// from its scheduled start. At most `max_inflight` at once: beyond that a
/// request is counted as an error rather than sent, so a stalled shop
/// can't make the bench itself run out of memory.
pub async fn open(
    load: &Arc<Load>,
    work: Work,
    rate: f64,
    warmup: Duration,
    duration: Duration,
    max_inflight: usize,
) -> Measured {
    let start = Instant::now();
    let phase = Phase::new(start + warmup);
    let gap = 1.0 / rate.max(0.001);
    let n = ((warmup + duration).as_secs_f64() * rate) as u64;
    let inflight = Arc::new(AtomicUsize::new(0));
    let mut requests = JoinSet::new();
    for i in 0..n {
        let t0 = start + Duration::from_secs_f64(i as f64 * gap);
        tokio::time::sleep_until(t0.into()).await;
        while requests.try_join_next().is_some() {}
        if inflight.load(Ordering::Relaxed) >= max_inflight {
            phase.rec.lock().expect("recorder lock").error(t0, "not sent: bench in-flight cap");
            continue;
        }
        inflight.fetch_add(1, Ordering::Relaxed);
        let (load, phase, inflight) = (load.clone(), phase.clone(), inflight.clone());
        requests.spawn(async move {
            load.one(work, t0, &phase).await;
            inflight.fetch_sub(1, Ordering::Relaxed);
        });
    }
    while requests.join_next().await.is_some() {}
    phase.finish(duration).await
}
