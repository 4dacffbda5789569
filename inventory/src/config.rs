//! Inventory's configuration (`config/inventory.toml`, env `WEBSHOP_INVENTORY__*`).

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use shared::config::{BusConfig, DbConfig, LogConfig, Secret, TlsConfig};

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// HTTP listen address. Default `127.0.0.1:8081`; port 0 picks a free one.
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
    /// A JSON catalog loaded on first start (empty database). Default: the
    /// sample catalog built into the binary.
    pub catalog: Option<PathBuf>,
    /// Inventory is the price authority: an `orders/send` must quote, per
    /// SKU, its current price or one it had within this many seconds, or it
    /// is rejected. Longer than the front's price cache and its
    /// `stale_price_max_secs` (300), plus the time an order may wait on the
    /// bus. Default 900.
    pub price_grace_secs: f64,
    /// How long stock held for a cart stays held after the cart's last
    /// change (every hold request renews all of its holds); then the
    /// expiry timer gives it back. Must be above 0. Default 900 (15
    /// minutes).
    pub hold_secs: f64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8081)),
            tls: TlsConfig::default(),
            bus: BusConfig { client_id: "webshop-inventory".into(), ..BusConfig::default() },
            db: DbConfig {
                path: PathBuf::from("data/inventory.db"),
                schema: "inventory".into(),
                ..DbConfig::default()
            },
            log: LogConfig::default(),
            admin_token: None,
            catalog: None,
            price_grace_secs: 900.0,
            hold_secs: 900.0,
        }
    }
}

impl Config {
    /// Checks what serde can't: values out of range, naming the key.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.hold_secs.is_finite() && self.hold_secs > 0.0,
            "hold_secs must be a number of seconds above 0, not {}",
            self.hold_secs
        );
        self.db.validate()
    }

    /// `hold_secs` in milliseconds (at least 1).
    pub fn hold_ms(&self) -> i64 {
        ((self.hold_secs * 1000.0) as i64).max(1)
    }
}

pub const ENV_PREFIX: &str = "WEBSHOP_INVENTORY__";

#[cfg(test)]
mod tests {
    use super::*;

    /// The shipped config file and the built-in defaults must not drift.
    #[test]
    fn shipped_config_file_matches_defaults() {
        let path = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config/inventory.toml"));
        let loaded: Config = shared::config::load(Some(path), "WEBSHOP_TEST_UNUSED__").unwrap();
        assert_eq!(serde_json::to_value(&loaded).unwrap(), serde_json::to_value(Config::default()).unwrap());
    }

    #[test]
    fn hold_secs_must_be_above_zero() {
        assert!(Config::default().validate().is_ok());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = Config { hold_secs: bad, ..Config::default() }.validate().unwrap_err().to_string();
            assert!(err.contains("hold_secs must be"), "{err}");
        }
        assert_eq!(Config { hold_secs: 0.0001, ..Config::default() }.hold_ms(), 1);
    }
}
