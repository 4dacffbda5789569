//! The order service's configuration (`config/order.toml`, env `WEBSHOP_ORDER__*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shared::config::{BusConfig, DbConfig, LogConfig, Secret, TlsConfig};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address. Default `127.0.0.1:8082`; port 0 picks a free one.
    pub listen: SocketAddr,
    /// HTTPS for the listener: `cert_path` and `key_path` (PEM). Default
    /// unset: plain HTTP.
    pub tls: TlsConfig,
    pub bus: BusConfig,
    pub db: DbConfig,
    pub log: LogConfig,
    /// Bearer token for the write routes of the node's API (dead-letter
    /// replay, product admin). Unset (default): they answer 403. Set it
    /// through the environment, not the file.
    pub admin_token: Option<Secret>,
    /// Seconds to wait for inventory (a stock decision, a release
    /// confirmation) before asking again; doubles per attempt up to 60 s.
    /// Default 5.
    pub follow_up_secs: f64,
    /// Seconds an early event (e.g. `in-stock` before its order) stays
    /// parked before it is dead-lettered. Default 600.
    pub parked_horizon_secs: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8082)),
            tls: TlsConfig::default(),
            bus: BusConfig { client_id: "webshop-order".into(), ..BusConfig::default() },
            db: DbConfig { path: PathBuf::from("data/order.db"), schema: "orders".into(), ..DbConfig::default() },
            log: LogConfig::default(),
            admin_token: None,
            follow_up_secs: 5.0,
            parked_horizon_secs: 600.0,
        }
    }
}

pub const ENV_PREFIX: &str = "WEBSHOP_ORDER__";

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped config file and the built-in defaults must not drift.
    #[test]
    fn shipped_config_file_matches_defaults() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/order.toml"));
        let loaded: Config = shared::config::load(Some(path), "WEBSHOP_TEST_UNUSED__").unwrap();
        assert_eq!(serde_json::to_value(&loaded).unwrap(), serde_json::to_value(Config::default()).unwrap());
    }
}
