//! The public API's contract: an OpenAPI 3.1 document generated from the
//! handlers' annotations, served at `/api/openapi.json`, with a docs page
//! at `/api/docs`. Errors are RFC 9457 problem+json.

use axum::response::{Html, IntoResponse};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "webshop public API", description = "Catalog, carts, orders and their live status. Errors are RFC 9457 problem+json with a stable `code`."),
    paths(crate::api::catalog, crate::api::product, crate::api::place_order, crate::api::get_order, crate::api::cancel_order,
          crate::carts::create_cart, crate::carts::get_cart, crate::carts::set_item, crate::carts::remove_item, crate::carts::checkout),
    components(schemas(Problem, shared::http::ErrorCode, CatalogPage, shared::message::OrderStatus, shared::message::OrderLine, shared::view::Product, crate::api::PlaceOrder, crate::api::Accepted, crate::api::OrderView,
                       shared::view::CartStatus, crate::carts::CartView, crate::carts::CartLineView, crate::carts::Hold, crate::carts::SetQuantity, crate::carts::CheckoutRequest)),
    tags((name = "catalog"), (name = "carts"), (name = "orders"))
)]
pub struct ApiDoc;

/// An error (RFC 9457).
#[derive(Serialize, ToSchema)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// Stable, machine-readable: e.g. `unknown_sku`, `idempotency_key_reused`.
    pub code: shared::http::ErrorCode,
    /// What went wrong and what to do, in a sentence.
    pub detail: String,
}

/// One page of the catalog.
#[derive(Serialize, ToSchema)]
pub struct CatalogPage {
    pub items: Vec<shared::view::Product>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

const DOCS_PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>webshop API</title>
<script type="module" src="https://unpkg.com/rapidoc/dist/rapidoc-min.js"></script></head>
<body><rapi-doc spec-url="/api/openapi.json" render-style="read" show-header="false"></rapi-doc>
<noscript>The interactive docs need JavaScript; the contract itself is at <a href="/api/openapi.json">/api/openapi.json</a>.</noscript>
</body></html>"#;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/openapi.json", get(|| async { Json(ApiDoc::openapi()).into_response() }))
        .route("/api/docs", get(|| async { Html(DOCS_PAGE) }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_code_schema_lists_the_codes_sent() {
        let doc = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let listed = &doc["components"]["schemas"]["ErrorCode"]["enum"];
        let sent: Vec<&str> = shared::http::ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(listed, &serde_json::json!(sent));
    }
}
