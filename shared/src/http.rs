//! HTTP plumbing every node uses: one error type rendered as RFC 9457
//! problem+json with a code from [`ErrorCode`], extractors that reject
//! with it ([`Json`], [`Query`], [`PathParam`], [`Admin`]), and a server
//! runner (plain or TLS) with graceful shutdown.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use std::time::Duration;

use axum::Router;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::ids::{CartId, OrderId, ParseError, Sku};

/// Declares [`ErrorCode`] from one table of variant and wire string, so
/// the string, the enum and the OpenAPI schema can't disagree.
///
/// The wire string is a `tt`, not a `literal` fragment: utoipa reads the
/// `#[serde(rename = ...)]` below only from a plain string token, and
/// skipped it for a `literal`, so the schema listed the variant names.
macro_rules! error_codes {
    ($($(#[$doc:meta])* $variant:ident = $code:tt,)*) => {
        /// Every machine-readable `code` a node answers with in a
        /// problem+json body. Clients match on these strings: they never
        /// change meaning.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, utoipa::ToSchema)]
        pub enum ErrorCode {
            $($(#[$doc])* #[serde(rename = $code)] $variant,)*
        }

        impl ErrorCode {
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }
        }
    };
}

error_codes! {
    /// The admin API is off: no `admin_token` configured.
    AdminDisabled = "admin_disabled",
    BodyTooLarge = "body_too_large",
    BusUnavailable = "bus_unavailable",
    /// The cart changed since the version a checkout was priced for.
    CartChanged = "cart_changed",
    /// The cart was checked out and changes no more.
    CartCheckedOut = "cart_checked_out",
    EmptyCart = "empty_cart",
    EmptyOrder = "empty_order",
    IdempotencyKeyReused = "idempotency_key_reused",
    /// A 500: the cause is logged, never sent.
    Internal = "internal",
    InvalidCartId = "invalid_cart_id",
    InvalidCursor = "invalid_cursor",
    InvalidIdempotencyKey = "invalid_idempotency_key",
    InvalidLimit = "invalid_limit",
    /// An order body that is JSON but not a valid order.
    InvalidOrder = "invalid_order",
    InvalidOrderId = "invalid_order_id",
    InvalidProduct = "invalid_product",
    InvalidQuery = "invalid_query",
    /// A body, path or query axum could not read (see [`rejection`]).
    InvalidRequest = "invalid_request",
    InvalidSku = "invalid_sku",
    InvalidUpdate = "invalid_update",
    InvalidVersion = "invalid_version",
    InvalidWait = "invalid_wait",
    InventoryUnavailable = "inventory_unavailable",
    MalformedJson = "malformed_json",
    MethodNotAllowed = "method_not_allowed",
    MissingIdempotencyKey = "missing_idempotency_key",
    MissingVersion = "missing_version",
    MixedCurrencies = "mixed_currencies",
    NoSuchRoute = "no_such_route",
    NodeFailing = "node_failing",
    /// The order service has not confirmed the request: retrying is safe.
    NotCommitted = "not_committed",
    NotReady = "not_ready",
    OrderRejected = "order_rejected",
    OrderServiceUnavailable = "order_service_unavailable",
    Overloaded = "overloaded",
    ProductExists = "product_exists",
    Timeout = "timeout",
    TooManyLines = "too_many_lines",
    TooManySkus = "too_many_skus",
    /// A dead letter stored truncated, which can't be replayed.
    Truncated = "truncated",
    Unauthorized = "unauthorized",
    UnknownCart = "unknown_cart",
    UnknownDeadLetter = "unknown_dead_letter",
    UnknownNode = "unknown_node",
    UnknownOrder = "unknown_order",
    UnknownProduct = "unknown_product",
    UnknownReservation = "unknown_reservation",
    UnknownSku = "unknown_sku",
    UnsupportedMediaType = "unsupported_media_type",
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for ErrorCode {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// An error a client sees: a status, a stable machine-readable `code` and a
/// human sentence. 5xx details stay generic; the cause goes to the log.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: ErrorCode,
    pub detail: String,
    pub retry_after_secs: Option<u32>,
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: String,
    title: &'a str,
    status: u16,
    code: ErrorCode,
    detail: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { status, code, detail: detail.into(), retry_after_secs: None }
    }
    pub fn bad_request(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }
    pub fn unprocessable(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, detail)
    }
    pub fn not_found(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, detail)
    }
    pub fn conflict(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, code, detail)
    }
    /// A dependency is down or slow; the client may retry after a while.
    pub fn unavailable(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self { retry_after_secs: Some(1), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, detail) }
    }
    /// An unexpected failure: logged with its cause, reported generically.
    pub fn internal(cause: impl std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::Internal,
            "An internal error occurred; it has been logged.",
        )
    }
}

impl From<crate::db::DbError> for ApiError {
    fn from(e: crate::db::DbError) -> Self {
        ApiError::internal(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::to_vec(&Problem {
            kind: format!("https://webshop.example/problems/{}", self.code),
            title,
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
        })
        .unwrap_or_default();
        let mut resp = (self.status, [(header::CONTENT_TYPE, "application/problem+json")], body).into_response();
        if let Some(secs) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        resp
    }
}

/// Checks `Authorization: Bearer <token>` against the configured token:
/// 403 when none is configured, 401 when missing or wrong.
pub fn require_bearer(token: Option<&crate::config::Secret>, headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            ErrorCode::AdminDisabled,
            "The admin API is disabled: set admin_token in this node's config.",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Compare without stopping at the first differing byte.
    let expected = token.expose().as_bytes();
    let same = given.len() == expected.len() && given.bytes().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
    if same {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, "A valid admin bearer token is required."))
    }
}

/// Maps axum's JSON, path and query rejections into our problem format.
pub fn rejection(e: impl std::fmt::Display, status: StatusCode) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::BodyTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        _ => ErrorCode::InvalidRequest,
    };
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY { StatusCode::BAD_REQUEST } else { status };
    ApiError::new(status, code, e.to_string())
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        rejection(&e, e.status())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        rejection(&e, e.status())
    }
}

impl From<PathRejection> for ApiError {
    fn from(e: PathRejection) -> Self {
        rejection(&e, e.status())
    }
}

/// A JSON body (and a JSON answer): axum's `Json`, but a body it can't
/// read is refused with problem+json (see [`rejection`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(value) = axum::Json::<T>::from_request(req, state).await?;
        Ok(Json(value))
    }
}

impl<T: Serialize> IntoResponse for Json<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

/// A query string: axum's `Query`, but one it can't read is refused with
/// problem+json (see [`rejection`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Query(value) = axum::extract::Query::<T>::from_request_parts(parts, state).await?;
        Ok(Query(value))
    }
}

/// An identifier that a route takes as its one path parameter, parsed at
/// the edge, and the code it is refused with.
pub trait FromPath: Sized {
    const INVALID: ErrorCode;
    fn parse(s: &str) -> Result<Self, ParseError>;
}

impl FromPath for OrderId {
    const INVALID: ErrorCode = ErrorCode::InvalidOrderId;
    fn parse(s: &str) -> Result<Self, ParseError> {
        OrderId::parse(s)
    }
}

impl FromPath for CartId {
    const INVALID: ErrorCode = ErrorCode::InvalidCartId;
    fn parse(s: &str) -> Result<Self, ParseError> {
        CartId::parse(s)
    }
}

impl FromPath for Sku {
    const INVALID: ErrorCode = ErrorCode::InvalidSku;
    fn parse(s: &str) -> Result<Self, ParseError> {
        Sku::parse(s)
    }
}

/// The route's one path parameter as a parsed id (`PathParam<OrderId>`,
/// `PathParam<Sku>`): one that doesn't parse is a 400 with the id's code
/// (`invalid_order_id`, `invalid_sku`) and the parser's sentence.
#[derive(Debug, Clone)]
pub struct PathParam<T>(pub T);

impl<T: FromPath, S: Send + Sync> FromRequestParts<S> for PathParam<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let axum::extract::Path(raw) = axum::extract::Path::<String>::from_request_parts(parts, state).await?;
        T::parse(&raw).map(PathParam).map_err(|e| ApiError::bad_request(T::INVALID, e.to_string()))
    }
}

/// A state that holds the admin bearer token (`admin_token`).
pub trait AdminToken {
    fn admin_token(&self) -> Option<&crate::config::Secret>;
}

/// A request that carries the admin bearer token (see [`require_bearer`]:
/// 403 when admin is off, 401 when the token is missing or wrong). Holds
/// the request's `Authorization`, to pass on to another node.
#[derive(Debug, Clone)]
pub struct Admin {
    pub authorization: Option<String>,
}

impl<S: AdminToken + Send + Sync> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        require_bearer(state.admin_token(), &parts.headers)?;
        let authorization = parts.headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Ok(Admin { authorization })
    }
}

/// How long a client may take to send its request headers. `axum::serve`
/// sets no limit, so a slowloris client could hold connections forever.
/// hyper runs this clock on an idle keep-alive connection too, so a server
/// closes a connection that has waited this long for its next request.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a client keeps an idle pooled connection to a node. Shorter
/// than [`HEADER_READ_TIMEOUT`], so the client drops the connection before
/// the server does: a request written onto a connection the server is
/// closing fails with an incomplete message instead of being answered.
pub const CLIENT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long in-flight requests get to finish after shutdown begins.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `router` on `listener` until `shutdown`, then stops accepting and
/// lets in-flight requests finish (up to [`DRAIN_TIMEOUT`]). Connections
/// that don't send their headers within [`HEADER_READ_TIMEOUT`] are closed.
///
/// With `tls` (see [`crate::tls::acceptor`]) every accepted socket is
/// wrapped in TLS first. The handshake runs in the connection's own task,
/// bounded by [`HEADER_READ_TIMEOUT`] too, so a client that connects and
/// stays silent holds neither the accept loop nor a task for long.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    tls: Option<crate::tls::TlsAcceptor>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use hyper_util::server::conn::auto::Builder;
    use hyper_util::service::TowerToHyperService;

    let mut builder = Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).keep_alive(true);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        match &tls {
            None => {
                let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
            Some(acceptor) => {
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                // Taken now, so the drain also waits for handshakes under way.
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::debug!(error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!("TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                    let _ = watcher.watch(conn).await;
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("some HTTP connections were still busy after {DRAIN_TIMEOUT:?}; closing them");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wire string of each code is its `as_str`, and no two codes share
    /// one.
    #[test]
    fn codes_serialize_as_their_strings() {
        let mut seen = std::collections::HashSet::new();
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), code.as_str());
            assert!(seen.insert(code.as_str()), "{code} twice");
        }
    }
}
