//! Process-wide logging. Call [`init`] once from `main`.

use tracing_subscriber::{fmt, EnvFilter};

use crate::config::LogConfig;

/// Installs the global `tracing` subscriber. `RUST_LOG` overrides the
/// configured filter. Calling it twice is harmless (the second is ignored),
/// so the all-in-one `webshop up` can start several nodes in one process.
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.filter));
    let builder = fmt().with_env_filter(filter).with_target(true);
    let _ = if cfg.format == "json" { builder.json().try_init() } else { builder.try_init() };
}
