//! The running parts every consuming service has, started in one place:
//! the bus connection, the consumer, the parking timer and the outbox
//! relay, all stopped by one `CancellationToken`.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusOptions};
use crate::consumer::{Consumer, Handler, ParkingPolicy, Stats, StatsSnapshot};
use crate::db::Db;
use crate::outbox::{self, Backlog, Wakeup};
use crate::{dead_letter, parking};

/// A started service node.
#[derive(Clone)]
pub struct Node {
    pub db: Db,
    pub bus: Bus,
    pub stats: Arc<Stats>,
    pub wakeup: Wakeup,
}

/// What `/stats` reports.
#[derive(Debug, Serialize)]
pub struct NodeStats {
    pub bus_ready: bool,
    pub messages: StatsSnapshot,
    pub outbox: Backlog,
    pub parked: i64,
    pub dead_letters: i64,
}

impl Node {
    /// Starts the node's background tasks on `tasks`.
    pub fn start<H: Handler>(
        db: Db,
        bus: BusOptions,
        handler: H,
        policy: ParkingPolicy,
        shutdown: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Node {
        // The bus outlives the consumer and relay so they can ack and flush
        // while shutting down: it gets its own token, cancelled by `stop`.
        let bus_shutdown = CancellationToken::new();
        let (bus, deliveries, bus_task) = Bus::start(bus, bus_shutdown.clone());
        let stats = Arc::new(Stats::default());
        let wakeup = Wakeup::default();
        let consumer = Consumer::new(db.clone(), bus.prefix(), handler, wakeup.clone(), stats.clone(), policy);
        let mut inner = JoinSet::new();
        inner.spawn(consumer.clone().run(bus.clone(), deliveries, shutdown.clone()));
        inner.spawn(consumer.run_parking_timer(shutdown.clone()));
        inner.spawn(outbox::relay(db.clone(), bus.clone(), wakeup.clone(), shutdown.clone()));
        tasks.spawn(async move {
            while inner.join_next().await.is_some() {}
            bus_shutdown.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), bus_task).await;
        });
        Node { db, bus, stats, wakeup }
    }

    /// Why the node isn't ready, if it isn't.
    pub async fn not_ready_reason(&self) -> Option<String> {
        if !self.bus.is_ready() {
            return Some("not connected and subscribed to the MQTT broker".into());
        }
        let writable = async {
            let tx = self.db.begin().await?;
            tx.rollback().await
        };
        match tokio::time::timeout(Duration::from_secs(2), writable).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(format!("database not writable: {e}")),
            Err(_) => Some("database write lock not available within 2 s".into()),
        }
    }

    pub async fn stats(&self) -> sqlx::Result<NodeStats> {
        Ok(NodeStats {
            bus_ready: self.bus.is_ready(),
            messages: self.stats.snapshot(),
            outbox: outbox::backlog(&self.db.reader).await?,
            parked: parking::count(&self.db.reader).await?,
            dead_letters: sqlx::query_scalar("SELECT COUNT(*) FROM dead_letters").fetch_one(&self.db.reader).await?,
        })
    }

    pub async fn dead_letters(&self, limit: i64) -> sqlx::Result<Vec<dead_letter::DeadLetter>> {
        dead_letter::list(&self.db.reader, limit).await
    }
}

/// Probes and stats routes every service node serves.
pub fn routes(node: Node) -> axum::Router {
    use axum::extract::{Query, State};
    use axum::response::IntoResponse;
    use axum::routing::get;
    use axum::Json;

    use crate::http::ApiError;

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
            Some(reason) => Err(ApiError::unavailable("not_ready", reason)),
        }
    }
    async fn stats(State(node): State<Node>) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.stats().await?))
    }
    async fn dead_letters(State(node): State<Node>, Query(q): Query<Limit>) -> Result<impl IntoResponse, ApiError> {
        Ok(Json(node.dead_letters(q.limit.unwrap_or(100).clamp(1, 1000)).await?))
    }
    axum::Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/stats", get(stats))
        .route("/dead-letters", get(dead_letters))
        .with_state(node)
}
