//! The public HTTP API: catalog reads (forwarded to inventory), placing
//! and cancelling orders (over the bus, answered once the order service
//! has committed), order reads (forwarded to order), probes.

use std::time::Duration;

use axum::extract::rejection::JsonRejection;
use axum::extract::{FromRequest, Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use shared::bus::Bus;
use shared::http::{rejection, ApiError, ErrorCode, Json, PathParam, Query};
use shared::ids::{Email, IdempotencyKey, OrderId, Quantity, Sku};
use shared::message::{CancelOrder, Envelope, OrderLine, OrderStatus, SendOrder, StatusChanged, MAX_LINES};
use shared::topics::Topic;
use shared::view::Order;
use time::OffsetDateTime;

use crate::state::{AppState, Front};

/// Response header of an order priced from last known prices while
/// inventory was unreachable: `stale; age=<seconds of the oldest price>`.
pub const PRICE_SOURCE: &str = "x-price-source";

/// The `Prefer` header as the OpenAPI document describes it: both `POST
/// /api/orders` and `GET /api/orders/{order_id}` take it.
pub(crate) const PREFER_WAIT: &str = "RFC 7240 `wait=<seconds>` (at most 25; more counts as 25; anything \
    else is ignored). On `POST /api/orders`: answer once the order is \
    settled (confirmed or rejected) or after that long, whichever comes \
    first. On `GET /api/orders/{order_id}` with `If-None-Match`: a long \
    poll, as `wait` in the query.";

/// The customer API: the catalog, and placing, reading and cancelling
/// orders.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/catalog", get(catalog))
        .route("/api/catalog/{sku}", get(product))
        .route("/api/orders", post(place_order))
        .route("/api/orders/{order_id}", get(get_order))
        .route("/api/orders/{order_id}/cancel", post(cancel_order))
}

/// Query of `GET /api/catalog`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct CatalogQuery {
    /// Words to find in product names and descriptions (at most 200 characters).
    q: Option<String>,
    /// Page size, 1 to 100 (default 20).
    #[param(value_type = Option<i64>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// Browse and search the catalog, a page at a time.
#[utoipa::path(get, path = "/api/catalog", tag = "catalog", params(CatalogQuery),
    responses((status = 200, body = crate::openapi::CatalogPage), (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn catalog(
    State(s): State<AppState>,
    Query(q): Query<CatalogQuery>,
) -> Result<impl IntoResponse, ApiError> {
    // Parsed by hand: serde reads `limit=` (empty) as absent.
    let limit = match q.limit.as_deref() {
        None => 20,
        Some(l) => l.parse::<i64>().ok().filter(|n| (1..=100).contains(n)).ok_or_else(|| {
            ApiError::bad_request(ErrorCode::InvalidLimit, "limit must be a whole number between 1 and 100")
        })?,
    };
    if q.q.as_ref().is_some_and(|q| q.len() > 200) {
        return Err(ApiError::bad_request(ErrorCode::InvalidQuery, "q must be at most 200 characters"));
    }
    if let Some(c) = &q.cursor {
        Sku::parse(c).map_err(|_| {
            ApiError::bad_request(ErrorCode::InvalidCursor, "cursor must be a next_cursor from a previous page")
        })?;
    }
    // The query string inventory gets, built in one canonical order: it is
    // also the cache key, so equal searches share one entry.
    let query = {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("limit", &limit.to_string());
        if let Some(v) = &q.q {
            query.append_pair("q", v);
        }
        if let Some(v) = &q.cursor {
            query.append_pair("cursor", v);
        }
        query.finish()
    };
    let page = s.downstream.catalog(query).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], page))
}

/// One product.
#[utoipa::path(get, path = "/api/catalog/{sku}", tag = "catalog",
    params(("sku" = String, Path, description = "The product's SKU.", pattern = "^[A-Z0-9][A-Z0-9-]{2,39}$")),
    responses((status = 200, body = shared::view::Product), (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn product(
    State(s): State<AppState>,
    PathParam(sku): PathParam<Sku>,
) -> Result<impl IntoResponse, ApiError> {
    s.downstream
        .product(&sku)
        .await?
        .map(Json)
        .ok_or_else(|| ApiError::not_found(ErrorCode::UnknownProduct, format!("There is no product with SKU {sku}.")))
}

/// `POST /api/orders` body.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlaceOrder {
    #[schema(value_type = String, format = Email, example = "ada@example.com")]
    customer_email: Email,
    /// 1 to 100 lines; two lines of the same SKU count together.
    #[schema(min_items = 1, max_items = 100)]
    items: Vec<RequestedLine>,
}

#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestedLine {
    #[schema(value_type = String, pattern = "^[A-Z0-9][A-Z0-9-]{2,39}$", example = "FUEL-230G-001")]
    sku: Sku,
    #[schema(value_type = i64, minimum = 1, maximum = 1000, example = 2)]
    quantity: Quantity,
}

/// The answer to placing or cancelling an order.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct Accepted {
    #[schema(value_type = String, format = Uuid)]
    order_id: OrderId,
    status: OrderStatus,
    /// The order's version with that status: pass it as `version` to a
    /// long poll (`GET /api/orders/{order_id}?wait=5s&version=N`).
    version: i64,
}

/// The body of `POST /api/orders`: JSON that doesn't parse is a 400
/// `malformed_json`, JSON that isn't an order a 422 `invalid_order`.
impl<S: Send + Sync> FromRequest<S> for PlaceOrder {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        json_body(req, state, ErrorCode::InvalidOrder).await
    }
}

/// A JSON request body: JSON that doesn't parse is a 400 `malformed_json`,
/// JSON of the wrong shape a 422 with `invalid` as its code.
pub(crate) async fn json_body<T: serde::de::DeserializeOwned, S: Send + Sync>(
    req: Request,
    state: &S,
    invalid: ErrorCode,
) -> Result<T, ApiError> {
    match axum::Json::<T>::from_request(req, state).await {
        Ok(axum::Json(body)) => Ok(body),
        Err(e @ JsonRejection::JsonSyntaxError(_)) => {
            Err(ApiError::bad_request(ErrorCode::MalformedJson, e.body_text()))
        }
        Err(e @ JsonRejection::JsonDataError(_)) => Err(ApiError::unprocessable(invalid, e.body_text())),
        Err(e) => Err(rejection(e.body_text(), e.status())),
    }
}

pub(crate) fn accepted(order_id: OrderId, status: OrderStatus, version: i64) -> Response {
    let location = format!("/api/orders/{order_id}");
    (StatusCode::ACCEPTED, [(header::LOCATION, location)], Json(Accepted { order_id, status, version })).into_response()
}

/// The W3C traceparent for what a request publishes: the caller's, or a
/// fresh one. With span export, `span` continues the caller's trace and
/// is named as the parent.
pub(crate) fn traceparent(headers: &HeaderMap, span: &tracing::Span) -> String {
    let incoming =
        headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(shared::trace::parse).map(str::to_owned);
    shared::trace::link(span, incoming).unwrap_or_else(shared::trace::new_traceparent)
}

/// A span for the request, when spans are exported. It needn't be entered:
/// it starts in [`traceparent`] and ends when the handler drops it.
pub(crate) fn request_span(name: &'static str, order_id: OrderId) -> tracing::Span {
    if shared::telemetry::exporting() {
        tracing::info_span!("request", node = "public-front", %order_id, otel.name = name)
    } else {
        tracing::Span::none()
    }
}

/// Place an order. Answered 202 once the order service has committed it
/// (status `pending` or already `confirmed`/`rejected`); a 503 means it
/// isn't known to be committed: retry with the same `Idempotency-Key`. A
/// retry of an order that was committed is answered 202 with its current
/// status, even while inventory is unreachable. While inventory is
/// unreachable, new orders are priced from the last known prices (header
/// `X-Price-Source`); SKUs without one get a 503. With `Prefer: wait=N`
/// the answer waits up to N seconds for the order to be settled, so a
/// client usually gets `confirmed` or `rejected` in one round trip.
#[utoipa::path(post, path = "/api/orders", tag = "orders", request_body = PlaceOrder,
    params(("Idempotency-Key" = String, Header, description = "1-200 visible ASCII characters; the same key always means the same order.", pattern = "^[!-~]{1,200}$", min_length = 1, max_length = 200),
           ("Prefer" = Option<String>, Header, description = PREFER_WAIT)),
    responses((status = 202, body = Accepted, headers(("Location" = String, description = "The order's URL"),
                  ("X-Price-Source" = String, description = "Only when inventory was unreachable and the order was priced from the last known prices: `stale; age=<seconds>`, the age of the oldest price used"))),
              (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::openapi::Problem, content_type = "application/problem+json", description = "The key was used for a different order"),
              (status = 413, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 415, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 422, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub(crate) async fn place_order(
    State(s): State<AppState>,
    headers: HeaderMap,
    // Read after the key is checked: a missing key is named first.
    body: Result<PlaceOrder, ApiError>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    let key = idempotency_key(&headers)?;
    let req = body?;
    if req.items.is_empty() {
        return Err(ApiError::unprocessable(ErrorCode::EmptyOrder, "An order needs at least one item."));
    }
    if req.items.len() > MAX_LINES {
        return Err(ApiError::unprocessable(
            ErrorCode::TooManyLines,
            format!("An order holds at most {MAX_LINES} lines."),
        ));
    }
    let order_id = OrderId::from_idempotency_key(&key);
    let fingerprint = hex::encode(Sha256::digest(serde_json::to_vec(&req).unwrap_or_default()));

    // A retry of an order that was committed must get the order, not an
    // error of a step it no longer needs (pricing, publishing): on such an
    // error, the order service is asked whether it has the order.
    let (send, stale_age) = match price(&s, req, fingerprint.clone()).await {
        Ok(priced) => priced,
        Err(e) => return committed_before(&s, order_id, &fingerprint).await.unwrap_or(Err(e)),
    };

    // Register before publishing so the status event can't slip past.
    let mut waiting = s.waiters.register(order_id, None);
    let span = request_span("public-front place order", order_id);
    let envelope =
        Envelope::new(Topic::OrdersSend, order_id, send).with_traceparent(Some(traceparent(&headers, &span)));
    if let Err(e) = publish(&s.bus, &s.bus.route(Topic::OrdersSend, order_id), envelope.to_json()).await {
        return committed_before(&s, order_id, &fingerprint).await.unwrap_or(Err(e));
    }

    let status = match tokio::time::timeout(s.commit_timeout, waiting.recv()).await {
        Ok(Some(status)) if status.fingerprint == fingerprint => Some(status),
        // No event, or one with another body's fingerprint: anyone who can
        // publish on the bus can send that, so only the order service's
        // own record proves the key was used for a different order.
        _ => s.downstream.order(order_id).await.ok().flatten().map(|o| StatusChanged {
            status: o.status,
            version: o.version,
            fingerprint: o.fingerprint,
            reason: o.reason,
            order: None,
        }),
    };
    let Some(mut st) = status else { return Err(not_committed()) };
    if st.fingerprint == fingerprint {
        (st.status, st.version) = settled(&s, &headers, started, order_id, (st.status, st.version)).await;
    }
    let mut resp = committed(order_id, (st.status, st.version), &st.fingerprint, &fingerprint)?;
    if let Some(age) = stale_age {
        tracing::info!(%order_id, age_secs = age.as_secs(), "order priced from last known prices");
        metrics::counter!("orders_stale_priced_total", "node" => "public-front").increment(1);
        if let Ok(v) = header::HeaderValue::from_str(&format!("stale; age={}", age.as_secs())) {
            resp.headers_mut().insert(PRICE_SOURCE, v);
        }
    }
    Ok(resp)
}

/// The request's `Idempotency-Key`, which must be there and well formed.
pub(crate) fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let key = headers.get("idempotency-key").ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::MissingIdempotencyKey,
            "Send an Idempotency-Key header so the order can be retried safely.",
        )
    })?;
    key.to_str().ok().and_then(|k| IdempotencyKey::parse(k).ok()).ok_or_else(|| {
        ApiError::bad_request(
            ErrorCode::InvalidIdempotencyKey,
            "The Idempotency-Key must be 1-200 visible ASCII characters.",
        )
    })
}

/// `Prefer: wait=N` on a committed order: the settled status for the
/// answer, if it comes in time. The order is committed already: a failed
/// read keeps what the caller has. The wait counts from the request's
/// start, so waiting for the commit and then for the status stays inside
/// the request timeout.
pub(crate) async fn settled(
    s: &Front,
    headers: &HeaderMap,
    started: std::time::Instant,
    order_id: OrderId,
    (status, version): (OrderStatus, i64),
) -> (OrderStatus, i64) {
    if let (OrderStatus::Pending, Some(wait)) = (status, crate::poll::prefer_wait(headers)) {
        let wait = wait.min(crate::poll::MAX_WAIT.saturating_sub(started.elapsed()));
        if let Ok(Some(o)) = s.order_after(order_id, version, wait).await {
            return (o.status, o.version);
        }
    }
    (status, version)
}

/// The order line by line at inventory's prices (live, cached, or last
/// known while inventory is unreachable: then with the oldest price's age).
/// The unit price the customer sees now is the one the order keeps.
async fn price(s: &Front, req: PlaceOrder, fingerprint: String) -> Result<(SendOrder, Option<Duration>), ApiError> {
    let mut skus: Vec<Sku> = req.items.iter().map(|l| l.sku.clone()).collect();
    skus.sort();
    skus.dedup();
    let priced = s.downstream.products(&skus).await?;
    let mut lines = Vec::with_capacity(req.items.len());
    let mut currency = None;
    for line in &req.items {
        let unit_price_cents = unit_price(&priced, &line.sku, &mut currency)?;
        lines.push(OrderLine { sku: line.sku.clone(), quantity: line.quantity, unit_price_cents });
    }
    let send = SendOrder {
        customer_email: req.customer_email,
        items: lines,
        currency: currency.unwrap_or_else(|| "EUR".to_owned()),
        fingerprint,
        cart_id: None,
    };
    Ok((send, priced.stale_age))
}

/// The catalog's unit price of `sku`, checking that it shares `currency`
/// with the SKUs priced before it (and setting it for the first): 422
/// `unknown_sku` for a SKU the catalog lacks, 422 `mixed_currencies`.
pub(crate) fn unit_price(
    priced: &crate::downstream::Priced,
    sku: &Sku,
    currency: &mut Option<String>,
) -> Result<i64, ApiError> {
    let p = priced.products.iter().find(|p| p.sku == sku.as_str()).ok_or_else(|| {
        ApiError::unprocessable(ErrorCode::UnknownSku, format!("There is no product with SKU {sku}."))
    })?;
    match currency {
        Some(c) if *c != p.currency => {
            Err(ApiError::unprocessable(ErrorCode::MixedCurrencies, "All items of an order must share one currency."))
        }
        _ => {
            *currency = Some(p.currency.clone());
            Ok(p.price_cents)
        }
    }
}

/// The answer to an order the order service has committed: 202 with its
/// status, or 409 when the key's order was placed with another body.
pub(crate) fn committed(
    order_id: OrderId,
    (status, version): (OrderStatus, i64),
    stored: &str,
    fingerprint: &str,
) -> Result<Response, ApiError> {
    if stored != fingerprint {
        return Err(ApiError::conflict(
            ErrorCode::IdempotencyKeyReused,
            "This Idempotency-Key was already used for a different order; use a new key for a new order.",
        ));
    }
    tracing::info!(%order_id, status = status.as_str(), "order accepted");
    Ok(accepted(order_id, status, version))
}

/// The answer for an order an earlier attempt already placed, if the order
/// service has it (and can be asked).
pub(crate) async fn committed_before(
    s: &Front,
    order_id: OrderId,
    fingerprint: &str,
) -> Option<Result<Response, ApiError>> {
    let o = s.downstream.order(order_id).await.ok().flatten()?;
    Some(committed(order_id, (o.status, o.version), &o.fingerprint, fingerprint))
}

pub(crate) fn not_committed() -> ApiError {
    ApiError::unavailable(
        ErrorCode::NotCommitted,
        "The order service has not confirmed the request yet. Retry with the same Idempotency-Key; that is safe.",
    )
}

pub(crate) async fn publish(bus: &Bus, topic: &str, payload: Vec<u8>) -> Result<(), ApiError> {
    bus.publish(topic, payload).await.map_err(|e| {
        tracing::warn!(error = %e, "publish failed");
        ApiError::unavailable(ErrorCode::BusUnavailable, "The message bus is not reachable; please retry shortly.")
    })
}

fn unknown_order(id: OrderId) -> ApiError {
    ApiError::not_found(ErrorCode::UnknownOrder, format!("There is no order {id}."))
}

/// An order as customers see it.
#[derive(Serialize, utoipa::ToSchema)]
pub(crate) struct OrderView {
    #[schema(value_type = String, format = Uuid)]
    order_id: OrderId,
    status: OrderStatus,
    /// Bumped by every status change.
    version: i64,
    items: Vec<OrderLine>,
    currency: String,
    total_cents: i64,
    /// Why the order was rejected or cancelled.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    updated_at: OffsetDateTime,
}

/// A time in epoch milliseconds, for the JSON the API answers with.
pub(crate) fn at(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl From<Order> for OrderView {
    fn from(o: Order) -> Self {
        OrderView {
            order_id: o.order_id,
            status: o.status,
            version: o.version,
            items: o.items,
            currency: o.currency,
            total_cents: o.total_cents,
            reason: o.reason,
            created_at: at(o.created_at_ms),
            updated_at: at(o.updated_at_ms),
        }
    }
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        OrderView::from(o.clone())
    }
}

/// Query of `GET /api/orders/{order_id}`.
#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct OrderQuery {
    /// Long poll: answer as soon as the order's version is above `version`
    /// (or the newest version in `If-None-Match`), or after this long with
    /// the order as it is then. `5s`, `500ms` or `5` (seconds); at most 25 s.
    #[param(pattern = "^[0-9]{1,6}(s|ms)?$")]
    wait: Option<String>,
    /// The version the client already has (with `wait`).
    #[param(value_type = Option<i64>, minimum = 0)]
    version: Option<String>,
}

/// An order and its status. Answered from the front's memory when it
/// learned the order's state at most `order_cache_secs` ago (rejected and
/// cancelled orders, which never change, regardless), else from the order
/// node. One front never answers an older version after a newer one.
/// `ETag` is the version; `If-None-Match` with it gives 304. With `wait`
/// (or `Prefer: wait=N` and `If-None-Match`), a long poll.
#[utoipa::path(get, path = "/api/orders/{order_id}", tag = "orders",
    params(("order_id" = String, Path, format = Uuid), OrderQuery,
           ("If-None-Match" = Option<String>, Header,
            description = "`ETag`s of versions the client has (`W/\"3\"`): 304 if the order is still at one of them."),
           ("Prefer" = Option<String>, Header, description = PREFER_WAIT)),
    responses((status = 200, body = OrderView, headers(("ETag" = String, description = "The order's version, weak: `W/\"3\"`"))),
              (status = 304, description = "Still at a version named in `If-None-Match`", headers(("ETag" = String, description = "The order's version"))),
              (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json")))]
pub(crate) async fn get_order(
    State(s): State<AppState>,
    PathParam(id): PathParam<OrderId>,
    Query(q): Query<OrderQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let wait = q.wait.as_deref().map(crate::poll::parse_wait).transpose()?;
    let version = q.version.as_deref().map(crate::poll::parse_version).transpose()?;
    let have = crate::poll::IfNoneMatch::parse(&headers);
    let after = version.or_else(|| have.as_ref().and_then(|h| h.newest()));
    let wait = match (wait, after) {
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                ErrorCode::MissingVersion,
                "wait needs the version you have: version=N or If-None-Match with the order's ETag",
            ))
        }
        (Some(w), Some(_)) => Some(w),
        // A preference is a hint: without a version there is nothing to wait past.
        (None, _) => crate::poll::prefer_wait(&headers).filter(|_| after.is_some()),
    };
    let order = match (wait, after) {
        (Some(wait), Some(after)) => s.order_after(id, after, wait).await?,
        _ => s.current_order(id).await?,
    };
    let order = order.ok_or_else(|| unknown_order(id))?;
    let tag = crate::poll::etag(order.version);
    if have.is_some_and(|h| h.matches(order.version)) {
        return Ok((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response());
    }
    let cache = header::HeaderValue::from_static("no-cache");
    Ok(([(header::ETAG, tag), (header::CACHE_CONTROL, cache)], Json(OrderView::from(&*order))).into_response())
}

/// Cancel an order (pending or confirmed). Answered 202 once the order
/// service has committed the cancellation. Retrying is safe: an order
/// already cancelled (by an earlier attempt whose answer was lost, say) is
/// answered 200 with the order.
#[utoipa::path(post, path = "/api/orders/{order_id}/cancel", tag = "orders", params(("order_id" = String, Path, format = Uuid)),
    responses((status = 202, body = Accepted, description = "Cancelled now", headers(("Location" = String, description = "The order's URL"))),
              (status = 200, body = OrderView, description = "Already cancelled: the order, as `GET /api/orders/{order_id}` shows it", headers(("Location" = String, description = "The order's URL"))),
              (status = 400, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 404, body = crate::openapi::Problem, content_type = "application/problem+json"),
              (status = 409, body = crate::openapi::Problem, content_type = "application/problem+json", description = "The order was rejected: nothing to cancel"),
              (status = 503, body = crate::openapi::Problem, content_type = "application/problem+json", headers(("Retry-After" = u32)))))]
pub(crate) async fn cancel_order(
    State(s): State<AppState>,
    headers: HeaderMap,
    PathParam(id): PathParam<OrderId>,
) -> Result<Response, ApiError> {
    let order = s.downstream.order(id).await?.ok_or_else(|| unknown_order(id))?;
    match order.status {
        OrderStatus::Rejected => return Err(order_rejected()),
        OrderStatus::Cancelled => return Ok(already_cancelled(order)),
        OrderStatus::Pending | OrderStatus::Confirmed => {}
    }
    let mut waiting = s.waiters.register(id, Some(OrderStatus::Cancelled));
    let span = request_span("public-front cancel order", id);
    let envelope = Envelope::new(Topic::OrdersCancel, id, CancelOrder::default())
        .with_traceparent(Some(traceparent(&headers, &span)));
    publish(&s.bus, &s.bus.route(Topic::OrdersCancel, id), envelope.to_json()).await?;
    let status = match tokio::time::timeout(s.commit_timeout, waiting.recv()).await {
        Ok(Some(event)) => Some((OrderStatus::Cancelled, event.version)),
        _ => s.downstream.order(id).await.ok().flatten().map(|o| (o.status, o.version)),
    };
    match status {
        Some((OrderStatus::Cancelled, version)) => {
            tracing::info!(order_id = %id, "order cancelled");
            Ok(accepted(id, OrderStatus::Cancelled, version))
        }
        // Inventory turned it down while the cancellation was on its way.
        Some((OrderStatus::Rejected, _)) => Err(order_rejected()),
        _ => Err(ApiError::unavailable(
            ErrorCode::NotCommitted,
            "The order service has not confirmed the cancellation yet. Retrying is safe.",
        )),
    }
}

fn order_rejected() -> ApiError {
    ApiError::conflict(ErrorCode::OrderRejected, "The order was rejected; there is nothing to cancel.")
}

/// The answer to cancelling an order that is already cancelled: what the
/// caller wanted holds, so 200 with the order rather than an error a
/// retried request would trip on.
fn already_cancelled(order: Order) -> Response {
    let location = format!("/api/orders/{}", order.order_id);
    (StatusCode::OK, [(header::LOCATION, location)], Json(OrderView::from(order))).into_response()
}
