use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The inventory node: products, stock and reservations.
#[derive(Parser)]
struct Args {
    /// Config file (TOML). Every key can be overridden with WEBSHOP_INVENTORY__<KEY>.
    #[arg(long, default_value = "config/inventory.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.exists().then_some(args.config.as_path());
    let cfg: inventory::Config = shared::config::load(file, inventory::config::ENV_PREFIX)?;
    shared::telemetry::init(&cfg.log);
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone());
    let app = inventory::App::build(cfg, shutdown).await?;
    tracing::info!(addr = %app.local_addr(), "inventory listening");
    app.run().await
}
