use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The order node: orders and their statuses.
#[derive(Parser)]
struct Args {
    /// Config file (TOML). Every key can be overridden with WEBSHOP_ORDER__<KEY>.
    #[arg(long, default_value = "config/order.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.exists().then_some(args.config.as_path());
    let cfg: order::Config = shared::config::load(file, order::config::ENV_PREFIX)?;
    shared::telemetry::init(&cfg.log);
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone());
    let app = order::App::build(cfg, shutdown).await?;
    tracing::info!(addr = %app.local_addr(), "order listening");
    app.run().await
}
