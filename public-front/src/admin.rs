//! The operator API behind `/admin/api/*` (bearer token: the front's
//! `admin_token`; the same header is passed on to the nodes, whose write
//! routes check their own token). The dashboard page reads it.
//!
//! - `GET  /admin/api/overview`: readiness, orders per status, message
//!   counters, outbox backlog, parked and dead letters, stock, recent orders;
//! - `GET  /admin/api/carts`: carts open and checked out, the most recently
//!   changed open carts with their lines, the stock inventory holds for
//!   carts per SKU and the holds that run out first;
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
use serde::Serialize;
use serde_json::{json, Value};
use shared::http::{Admin, ApiError, ErrorCode, PathParam};
use shared::ids::{OrderId, Sku};
use shared::view::HoldView;

use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/api/overview", get(overview))
        .route("/admin/api/carts", get(carts))
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

/// Open carts the dashboard lists, newest change first.
const RECENT_CARTS: usize = 10;
/// Holds the dashboard lists, the first to run out first.
const EXPIRING_HOLDS: usize = 10;

/// Holds the dashboard reads at most (pages of 1000, by cart and SKU):
/// beyond that the figures are marked as partial.
const MAX_HOLDS: usize = 10_000;

/// The stock held for carts of one SKU.
#[derive(Debug, PartialEq, Eq, Serialize)]
struct HeldSku {
    sku: String,
    /// Units held, in all carts.
    held: i64,
    /// Carts holding some.
    carts: usize,
    /// When the first of those holds runs out (stock goes back to sale).
    next_expiry_ms: i64,
}

/// `holds` summed per SKU, the SKU whose stock comes back first on top.
fn held_by_sku(holds: &[HoldView]) -> Vec<HeldSku> {
    let mut by_sku: std::collections::BTreeMap<&str, HeldSku> = std::collections::BTreeMap::new();
    for h in holds {
        let e = by_sku.entry(&h.sku).or_insert_with(|| HeldSku {
            sku: h.sku.clone(),
            held: 0,
            carts: 0,
            next_expiry_ms: h.expires_at_ms,
        });
        e.held += h.quantity;
        e.carts += 1;
        e.next_expiry_ms = e.next_expiry_ms.min(h.expires_at_ms);
    }
    let mut held: Vec<HeldSku> = by_sku.into_values().collect();
    held.sort_by(|a, b| a.next_expiry_ms.cmp(&b.next_expiry_ms).then_with(|| a.sku.cmp(&b.sku)));
    held
}

/// The holds that run out first (ties by cart and SKU).
fn expiring_first(mut holds: Vec<HoldView>, n: usize) -> Vec<HoldView> {
    holds.sort_by(|a, b| (a.expires_at_ms, &a.cart_id, &a.sku).cmp(&(b.expires_at_ms, &b.cart_id, &b.sku)));
    holds.truncate(n);
    holds
}

/// Inventory's holds, page by page, up to [`MAX_HOLDS`]; `true` if there
/// are more.
async fn read_holds(d: &crate::downstream::Downstream) -> Result<(Vec<HoldView>, bool), ApiError> {
    const PAGE: usize = 1000;
    let mut holds: Vec<HoldView> = Vec::new();
    loop {
        let after = holds.last().map(|h| format!("&after={}/{}", h.cart_id, h.sku)).unwrap_or_default();
        let page: Vec<HoldView> = d.node_json("inventory", &format!("/holds?limit={PAGE}{after}")).await?;
        let done = page.len() < PAGE;
        holds.extend(page);
        if done {
            return Ok((holds, false));
        }
        if holds.len() >= MAX_HOLDS {
            return Ok((holds, true));
        }
    }
}

/// Carts and the stock held for them. Each part is `null` while the node
/// that has it doesn't answer, as in the overview; `holds_partial` says
/// the held figures count only the first [`MAX_HOLDS`] holds. `now_ms` is
/// the front's clock, so the page can show "in 40 s" whatever the
/// browser's clock says.
async fn carts(State(s): State<AppState>, _: Admin) -> Result<impl IntoResponse, ApiError> {
    let d = &s.downstream;
    let recent_path = format!("/carts?limit={RECENT_CARTS}");
    let (counts, recent, holds) = tokio::join!(
        d.node_json::<Value>("order", "/carts/counts"),
        d.node_json::<Value>("order", &recent_path),
        read_holds(d),
    );
    let (holds, partial) = match holds {
        Ok((holds, partial)) => (Some(holds), partial),
        Err(_) => (None, false),
    };
    Ok(Json(json!({
        "now_ms": shared::clock::now_ms(),
        "counts": counts.ok(),
        "recent": recent.ok(),
        "held": holds.as_deref().map(held_by_sku),
        "expiring": holds.map(|h| expiring_first(h, EXPIRING_HOLDS)),
        "holds_partial": partial,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hold(cart: &str, sku: &str, quantity: i64, expires_at_ms: i64) -> HoldView {
        HoldView { cart_id: cart.into(), sku: sku.into(), quantity, expires_at_ms }
    }

    #[test]
    fn holds_sum_per_sku_and_the_first_to_run_out_comes_first() {
        let holds = [
            hold("c1", "TENT", 2, 9_000),
            hold("c2", "TENT", 1, 5_000),
            hold("c2", "MUG", 3, 7_000),
            hold("c3", "FUEL", 1, 5_000),
        ];
        let held = held_by_sku(&holds);
        let row = |sku: &str, held: i64, carts: usize, next_expiry_ms: i64| HeldSku {
            sku: sku.into(),
            held,
            carts,
            next_expiry_ms,
        };
        assert_eq!(held, vec![row("FUEL", 1, 1, 5_000), row("TENT", 3, 2, 5_000), row("MUG", 3, 1, 7_000)]);
        assert!(held_by_sku(&[]).is_empty());

        let first: Vec<(String, String)> =
            expiring_first(holds.to_vec(), 2).into_iter().map(|h| (h.cart_id, h.sku)).collect();
        assert_eq!(first, [("c2".to_owned(), "TENT".to_owned()), ("c3".to_owned(), "FUEL".to_owned())]);
    }
}
