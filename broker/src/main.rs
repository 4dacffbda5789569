//! `broker [--config FILE]`: runs the webshop's in-memory MQTT broker until
//! Ctrl-C. See the library docs for what a restart loses.

use std::path::{Path, PathBuf};

use broker::BrokerConfig;
use clap::Parser;

/// Used when `--config` is not given and the file exists.
const DEFAULT_CONFIG: &str = "config/broker.toml";

/// Embedded MQTT 3.1.1 broker for the webshop services.
#[derive(Parser)]
#[command(name = "broker", version)]
struct Args {
    /// TOML config file. Default: config/broker.toml if it exists.
    /// Environment variables WEBSHOP_BROKER__* override it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.config.or_else(|| {
        let default = Path::new(DEFAULT_CONFIG);
        default.exists().then(|| default.to_path_buf())
    });
    let cfg: BrokerConfig = shared::config::load(path.as_deref(), "WEBSHOP_BROKER__")?;
    shared::telemetry::init(&cfg.log);
    tracing::info!(config = ?cfg, file = ?path, "starting MQTT broker");

    broker::spawn(&cfg)?;
    println!("broker listening on mqtt://{}", cfg.listen);

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(tokio::signal::ctrl_c())?;
    tracing::info!("Ctrl-C received, exiting");
    // rumqttd has no shutdown; its threads end with the process.
    std::process::exit(0);
}
