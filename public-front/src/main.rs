use std::path::PathBuf;

use clap::Parser;

/// Runs this node from its config file; see `config/` for the keys.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Config file (TOML), used if it exists. Environment variables override it.
    #[arg(long, default_value = "config/front.toml")]
    config: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    public_front::main_with_config(args.config.exists().then_some(args.config.as_path())).await
}
