//! The order service's HTTP API, read by public-front (and operators):
//! `GET /orders/{order_id}`, `GET /orders` (paged), `GET /orders/counts`,
//! `GET /release-chases` (paged), `GET /carts/{cart_id}`, `GET /carts`
//! (recently changed open carts), `GET /carts/counts`, plus the node routes
//! (added by `shared::node::Service`).

use axum::extract::State;
use axum::routing::get;
use axum::Router;
use serde::Deserialize;

use shared::http::{ApiError, ErrorCode, Json, PathParam, Query};
use shared::ids::{CartId, OrderId};
use shared::node::Node;
use shared::view::{Cart, Order, ReleaseChase};

use crate::carts::store as carts;
use crate::store::{self, Counts};

pub fn router(node: Node) -> Router {
    Router::new()
        .route("/orders", get(list))
        .route("/orders/counts", get(counts))
        .route("/orders/recent", get(recent))
        .route("/orders/{order_id}", get(one))
        .route("/release-chases", get(release_chases))
        .route("/carts", get(open_carts))
        .route("/carts/counts", get(cart_counts))
        .route("/carts/{cart_id}", get(cart))
        .with_state(node)
}

async fn one(State(node): State<Node>, PathParam(id): PathParam<OrderId>) -> Result<Json<Order>, ApiError> {
    store::read(&node.db.reader, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(ErrorCode::UnknownOrder, format!("no order {id}")))
}

#[derive(Deserialize)]
struct ListQuery {
    after: Option<String>,
    limit: Option<i64>,
}

async fn list(State(node): State<Node>, Query(q): Query<ListQuery>) -> Result<Json<Vec<Order>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(store::list(&node.db.reader, q.after.as_deref(), limit).await?))
}

/// Releases chased for orders known only by their tombstone.
async fn release_chases(
    State(node): State<Node>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<ReleaseChase>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(store::release_chases(&node.db.reader, q.after.as_deref(), limit).await?))
}

async fn counts(State(node): State<Node>) -> Result<Json<Counts>, ApiError> {
    Ok(Json(store::counts(&node.db.reader).await?))
}

async fn recent(State(node): State<Node>, Query(q): Query<ListQuery>) -> Result<Json<Vec<Order>>, ApiError> {
    Ok(Json(store::recent(&node.db.reader, q.limit.unwrap_or(20).clamp(1, 200)).await?))
}

async fn cart(State(node): State<Node>, PathParam(id): PathParam<CartId>) -> Result<Json<Cart>, ApiError> {
    carts::read(&node.db.reader, id)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(ErrorCode::UnknownCart, format!("no cart {id}")))
}

async fn open_carts(State(node): State<Node>, Query(q): Query<ListQuery>) -> Result<Json<Vec<Cart>>, ApiError> {
    Ok(Json(carts::recent_open(&node.db.reader, q.limit.unwrap_or(20).clamp(1, 200)).await?))
}

async fn cart_counts(State(node): State<Node>) -> Result<Json<carts::Counts>, ApiError> {
    Ok(Json(carts::counts(&node.db.reader).await?))
}
