//! public-front's configuration (`config/front.toml`, env `WEBSHOP_FRONT__*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shared::config::{BusConfig, LogConfig, Secret, TlsConfig};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address. Default `127.0.0.1:8080`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// HTTPS for the listener: `cert_path` and `key_path` (PEM). Default
    /// unset: plain HTTP.
    pub tls: TlsConfig,
    /// The bus. An empty `client_id` (default) becomes `webshop-front-<random>`,
    /// so several fronts can run side by side.
    pub bus: BusConfig,
    /// Base URL of the inventory node. Default `http://127.0.0.1:8081`.
    pub inventory_url: String,
    /// Base URL of the order node. Default `http://127.0.0.1:8082`.
    pub order_url: String,
    /// PEM file of the CA(s) that signed the inventory and order nodes'
    /// certificates, for `https://` URLs above; when set, only these CAs
    /// are trusted (e.g. a private or self-signed CA). Default unset: the
    /// system's root certificates.
    pub downstream_ca_path: Option<PathBuf>,
    /// Seconds `POST /api/orders` (and cancel) waits for the order service
    /// to commit before answering 503 with `Retry-After`. Default 5.
    pub commit_timeout_secs: f64,
    /// Seconds a synchronous read of inventory or order may take. Default 3.
    pub read_timeout_secs: f64,
    /// Bearer token for the `/admin/*` routes. Unset (default): the admin
    /// API answers 403. Set it through `WEBSHOP_FRONT__ADMIN_TOKEN`.
    pub admin_token: Option<Secret>,
    /// Requests served at once; beyond that the front answers 503 at once
    /// (load shedding) instead of queueing. Default 1024.
    pub max_concurrent_requests: usize,
    /// Origins allowed to call the API from a browser (CORS), e.g.
    /// `["https://shop.example"]`. The storefront served by the front itself
    /// needs none. Default: none.
    pub cors_origins: Vec<String>,
    /// Seconds after which unsettled work counts as stuck in the audit.
    /// Default 60.
    pub audit_horizon_secs: f64,
    /// Seconds the front keeps inventory's catalog pages and product prices
    /// (0: ask inventory every time). Prices and availability shown to
    /// customers, and the unit prices a new order is sent with, lag a change
    /// by at most this; reservations always use live stock. Default 0.5.
    pub catalog_cache_secs: f64,
    /// Seconds a price the front has seen stays usable while inventory is
    /// unreachable (connection error, timeout, 5xx): orders are then taken
    /// at the last known price and reserved once inventory is back, and the
    /// answer carries `X-Price-Source: stale; age=<secs>`. A SKU without a
    /// price seen within this time gets a 503. 0: no fallback. Default 300.
    pub stale_price_max_secs: f64,
    /// Seconds `GET /api/orders/{id}` may answer from what the front last
    /// learned about the order (a read, or an `orders/status` event)
    /// instead of asking the order node: the status shown was the order's
    /// current one at most this long ago. Rejected and cancelled orders,
    /// which never change, are answered from memory regardless. 0: always
    /// ask the order node. Default 1.
    pub order_cache_secs: f64,
    /// Seconds the front keeps serving after SIGTERM (or Ctrl-C) before it
    /// stops accepting connections and drains the requests in flight.
    /// Meanwhile `/readyz` answers 503, so a load balancer that checks it
    /// takes the front out of rotation while no request fails: keep it
    /// above the balancer's time to notice (checks' interval times the
    /// failures it needs). 0: stop accepting at once. Default 2.
    pub drain_grace_secs: f64,
    pub log: LogConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls: TlsConfig::default(),
            bus: BusConfig::default(),
            inventory_url: "http://127.0.0.1:8081".into(),
            order_url: "http://127.0.0.1:8082".into(),
            downstream_ca_path: None,
            commit_timeout_secs: 5.0,
            read_timeout_secs: 3.0,
            admin_token: None,
            max_concurrent_requests: 1024,
            cors_origins: Vec::new(),
            audit_horizon_secs: 60.0,
            catalog_cache_secs: 0.5,
            stale_price_max_secs: 300.0,
            order_cache_secs: 1.0,
            drain_grace_secs: 2.0,
            log: LogConfig::default(),
        }
    }
}

pub const ENV_PREFIX: &str = "WEBSHOP_FRONT__";

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped config file and the built-in defaults must not drift.
    #[test]
    fn shipped_config_file_matches_defaults() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/front.toml"));
        let loaded: Config = shared::config::load(Some(path), "WEBSHOP_TEST_UNUSED__").unwrap();
        assert_eq!(serde_json::to_value(&loaded).unwrap(), serde_json::to_value(Config::default()).unwrap());
    }
}
