//! The cart API: server-side carts, kept by the order service and changed
//! over the bus like orders. Each change is a `carts/command` the front
//! publishes and answers once the order service's `carts/status` says it
//! was applied (or refused); reads go to the order service. Lines are
//! priced here, at the catalog's prices, when a cart is shown or checked
//! out. Inventory holds each line's stock for a while (`hold_secs`): the
//! cart shows per line what is held and until when.
//!
//! Every write is safe to retry: creating gives a fresh empty cart (an
//! unused one holds nothing), setting a line is absolute, and a checkout
//! takes an `Idempotency-Key` that names its order.

use std::time::Instant;

use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::Router;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::http::{ApiError, ErrorCode, Json, PathParam};
use shared::ids::{CartId, Email, OrderId, Sku};
use shared::message::{CartChanged, CartCommand, CartRefusal, Checkout, Envelope, LinePrice, OrderStatus};
use shared::topics::Topic;
use shared::view::{Cart, CartStatus, Product};
use time::OffsetDateTime;

use crate::api::{
    accepted, at, committed, idempotency_key, json_body, not_committed, publish, request_span, settled, traceparent,
};
use crate::state::{AppState, Front};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/carts", post(create_cart))
        .route("/api/carts/{cart_id}", get(get_cart))
        .route("/api/carts/{cart_id}/items/{sku}", put(set_item).delete(remove_item))
        .route("/api/carts/{cart_id}/checkout", post(checkout))
}

/// How a line's stock is held.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Hold {
    /// Every unit is held until `holds_expire_at`.
    Held,
    /// Inventory hasn't answered the cart's newest change yet.
    Pending,
    /// Inventory had fewer units than the line asks for: `held` are held.
    Short,
    /// The holds ran out; the next change of the cart asks again.
    Expired,
    /// The cart was checked out: its order has the stock, or was refused.
    Ordered,
}

/// One cart line, priced at the catalog's current price.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CartLineView {
    #[schema(value_type = String)]
    sku: Sku,
    /// The product's name; absent if the catalog can't be read right now.
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    quantity: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    unit_price_cents: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    line_total_cents: Option<i64>,
    /// Units inventory holds for this line.
    held: u32,
    hold: Hold,
}

/// A cart as customers see it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct CartView {
    #[schema(value_type = String, format = Uuid)]
    cart_id: CartId,
    status: CartStatus,
    /// Rises with every change of the lines; a checkout names it.
    version: i64,
    lines: Vec<CartLineView>,
    /// The sum of the priced lines.
    total_cents: i64,
    currency: String,
    /// When the held stock goes back, unless the cart changes before.
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    holds_expire_at: Option<OffsetDateTime>,
    /// The order the checkout made.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = Uuid)]
    order_id: Option<OrderId>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: OffsetDateTime,
}

/// How a line of `cart` is held.
fn hold(cart: &Cart, held: u32, quantity: u32) -> Hold {
    match () {
        _ if cart.status == CartStatus::CheckedOut => Hold::Ordered,
        _ if held >= quantity => Hold::Held,
        _ if cart.holds_version < cart.version => Hold::Pending,
        _ if cart.holds_expired => Hold::Expired,
        _ => Hold::Short,
    }
}

impl CartView {
    /// `cart` with its lines priced from `products` (those found).
    fn new(cart: Cart, products: &[Product]) -> CartView {
        let currency = products.first().map_or_else(|| "EUR".to_owned(), |p| p.currency.clone());
        let lines: Vec<CartLineView> = cart
            .lines
            .iter()
            .map(|l| {
                let p = products.iter().find(|p| p.sku == l.sku.as_str());
                CartLineView {
                    sku: l.sku.clone(),
                    name: p.map(|p| p.name.clone()),
                    quantity: l.quantity,
                    unit_price_cents: p.map(|p| p.price_cents),
                    line_total_cents: p.map(|p| p.price_cents.saturating_mul(i64::from(l.quantity))),
                    held: l.held,
                    hold: hold(&cart, l.held, l.quantity),
                }
            })
            .collect();
        CartView {
            cart_id: cart.cart_id,
            status: cart.status,
            version: cart.version,
            total_cents: lines.iter().filter_map(|l| l.line_total_cents).fold(0, i64::saturating_add),
            lines,
            currency,
            holds_expire_at: cart.holds_expire_at_ms.filter(|_| cart.status == CartStatus::Open).map(at),
            order_id: cart.order_id,
            created_at: at(cart.created_at_ms),
            updated_at: at(cart.updated_at_ms),
        }
    }
}

/// The catalog's products for the cart's SKUs; none while the catalog
/// can't be read (the cart is still shown, unpriced).
async fn products_of(s: &Front, cart: &Cart) -> Vec<Product> {
    let skus: Vec<Sku> = cart.lines.iter().map(|l| l.sku.clone()).collect();
    if skus.is_empty() {
        return Vec::new();
    }
    match s.downstream.products(&skus).await {
        Ok(priced) => priced.products,
        Err(e) => {
            tracing::warn!(error = %e.detail, "cart shown unpriced: the catalog can't be read");
            Vec::new()
        }
    }
}

async fn view(s: &Front, cart: Cart) -> CartView {
    let products = products_of(s, &cart).await;
    CartView::new(cart, &products)
}

fn unknown_cart(id: CartId) -> ApiError {
    ApiError::not_found(ErrorCode::UnknownCart, format!("There is no cart {id}."))
}

fn refused(id: CartId, why: CartRefusal) -> ApiError {
    match why {
        CartRefusal::UnknownCart => unknown_cart(id),
        CartRefusal::CheckedOut => {
            ApiError::conflict(ErrorCode::CartCheckedOut, "The cart was checked out; start a new cart.")
        }
        // A SKU the checkout didn't price can only be one added after it
        // read the cart.
        CartRefusal::CartChanged | CartRefusal::Unpriced => ApiError::conflict(
            ErrorCode::CartChanged,
            "The cart changed while it was being checked out; look at it again and check out again.",
        ),
        CartRefusal::TooManyLines => ApiError::unprocessable(
            ErrorCode::TooManyLines,
            format!("A cart holds at most {} lines.", shared::message::MAX_LINES),
        ),
        CartRefusal::EmptyCart => ApiError::unprocessable(ErrorCode::EmptyCart, "The cart is empty."),
    }
}

/// Publishes `command` for cart `id` and waits for the order service's
/// answer: the cart after it, or the refusal as an error.
async fn command(s: &Front, headers: &HeaderMap, id: CartId, command: CartCommand) -> Result<Cart, ApiError> {
    let span = request_span("public-front cart command", id.subject());
    let envelope =
        Envelope::new(Topic::CartsCommand, id.subject(), command).with_traceparent(Some(traceparent(headers, &span)));
    // Register before publishing so the answer can't slip past.
    let mut waiting = s.waiters.register_cart(envelope.message_id);
    publish(&s.bus, &s.bus.route(Topic::CartsCommand, id.subject()), envelope.to_json()).await?;
    match tokio::time::timeout(s.commit_timeout, waiting.recv()).await {
        Ok(Some(CartChanged { refused: Some(why), .. })) => Err(refused(id, why)),
        Ok(Some(CartChanged { cart: Some(cart), .. })) => Ok(cart),
        Ok(Some(CartChanged { cart: None, .. })) => Err(unknown_cart(id)),
        _ => Err(ApiError::unavailable(
            ErrorCode::NotCommitted,
            "The order service has not confirmed the change yet. Retrying is safe.",
        )),
    }
}

/// Start an empty cart. Answered 201 once the order service has it.
/// Keep the `cart_id`: it is the only way to the cart.
#[utoipa::path(post, path = "/api/carts", tag = "carts",
    responses((status = 201, body = CartView, headers(("Location" = String, description = "The cart's URL"))),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub(crate) async fn create_cart(State(s): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let id = CartId::new();
    let cart = command(&s, &headers, id, CartCommand::Create).await?;
    tracing::info!(cart_id = %id, "cart created");
    let location = format!("/api/carts/{id}");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view(&s, cart).await)).into_response())
}

/// A cart: its lines at the catalog's prices, what inventory holds for
/// each and until when.
#[utoipa::path(get, path = "/api/carts/{cart_id}", tag = "carts",
    params(("cart_id" = String, Path, format = Uuid)),
    responses((status = 200, body = CartView),
              (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_cart(
    State(s): State<AppState>,
    PathParam(id): PathParam<CartId>,
) -> Result<Json<CartView>, ApiError> {
    let cart = s.downstream.cart(id).await?.ok_or_else(|| unknown_cart(id))?;
    Ok(Json(view(&s, cart).await))
}

/// `PUT /api/carts/{cart_id}/items/{sku}` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct SetQuantity {
    /// Units wanted; 0 removes the line.
    #[schema(minimum = 0, maximum = 1000, example = 2)]
    quantity: u32,
}

impl<S: Send + Sync> FromRequest<S> for SetQuantity {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let q: SetQuantity = json_body(req, state, ErrorCode::InvalidRequest).await?;
        if q.quantity > shared::ids::Quantity::MAX {
            return Err(ApiError::unprocessable(
                ErrorCode::InvalidRequest,
                format!("quantity must be between 0 and {}", shared::ids::Quantity::MAX),
            ));
        }
        Ok(q)
    }
}

/// The cart and the SKU of a line's path, each checked like the id it is.
pub(crate) struct LinePath(CartId, Sku);

impl<S: Send + Sync> FromRequestParts<S> for LinePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path((cart, sku)) =
            axum::extract::Path::<(String, String)>::from_request_parts(parts, state).await?;
        let cart = CartId::parse(&cart).map_err(|e| ApiError::bad_request(ErrorCode::InvalidCartId, e.to_string()))?;
        let sku = Sku::parse(&sku).map_err(|e| ApiError::bad_request(ErrorCode::InvalidSku, e.to_string()))?;
        Ok(LinePath(cart, sku))
    }
}

async fn set_line(s: &Front, headers: &HeaderMap, cart: CartId, sku: Sku, quantity: u32) -> Result<Response, ApiError> {
    if quantity > 0 {
        let priced = s.downstream.products(std::slice::from_ref(&sku)).await?;
        if priced.products.is_empty() {
            return Err(ApiError::unprocessable(ErrorCode::UnknownSku, format!("There is no product with SKU {sku}.")));
        }
    }
    let changed = command(s, headers, cart, CartCommand::SetItem { sku, quantity }).await?;
    Ok(Json(view(s, changed).await).into_response())
}

/// Set how many of a product the cart holds (0 removes the line). Answered
/// once the order service has the change; inventory then holds the stock
/// (see each line's `hold`), and every change renews the cart's holds.
/// Setting the same quantity again changes nothing, so retrying is safe.
#[utoipa::path(put, path = "/api/carts/{cart_id}/items/{sku}", tag = "carts", request_body = SetQuantity,
    params(("cart_id" = String, Path, format = Uuid),
           ("sku" = String, Path, pattern = "^[A-Z0-9][A-Z0-9-]{2,39}$")),
    responses((status = 200, body = CartView),
              (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::openapi::Problem, content_type = "application/problem+json", description = "The cart was checked out"),
              (status = 415, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub(crate) async fn set_item(
    State(s): State<AppState>,
    headers: HeaderMap,
    LinePath(cart, sku): LinePath,
    body: Result<SetQuantity, ApiError>,
) -> Result<Response, ApiError> {
    set_line(&s, &headers, cart, sku, body?.quantity).await
}

/// Remove a line from the cart (its held stock goes back). Removing a line
/// that isn't there changes nothing.
#[utoipa::path(delete, path = "/api/carts/{cart_id}/items/{sku}", tag = "carts",
    params(("cart_id" = String, Path, format = Uuid),
           ("sku" = String, Path, pattern = "^[A-Z0-9][A-Z0-9-]{2,39}$")),
    responses((status = 200, body = CartView),
              (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::openapi::Problem, content_type = "application/problem+json", description = "The cart was checked out"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub(crate) async fn remove_item(
    State(s): State<AppState>,
    headers: HeaderMap,
    LinePath(cart, sku): LinePath,
) -> Result<Response, ApiError> {
    set_line(&s, &headers, cart, sku, 0).await
}

/// `POST /api/carts/{cart_id}/checkout` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CheckoutRequest {
    #[schema(value_type = String, format = Email, example = "ada@example.com")]
    customer_email: Email,
}

impl<S: Send + Sync> FromRequest<S> for CheckoutRequest {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        json_body(req, state, ErrorCode::InvalidOrder).await
    }
}

/// Check the cart out: its lines, at the catalog's prices now, become an
/// order, and the stock inventory holds for the cart becomes the order's
/// reservation in the same step (no one can take it in between; a line
/// whose hold ran out takes what is available). Answered 202 as `POST
/// /api/orders` is, with the same `Prefer: wait=N`. The same
/// `Idempotency-Key` on the same cart always means the same order, so
/// retrying is safe. A checkout closes the cart, whatever inventory
/// decides.
#[utoipa::path(post, path = "/api/carts/{cart_id}/checkout", tag = "carts", request_body = CheckoutRequest,
    params(("cart_id" = String, Path, format = Uuid),
           ("Idempotency-Key" = String, Header, description = "1-200 visible ASCII characters; the same key on the same cart always means the same order.", pattern = "^[!-~]{1,200}$", min_length = 1, max_length = 200),
           ("Prefer" = Option<String>, Header, description = crate::api::PREFER_WAIT)),
    responses((status = 202, body = crate::api::Accepted, headers(("Location" = String, description = "The order's URL"))),
              (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::openapi::Problem, content_type = "application/problem+json", description = "The cart changed while it was checked out, was checked out into another order, or the key was used with another body"),
              (status = 415, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub(crate) async fn checkout(
    State(s): State<AppState>,
    headers: HeaderMap,
    PathParam(id): PathParam<CartId>,
    body: Result<CheckoutRequest, ApiError>,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let key = idempotency_key(&headers)?;
    let req = body?;
    let order_id = OrderId::for_checkout(id, &key);
    let fingerprint =
        hex::encode(Sha256::digest(serde_json::to_vec(&(id, &req)).map_err(|e| ApiError::internal(e.to_string()))?));
    // A retry of a checkout that went through: its order.
    if let Some(done) = crate::api::committed_before(&s, order_id, &fingerprint).await {
        return done;
    }
    let cart = s.downstream.cart(id).await?.ok_or_else(|| unknown_cart(id))?;
    if cart.status == CartStatus::CheckedOut && cart.order_id != Some(order_id) {
        return Err(refused(id, CartRefusal::CheckedOut));
    }
    let mut waiting = s.waiters.register(order_id, None);
    if cart.status == CartStatus::Open {
        if cart.lines.is_empty() {
            return Err(refused(id, CartRefusal::EmptyCart));
        }
        let skus: Vec<Sku> = cart.lines.iter().map(|l| l.sku.clone()).collect();
        let priced = s.downstream.products(&skus).await?;
        let mut prices = Vec::with_capacity(skus.len());
        let mut currency = None;
        for sku in skus {
            let unit_price_cents = crate::api::unit_price(&priced, &sku, &mut currency)?;
            prices.push(LinePrice { sku, unit_price_cents });
        }
        let checkout = Checkout {
            version: cart.version,
            order_id,
            customer_email: req.customer_email,
            currency: currency.unwrap_or_else(|| "EUR".to_owned()),
            prices,
            fingerprint: fingerprint.clone(),
        };
        command(&s, &headers, id, CartCommand::Checkout(checkout)).await?;
        tracing::info!(cart_id = %id, %order_id, "cart checked out");
    }
    // The checkout is committed; the order service makes the order from
    // the `orders/send` it queued, and its status event says so.
    let status = match tokio::time::timeout(s.commit_timeout, waiting.recv()).await {
        Ok(Some(st)) => Some((st.status, st.version, st.fingerprint)),
        _ => s.downstream.order(order_id).await.ok().flatten().map(|o| (o.status, o.version, o.fingerprint)),
    };
    let Some((status, version, stored)) = status else { return Err(not_committed()) };
    if stored != fingerprint {
        return committed(order_id, (status, version), &stored, &fingerprint);
    }
    let (status, version) = settled(&s, &headers, started, order_id, (status, version)).await;
    if status == OrderStatus::Rejected {
        tracing::info!(cart_id = %id, %order_id, "checkout rejected by inventory");
    }
    Ok(accepted(order_id, status, version))
}
