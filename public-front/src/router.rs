//! The front's whole HTTP surface: every module's routes merged, the
//! probes, and the outermost layers (request ids, metrics, CORS, load
//! shedding, the request timeout).

use std::time::Duration;

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use shared::http::{ApiError, ErrorCode};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};

use crate::api::PRICE_SOURCE;
use crate::state::AppState;

/// Longest a request may take before a 503 (placing an order waits at most
/// the commit timeout plus a read).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest request body accepted (413 above).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .merge(crate::api::routes())
        .merge(crate::carts::routes())
        .route("/healthz", get(|| async { Json(serde_json::json!({"status": "ok"})) }))
        .route("/readyz", get(readyz))
        .merge(crate::admin::routes())
        .route("/metrics", get(metrics_text))
        .merge(crate::openapi::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .merge(crate::web::routes())
        .fallback(|| async { ApiError::not_found(ErrorCode::NoSuchRoute, "There is no such endpoint.") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                ErrorCode::MethodNotAllowed,
                "This endpoint doesn't take that method.",
            )
        });
    hardening(routes, &state).with_state(state)
}

/// Outermost layers: request ids in and out, metrics, CORS, and load
/// shedding (503 at once when `max_concurrent_requests` are in flight).
fn hardening(router: Router<AppState>, state: &AppState) -> Router<AppState> {
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::list(state.cors_origins.clone()))
        .allow_methods([
            axum::http::Method::GET,
            axum::http::Method::POST,
            axum::http::Method::PUT,
            axum::http::Method::DELETE,
        ])
        .allow_headers([
            header::CONTENT_TYPE,
            header::IF_NONE_MATCH,
            header::HeaderName::from_static("idempotency-key"),
            header::HeaderName::from_static("prefer"),
        ])
        .expose_headers([
            header::LOCATION,
            header::RETRY_AFTER,
            header::ETAG,
            header::HeaderName::from_static(PRICE_SOURCE),
        ]);
    router.layer(
        tower::ServiceBuilder::new()
            .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
            .layer(PropagateRequestIdLayer::x_request_id())
            .layer(axum::middleware::from_fn(|req: axum::extract::Request, next: axum::middleware::Next| {
                shared::metrics::track_http("public-front", req, next)
            }))
            .layer(cors)
            .layer(HandleErrorLayer::new(|e: tower::BoxError| async move {
                if e.is::<tower::timeout::error::Elapsed>() {
                    ApiError::unavailable(ErrorCode::Timeout, "The request took too long; please retry.")
                } else {
                    ApiError::unavailable(ErrorCode::Overloaded, "The shop is busy; please retry shortly.")
                }
            }))
            .load_shed()
            .concurrency_limit(state.max_concurrent_requests.max(1))
            .timeout(REQUEST_TIMEOUT),
    )
}

async fn metrics_text() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], shared::metrics::render())
}

async fn readyz(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // First: a draining front must leave the load balancer's rotation even
    // while everything it depends on is fine.
    if s.shutdown.is_cancelled() {
        return Err(ApiError::unavailable(ErrorCode::NotReady, "shutting down"));
    }
    if let Some(reason) = s.bus.not_ready_reason() {
        return Err(ApiError::unavailable(ErrorCode::NotReady, reason));
    }
    if let Some(reason) = s.downstream.unreachable().await {
        return Err(ApiError::unavailable(ErrorCode::NotReady, reason));
    }
    Ok(Json(serde_json::json!({"status": "ready"})))
}
