use std::path::PathBuf;

use clap::Parser;
use tokio_util::sync::CancellationToken;

/// The public front: the HTTP API customers use.
#[derive(Parser)]
struct Args {
    /// Config file (TOML). Every key can be overridden with WEBSHOP_FRONT__<KEY>.
    #[arg(long, default_value = "config/front.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let file = args.config.exists().then_some(args.config.as_path());
    let cfg: public_front::Config = shared::config::load(file, public_front::config::ENV_PREFIX)?;
    shared::telemetry::init(&cfg.log);
    let shutdown = CancellationToken::new();
    shared::shutdown::cancel_on_signal(shutdown.clone());
    let app = public_front::App::build(cfg, shutdown).await?;
    tracing::info!(addr = %app.local_addr(), "public-front listening");
    app.run().await
}
