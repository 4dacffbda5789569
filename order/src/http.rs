//! The order service's HTTP API, read by public-front (and operators):
//! `GET /orders/{order_id}`, `GET /orders` (paged), `GET /orders/counts`,
//! `GET /release-chases` (paged), plus the node routes (added by
//! `shared::node::Service`).

use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use shared::http::{rejection, ApiError};
use shared::ids::OrderId;
use shared::node::Node;

use crate::domain::Order;
use crate::store::{self, Counts, ReleaseChase};

pub fn router(node: Node) -> Router {
    Router::new()
        .route("/orders", get(list))
        .route("/orders/counts", get(counts))
        .route("/orders/recent", get(recent))
        .route("/orders/{order_id}", get(one))
        .route("/release-chases", get(release_chases))
        .with_state(node)
}

async fn one(State(node): State<Node>, Path(id): Path<String>) -> Result<Json<Order>, ApiError> {
    let id = OrderId::parse(&id).map_err(|e| ApiError::bad_request("invalid_order_id", e.to_string()))?;
    store::read(&node.db.reader, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("unknown_order", format!("no order {id}")))
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

async fn list(
    State(node): State<Node>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let Query(q) = q.map_err(|e| rejection(&e, e.status()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(store::list(&node.db.reader, q.after.as_deref(), limit).await?))
}

/// Releases chased for orders known only by their tombstone.
async fn release_chases(
    State(node): State<Node>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<ReleaseChase>>, ApiError> {
    let Query(q) = q.map_err(|e| rejection(&e, e.status()))?;
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(store::release_chases(&node.db.reader, q.after.as_deref(), limit).await?))
}

async fn counts(State(node): State<Node>) -> Result<Json<Counts>, ApiError> {
    Ok(Json(store::counts(&node.db.reader).await?))
}

async fn recent(
    State(node): State<Node>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let Query(q) = q.map_err(|e| rejection(&e, e.status()))?;
    Ok(Json(store::recent(&node.db.reader, q.limit.unwrap_or(20).clamp(1, 200)).await?))
}
