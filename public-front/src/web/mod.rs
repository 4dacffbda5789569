//! The browser side of the front: the storefront (`/`, `/orders/{id}`),
//! the operator dashboard (`/admin`) and the live order status stream.
//!
//! Plain HTML, CSS and JavaScript, embedded in the binary: no build step,
//! no framework, nothing fetched from elsewhere. The pages only use the
//! public JSON API (and the admin JSON API with the operator's token).
//!
//! Layout: `sse.rs` (the `/api/orders/{id}/events` stream), `assets/`
//! (`common.js` is shared by the pages; `shop.js` is the catalog and cart,
//! `order.js` the order page, `admin.js` the dashboard).

mod sse;

use axum::http::header::{self, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::state::AppState;

/// One embedded file.
struct Asset {
    content_type: &'static str,
    body: &'static str,
}

const INDEX_HTML: Asset = Asset { content_type: HTML, body: include_str!("assets/index.html") };
const ORDER_HTML: Asset = Asset { content_type: HTML, body: include_str!("assets/order.html") };
const ADMIN_HTML: Asset = Asset { content_type: HTML, body: include_str!("assets/admin.html") };
const STYLE_CSS: Asset = Asset { content_type: "text/css; charset=utf-8", body: include_str!("assets/style.css") };
const COMMON_JS: Asset = Asset { content_type: JS, body: include_str!("assets/common.js") };
const SHOP_JS: Asset = Asset { content_type: JS, body: include_str!("assets/shop.js") };
const ORDER_JS: Asset = Asset { content_type: JS, body: include_str!("assets/order.js") };
const ADMIN_JS: Asset = Asset { content_type: JS, body: include_str!("assets/admin.js") };
const FAVICON: Asset = Asset { content_type: "image/svg+xml", body: include_str!("assets/favicon.svg") };

const HTML: &str = "text/html; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// Everything the pages load comes from this origin; nothing inline.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| serve(&INDEX_HTML)))
        .route("/orders/{order_id}", get(|| serve(&ORDER_HTML)))
        .route("/admin", get(|| serve(&ADMIN_HTML)))
        .route("/assets/style.css", get(|| serve(&STYLE_CSS)))
        .route("/assets/common.js", get(|| serve(&COMMON_JS)))
        .route("/assets/shop.js", get(|| serve(&SHOP_JS)))
        .route("/assets/order.js", get(|| serve(&ORDER_JS)))
        .route("/assets/admin.js", get(|| serve(&ADMIN_JS)))
        .route("/favicon.svg", get(|| serve(&FAVICON)))
        .route("/api/orders/{order_id}/events", get(sse::order_events))
}

async fn serve(asset: &'static Asset) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(asset.content_type)),
            // Assets change with the binary and are small: always revalidate
            // rather than serve a stale script against a newer API.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP)),
            (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
            (header::REFERRER_POLICY, HeaderValue::from_static("same-origin")),
            (HeaderName::from_static("x-frame-options"), HeaderValue::from_static("DENY")),
        ],
        asset.body,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pages reference only assets that are served, and scripts don't build
    /// HTML from strings (all data goes through `textContent`).
    #[test]
    fn pages_reference_served_assets_only() {
        let served = [
            "/assets/style.css",
            "/assets/common.js",
            "/assets/shop.js",
            "/assets/order.js",
            "/assets/admin.js",
            "/favicon.svg",
        ];
        for page in [INDEX_HTML.body, ORDER_HTML.body, ADMIN_HTML.body] {
            for attr in ["src=\"", "href=\""] {
                for part in page.split(attr).skip(1) {
                    let url = part.split('"').next().unwrap_or_default();
                    if url.starts_with('/') && !url.starts_with("/admin") && url != "/" {
                        assert!(served.contains(&url), "a page references {url}, which is not served");
                    }
                }
            }
            assert!(!page.contains("<script>"), "inline scripts are blocked by the CSP");
            assert!(!page.contains(" style=\""), "inline styles are blocked by the CSP");
        }
        for js in [COMMON_JS.body, SHOP_JS.body, ORDER_JS.body, ADMIN_JS.body] {
            assert!(!js.contains("innerHTML"), "scripts must not build HTML from strings");
        }
    }
}
