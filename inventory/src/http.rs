//! Inventory's HTTP API, read by public-front (and operators):
//! `GET /products`, `GET /products/{sku}`, `POST /products/lookup`,
//! `GET /reservations/{order_id}`, `GET /stock`, `GET /holds`, plus the node
//! routes (added by `shared::node::Service`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};

use shared::http::{Admin, ApiError, ErrorCode, Json, PathParam, Query};
use shared::ids::{OrderId, Sku};
use shared::node::Node;
use shared::view::{HoldView, Product, ReservationView, StockView};

use crate::store;

pub fn router(node: Node) -> Router {
    Router::new()
        .route("/products", get(list))
        .route("/products/lookup", post(lookup))
        .route("/products/{sku}", get(one))
        .route("/reservations", get(reservations))
        .route("/reservations/{order_id}", get(reservation))
        .route("/stock", get(stock))
        .route("/holds", get(holds))
        .route("/admin/products", post(add_product))
        .route("/admin/products/{sku}", axum::routing::patch(update_product))
        .with_state(node)
}

#[derive(Deserialize)]
struct ListQuery {
    q: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

#[derive(Serialize)]
struct Page {
    items: Vec<Product>,
    next_cursor: Option<String>,
}

async fn list(State(node): State<Node>, Query(q): Query<ListQuery>) -> Result<Json<Page>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(ErrorCode::InvalidLimit, "limit must be between 1 and 100"));
    }
    let search = q.q.as_deref().map(str::trim).filter(|s| !s.is_empty());
    let (items, more) = store::list_products(&node.db.reader, search, q.cursor.as_deref(), limit).await?;
    let next_cursor = if more { items.last().map(|p| p.sku.clone()) } else { None };
    Ok(Json(Page { items, next_cursor }))
}

async fn one(State(node): State<Node>, PathParam(sku): PathParam<Sku>) -> Result<Json<Product>, ApiError> {
    store::get_product(&node.db.reader, &sku)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(ErrorCode::UnknownProduct, format!("no product with SKU {sku}")))
}

#[derive(Deserialize)]
struct Lookup {
    skus: Vec<Sku>,
}

async fn lookup(State(node): State<Node>, Json(body): Json<Lookup>) -> Result<Json<Vec<Product>>, ApiError> {
    if body.skus.len() > 100 {
        return Err(ApiError::bad_request(ErrorCode::TooManySkus, "look up at most 100 SKUs at once"));
    }
    Ok(Json(store::get_products(&node.db.reader, &body.skus).await?))
}

async fn reservation(
    State(node): State<Node>,
    PathParam(id): PathParam<OrderId>,
) -> Result<Json<ReservationView>, ApiError> {
    store::reservation_view(&node.db.reader, id).await?.map(Json).ok_or_else(|| {
        ApiError::not_found(ErrorCode::UnknownReservation, format!("inventory has no record of order {id}"))
    })
}

#[derive(Deserialize)]
struct PageQuery {
    after: Option<String>,
    limit: Option<i64>,
}

async fn reservations(
    State(node): State<Node>,
    Query(q): Query<PageQuery>,
) -> Result<Json<Vec<ReservationView>>, ApiError> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    Ok(Json(store::list_reservations(&node.db.reader, q.after.as_deref(), limit).await?))
}

async fn stock(State(node): State<Node>) -> Result<Json<Vec<StockView>>, ApiError> {
    Ok(Json(store::stock(&node.db.reader).await?))
}

#[derive(Deserialize)]
struct HoldsQuery {
    /// `{cart_id}/{sku}` of the last hold of the previous page.
    after: Option<String>,
    limit: Option<i64>,
}

/// `GET /holds?after=&limit=`: every hold, by cart and SKU (`limit` 1–1000,
/// default 100; the next page starts `after` the last row's
/// `{cart_id}/{sku}`).
async fn holds(State(node): State<Node>, Query(q): Query<HoldsQuery>) -> Result<Json<Vec<HoldView>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_request(ErrorCode::InvalidLimit, "limit must be between 1 and 1000"));
    }
    let after = match q.after.as_deref() {
        None => None,
        Some(a) => Some(a.split_once('/').ok_or_else(|| {
            ApiError::bad_request(ErrorCode::InvalidCursor, "after must be the `{cart_id}/{sku}` of a listed hold")
        })?),
    };
    Ok(Json(store::list_holds(&node.db.reader, after, limit).await?))
}

fn admin_error(e: store::AdminError) -> ApiError {
    match e {
        store::AdminError::Exists(_) => ApiError::conflict(ErrorCode::ProductExists, e.to_string()),
        store::AdminError::Unknown(_) => ApiError::not_found(ErrorCode::UnknownProduct, e.to_string()),
        store::AdminError::Db(e) => ApiError::internal(e),
    }
}

/// `POST /admin/products` (bearer token): add a product with its stock.
/// 201 when added; 200 when the same product was added before (a retry);
/// 409 when the SKU is taken by a different product.
async fn add_product(
    State(node): State<Node>,
    _: Admin,
    Json(p): Json<store::SeedProduct>,
) -> Result<(StatusCode, Json<Product>), ApiError> {
    if p.price_cents < 0 || p.stock < 0 || p.name.trim().is_empty() || p.currency.len() != 3 {
        return Err(ApiError::unprocessable(
            ErrorCode::InvalidProduct,
            "price_cents and stock must be >= 0, name non-empty, currency a 3-letter code",
        ));
    }
    let (product, created) = store::add_product(&node.db, &p).await.map_err(admin_error)?;
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(product)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProductUpdate {
    price_cents: Option<i64>,
    /// The new available stock (a restock, or a write-off).
    available: Option<i64>,
}

/// `PATCH /admin/products/{sku}` (bearer token): set price and/or stock.
async fn update_product(
    State(node): State<Node>,
    _: Admin,
    PathParam(sku): PathParam<Sku>,
    Json(u): Json<ProductUpdate>,
) -> Result<Json<Product>, ApiError> {
    if u.price_cents.is_some_and(|p| p < 0) || u.available.is_some_and(|a| a < 0) {
        return Err(ApiError::unprocessable(ErrorCode::InvalidUpdate, "price_cents and available must be >= 0"));
    }
    Ok(Json(store::update_product(&node.db, &sku, u.price_cents, u.available).await.map_err(admin_error)?))
}
