//! The operator API behind `/admin/api/*` (bearer token: the front's
//! `admin_token`; the same header is passed on to the nodes, whose write
//! routes check their own token). The dashboard page reads it.
//!
//! - `GET  /admin/api/overview`: readiness, orders per status, message
//!   counters, outbox backlog, parked and dead letters, stock, recent orders;
//! - `GET  /admin/api/orders/{id}/timeline`: what each node did with each
//!   message about the order, merged by time;
//! - `GET  /admin/api/audit` (also `/admin/audit`): the books audit;
//! - `GET  /admin/api/{node}/dead-letters`, `POST /admin/api/{node}/dead-letters/{id}/replay`;
//! - `GET  /admin/api/{node}/parked`;
//! - `POST /admin/api/products`, `PATCH /admin/api/products/{sku}`: add a
//!   product; set its price or stock (a restock).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use reqwest::Method;
use serde_json::{json, Value};
use shared::http::{Admin, ApiError, ErrorCode, PathParam};
use shared::ids::{OrderId, Sku};

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/orders/{order_id}/timeline", get(timeline))
        .route("/admin/api/audit", get(audit))
        .route("/admin/audit", get(audit))
        .route("/admin/api/{node}/dead-letters", get(dead_letters))
        .route("/admin/api/{node}/dead-letters/{id}/replay", post(replay))
        .route("/admin/api/{node}/parked", get(parked))
        .route("/admin/api/products", post(add_product))
        .route("/admin/api/products/{sku}", patch(update_product))
}

fn node_name(node: &str) -> Result<&'static str, ApiError> {
    match node {
        "inventory" => Ok("inventory"),
        "order" => Ok("order"),
        _ => Err(ApiError::not_found(ErrorCode::UnknownNode, "The node must be `inventory` or `order`.")),
    }
}

/// Turns a node's answer into ours: its status and body when it is a
/// client error or success, a 503 when it failed.
fn relay((status, body): (StatusCode, Value)) -> Result<(StatusCode, Json<Value>), ApiError> {
    if status.is_server_error() {
        return Err(ApiError::unavailable(ErrorCode::NodeFailing, "The node could not answer; please retry shortly."));
    }
    Ok((status, Json(body)))
}

async fn overview(State(s): State<AppState>, _: Admin) -> Result<impl IntoResponse, ApiError> {
    let d = &s.downstream;
    let ((inv_ready, inv_reason), (ord_ready, ord_reason)) =
        tokio::join!(d.readiness("inventory"), d.readiness("order"));
    let nodes = json!([
        {"name": "public-front", "url": "", "ready": s.bus.is_ready(),
         "reason": s.bus.not_ready_reason()},
        {"name": "inventory", "url": d.base("inventory"), "ready": inv_ready, "reason": inv_reason},
        {"name": "order", "url": d.base("order"), "ready": ord_ready, "reason": ord_reason},
    ]);
    let get = |node: &'static str, path: &'static str| async move { d.node_json::<Value>(node, path).await.ok() };
    let (inv_stats, ord_stats, counts, stock, recent) = tokio::join!(
        get("inventory", "/stats"),
        get("order", "/stats"),
        get("order", "/orders/counts"),
        get("inventory", "/stock"),
        get("order", "/orders/recent?limit=20"),
    );
    let pick = |stats: &Option<Value>, key: &str| stats.as_ref().map_or(Value::Null, |v| v[key].clone());
    let recent: Vec<Value> = recent
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .into_iter()
        .map(|o| {
            json!({"order_id": o["order_id"], "status": o["status"], "version": o["version"],
                   "total_cents": o["total_cents"], "currency": o["currency"], "reason": o["reason"],
                   "created_at_ms": o["created_at_ms"], "updated_at_ms": o["updated_at_ms"]})
        })
        .collect();
    Ok(Json(json!({
        "nodes": nodes,
        "orders": counts.unwrap_or(Value::Null),
        "messages": {"inventory": pick(&inv_stats, "messages"), "order": pick(&ord_stats, "messages")},
        "outbox": {"inventory": pick(&inv_stats, "outbox"), "order": pick(&ord_stats, "outbox")},
        "parked": {"inventory": pick(&inv_stats, "parked"), "order": pick(&ord_stats, "parked")},
        "dead_letters": {"inventory": pick(&inv_stats, "dead_letters"), "order": pick(&ord_stats, "dead_letters")},
        "stock": stock.unwrap_or(Value::Null),
        "recent_orders": recent,
    })))
}

async fn timeline(
    State(s): State<AppState>,
    _: Admin,
    PathParam(id): PathParam<OrderId>,
) -> Result<impl IntoResponse, ApiError> {
    let path = format!("/timeline/{id}");
    let (inv, ord) = tokio::join!(
        s.downstream.node_json::<Vec<Value>>("inventory", &path),
        s.downstream.node_json::<Vec<Value>>("order", &path)
    );
    let mut entries: Vec<Value> = Vec::new();
    for (node, list) in [("inventory", inv?), ("order", ord?)] {
        entries.extend(list.into_iter().map(|mut e| {
            e["node"] = json!(node);
            e
        }));
    }
    entries.sort_by_key(|e| e["at_ms"].as_i64().unwrap_or(0));
    Ok(Json(entries))
}

async fn audit(State(s): State<AppState>, _: Admin) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(crate::audit::run(&s.downstream, s.audit_horizon).await?))
}

async fn dead_letters(
    State(s): State<AppState>,
    _: Admin,
    Path(node): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.downstream.node_json::<Value>(node_name(&node)?, "/dead-letters?limit=1000").await?))
}

async fn replay(
    State(s): State<AppState>,
    Admin { authorization }: Admin,
    Path((node, id)): Path<(String, i64)>,
) -> Result<impl IntoResponse, ApiError> {
    let path = format!("/dead-letters/{id}/replay");
    relay(s.downstream.forward(node_name(&node)?, Method::POST, &path, authorization.as_deref(), None).await?)
}

async fn parked(State(s): State<AppState>, _: Admin, Path(node): Path<String>) -> Result<impl IntoResponse, ApiError> {
    Ok(Json(s.downstream.node_json::<Value>(node_name(&node)?, "/parked?limit=1000").await?))
}

async fn add_product(
    State(s): State<AppState>,
    Admin { authorization }: Admin,
    Json(body): Json<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let auth = authorization.as_deref();
    let answer = s.downstream.forward("inventory", Method::POST, "/admin/products", auth, Some(body)).await?;
    // The operator should see the change in the catalog at once.
    s.downstream.invalidate();
    relay(answer)
}

async fn update_product(
    State(s): State<AppState>,
    Admin { authorization }: Admin,
    PathParam(sku): PathParam<Sku>,
    Json(body): Json<Value>,
) -> Result<impl IntoResponse, ApiError> {
    let path = format!("/admin/products/{sku}");
    let answer = s.downstream.forward("inventory", Method::PATCH, &path, authorization.as_deref(), Some(body)).await?;
    s.downstream.invalidate();
    relay(answer)
}
