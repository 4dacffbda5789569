//! Synchronous reads from inventory and order, over one pooled HTTP client
//! (connections are reused). Every failure maps to a clear API error: a
//! node that is down is a 503 naming it, never a 500 or a hang.
//!
//! Catalog pages and product prices can be cached for a short time
//! ([`Downstream::with_cache`]): concurrent misses for the same key share
//! one request to inventory, and errors are never cached. The front stays
//! stateless: the cache is a bounded, expiring copy of inventory's answers.
//!
//! While inventory can't be reached, orders are priced from the last price
//! the front saw for each SKU, up to a maximum age: the order service takes
//! the order and inventory reserves once it is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use moka::future::Cache;

use axum::http::StatusCode;
use serde::de::DeserializeOwned;
use shared::http::{ApiError, ErrorCode};
use shared::ids::{CartId, OrderId, Sku};
use shared::view::{Cart, Order, Product};

#[derive(Clone)]
pub struct Downstream {
    client: reqwest::Client,
    inventory: String,
    order: String,
    /// Catalog pages as inventory sent them, by query string.
    pages: Option<Cache<String, Bytes>>,
    prices: Option<Prices>,
}

/// Inventory's recent answers about products, by SKU: used as they are for
/// `fresh`, and (known products only) while inventory is unreachable for
/// up to `stale`.
#[derive(Clone)]
struct Prices {
    known: Cache<Sku, Known>,
    fresh: Duration,
    stale: Duration,
}

/// What inventory said about a SKU, and when.
#[derive(Clone)]
struct Known {
    /// `None` remembers that the SKU is unknown.
    product: Option<Product>,
    at: Instant,
}

/// The products among the SKUs asked for that exist, and where their
/// prices came from.
#[derive(Debug)]
pub struct Priced {
    pub products: Vec<Product>,
    /// Set when inventory was unreachable and some prices are last known
    /// ones: the age of the oldest of them.
    pub stale_age: Option<Duration>,
}

/// Most cached catalog pages and products (each entry is one page or one
/// product; searches make a key per query, so the bound matters).
const CACHE_ENTRIES: u64 = 10_000;

impl Downstream {
    /// A client for the nodes at these base URLs; `https://` ones are
    /// checked against the system's root certificates.
    pub fn new(inventory: &str, order: &str, timeout: Duration) -> anyhow::Result<Self> {
        Self::with_ca_path(inventory, order, timeout, None)
    }

    /// Like [`Downstream::new`], but with `ca_path` (config key
    /// `downstream_ca_path`) only the CAs in that PEM file are trusted.
    pub fn with_ca_path(
        inventory: &str,
        order: &str,
        timeout: Duration,
        ca_path: Option<&std::path::Path>,
    ) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(1)))
            .pool_max_idle_per_host(64)
            .pool_idle_timeout(shared::http::CLIENT_POOL_IDLE_TIMEOUT);
        if let Some(path) = ca_path {
            builder = builder.tls_built_in_root_certs(false);
            for der in shared::tls::load_certs("downstream_ca_path", path)? {
                let cert = reqwest::Certificate::from_der(&der).map_err(|e| {
                    anyhow::anyhow!("downstream_ca_path: {} holds an unusable certificate: {e}", path.display())
                })?;
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build()?;
        Ok(Self {
            client,
            inventory: inventory.trim_end_matches('/').to_owned(),
            order: order.trim_end_matches('/').to_owned(),
            pages: None,
            prices: None,
        })
    }

    /// Serves catalog pages and product prices from a cache for up to `ttl`
    /// (zero: no cache). A price or stock change reaches customers within
    /// `ttl`; an order still reserves against inventory's live stock.
    ///
    /// While inventory is unreachable (connection error, timeout, 5xx),
    /// [`Downstream::products`] falls back to the last price seen for each
    /// SKU if it is at most `stale_max_age` old (zero: never).
    pub fn with_cache(mut self, ttl: Duration, stale_max_age: Duration) -> Self {
        self.pages = (!ttl.is_zero()).then(|| Cache::builder().max_capacity(CACHE_ENTRIES).time_to_live(ttl).build());
        let keep = ttl.max(stale_max_age);
        self.prices = (!keep.is_zero()).then(|| Prices {
            known: Cache::builder().max_capacity(CACHE_ENTRIES).time_to_live(keep).build(),
            fresh: ttl,
            stale: stale_max_age,
        });
        self
    }

    /// Forgets every cached answer (after an operator changed a product).
    pub fn invalidate(&self) {
        if let Some(pages) = &self.pages {
            pages.invalidate_all();
        }
        if let Some(p) = &self.prices {
            p.known.invalidate_all();
        }
    }

    async fn get_json<T: DeserializeOwned>(&self, node: &'static str, url: String) -> Result<Option<T>, ApiError> {
        let resp = self.client.get(&url).send().await.map_err(|e| unavailable(node, e))?;
        decode(node, resp).await
    }

    /// Inventory's catalog page for `query` (a query string), as the JSON
    /// bytes inventory sent: passed through, not parsed and re-encoded.
    pub async fn catalog(&self, query: String) -> Result<Bytes, ApiError> {
        match &self.pages {
            Some(pages) => pages.try_get_with_by_ref(&query, self.fetch_catalog(&query)).await.map_err(unshare),
            None => self.fetch_catalog(&query).await,
        }
    }

    async fn fetch_catalog(&self, query: &str) -> Result<Bytes, ApiError> {
        let resp = self
            .client
            .get(format!("{}/products?{query}", self.inventory))
            .send()
            .await
            .map_err(|e| unavailable("inventory", e))?;
        if resp.status().is_success() {
            return resp.bytes().await.map_err(|e| unavailable("inventory", e));
        }
        // Every other status is an error; `decode` names it (a 404 comes back as `None`).
        decode::<serde_json::Value>("inventory", resp).await?;
        Err(ApiError::internal("inventory answered 404 for /products"))
    }

    /// One product, read live (not cached: a product page shows current stock).
    pub async fn product(&self, sku: &Sku) -> Result<Option<Product>, ApiError> {
        self.get_json("inventory", format!("{}/products/{sku}", self.inventory)).await
    }

    /// The products among `skus` that exist. When inventory is unreachable
    /// and every SKU it would have been asked about has a last known price
    /// within the stale age, those prices (see [`Priced::stale_age`]);
    /// otherwise inventory's error. A SKU last known as unknown, or never
    /// seen, is never priced from memory.
    pub async fn products(&self, skus: &[Sku]) -> Result<Priced, ApiError> {
        let Some(prices) = &self.prices else {
            return Ok(Priced { products: self.fetch_products(skus).await?, stale_age: None });
        };
        let mut found = Vec::with_capacity(skus.len());
        let mut missing = Vec::new();
        for sku in skus {
            match prices.known.get(sku).await {
                Some(k) if k.at.elapsed() < prices.fresh => found.extend(k.product),
                older => missing.push((sku.clone(), older)),
            }
        }
        if missing.is_empty() {
            return Ok(Priced { products: found, stale_age: None });
        }
        let asked: Vec<Sku> = missing.iter().map(|(sku, _)| sku.clone()).collect();
        match self.fetch_products(&asked).await {
            Ok(fetched) => {
                let at = Instant::now();
                for sku in asked {
                    let product = fetched.iter().find(|p| p.sku == sku.as_str()).cloned();
                    prices.known.insert(sku, Known { product: product.clone(), at }).await;
                    found.extend(product);
                }
                Ok(Priced { products: found, stale_age: None })
            }
            Err(e) if unreachable(&e) => {
                let mut oldest = Duration::ZERO;
                for (_, known) in missing {
                    match known {
                        Some(Known { product: Some(p), at }) if at.elapsed() <= prices.stale => {
                            oldest = oldest.max(at.elapsed());
                            found.push(p);
                        }
                        _ => return Err(e),
                    }
                }
                Ok(Priced { products: found, stale_age: Some(oldest) })
            }
            Err(e) => Err(e),
        }
    }

    async fn fetch_products(&self, skus: &[Sku]) -> Result<Vec<Product>, ApiError> {
        let resp = self
            .client
            .post(format!("{}/products/lookup", self.inventory))
            .json(&serde_json::json!({ "skus": skus }))
            .send()
            .await
            .map_err(|e| unavailable("inventory", e))?;
        // The route always exists: a 404 means something else answers on
        // inventory's address, not that the SKUs are unknown.
        decode("inventory", resp)
            .await?
            .ok_or_else(|| ApiError::internal("inventory answered 404 for /products/lookup"))
    }

    /// GET `path` on a node, for operator tools (audit).
    pub async fn node_json<T: DeserializeOwned>(&self, node: &'static str, path: &str) -> Result<T, ApiError> {
        let base = if node == "inventory" { &self.inventory } else { &self.order };
        self.get_json(node, format!("{base}{path}"))
            .await?
            .ok_or_else(|| ApiError::internal(format!("{node} answered 404 for {path}")))
    }

    /// Base URL of a node by name (`inventory` or `order`).
    pub fn base(&self, node: &str) -> &str {
        if node == "inventory" {
            &self.inventory
        } else {
            &self.order
        }
    }

    /// Passes an operator request through to a node's own API, with the
    /// caller's `Authorization`, and returns the node's answer as is.
    pub async fn forward(
        &self,
        node: &'static str,
        method: reqwest::Method,
        path: &str,
        authorization: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> Result<(StatusCode, serde_json::Value), ApiError> {
        let mut req = self.client.request(method, format!("{}{path}", self.base(node)));
        if let Some(auth) = authorization {
            req = req.header(reqwest::header::AUTHORIZATION, auth);
        }
        if let Some(body) = body {
            req = req.json(&body);
        }
        let resp = req.send().await.map_err(|e| unavailable(node, e))?;
        let status = StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
        let body = resp.json().await.unwrap_or(serde_json::Value::Null);
        Ok((status, body))
    }

    /// Whether `node` answers its readiness probe, and why not.
    pub async fn readiness(&self, node: &'static str) -> (bool, Option<String>) {
        match self.client.get(format!("{}/readyz", self.base(node))).timeout(Duration::from_secs(2)).send().await {
            Ok(r) if r.status().is_success() => (true, None),
            Ok(r) => {
                let v: serde_json::Value = r.json().await.unwrap_or_default();
                (false, v["detail"].as_str().map(str::to_owned).or(Some("not ready".into())))
            }
            Err(e) => (false, Some(format!("not reachable: {e}"))),
        }
    }

    pub async fn order(&self, id: OrderId) -> Result<Option<Order>, ApiError> {
        self.get_json("order", format!("{}/orders/{id}", self.order)).await
    }

    pub async fn cart(&self, id: CartId) -> Result<Option<Cart>, ApiError> {
        self.get_json("order", format!("{}/carts/{id}", self.order)).await
    }

    /// Whether both nodes answer their liveness probe.
    pub async fn unreachable(&self) -> Option<String> {
        for (name, base) in [("inventory", &self.inventory), ("order", &self.order)] {
            let ok = self
                .client
                .get(format!("{base}/healthz"))
                .timeout(Duration::from_secs(1))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if !ok {
                return Some(format!("the {name} node at {base} is not reachable"));
            }
        }
        None
    }
}

/// Whether a downstream error means the node couldn't answer (connection
/// error, timeout, 5xx: see [`unavailable`] and [`decode`]), as opposed to
/// an answer the front can't use (a 4xx or a 404 are 500s).
fn unreachable(e: &ApiError) -> bool {
    e.status == StatusCode::SERVICE_UNAVAILABLE
}

/// A cache miss's error, shared by every request that waited for it.
fn unshare(e: Arc<ApiError>) -> ApiError {
    Arc::unwrap_or_clone(e)
}

fn unavailable(node: &'static str, e: reqwest::Error) -> ApiError {
    tracing::warn!(node, error = %e, "downstream request failed");
    let what = if e.is_timeout() { "did not answer in time" } else { "is not reachable" };
    ApiError::unavailable(unavailable_code(node), format!("The {node} service {what}; please retry shortly."))
}

fn unavailable_code(node: &str) -> ErrorCode {
    if node == "inventory" {
        ErrorCode::InventoryUnavailable
    } else {
        ErrorCode::OrderServiceUnavailable
    }
}

async fn decode<T: DeserializeOwned>(node: &'static str, resp: reqwest::Response) -> Result<Option<T>, ApiError> {
    match resp.status() {
        StatusCode::NOT_FOUND => Ok(None),
        s if s.is_success() => resp.json().await.map(Some).map_err(|e| unavailable(node, e)),
        s if s.is_client_error() => Err(ApiError::internal(format!("{node} refused a request the front built: {s}"))),
        s => {
            tracing::warn!(node, status = %s, "downstream error");
            Err(ApiError::unavailable(
                unavailable_code(node),
                format!("The {node} service is failing; please retry shortly."),
            ))
        }
    }
}
