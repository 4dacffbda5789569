//! The running parts every consuming service has, started in one place:
//! the bus connection, the consumer, the parking timer and the outbox
//! relay, all stopped by one `CancellationToken`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusOptions};
use crate::config::BusConfig;
use crate::consumer::{Consumer, Handler, ParkingPolicy, Stats, StatsSnapshot};
use crate::db::{Db, DbError, DbResult};
use crate::outbox::{self, Backlog, Wakeup};
use crate::ownership::{Owned, Sessions};
use crate::topics::Topic;
use crate::{dead_letter, parking};

/// Sets a service's own gauges before `/metrics` renders.
pub type Gauges = Arc<dyn Fn(Db) -> futures_util::future::BoxFuture<'static, ()> + Send + Sync>;

/// Applies one `(topic, payload)` through the node's own consumer, as if
/// the bus had delivered it.
pub type Apply =
    Arc<dyn Fn(String, bytes::Bytes) -> futures_util::future::BoxFuture<'static, DbResult<()>> + Send + Sync>;

/// A started service node.
#[derive(Clone)]
pub struct Node {
    pub name: &'static str,
    pub db: Db,
    /// The connection the outbox relay publishes on (clean session, no
    /// subscriptions; client id `{bus.client_id}-{instance}`).
    pub bus: Bus,
    /// The partitions this instance consumes, each with its session.
    pub owned: Owned,
    pub stats: Arc<Stats>,
    pub wakeup: Wakeup,
    /// Bearer token for the node's write routes (replaying dead letters,
    /// product admin). `None`: those routes answer 403.
    pub admin_token: Option<crate::config::Secret>,
    pub gauges: Option<Gauges>,
    /// Replays a dead letter locally: a node may not publish the topics it
    /// consumes (its broker role forbids it), and only this node needs
    /// the copy.
    pub apply: Apply,
}

/// What `/stats` reports.
#[derive(Debug, Serialize)]
pub struct NodeStats {
    pub bus_ready: bool,
    /// This process's id (the outbox's and the partitions' owner).
    pub instance: &'static str,
    /// The partitions this instance consumes now.
    pub partitions: Vec<u16>,
    pub messages: StatsSnapshot,
    pub outbox: Backlog,
    pub parked: i64,
    pub dead_letters: i64,
}

impl crate::http::AdminToken for Node {
    fn admin_token(&self) -> Option<&crate::config::Secret> {
        self.admin_token.as_ref()
    }
}

impl Node {
    /// Starts the node's background tasks on `tasks`: the publishing
    /// connection, the partition sessions that consume `topics` (all of
    /// them on SQLite, this instance's share on PostgreSQL: see
    /// [`crate::ownership`]), the consumer, the parking timer and the
    /// relay. Fails only on bad bus settings.
    #[allow(clippy::too_many_arguments)]
    pub fn start<H: Handler>(
        name: &'static str,
        db: Db,
        bus: BusConfig,
        topics: &'static [Topic],
        handler: H,
        policy: ParkingPolicy,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> anyhow::Result<Node> {
        // Install the metrics recorder before anything counts.
        crate::metrics::handle();
        // The sessions outlive the consumer and relay so they can ack and
        // flush while shutting down: they get their own token, cancelled
        // once those have finished.
        let bus_shutdown = CancellationToken::new();
        let (into_consumer, deliveries) = tokio::sync::mpsc::unbounded_channel();
        let (sessions, owned) = Sessions::new(name, bus.clone(), topics, into_consumer, bus_shutdown.clone())?;
        let mut publisher = bus;
        publisher.client_id = format!("{}-{}", publisher.client_id, &crate::db::instance()[..8]);
        let (bus, _, bus_task) = Bus::start(BusOptions::publisher(publisher), bus_shutdown.clone())?;
        let ownership = match db.pg.clone() {
            Some(target) => tokio::spawn(sessions.run_shared(target, shutdown.clone())),
            None => {
                let mut sessions = sessions;
                sessions.start_all();
                tokio::spawn(sessions.run_sole())
            }
        };
        let stats = Arc::new(Stats::default());
        let wakeup = Wakeup::default();
        let consumer = Consumer::new(name, db.clone(), bus.prefix(), handler, wakeup.clone(), stats.clone(), policy);
        let local = consumer.clone();
        let apply: Apply = Arc::new(move |topic, payload| {
            let local = local.clone();
            Box::pin(async move { local.apply(vec![(topic, payload)]).await.map(drop) })
        });
        let mut inner = JoinSet::new();
        inner.spawn(consumer.clone().run(deliveries, shutdown.clone()));
        inner.spawn(consumer.run_parking_timer(shutdown.clone()));
        inner.spawn(outbox::relay(db.clone(), bus.clone(), wakeup.clone(), shutdown.clone()));
        tasks.spawn(async move {
            while inner.join_next().await.is_some() {}
            bus_shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), bus_task).await;
            let _ = tokio::time::timeout(Duration::from_secs(5), ownership).await;
        });
        Ok(Node { name, db, bus, owned, stats, wakeup, admin_token: None, gauges: None, apply })
    }

    pub fn with_admin_token(mut self, token: Option<crate::config::Secret>) -> Self {
        self.admin_token = token;
        self
    }

    pub fn with_gauges(mut self, gauges: Gauges) -> Self {
        self.gauges = Some(gauges);
        self
    }

    /// Sets the gauges every node has, then the service's own.
    pub async fn update_gauges(&self) {
        if let Ok(s) = self.stats().await {
            let n = self.name;
            metrics::gauge!("outbox_unsent", "node" => n).set(s.outbox.unsent as f64);
            metrics::gauge!("outbox_oldest_unsent_age_seconds", "node" => n)
                .set(s.outbox.oldest_unsent_age_ms.unwrap_or(0) as f64 / 1000.0);
            metrics::gauge!("parked_messages", "node" => n).set(s.parked as f64);
            metrics::gauge!("dead_letters", "node" => n).set(s.dead_letters as f64);
            metrics::gauge!("bus_connected", "node" => n).set(if s.bus_ready { 1.0 } else { 0.0 });
        }
        if let Some(g) = &self.gauges {
            g(self.db.clone()).await;
        }
    }

    /// Why the node isn't ready, if it isn't.
    pub async fn not_ready_reason(&self) -> Option<String> {
        if let Some(reason) = self.bus.not_ready_reason() {
            return Some(reason);
        }
        let Some(sessions) = self.owned.borrow().clone() else {
            return Some("has not claimed its partitions yet".into());
        };
        for (p, bus) in sessions {
            if let Some(reason) = bus.not_ready_reason() {
                return Some(format!("partition {p}: {reason}"));
            }
        }
        // An empty write transaction: takes the write lock, writes nothing.
        let writable = self.db.write(|_| Ok::<_, DbError>(()));
        match tokio::time::timeout(Duration::from_secs(2), writable).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("database not writable: {e}")),
            Err(_) => Some("the database writer did not take the write lock within 2 s".into()),
        }
    }

    pub async fn stats(&self) -> DbResult<NodeStats> {
        let owned = self.owned.borrow().clone().unwrap_or_default();
        let partitions: Vec<u16> = owned.keys().copied().collect();
        let bus_ready = self.bus.is_ready() && owned.values().all(Bus::is_ready);
        Ok(NodeStats {
            bus_ready,
            instance: crate::db::instance(),
            partitions,
            messages: self.stats.snapshot(),
            outbox: outbox::backlog(&self.db.reader).await?,
            parked: parking::count(&self.db.reader).await?,
            dead_letters: dead_letter::count(&self.db.reader).await?,
        })
    }

    pub async fn dead_letters(&self, limit: i64) -> DbResult<Vec<dead_letter::DeadLetter>> {
        dead_letter::list(&self.db.reader, limit).await
    }
}

/// A built service node: its HTTP listener bound and its background tasks
/// running. `run` serves until shutdown, then drains.
pub struct Service {
    listener: tokio::net::TcpListener,
    tls: Option<crate::tls::TlsAcceptor>,
    node: Node,
    router: axum::Router,
    tasks: JoinSet<()>,
    shutdown: CancellationToken,
}

impl Service {
    /// `router` is the service's own API; the node routes are added here.
    /// With `tls` (from [`crate::tls::acceptor`]) it serves HTTPS.
    pub fn new(
        listener: tokio::net::TcpListener,
        tls: Option<crate::tls::TlsAcceptor>,
        node: Node,
        router: axum::Router,
        tasks: JoinSet<()>,
        shutdown: CancellationToken,
    ) -> Self {
        let router = router.merge(routes(node.clone()));
        Self { listener, tls, node, router, tasks, shutdown }
    }

    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.listener.local_addr().expect("bound listener has an address")
    }

    pub fn node(&self) -> &Node {
        &self.node
    }

    /// Serves until shutdown, then waits for the background tasks to finish
    /// their batch and flush the outbox, and closes the database.
    pub async fn run(mut self) -> anyhow::Result<()> {
        crate::http::serve(self.listener, self.router, self.tls, self.shutdown.clone()).await?;
        while self.tasks.join_next().await.is_some() {}
        self.node.db.close().await;
        Ok(())
    }
}

/// What a node's binary does: load its config (`file`, then the
/// environment), set up logging (and span export, as `service`) and crash
/// points, build it, serve until SIGTERM/Ctrl-C, drain, flush the spans.
pub async fn main_with_config<C, B, Fut, A>(
    service: &'static str,
    file: Option<&std::path::Path>,
    env_prefix: &str,
    log: impl FnOnce(&C) -> crate::config::LogConfig,
    build: B,
) -> anyhow::Result<()>
where
    C: serde::de::DeserializeOwned + serde::Serialize + Default,
    B: FnOnce(C, CancellationToken) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<A>>,
    A: Runnable,
{
    let cfg: C = crate::config::load(file, env_prefix)?;
    let _telemetry = crate::telemetry::init(service, &log(&cfg))?;
    crate::failpoints::setup();
    let shutdown = CancellationToken::new();
    crate::shutdown::cancel_on_signal(shutdown.clone());
    let app = build(cfg, shutdown).await?;
    tracing::info!(addr = %app.addr(), "listening");
    app.serve().await
}

/// An app `main_with_config` can run.
pub trait Runnable {
    fn addr(&self) -> std::net::SocketAddr;
    fn serve(self) -> impl std::future::Future<Output = anyhow::Result<()>>;
}

impl Runnable for Service {
    fn addr(&self) -> std::net::SocketAddr {
        self.local_addr()
    }
    fn serve(self) -> impl std::future::Future<Output = anyhow::Result<()>> {
        self.run()
    }
}

/// Probes, stats, metrics and operator routes every service node serves:
/// `GET /healthz`, `/readyz`, `/stats`, `/metrics`, `/dead-letters`,
/// `/parked`, `/timeline/{order_id}`, and (bearer token)
/// `POST /dead-letters/{id}/replay`.
pub fn routes(node: Node) -> axum::Router {
    use axum::extract::{Path, Query, State};
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use axum::routing::{get, post};
    use axum::Json;

    use crate::http::{require_bearer, ApiError, ErrorCode, PathParam};

    #[derive(serde::Deserialize)]
    struct Limit {
        limit: Option<i64>,
    }

    async fn healthz() -> impl IntoResponse {
        Json(serde_json::json!({"status": "ok"}))
    }
    async fn readyz(State(node): State<Node>) -> Result<impl IntoResponse, ApiError> {
        match node.not_ready_reason().await {
            None => Ok(Json(serde_json::json!({"status": "ready"}))),
            Some(reason) => Err(ApiError::unavailable(ErrorCode::NotReady, reason)),
        }
    }
    async fn stats(State(node): State<Node>) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.stats().await?))
    }
    async fn metrics_text(State(node): State<Node>) -> impl IntoResponse {
        node.update_gauges().await;
        ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], crate::metrics::render())
    }
    async fn dead_letters(State(node): State<Node>, Query(q): Query<Limit>) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.dead_letters(q.limit.unwrap_or(100).clamp(1, 1000)).await?))
    }
    async fn parked(State(node): State<Node>, Query(q): Query<Limit>) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(parking::list(&node.db.reader, q.limit.unwrap_or(100).clamp(1, 1000)).await?))
    }
    async fn timeline(
        State(node): State<Node>,
        PathParam(id): PathParam<crate::ids::OrderId>,
    ) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(crate::timeline::for_order(&node.db.reader, &id.to_string()).await?))
    }
    /// Applies a dead letter again (after the cause was fixed) and forgets
    /// it. Dead-lettered messages are not in the inbox, so the copy is
    /// applied, not dropped as a duplicate; if it fails again it is a new
    /// dead letter. Applied here rather than published: the node's broker
    /// role may not publish the topics it consumes, and the other
    /// consumers of the topic had their own copy.
    async fn replay(
        State(node): State<Node>,
        headers: HeaderMap,
        Path(id): Path<i64>,
    ) -> Result<impl IntoResponse, ApiError> {
        require_bearer(node.admin_token.as_ref(), &headers)?;
        let letter = dead_letter::get(&node.db.reader, id)
            .await?
            .ok_or_else(|| ApiError::not_found(ErrorCode::UnknownDeadLetter, format!("no dead letter #{id}")))?;
        if letter.payload.len() as i64 != letter.payload_bytes {
            return Err(ApiError::conflict(
                ErrorCode::Truncated,
                "This dead letter was stored truncated; it can't be replayed.",
            ));
        }
        (node.apply)(letter.topic.clone(), letter.payload.into()).await?;
        node.wakeup.wake();
        node.db.write(move |tx| dead_letter::remove(tx, id)).await?;
        Ok(Json(serde_json::json!({"replayed": id, "topic": letter.topic})))
    }
    let name = node.name;
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics_text))
        .route("/dead-letters", get(dead_letters))
        .route("/dead-letters/{id}/replay", post(replay))
        .route("/parked", get(parked))
        .route("/timeline/{order_id}", get(timeline))
        .with_state(node)
        .layer(axum::middleware::from_fn(move |req, next| crate::metrics::track_http(name, req, next)))
}
